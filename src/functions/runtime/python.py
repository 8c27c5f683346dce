# ufaas Python runtime: loads a named function's code once, then answers invocations read from
# stdin, one JSON object per line, on fd 3 (see src/functions/protocol.rs for the protocol).
# Started as `python3 -u -c SRC` with fd 3 = the protocol channel and fd 1, fd 2 = stderr.
# Only the standard library is used, and everything is imported before the handler's
# directory goes onto sys.path, so a handler's own json.py cannot replace ours.
import binascii
import json
import os
import sys
import traceback
import _thread
import importlib.util

# Requests are read from a private copy of fd 0, and fd 0 becomes /dev/null: a child process
# that reads its stdin (os.system("cat")) would otherwise eat the next requests. Likewise the
# protocol channel moves off fd 3 (os.dup gives a close-on-exec fd) so that no child writes
# into it.
_IN = os.fdopen(os.dup(0), "rb", buffering=65536)
_OUT = os.dup(3)
os.close(3)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)

_LOG_MAX = 64 * 1024

try:
    binascii.a2b_base64(b"", strict_mode=True)

    def _a2b(s):
        return binascii.a2b_base64(s, strict_mode=True)

except TypeError:  # before Python 3.11
    _a2b = binascii.a2b_base64

# Reentrant: a signal handler that prints while the lock is held must not deadlock.
_lock = _thread.RLock()
_current = None  # the id of the invocation running now, else None
# Held by a request to the server (pyfaasm.core) until its reply is read; see _host.
_host_lock = _thread.allocate_lock()


def _send(data):
    """Writes one or more whole messages (bytes): one write unless the pipe takes less."""
    view = memoryview(data)
    while view:
        view = view[os.write(_OUT, view):]


def _msg(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _utf8(s):
    """`s` in UTF-8. Lone surrogates cannot be: those of a surrogateescape decoding (input
    that was not UTF-8) become the bytes they came from, others their 3-byte form."""
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return s.encode("utf-8", "surrogatepass")


def _text(s):
    """`s` as valid text for a message (which must be UTF-8): lone surrogates become U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return _utf8(s).decode("utf-8", "replace")


def _cut(s):
    """An error text of at most 64 KiB of UTF-8 (a huge exception message must not make a huge
    line): its head and its tail, where a traceback names the exception."""
    data = _utf8(s)
    if len(data) <= _LOG_MAX:
        return _text(s)
    head = 8 * 1024
    tail = len(data) - (_LOG_MAX - 9 * 1024)
    return "%s\n[... %d bytes cut ...]\n%s" % (
        data[:head].decode("utf-8", "replace"),
        tail - head,
        data[tail:].decode("utf-8", "replace"),
    )


def _log_messages(rid, stream, text):
    """The log messages for `text`, each carrying at most 64 KiB of UTF-8."""
    data = _utf8(text)
    if len(data) <= _LOG_MAX:
        return _msg({"id": rid, "log": stream, "data": _text(text)})
    out = []
    start = 0
    while start < len(data):
        end = min(start + _LOG_MAX, len(data))
        # Back off to a character boundary (not a UTF-8 continuation byte).
        while end < len(data) and end > start + 1 and (data[end] & 0xC0) == 0x80:
            end -= 1
        piece = data[start:end].decode("utf-8", "replace")
        out.append(_msg({"id": rid, "log": stream, "data": piece}))
        start = end
    return b"".join(out)


class _Capture:
    """Stands in for sys.stdout / sys.stderr. During an invocation what is written becomes log
    messages of that invocation, one per write that ends a line (as a terminal would flush),
    so nothing is lost if the invocation is then killed on its timeout; a partial line waits
    for the next newline, a flush, or the end of the invocation. Outside an invocation (at
    import time, or from a thread after the result) it goes to the process's stderr."""

    encoding = "utf-8"
    errors = "surrogateescape"
    newlines = None
    closed = False
    line_buffering = True

    def __init__(self, stream, fd):
        self.name = "<" + stream + ">"
        self._stream = stream
        self._fd = fd
        self.buffer = _BinaryCapture(self)

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        if not s:
            return 0
        with _lock:
            if _current is None:
                _write_fd(self._fd, s)
                return len(s)
            if _pending and _pending[0] != self._stream:
                _flush_locked()
            if not _pending:
                _pending.append(self._stream)
            _pending.append(s)
            if s[-1] == "\n" or len(_pending) > 256:
                _flush_locked()
        return len(s)

    def writelines(self, lines):
        for s in lines:
            self.write(s)

    def flush(self):
        with _lock:
            _flush_locked()

    def fileno(self):
        # Code that hands sys.stdout to a child process gets fd 1 (the process's stderr).
        return self._fd

    def isatty(self):
        return False

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False

    def close(self):
        pass

    def reconfigure(self, **kwargs):
        pass


class _BinaryCapture:
    """sys.stdout.buffer: bytes written there are logged as text."""

    def __init__(self, text):
        self._text = text

    def write(self, b):
        self._text.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self):
        self._text.flush()

    def fileno(self):
        return self._text.fileno()


def _write_fd(fd, s):
    """Text printed outside an invocation, written raw to fd 1 or 2 (both the process's
    stderr); a failure to write it must not fail the handler."""
    try:
        view = memoryview(_utf8(s))
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass


# Pending log text of the current invocation: [stream, str, str, ...] or [].
_pending = []


def _flush_locked():
    if not _pending:
        return
    stream = _pending[0]
    text = "".join(_pending[1:])
    del _pending[:]
    if _current is not None:
        _send(_log_messages(_current, stream, text))


# Only the Python-level streams are replaced: raw writes to fd 1 (os.write, C extensions,
# child processes) reach the process's stderr, which the server keeps as the stderr log.
sys.stdout = _Capture("stdout", 1)
sys.stderr = _Capture("stderr", 2)


def _trimmed_traceback(e):
    """The traceback of `e` without the runtime's own frames and importlib's."""
    tb = e.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name != "<string>" and not name.startswith("<frozen"):
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


class Context:
    """The second argument of main(event, context)."""

    __slots__ = ("headers", "query", "method", "path")

    def __init__(self, headers, query, method, path):
        self.headers = headers
        self.query = query
        self.method = method
        self.path = path

    def __repr__(self):
        return "Context(method=%r, path=%r, query=%r, headers=%r)" % (
            self.method,
            self.path,
            self.query,
            self.headers,
        )


def _load_error(why):
    _send(_msg({"load_error": _cut(why)}))
    sys.exit(1)


def _takes_two(fn):
    """Whether `fn` accepts a second positional argument (*args counts)."""
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__self__"):
        # A plain function: read its code object rather than import inspect (~80 ms).
        return code.co_argcount >= 2 or bool(code.co_flags & 0x04)
    import inspect  # once, at load time, for bound methods, partials and callable objects

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def _load():
    code_dir = os.path.abspath(os.environ.get("UFAAS_CODE_DIR") or os.getcwd())
    spec = os.environ.get("UFAAS_HANDLER") or ""
    file, _, entry = spec.partition(":")
    file = file or "fn.py"
    path = os.path.join(code_dir, file)
    if not os.path.isfile(path) and os.path.isfile(path + ".py"):
        path += ".py"
    if not os.path.isfile(path):
        _load_error("no handler file: %s is not in %s" % (file, code_dir))
    # The code's directory first, then its vendored packages, so `import x` finds the
    # handler's own modules before anything installed in the image.
    extra = [code_dir] + [
        d for d in (os.path.join(code_dir, "vendor"), os.path.join(code_dir, "lib")) if os.path.isdir(d)
    ]
    sys.path[:0] = extra
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else "ufaas_handler"
    try:
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        # Registered before it runs, as an import would, so that dataclasses, pickle and
        # `import fn` from its own modules find it.
        sys.modules[name] = module
        mspec.loader.exec_module(module)
    except BaseException as e:  # SyntaxError, ImportError, SystemExit at import time, ...
        sys.modules.pop(name, None)
        _load_error("cannot load %s:\n%s" % (file, _trimmed_traceback(e)))
    if entry:
        fn = getattr(module, entry, None)
        if not callable(fn):
            _load_error("no entry point: %s defines no function %s" % (file, entry))
    else:
        for entry in ("fn", "main", "handler"):
            fn = getattr(module, entry, None)
            if callable(fn):
                break
        else:
            _load_error("no entry point: %s defines none of fn, main, handler" % file)
    return fn, entry == "fn", _takes_two(fn)


_loop = None


def _make_loop():
    """The one event loop of the process, made at load for an `async def` entry, else on the
    first awaitable a handler returns (asyncio takes ~50 ms to import)."""
    global _loop
    import asyncio

    _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)


def _run_awaitable(aw):
    """Runs a coroutine to its end on the process's one loop, so that clients and tasks a
    handler keeps between calls stay on the loop they were made on."""
    if _loop is None:
        _make_loop()
    return _loop.run_until_complete(aw)


def _body_bytes(value):
    """The result body of a handler's return value."""
    if value is None:
        return b""
    if isinstance(value, str):
        # Input that was not UTF-8, echoed back, goes out as the bytes it came from.
        return _utf8(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _ResultError("the result could not be serialised as JSON: %s" % e) from None
    return _utf8(text)


class _ResultError(Exception):
    pass


def _max_output():
    try:
        n = int(os.environ.get("UFAAS_MAX_OUTPUT") or "")
    except ValueError:
        return None
    return n if n >= 0 else None


def _finish(rid, tail):
    """Sends the invocation's last log text and `tail` (its result or error) in one write,
    and ends the invocation: later prints go to stderr. A request to the server that a
    thread of the handler has in flight ends first (its reply is the next line read)."""
    global _current
    with _host_lock, _lock:
        head = b""
        if _pending:
            stream = _pending[0]
            text = "".join(_pending[1:])
            del _pending[:]
            head = _log_messages(rid, stream, text)
        _current = None
        _send(head + tail)


def _go_names(headers):
    """Header names as tinyFaaS's handlers see them: its proxy is Go, which writes each name
    canonical (first letter and each after `-` upper, the rest lower: `User-Agent`)."""
    return {"-".join(p[:1].upper() + p[1:].lower() for p in k.split("-")): v for k, v in headers.items()}


def _serve(fn, tinyfaas, two):
    global _current
    cap = _max_output()
    readline = _IN.readline
    loads = json.loads
    a2b = _a2b
    b2a = binascii.b2a_base64
    while True:
        line = readline()
        if not line:
            return
        rid = None
        try:
            req = loads(line)
            rid = req.get("id") if isinstance(req, dict) else None
            if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
                rid = None
                raise ValueError("the request has no integer id")
            b64 = req.get("body")
            body = None if b64 is None else a2b(b64)
            headers = req.get("headers") or {}
        except Exception as e:
            _send(_msg({"id": rid, "error": _cut("malformed request: %s" % e)}))
            continue
        _current = rid
        _faasm["input"] = b"" if body is None else body
        try:
            if tinyfaas:
                text = None if body is None else body.decode("utf-8", "surrogateescape")
                out = fn(text, _go_names(headers)) if two else fn(text)
            else:
                if body is None:
                    event = None
                else:
                    event = body.decode("utf-8", "surrogateescape")
                    try:
                        event = loads(event)
                    except ValueError:
                        pass
                if two:
                    ctx = Context(headers, req.get("query") or {}, req.get("method"), req.get("path"))
                    out = fn(event, ctx)
                else:
                    out = fn(event)
            if hasattr(out, "__await__"):
                out = _run_awaitable(out)
            data = _body_bytes(out)
            if cap is not None and len(data) > cap:
                raise _ResultError("the output is %d bytes, over the cap of %d bytes" % (len(data), cap))
            tail = _msg(
                {"id": rid, "status": None, "headers": {}, "body": b2a(data, newline=False).decode("ascii")}
            )
        except _ResultError as e:
            tail = _msg({"id": rid, "error": _cut(str(e))})
        except (Exception, SystemExit) as e:
            # SystemExit too: a handler calling sys.exit() fails its call, not the runtime.
            tail = _msg({"id": rid, "error": _cut(_trimmed_traceback(e))})
        _finish(rid, tail)


# ---- Faasm ---------------------------------------------------------------------------------
# `pyfaasm.core`, so that functions written for Faasm run unchanged. Input and output are the
# invocation's; state and chained calls are asked of the server on the protocol channel: a
# `{"id", "host": {...}}` message, then the one reply line read from stdin (the server sends
# nothing else while an invocation runs). See src/functions/host.rs.

_faasm = {"input": b"", "output": None, "idx": 0}


def _host(op, **args):
    args["op"] = op
    with _host_lock:
        rid = _current
        if rid is None:
            raise RuntimeError("pyfaasm.core: %s is only possible during an invocation" % op)
        with _lock:
            _flush_locked()  # what was printed before the request comes before it in the logs
            _send(_msg({"id": rid, "host": args}))
        line = _IN.readline()
    if not line:
        raise RuntimeError("pyfaasm.core: the server closed the channel")
    reply = json.loads(line)
    if "host_error" in reply:
        raise RuntimeError("pyfaasm.core: %s: %s" % (op, reply["host_error"]))
    return reply.get("host_reply")


def _b64(data):
    if isinstance(data, str):
        data = _utf8(data)
    return binascii.b2a_base64(bytes(data), newline=False).decode("ascii")


def _faasm_api():
    import types

    def get_input_len():
        return len(_faasm["input"])

    def read_input(input_len=None):
        data = _faasm["input"]
        return data if input_len is None else data[: int(input_len)]

    def get_input():
        return _faasm["input"]

    def write_output(output):
        _faasm["output"] = _utf8(output) if isinstance(output, str) else bytes(output)

    def read_state_size(key):
        return _host("state_size", key=key)["size"]

    def read_state(key, state_len):
        return _a2b(_host("read_state", key=key, offset=0, len=int(state_len))["data"])

    def read_state_offset(key, total_len, offset, offset_len):
        return _a2b(_host("read_state", key=key, offset=int(offset), len=int(offset_len))["data"])

    def write_state(key, value):
        _host("write_state", key=key, data=_b64(value))

    def write_state_offset(key, total_len, offset, value):
        _host("write_state_offset", key=key, total=int(total_len), offset=int(offset), data=_b64(value))

    def push_state(key):
        pass  # writes go straight to the server

    def push_state_partial(key):
        pass

    def pull_state(key, state_len):
        pass  # reads always come from the server

    def chain(func, input_data=b""):
        if isinstance(func, int) and not isinstance(func, bool):
            args = {"idx": func}
        else:
            name = getattr(func, "__name__", func)
            if not isinstance(name, str):
                raise TypeError("chain: give a function of this file (or its name)")
            args = {"entry": name}
        return _host("chain", input=_b64(input_data), **args)["id"]

    def await_call(call_id):
        return _host("await", id=int(call_id))["code"]

    def get_function_idx():
        return _faasm["idx"]

    def register_function(idx, func):
        pass  # calls always run on the server

    def _set_flag(value):
        pass

    core = types.ModuleType("pyfaasm.core")
    core.PYTHON_LOCAL_CHAINING = False
    core.PYTHON_LOCAL_OUTPUT = False
    for f in (get_input_len, read_input, get_input, write_output, read_state_size, read_state,
              read_state_offset, write_state, write_state_offset, push_state, push_state_partial,
              pull_state, chain, await_call, get_function_idx, register_function):
        setattr(core, f.__name__, f)
    # The names of older pyfaasm releases.
    core.set_output = write_output
    core.chain_this_with_input = chain
    core.get_state = read_state
    core.get_state_size = read_state_size
    core.get_state_offset = read_state_offset
    core.set_state = write_state
    core.set_state_offset = write_state_offset
    core.set_local_chaining = _set_flag
    core.set_local_input_output = _set_flag
    pkg = types.ModuleType("pyfaasm")
    pkg.__path__ = []
    pkg.core = core
    sys.modules["pyfaasm"] = pkg
    sys.modules["pyfaasm.core"] = core


def _faasm_entry(main):
    """The handler of a Faasm function: `faasm_main()` (or, for a chained call, the file's
    function it names, given the input), whose return value 0 or None is success; the output
    is what it wrote with write_output."""
    scope = getattr(main, "__globals__", {})

    def run(event, ctx):
        headers = ctx.headers
        name = headers.get("x-faasm-chain")
        idx = headers.get("x-faasm-idx") or "0"
        _faasm["idx"] = int(idx) if idx.isdigit() else 0
        _faasm["output"] = None
        if name:
            fn = scope.get(name)
            if not callable(fn) or getattr(fn, "__module__", None) != scope.get("__name__"):
                raise _ResultError("chained call: the file defines no function %s" % name)
            code = getattr(fn, "__code__", None)
            takes = code is None or code.co_argcount >= 1 or bool(code.co_flags & 0x04)
            args = (_faasm["input"],) if takes else ()
        else:
            fn, name, args = main, "faasm_main", ()
        try:
            ret = fn(*args)
            if hasattr(ret, "__await__"):
                ret = _run_awaitable(ret)
        except SystemExit as e:  # exit(1) fails the call, as in Faasm
            ret = e.code
        out = _faasm["output"] or b""
        if ret is None or (isinstance(ret, int) and ret == 0):
            return out
        said = out.decode("utf-8", "replace")
        if isinstance(ret, int):
            raise _ResultError("%s returned %d%s" % (name, ret, ": " + said if said else ""))
        raise _ResultError("%s exited: %s%s" % (name, ret, ": " + said if said else ""))

    return run


_faasm_api()


def _start():
    fn, tinyfaas, two = _load()
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & 0x80:  # CO_COROUTINE: an `async def` entry
        _make_loop()
    if (os.environ.get("UFAAS_HANDLER") or "").partition(":")[2] == "faasm_main":
        fn, tinyfaas, two = _faasm_entry(fn), False, True
    _send(_msg({"ready": True}))
    _serve(fn, tinyfaas, two)


_start()
