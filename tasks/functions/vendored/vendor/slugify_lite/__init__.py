"""A tiny, pure-Python slugifier: the example's stand-in for a third-party dependency."""
import re
import unicodedata

__all__ = ["slugify"]

_NOT_WORD = re.compile(r"[^a-z0-9]+")


def slugify(text, sep="-"):
    """`text` as lower-case ASCII words joined by `sep`: accents are dropped, anything
    else that is not a letter or digit separates words."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NOT_WORD.sub(sep, ascii_text.lower()).strip(sep)
