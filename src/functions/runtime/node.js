// ufaas Node runtime: loads a named function's code once, then answers invocations read from
// stdin, one JSON object per line, on fd 3 (see src/functions/protocol.rs for the protocol).
// Started as `node -e SRC` with fd 3 = the protocol channel and fd 1, fd 2 = stderr. Runs on
// Node 18 and later; built-in modules only, all required before the handler's code runs.
'use strict';
const fs = require('fs');
const path = require('path');
const util = require('util');
const Module = require('module');
const { pathToFileURL } = require('url');

const OUT = 3;
const LOG_MAX = 64 * 1024;

let current = null; // the invocation running now: {id, res, headers, answered}, else null
const queue = []; // requests read while one runs (the server sends one at a time)

/** Writes one or more whole messages: one write unless the pipe takes less. */
function send(text) {
  let buf = Buffer.from(text, 'utf8');
  while (buf.length > 0) {
    let n;
    try {
      n = fs.writeSync(OUT, buf);
    } catch (e) {
      // A non-blocking pipe that is full: wait for room rather than lose a message.
      if (e.code === 'EAGAIN') continue;
      throw e;
    }
    buf = buf.subarray(n);
  }
}

const msg = (obj) => JSON.stringify(obj) + '\n';

// A lone surrogate in a string would go out as a "\ud800" escape, which is not text and which
// the server refuses: such strings become well-formed (U+FFFD) first.
const LONE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const wellFormed =
  typeof String.prototype.toWellFormed === 'function'
    ? (s) => s.toWellFormed()
    : (s) => s.replace(LONE, '\ufffd');

/** The log messages for `text`, each carrying at most 64 KiB of UTF-8. */
function logMessages(id, stream, text) {
  if (text.length * 3 <= LOG_MAX || Buffer.byteLength(text) <= LOG_MAX) {
    return msg({ id, log: stream, data: wellFormed(text) });
  }
  const data = Buffer.from(text, 'utf8');
  let out = '';
  let start = 0;
  while (start < data.length) {
    let end = Math.min(start + LOG_MAX, data.length);
    // Back off to a character boundary (not a UTF-8 continuation byte).
    while (end < data.length && end > start + 1 && (data[end] & 0xc0) === 0x80) end--;
    out += msg({ id, log: stream, data: data.toString('utf8', start, end) });
    start = end;
  }
  return out;
}

// What the handler prints: console.* and process.stdout/stderr.write. During an invocation
// each write that ends a line becomes a log message of it (so nothing is lost if the
// invocation is then killed on its timeout); a partial line waits for the next newline or
// the end of the invocation. Outside one it goes raw to fd 1 / fd 2 (the process's stderr).
let pendingStream = null;
let pending = '';

function flushLogs() {
  if (pending === '') return;
  const text = pending;
  pending = '';
  if (current !== null) send(logMessages(current.id, pendingStream, text));
}

function capture(stream, fd) {
  return function write(chunk, encoding, cb) {
    if (typeof encoding === 'function') {
      cb = encoding;
      encoding = undefined;
    }
    let text;
    if (typeof chunk === 'string') text = chunk;
    else if (chunk instanceof Uint8Array) text = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
    else text = String(chunk);
    if (text !== '') {
      if (current === null) {
        try {
          fs.writeSync(fd, text);
        } catch (_) {
          // Nowhere left to say it.
        }
      } else {
        if (pendingStream !== stream) flushLogs();
        pendingStream = stream;
        pending += text;
        if (text.charCodeAt(text.length - 1) === 10 || pending.length > LOG_MAX) flushLogs();
      }
    }
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  };
}
process.stdout.write = capture('stdout', 1);
process.stderr.write = capture('stderr', 2);

/** The text of an error: its stack, cut to at most 64 KiB of UTF-8 (its head and its tail)
 * so that a huge message does not make a huge line. */
function describe(err) {
  let text;
  try {
    text = err instanceof Error ? err.stack || String(err) : 'thrown: ' + util.inspect(err);
  } catch (e) {
    text = 'thrown: an unprintable value';
  }
  return cut(text);
}

function cut(text) {
  if (text.length * 3 <= LOG_MAX) return wellFormed(text);
  const data = Buffer.from(text, 'utf8');
  if (data.length <= LOG_MAX) return wellFormed(text);
  const head = data.toString('utf8', 0, 8 * 1024);
  const tail = data.toString('utf8', data.length - (LOG_MAX - 9 * 1024));
  return head + '\n[... ' + (data.length - 8 * 1024 - (LOG_MAX - 9 * 1024)) + ' bytes cut ...]\n' + tail;
}

function loadError(why) {
  send(msg({ load_error: cut(why) }));
  process.exit(1);
}

/** Loads `filename` as a CommonJS module, and also finds a top-level `main` it declares
 * without exporting (Backstage Functions' bare `function main(req, res)`). */
function loadCommonJS(filename) {
  let src = fs.readFileSync(filename, 'utf8');
  if (src.charCodeAt(0) === 0xfeff) src = src.slice(1);
  const m = new Module(filename, null);
  m.filename = filename;
  m.paths = Module._nodeModulePaths(path.dirname(filename));
  Module._cache[filename] = m;
  // The hook goes on `module`, not `module.exports`, so the handler's exports are not touched.
  src += "\n;module.__ufaasBare = typeof main === 'function' ? main : undefined;\n";
  try {
    m._compile(src, filename);
  } catch (e) {
    delete Module._cache[filename];
    throw e;
  }
  m.loaded = true;
  return { exports: m.exports, bare: m.__ufaasBare };
}

function isESM(filename, codeDir) {
  if (filename.endsWith('.mjs')) return true;
  if (!filename.endsWith('.js')) return false;
  try {
    return JSON.parse(fs.readFileSync(path.join(codeDir, 'package.json'), 'utf8')).type === 'module';
  } catch (_) {
    return false;
  }
}

async function load() {
  const codeDir = path.resolve(process.env.UFAAS_CODE_DIR || process.cwd());
  const spec = process.env.UFAAS_HANDLER || '';
  const colon = spec.indexOf(':');
  const file = colon < 0 ? spec : spec.slice(0, colon);
  const name = colon < 0 ? '' : spec.slice(colon + 1);
  let filename;
  try {
    // The code dir itself resolves to package.json `main` or index.js.
    filename = Module._resolveFilename(file ? path.resolve(codeDir, file) : codeDir, null);
  } catch (e) {
    loadError('no handler file: ' + (file || 'package.json main or index.js') + ' is not in ' + codeDir);
  }
  let exports;
  let bare;
  try {
    if (isESM(filename, codeDir)) {
      exports = await import(pathToFileURL(filename).href);
    } else if (filename.endsWith('.js') || filename.endsWith('.cjs')) {
      ({ exports, bare } = loadCommonJS(filename));
    } else {
      exports = require(filename);
    }
  } catch (e) {
    loadError('cannot load ' + path.relative(codeDir, filename) + ':\n' + describe(e));
  }
  let fn;
  let self = exports;
  if (name) {
    fn = exports != null ? exports[name] : undefined;
    if (typeof fn !== 'function' && name === 'main') fn = bare;
    if (typeof fn !== 'function') loadError('no entry point: ' + path.relative(codeDir, filename) + ' exports no function ' + name);
  } else if (typeof exports === 'function') {
    fn = exports;
    self = undefined;
  } else {
    const e = exports || {};
    fn = [e.main, e.handler, e.fn, e.default].find((f) => typeof f === 'function');
    if (!fn) {
      fn = bare;
      self = undefined;
    }
    if (typeof fn !== 'function') {
      loadError(
        'no entry point: ' + path.relative(codeDir, filename) +
          ' exports no function (module.exports, main, handler, fn) and declares no function main',
      );
    }
  }
  return { fn, self, shape: shapeOf(fn) };
}

/** The parameter names of `fn`, read from its source ('' for a destructured one). */
function paramNames(fn) {
  let src = Function.prototype.toString.call(fn);
  src = src.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
  let list;
  const open = src.indexOf('(');
  const arrow = src.indexOf('=>');
  if (arrow >= 0 && (open < 0 || arrow < open)) {
    // `x => ...` or `async x => ...`
    list = src.slice(0, arrow).replace(/^\s*async\s+/, '');
  } else if (open >= 0) {
    let depth = 0;
    let i = open;
    for (; i < src.length; i++) {
      const c = src[i];
      if (c === '(' || c === '[' || c === '{') depth++;
      else if (c === ')' || c === ']' || c === '}') {
        depth--;
        if (depth === 0) break;
      }
    }
    list = src.slice(open + 1, i);
  } else {
    return [];
  }
  const names = [];
  let depth = 0;
  let part = '';
  for (const c of list) {
    if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') depth--;
    if (c === ',' && depth === 0) {
      names.push(part);
      part = '';
    } else part += c;
  }
  if (part.trim() !== '') names.push(part);
  return names.map((p) => {
    const m = /^\s*(?:\.\.\.)?\s*([A-Za-z_$][\w$]*)/.exec(p);
    return m ? m[1] : '';
  });
}

/** 'req' for (req, res), 'context' for FAAS's (context, cb), 'one' for (req) => result. */
function shapeOf(fn) {
  const names = paramNames(fn);
  if (Math.max(fn.length, names.length) < 2) return 'one';
  if (/^(req|request)$/.test(names[0]) || /^(res|response|resp)$/.test(names[1] || '')) return 'req';
  return 'context';
}

/** The result body of a value: strings as UTF-8, bytes as they are, the rest as JSON. */
function bodyOf(value, asJSON) {
  if (value === undefined) return Buffer.alloc(0);
  if (!asJSON) {
    if (typeof value === 'string') return Buffer.from(value, 'utf8');
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    if (value instanceof ArrayBuffer) return Buffer.from(value);
  }
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new ResultError('the result could not be serialised as JSON: ' + e.message);
  }
  if (text === undefined) throw new ResultError('the result could not be serialised as JSON: ' + typeof value);
  return Buffer.from(text, 'utf8');
}

class ResultError extends Error {}

const maxOutput = (() => {
  const n = Number(process.env.UFAAS_MAX_OUTPUT);
  return process.env.UFAAS_MAX_OUTPUT && Number.isInteger(n) && n >= 0 ? n : null;
})();

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The `res` (and FAAS's `cb`) of one invocation: one callable with express's methods. */
function makeRes(inv) {
  const res = function cb(...args) {
    // cb(result), as FAAS; also cb(err, result), as Node callbacks and AWS Lambda; and an
    // Error alone is a failure (as JSON it would be an empty object).
    if (args.length >= 2) {
      if (args[0] != null) fail(inv, args[0]);
      else answer(inv, args[1], true);
    } else if (args[0] instanceof Error) fail(inv, args[0]);
    else answer(inv, args[0], true);
  };
  const headers = inv.headers;
  let headerBytes = 0;
  res.statusCode = undefined;
  res.status = (n) => {
    if (!Number.isInteger(n) || n < 100 || n > 599) throw new RangeError('invalid status code: ' + util.inspect(n));
    res.statusCode = n;
    return res;
  };
  res.set = (name, value) => {
    if (name !== null && typeof name === 'object') {
      for (const k of Object.keys(name)) res.set(k, name[k]);
      return res;
    }
    name = String(name);
    value = Array.isArray(value) ? value.join(', ') : String(value);
    if (!HEADER_NAME.test(name)) throw new TypeError('invalid header name: ' + util.inspect(name));
    // Visible ASCII, space and tab: what an HTTP header value can carry as text.
    if (!/^[\t\x20-\x7e]*$/.test(value)) throw new TypeError('invalid value for header ' + name);
    headerBytes += name.length + value.length;
    if (headerBytes > LOG_MAX) throw new RangeError('the headers set are over 64 KiB');
    headers[name] = value;
    return res;
  };
  res.header = res.set;
  res.setHeader = res.set;
  res.type = (t) => res.set('Content-Type', t);
  res.get = (name) => {
    const lower = String(name).toLowerCase();
    const k = Object.keys(headers).find((h) => h.toLowerCase() === lower);
    return k === undefined ? undefined : headers[k];
  };
  res.getHeader = res.get;
  res.send = (x) => (answer(inv, x === null ? undefined : x, false), res);
  res.json = (x) => (answer(inv, x, true), res);
  res.end = (x) => (answer(inv, x, false), res);
  res.sendStatus = (n) => (res.status(n), answer(inv, undefined, false), res);
  return res;
}

/** Sends the invocation's remaining logs and `tail` in one write and ends it. */
function finish(inv, tail) {
  if (inv.answered) return;
  inv.answered = true;
  let head = '';
  if (pending !== '' && current === inv) {
    head = logMessages(inv.id, pendingStream, pending);
    pending = '';
  }
  if (current === inv) current = null;
  send(head + tail);
  setImmediate(next);
}

function answer(inv, value, asJSON) {
  if (inv.answered) return;
  let tail;
  try {
    const status = inv.res ? inv.res.statusCode : undefined;
    if (status !== undefined && (!Number.isInteger(status) || status < 100 || status > 599)) {
      throw new ResultError('invalid status code: ' + util.inspect(status));
    }
    const body = bodyOf(value, asJSON);
    if (maxOutput !== null && body.length > maxOutput) {
      throw new ResultError('the output is ' + body.length + ' bytes, over the cap of ' + maxOutput + ' bytes');
    }
    tail = msg({
      id: inv.id,
      status: status === undefined ? null : status,
      headers: inv.headers,
      body: body.toString('base64'),
    });
  } catch (e) {
    tail = msg({ id: inv.id, error: e instanceof ResultError ? e.message : describe(e) });
  }
  finish(inv, tail);
}

function fail(inv, err) {
  if (inv.answered) {
    // The call has its answer already; the error still goes to the logs.
    process.stderr.write('after the answer: ' + describe(err) + '\n');
    return;
  }
  finish(inv, msg({ id: inv.id, error: describe(err) }));
}

// An error nobody catches while an invocation runs answers that invocation rather than
// ending the runtime (Node's default), which would cost every later call a container start.
process.on('uncaughtException', (err) => {
  if (current !== null) fail(current, err);
  else process.stderr.write('uncaught: ' + describe(err) + '\n');
});
process.on('unhandledRejection', (err) => {
  if (current !== null) fail(current, err);
  else process.stderr.write('unhandled rejection: ' + describe(err) + '\n');
});

let handler;

function parseBody(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

function invoke(line) {
  let req;
  let id = null;
  let raw;
  try {
    req = JSON.parse(line);
    if (req !== null && typeof req === 'object' && Number.isSafeInteger(req.id) && req.id >= 0) id = req.id;
    else throw new Error('the request has no integer id');
    if (req.body != null) {
      if (typeof req.body !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(req.body) || req.body.length % 4 !== 0) {
        throw new Error('body is not base64');
      }
      raw = Buffer.from(req.body, 'base64');
    }
  } catch (e) {
    send(msg({ id, error: cut('malformed request: ' + e.message) }));
    return false;
  }
  const inv = { id, res: null, headers: {}, answered: false };
  current = inv;
  const { fn, self, shape } = handler;
  const text = raw === undefined ? undefined : raw.toString('utf8');
  const body = text === undefined ? undefined : parseBody(text);
  const request = {
    body,
    rawBody: raw,
    headers: req.headers || {},
    query: req.query || {},
    method: req.method,
    path: req.path,
  };
  let ret;
  try {
    if (shape === 'one') {
      ret = fn.call(self, request);
    } else {
      inv.res = makeRes(inv);
      ret = fn.call(self, shape === 'req' ? request : body, inv.res);
    }
  } catch (e) {
    fail(inv, e);
    return true;
  }
  // A two-argument handler answers through res / cb; what it returns counts only when it is
  // a value (not undefined, not res itself, which express's chainable calls return).
  const settle = (v) => {
    if (shape === 'one') answer(inv, v, false);
    else if (v !== undefined && v !== inv.res) answer(inv, v, false);
  };
  if (ret !== null && typeof ret === 'object' && typeof ret.then === 'function') {
    ret.then(settle, (e) => fail(inv, e));
  } else {
    settle(ret);
  }
  return true;
}

let stdinEnded = false;

/** Starts the next queued request when none runs; at EOF with nothing left, exits. */
function next() {
  while (current === null && queue.length > 0) invoke(queue.shift());
  if (stdinEnded && current === null) process.exit(0);
}

function serve() {
  const chunks = [];
  process.stdin.on('data', (chunk) => {
    let start = 0;
    let nl;
    while ((nl = chunk.indexOf(10, start)) >= 0) {
      let line = chunk.subarray(start, nl);
      if (chunks.length > 0) {
        chunks.push(line);
        line = Buffer.concat(chunks);
        chunks.length = 0;
      }
      queue.push(line.toString('utf8'));
      start = nl + 1;
    }
    if (start < chunk.length) chunks.push(chunk.subarray(start));
    next();
  });
  process.stdin.on('end', () => {
    if (chunks.length > 0) queue.push(Buffer.concat(chunks).toString('utf8'));
    chunks.length = 0;
    // The call running (if any) and those queued still get their answers.
    stdinEnded = true;
    next();
  });
}

load().then(
  (h) => {
    handler = h;
    send(msg({ ready: true }));
    serve();
  },
  (e) => loadError('cannot load: ' + describe(e)),
);
