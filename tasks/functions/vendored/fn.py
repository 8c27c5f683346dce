# `slugify_lite` is not installed in the image: it is vendored under vendor/, which the
# runtime puts on sys.path, and travels with this file in the deployed archive.
from slugify_lite import slugify


def main(event):
    return {"slug": slugify(event["title"]), "library": "slugify_lite"}
