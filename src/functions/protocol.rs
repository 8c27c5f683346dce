//! The wire protocol between the server and a function's language runtime, and the runtimes
//! themselves (`runtime/python.py`, `runtime/node.js`), which are embedded in the binary and
//! started in the function's container by [`runtime_argv`].
//!
//! A runtime loads the handler once, then serves one invocation at a time. Both directions
//! carry JSON, one object per `\n`-terminated line. The server writes [`Request`]s to the
//! runtime's stdin; the runtime answers on its fd 3, which the start command points at the
//! process's stdout, while fd 1 and fd 2 both become the process's stderr. So nothing a
//! handler or its child processes write at the OS level can enter the protocol: it is the
//! handler's stderr log. What a handler prints at language level (`print`, `console.log`) is
//! captured by the runtime and sent as [`Message::Log`] of the invocation running, a message
//! per completed line (so what was printed survives a kill on timeout); what it prints
//! outside an invocation (while loading, or from a thread or timer after the result) goes to
//! the process's stderr.
//!
//! What the runtime sends, in order:
//! - `{"ready": true}` once the code is loaded and its entry point found, or
//!   `{"load_error": "..."}` and exit status 1;
//! - per request `id`: any number of `{"id", "log": "stdout"|"stderr", "data"}`, then exactly
//!   one of `{"id", "status": n|null, "headers": {..}, "body": base64}` or `{"id", "error"}`;
//! - `{"id": null, "error"}` for a request line it cannot read (and it goes on).
//!
//! During an invocation a runtime may also ask the server for something (Faasm's state and
//! chained calls, see `crate::functions::host`): it sends `{"id", "host": {"op", ...}}` and
//! blocks reading its stdin for the one line `{"host_reply": value}` or `{"host_error":
//! "..."}` (a runtime serves one invocation at a time, so the next line is the reply).
//!
//! On EOF on its stdin a runtime answers what it has been sent and exits 0. A result body
//! over `UFAAS_MAX_OUTPUT` bytes is replaced by an error saying so.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};

use crate::model::Stream;

/// The Python runtime (Python 3.8 or later; standard library only).
pub const PYTHON_SRC: &str = include_str!("runtime/python.py");
/// The Node runtime (Node 18 or later; built-in modules only).
pub const NODE_SRC: &str = include_str!("runtime/node.js");

/// Log data and error texts a runtime sends are at most this many bytes of UTF-8 per message.
pub const TEXT_MAX: usize = 64 * 1024;

/// A function's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Python,
    Node,
}

/// The command that starts `runtime` in a container; the caller adds `UFAAS_CODE_DIR` (also
/// the working directory), `UFAAS_HANDLER` and `UFAAS_MAX_OUTPUT` to its environment.
///
/// The source goes in as an argument rather than a file, so a container needs nothing but the
/// interpreter. `3>&1 1>&2` gives the runtime the process's stdout as fd 3, its protocol
/// channel, and makes fd 1 the stderr; `exec` leaves no shell in between.
pub fn runtime_argv(runtime: Lang) -> Vec<String> {
    let (script, name, src) = match runtime {
        Lang::Python => (
            "exec python3 -u -c \"$1\" 3>&1 1>&2",
            "ufaas-python",
            PYTHON_SRC,
        ),
        Lang::Node => ("exec node -e \"$1\" 3>&1 1>&2", "ufaas-node", NODE_SRC),
    };
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        name.to_owned(),
        src.to_owned(),
    ]
}

/// One invocation, as the runtime reads it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Request {
    /// Chosen by the server; the runtime's messages about this invocation carry it.
    pub id: u64,
    /// The input bytes (sent as base64); `None` when the HTTP request had no body.
    #[serde(serialize_with = "base64_opt")]
    pub body: Option<Vec<u8>>,
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Names in lower case.
    pub headers: BTreeMap<String, String>,
}

impl Request {
    /// The request as one line, `\n` included.
    pub fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

fn base64_opt<S: Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match body {
        Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

/// A message from a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The code is loaded; requests may be sent.
    Ready,
    /// The code could not be loaded (the text says why, with a traceback or stack); the
    /// runtime exits.
    LoadError(String),
    /// Text the handler printed during invocation `id`.
    Log {
        id: u64,
        stream: Stream,
        data: String,
    },
    /// The answer of invocation `id`.
    Result {
        id: u64,
        /// The status the handler set, if any.
        status: Option<u16>,
        /// The headers the handler set.
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    },
    /// Invocation `id` failed (the handler threw, or its result could not be sent); `id` is
    /// `None` for a request line the runtime could not read.
    Error { id: Option<u64>, message: String },
    /// Invocation `id` asks the server for something; the runtime waits for [`host_reply`].
    Host { id: u64, op: serde_json::Value },
}

/// The line answering a [`Message::Host`]: `{"host_reply": value}` or `{"host_error": why}`.
pub fn host_reply(result: &Result<serde_json::Value, String>) -> Vec<u8> {
    let v = match result {
        Ok(v) => serde_json::json!({ "host_reply": v }),
        Err(e) => serde_json::json!({ "host_error": e }),
    };
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Every field any message can have; which are present says which message it is.
#[derive(Deserialize)]
struct Raw {
    ready: Option<bool>,
    load_error: Option<String>,
    id: Option<u64>,
    log: Option<String>,
    data: Option<String>,
    status: Option<u16>,
    headers: Option<BTreeMap<String, String>>,
    body: Option<String>,
    error: Option<String>,
    host: Option<serde_json::Value>,
}

impl Message {
    /// Reads one line (its `\n` may be there or not). An error means the runtime is not
    /// speaking the protocol: the server should treat it as broken.
    pub fn parse(line: &[u8]) -> Result<Message, String> {
        let raw: Raw = serde_json::from_slice(line).map_err(|e| format!("not a message: {e}"))?;
        if raw.ready == Some(true) {
            return Ok(Message::Ready);
        }
        if let Some(why) = raw.load_error {
            return Ok(Message::LoadError(why));
        }
        if let Some(message) = raw.error {
            return Ok(Message::Error {
                id: raw.id,
                message,
            });
        }
        let id = raw.id.ok_or("a message without ready, load_error or id")?;
        if let Some(op) = raw.host {
            return Ok(Message::Host { id, op });
        }
        if let Some(stream) = raw.log {
            let stream = match stream.as_str() {
                "stdout" => Stream::Stdout,
                "stderr" => Stream::Stderr,
                _ => return Err(format!("log of an unknown stream {stream:?}")),
            };
            let data = raw.data.ok_or("a log message without data")?;
            return Ok(Message::Log { id, stream, data });
        }
        let body = raw
            .body
            .ok_or("a message with an id but no log, body or error")?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("a result body that is not base64: {e}"))?;
        if let Some(s) = raw.status {
            // What an HTTP response can carry; the runtimes check it too.
            if !(100..=599).contains(&s) {
                return Err(format!("a result with status {s}"));
            }
        }
        Ok(Message::Result {
            id,
            status: raw.status,
            headers: raw.headers.unwrap_or_default(),
            body,
        })
    }
}

/// The longest line a runtime sends when `UFAAS_MAX_OUTPUT` is `max_output`: a result (base64
/// body, headers of up to 64 KiB, escaped) or a text message (64 KiB, each byte escaped to at
/// most six), plus room for the fields. A longer line means the runtime is broken.
pub fn max_line(max_output: usize) -> usize {
    let result = max_output.div_ceil(3) * 4 + 2 * TEXT_MAX;
    result.max(6 * TEXT_MAX) + 1024
}

#[cfg(test)]
mod tests {
    //! The runtimes run here on the host's `python3` and `node`, started with the production
    //! command: a missing or broken interpreter fails these tests rather than skipping them.

    use super::*;
    use std::path::Path;
    use std::process::{ExitStatus, Stdio};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{Child, ChildStdin, ChildStdout, Command};
    use tokio::task::JoinHandle;

    /// Long, for a loaded 2-core machine; a healthy runtime answers in milliseconds.
    const WAIT: Duration = Duration::from_secs(30);

    /// A directory holding `files` (paths may have directories).
    fn code(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    struct Runtime {
        child: Child,
        stdin: Option<ChildStdin>,
        out: BufReader<ChildStdout>,
        stderr: Option<JoinHandle<String>>,
    }

    impl Runtime {
        fn spawn(lang: Lang, dir: &Path, handler: Option<&str>, max_output: Option<usize>) -> Self {
            let argv = runtime_argv(lang);
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .current_dir(dir)
                .env("UFAAS_CODE_DIR", dir)
                .env_remove("UFAAS_HANDLER")
                .env_remove("UFAAS_MAX_OUTPUT")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(h) = handler {
                cmd.env("UFAAS_HANDLER", h);
            }
            if let Some(m) = max_output {
                cmd.env("UFAAS_MAX_OUTPUT", m.to_string());
            }
            let mut child = cmd.spawn().unwrap();
            let stdin = child.stdin.take();
            let out = BufReader::new(child.stdout.take().unwrap());
            let mut err = child.stderr.take().unwrap();
            let stderr = tokio::spawn(async move {
                let mut s = Vec::new();
                let _ = err.read_to_end(&mut s).await;
                String::from_utf8_lossy(&s).into_owned()
            });
            Runtime {
                child,
                stdin,
                out,
                stderr: Some(stderr),
            }
        }

        /// Starts a runtime and waits for its `ready`.
        async fn start(lang: Lang, dir: &Path, handler: Option<&str>) -> Self {
            Self::start_capped(lang, dir, handler, None).await
        }

        async fn start_capped(
            lang: Lang,
            dir: &Path,
            handler: Option<&str>,
            max_output: Option<usize>,
        ) -> Self {
            let mut rt = Self::spawn(lang, dir, handler, max_output);
            match rt.next().await {
                Message::Ready => rt,
                m => panic!(
                    "expected ready, got {m:?}; stderr: {}",
                    rt.stderr_text().await
                ),
            }
        }

        async fn stderr_text(&mut self) -> String {
            let _ = self.stdin.take();
            match self.stderr.take() {
                Some(h) => tokio::time::timeout(WAIT, h)
                    .await
                    .map(|r| r.unwrap_or_default())
                    .unwrap_or_else(|_| "(stderr still open)".to_owned()),
                None => String::new(),
            }
        }

        async fn next(&mut self) -> Message {
            let mut line = Vec::new();
            let n = match tokio::time::timeout(WAIT, self.out.read_until(b'\n', &mut line)).await {
                Ok(r) => r.unwrap(),
                Err(_) => panic!("no message within {WAIT:?}"),
            };
            if n == 0 {
                panic!(
                    "the runtime closed fd 3; stderr: {}",
                    self.stderr_text().await
                );
            }
            assert!(line.ends_with(b"\n"), "unterminated line {line:?}");
            assert!(
                line.len() <= max_line(1 << 20),
                "a line of {} bytes",
                line.len()
            );
            Message::parse(&line)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
        }

        async fn send_raw(&mut self, line: &[u8]) {
            let stdin = self.stdin.as_mut().unwrap();
            stdin.write_all(line).await.unwrap();
            stdin.flush().await.unwrap();
        }

        async fn send(&mut self, r: &Request) {
            self.send_raw(&r.to_line().unwrap()).await;
        }

        /// The logs and the answer of invocation `id`, checking they are all about `id`.
        async fn answer(&mut self, id: u64) -> (Vec<(Stream, String)>, Message) {
            let mut logs = Vec::new();
            loop {
                match self.next().await {
                    Message::Log {
                        id: i,
                        stream,
                        data,
                    } => {
                        assert_eq!(i, id, "a log of {i} while {id} runs: {data:?}");
                        assert!(
                            data.len() <= TEXT_MAX,
                            "a log message of {} bytes",
                            data.len()
                        );
                        logs.push((stream, data));
                    }
                    m @ (Message::Result { .. } | Message::Error { .. }) => {
                        let i = match &m {
                            Message::Result { id, .. } => Some(*id),
                            Message::Error { id, .. } => *id,
                            _ => None,
                        };
                        assert_eq!(i, Some(id), "{m:?}");
                        return (logs, m);
                    }
                    m => panic!("unexpected {m:?}"),
                }
            }
        }

        async fn call_with(&mut self, r: Request) -> (Vec<(Stream, String)>, Message) {
            let id = r.id;
            self.send(&r).await;
            self.answer(id).await
        }

        /// Invokes with `body`, expecting no logs.
        async fn call(&mut self, id: u64, body: Option<&str>) -> Message {
            let (logs, m) = self.call_with(req(id, body.map(str::as_bytes))).await;
            assert!(logs.is_empty(), "logs {logs:?}");
            m
        }

        /// Closes stdin and waits for the exit.
        async fn finish(mut self) -> (ExitStatus, String) {
            let _ = self.stdin.take();
            let status = tokio::time::timeout(WAIT, self.child.wait())
                .await
                .expect("no exit after EOF")
                .unwrap();
            // Nothing more may come on the protocol channel.
            let mut rest = Vec::new();
            self.out.read_to_end(&mut rest).await.unwrap();
            assert!(
                rest.is_empty(),
                "after EOF: {}",
                String::from_utf8_lossy(&rest)
            );
            let err = self.stderr_text().await;
            (status, err)
        }
    }

    fn req(id: u64, body: Option<&[u8]>) -> Request {
        Request {
            id,
            body: body.map(<[u8]>::to_vec),
            method: "POST".into(),
            path: "/functions/t/f/invoke".into(),
            query: [("k".to_owned(), "v".to_owned())].into(),
            headers: [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-name".to_owned(), "bob".to_owned()),
            ]
            .into(),
        }
    }

    fn body(m: &Message) -> &[u8] {
        match m {
            Message::Result { body, .. } => body,
            m => panic!("expected a result, got {m:?}"),
        }
    }

    fn text(m: &Message) -> &str {
        std::str::from_utf8(body(m)).unwrap()
    }

    fn json(m: &Message) -> serde_json::Value {
        serde_json::from_slice(body(m))
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body(m))))
    }

    fn error(m: &Message) -> &str {
        match m {
            Message::Error { message, .. } => message,
            m => panic!("expected an error, got {m:?}"),
        }
    }

    /// Logs with adjacent pieces of one stream joined (how a write is split is not the point).
    fn runs(logs: &[(Stream, String)]) -> Vec<(Stream, String)> {
        let mut out: Vec<(Stream, String)> = Vec::new();
        for (s, d) in logs {
            match out.last_mut() {
                Some((ls, ld)) if ls == s => ld.push_str(d),
                _ => out.push((*s, d.clone())),
            }
        }
        out
    }

    async fn load_error(lang: Lang, dir: &Path, handler: Option<&str>) -> String {
        let mut rt = Runtime::spawn(lang, dir, handler, None);
        let why = match rt.next().await {
            Message::LoadError(why) => why,
            m => panic!("expected a load error, got {m:?}"),
        };
        let (status, _) = rt.finish().await;
        assert_eq!(status.code(), Some(1), "{why}");
        why
    }

    #[test]
    fn argv_is_sh_then_the_interpreter_on_fd_3() {
        let py = runtime_argv(Lang::Python);
        assert_eq!(
            py[..3],
            ["/bin/sh", "-c", "exec python3 -u -c \"$1\" 3>&1 1>&2"]
        );
        assert_eq!(py[3..], ["ufaas-python", PYTHON_SRC]);
        let node = runtime_argv(Lang::Node);
        assert_eq!(
            node[..3],
            ["/bin/sh", "-c", "exec node -e \"$1\" 3>&1 1>&2"]
        );
        assert_eq!(node[3..], ["ufaas-node", NODE_SRC]);
    }

    #[test]
    fn request_lines_carry_the_body_in_base64() {
        let line = req(7, Some(b"\xff\x00hi")).to_line().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["body"], "/wBoaQ==");
        assert_eq!(v["query"]["k"], "v");
        assert_eq!(v["headers"]["x-name"], "bob");
        let none: serde_json::Value =
            serde_json::from_slice(&req(8, None).to_line().unwrap()).unwrap();
        assert!(none["body"].is_null());
    }

    #[test]
    fn messages_parse_and_broken_ones_are_refused() {
        let p = |s: &str| Message::parse(s.as_bytes());
        assert_eq!(p("{\"ready\":true}\n"), Ok(Message::Ready));
        assert_eq!(
            p(r#"{"load_error":"no"}"#),
            Ok(Message::LoadError("no".into()))
        );
        assert_eq!(
            p(r#"{"id":3,"log":"stderr","data":"x\n"}"#),
            Ok(Message::Log {
                id: 3,
                stream: Stream::Stderr,
                data: "x\n".into()
            })
        );
        assert_eq!(
            p(r#"{"id":3,"status":null,"headers":{},"body":"/wA="}"#),
            Ok(Message::Result {
                id: 3,
                status: None,
                headers: BTreeMap::new(),
                body: vec![0xff, 0]
            })
        );
        assert_eq!(
            p(r#"{"id":4,"status":201,"headers":{"X-A":"b"},"body":""}"#),
            Ok(Message::Result {
                id: 4,
                status: Some(201),
                headers: [("X-A".to_owned(), "b".to_owned())].into(),
                body: vec![]
            })
        );
        assert_eq!(
            p(r#"{"id":5,"host":{"op":"await","id":2}}"#),
            Ok(Message::Host {
                id: 5,
                op: serde_json::json!({"op": "await", "id": 2})
            })
        );
        assert_eq!(
            host_reply(&Err("no".into())),
            b"{\"host_error\":\"no\"}\n".to_vec()
        );
        assert_eq!(
            p(r#"{"id":null,"error":"malformed"}"#),
            Ok(Message::Error {
                id: None,
                message: "malformed".into()
            })
        );
        for bad in [
            "",
            "nonsense",
            "{}",
            r#"{"id":1}"#,
            r#"{"id":1,"log":"stdin","data":"x"}"#,
            r#"{"id":1,"log":"stdout"}"#,
            r#"{"log":"stdout","data":"x"}"#,
            r#"{"id":1,"status":null,"headers":{},"body":"not base64!"}"#,
            r#"{"id":1,"status":99,"headers":{},"body":""}"#,
            r#"{"id":1,"status":70000,"headers":{},"body":""}"#,
            r#"{"id":1,"status":200,"headers":{"a":1},"body":""}"#,
            r#"{"id":-1,"status":null,"headers":{},"body":""}"#,
            r#"{"id":1,"log":"stdout","data":"\ud800"}"#,
        ] {
            assert!(p(bad).is_err(), "{bad} parsed as {:?}", p(bad));
        }
    }

    #[test]
    fn the_longest_line_covers_a_capped_body() {
        // 4 bytes of base64 per 3 of body, with room left for the fields and headers.
        assert!(max_line(3 << 20) >= (4 << 20) + 2 * TEXT_MAX);
        assert!(max_line(0) >= 6 * TEXT_MAX);
    }

    // ---- Python ----

    #[tokio::test]
    async fn py_fn_input_is_text_and_a_str_result_is_sent_as_is() {
        let dir = code(&[(
            "fn.py",
            "def fn(input):\n    if input is None:\n        return None\n    return 'hello ' + input\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let m = rt.call(1, Some("ana")).await;
        assert_eq!(text(&m), "hello ana");
        assert!(
            matches!(m, Message::Result { status: None, ref headers, .. } if headers.is_empty())
        );
        assert_eq!(body(&rt.call(2, None).await), b"");
        assert_eq!(
            text(&rt.call(3, Some("{\"a\": 1}")).await),
            "hello {\"a\": 1}"
        );
        let (status, _) = rt.finish().await;
        assert!(status.success(), "{status}");
    }

    #[tokio::test]
    async fn py_fn_with_headers_and_a_json_result() {
        let dir = code(&[(
            "fn.py",
            // tinyFaaS's shape sees header names as Go writes them (`x-name` is `X-Name`).
            "def fn(input, headers):\n    if input == 'json':\n        return {'h': headers.get('X-Name'), 'n': [1, 2.5, True, None]}\n    return headers['X-Name'] + ':' + input\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        assert_eq!(text(&rt.call(1, Some("hi")).await), "bob:hi");
        assert_eq!(
            json(&rt.call(2, Some("json")).await),
            serde_json::json!({"h": "bob", "n": [1, 2.5, true, null]})
        );
    }

    #[tokio::test]
    async fn py_faasm_main_asks_the_server_on_the_channel_and_reads_its_reply() {
        let dir = code(&[(
            "fn.py",
            "from pyfaasm.core import get_input, read_state, write_output\n\ndef faasm_main():\n    print('asking')\n    try:\n        read_state('missing', 2)\n    except RuntimeError as e:\n        print(e)\n    write_output(get_input() + read_state('k', 3))\n    return 0\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("fn.py:faasm_main")).await;
        rt.send(&req(1, Some(b"in:"))).await;
        let mut asked = Vec::new();
        let mut logs = String::new();
        let answer = loop {
            match rt.next().await {
                Message::Log { id: 1, data, .. } => logs.push_str(&data),
                Message::Host { id: 1, op } => {
                    // What was printed before the request came before it.
                    assert!(logs.contains("asking"), "{logs:?}");
                    let reply = if op["key"] == "missing" {
                        Err("no such key".to_string())
                    } else {
                        Ok(serde_json::json!({"data": "/wBh"}))
                    };
                    asked.push(op);
                    rt.send_raw(&host_reply(&reply)).await;
                }
                m => break m,
            }
        };
        assert_eq!(body(&answer), b"in:\xff\x00a");
        assert_eq!(asked.len(), 2);
        assert_eq!(
            asked[1],
            serde_json::json!({"op": "read_state", "key": "k", "offset": 0, "len": 3})
        );
        assert!(logs.contains("no such key"), "{logs:?}");
        // A non-zero return fails the call, naming the code.
        let dir = code(&[("fn.py", "def faasm_main():\n    return 4\n")]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("fn.py:faasm_main")).await;
        assert_eq!(error(&rt.call(1, None).await), "faasm_main returned 4");
    }

    #[tokio::test]
    async fn py_main_event_is_the_parsed_json_else_the_text() {
        let dir = code(&[(
            "fn.py",
            "def main(event):\n    if event == 'text please':\n        return 'as is'\n    return {'got': event, 'type': type(event).__name__}\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let got = |m: &Message| json(m);
        assert_eq!(
            got(&rt.call(1, Some("{\"a\": [1, 2]}")).await),
            serde_json::json!({"got": {"a": [1, 2]}, "type": "dict"})
        );
        assert_eq!(
            got(&rt.call(2, Some("plain text")).await),
            serde_json::json!({"got": "plain text", "type": "str"})
        );
        assert_eq!(
            got(&rt.call(3, Some("42")).await),
            serde_json::json!({"got": 42, "type": "int"})
        );
        assert_eq!(
            got(&rt.call(4, None).await),
            serde_json::json!({"got": null, "type": "NoneType"})
        );
        assert_eq!(
            got(&rt.call(5, Some("")).await),
            serde_json::json!({"got": "", "type": "str"})
        );
        assert_eq!(text(&rt.call(6, Some("\"text please\"")).await), "as is");
    }

    #[tokio::test]
    async fn py_main_with_context() {
        let dir = code(&[(
            "fn.py",
            "def main(event, context):\n    return {'method': context.method, 'path': context.path, 'query': context.query, 'name': context.headers['x-name'], 'event': event}\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let mut r = req(1, Some(b"[1]"));
        r.method = "PUT".into();
        let (_, m) = rt.call_with(r).await;
        assert_eq!(
            json(&m),
            serde_json::json!({"method": "PUT", "path": "/functions/t/f/invoke", "query": {"k": "v"}, "name": "bob", "event": [1]})
        );
    }

    #[tokio::test]
    async fn py_entry_points_default_order_and_named() {
        let dir = code(&[
            (
                "fn.py",
                "def handler(e):\n    return 'handler'\ndef main(e):\n    return 'main'\ndef spread(*args):\n    return len(args)\n",
            ),
            ("other.py", "def go(event, context):\n    return 'go ' + event\ndef handler(e):\n    return 'other handler'\n"),
        ]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        assert_eq!(text(&rt.call(1, None).await), "main");
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some(":handler")).await;
        assert_eq!(text(&rt.call(1, None).await), "handler");
        // *args counts as taking the context.
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("fn.py:spread")).await;
        assert_eq!(text(&rt.call(1, None).await), "2");
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("other.py:go")).await;
        assert_eq!(text(&rt.call(1, Some("x")).await), "go x");
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("other.py")).await;
        assert_eq!(text(&rt.call(1, None).await), "other handler");
    }

    #[tokio::test]
    async fn py_async_handlers_run_on_one_loop() {
        let dir = code(&[
            (
                "fn.py",
                "import asyncio\nloops = set()\nasync def main(event, context):\n    await asyncio.sleep(0.001)\n    loops.add(id(asyncio.get_running_loop()))\n    return {'n': event['n'] * 2, 'loops': len(loops), 'method': context.method}\n",
            ),
            ("tiny.py", "import asyncio\nasync def fn(input):\n    await asyncio.sleep(0)\n    return input.upper()\n"),
        ]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        for id in 1..=3 {
            assert_eq!(
                json(&rt.call(id, Some("{\"n\": 21}")).await),
                serde_json::json!({"n": 42, "loops": 1, "method": "POST"})
            );
        }
        let mut rt = Runtime::start(Lang::Python, dir.path(), Some("tiny.py")).await;
        assert_eq!(text(&rt.call(1, Some("shout")).await), "SHOUT");
    }

    #[tokio::test]
    async fn py_prints_are_logs_of_their_invocation_before_its_result() {
        let dir = code(&[(
            "fn.py",
            r#"import logging, sys
print("at load")
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
log = logging.getLogger("h")
def main(event):
    print("one", event)
    print("two", file=sys.stderr)
    sys.stdout.write("par")
    sys.stdout.write("tial\n")
    log.info("logged")
    sys.stdout.buffer.write(b"bytes\n")
    print("h\u00e9 \u2603", "no newline", end="")
    return "the body"
"#,
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        for id in [1, 2] {
            let (logs, m) = rt.call_with(req(id, Some(b"\"x\""))).await;
            assert_eq!(text(&m), "the body");
            assert_eq!(
                runs(&logs),
                [
                    (Stream::Stdout, "one x\n".to_owned()),
                    (Stream::Stderr, "two\n".to_owned()),
                    (Stream::Stdout, "partial\n".to_owned()),
                    (Stream::Stderr, "INFO logged\n".to_owned()),
                    (Stream::Stdout, "bytes\nhé ☃ no newline".to_owned()),
                ]
            );
        }
        let (status, stderr) = rt.finish().await;
        assert!(status.success());
        // What it printed while loading goes to the process's stderr, not the protocol.
        assert!(stderr.contains("at load"), "{stderr}");
    }

    #[tokio::test]
    async fn py_a_long_print_is_split_into_64k_messages() {
        let dir = code(&[(
            "fn.py",
            "def main(event):\n    print('\\u00e9\\u2603x' * 40000)\n    return 'done'\n",
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let (logs, m) = rt.call_with(req(1, None)).await;
        assert_eq!(text(&m), "done");
        assert!(logs.len() >= 4, "{} messages", logs.len());
        assert_eq!(runs(&logs), [(Stream::Stdout, "é☃x".repeat(40000) + "\n")]);
    }

    #[tokio::test]
    async fn py_a_raising_handler_answers_an_error_and_the_next_call_works() {
        let dir = code(&[(
            "fn.py",
            r#"import sys
def main(event):
    if event == "raise":
        raise ValueError("kaput")
    if event == "exit":
        sys.exit(3)
    if event == "set":
        return {1, 2}
    if event == "nan":
        return {"x": float("nan")}
    return "fine"
"#,
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let e = rt.call(1, Some("raise")).await;
        let e = error(&e);
        assert!(e.starts_with("Traceback"), "{e}");
        assert!(e.contains("fn.py\", line 4, in main"), "{e}");
        assert!(e.contains("ValueError: kaput"), "{e}");
        // The runtime's own frames are left out.
        assert!(!e.contains("<string>"), "{e}");
        assert_eq!(text(&rt.call(2, Some("ok")).await), "fine");
        assert!(error(&rt.call(3, Some("exit")).await).contains("SystemExit: 3"));
        assert!(error(&rt.call(4, Some("set")).await).contains("could not be serialised"));
        assert!(error(&rt.call(5, Some("nan")).await).contains("could not be serialised"));
        assert_eq!(text(&rt.call(6, Some("ok")).await), "fine");
        let (status, _) = rt.finish().await;
        assert!(status.success());
    }

    #[tokio::test]
    async fn py_os_level_writes_and_child_processes_stay_out_of_the_protocol() {
        let dir = code(&[(
            "fn.py",
            r#"import os, subprocess
def main(event):
    os.write(1, b'{"id": 1, "status": null, "headers": {}, "body": "ZmFrZQ=="}\n')
    os.write(2, b"raw to fd 2\n")
    # cat would eat the next request if the child had the request pipe as stdin.
    subprocess.run(["sh", "-c", "echo child out; echo child err >&2; cat"], check=True)
    os.system("echo from system; cat")
    sneaky = subprocess.run(["sh", "-c", "echo sneaky >&3"], close_fds=False).returncode
    return {"event": event, "fd3": sneaky}
"#,
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        // Both requests are in the pipe while the first call's children run.
        let mut both = req(1, Some(b"1")).to_line().unwrap();
        both.extend(req(2, Some(b"2")).to_line().unwrap());
        rt.send_raw(&both).await;
        for id in [1, 2] {
            let (logs, m) = rt.answer(id).await;
            assert!(logs.is_empty(), "{logs:?}");
            assert_eq!(json(&m)["event"], id);
            assert_ne!(json(&m)["fd3"], 0, "a child could write to fd 3");
        }
        let (status, stderr) = rt.finish().await;
        assert!(status.success());
        for s in [
            "ZmFrZQ==",
            "raw to fd 2",
            "child out",
            "child err",
            "from system",
        ] {
            assert!(stderr.contains(s), "{s} not in {stderr}");
        }
    }

    #[tokio::test]
    async fn py_vendored_packages_import() {
        let dir = code(&[
            ("vendor/greet/__init__.py", "def hi():\n    return 'vendored'\n"),
            ("lib/helper.py", "X = 'lib'\n"),
            ("mylocal.py", "Y = 'local'\n"),
            (
                "fn.py",
                "import greet, helper, mylocal\ndef main(event):\n    return [greet.hi(), helper.X, mylocal.Y]\n",
            ),
        ]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        assert_eq!(
            json(&rt.call(1, None).await),
            serde_json::json!(["vendored", "lib", "local"])
        );
    }

    #[tokio::test]
    async fn py_load_errors() {
        let dir = code(&[
            ("fn.py", "def main(event)\n    return 1\n"),
            ("noentry.py", "def other(event):\n    return 1\n"),
            (
                "badimport.py",
                "import no_such_module_here\ndef main(e):\n    pass\n",
            ),
        ]);
        let why = load_error(Lang::Python, dir.path(), None).await;
        assert!(
            why.contains("SyntaxError") && why.contains("fn.py"),
            "{why}"
        );
        let why = load_error(Lang::Python, dir.path(), Some("noentry.py")).await;
        assert!(why.contains("no entry point"), "{why}");
        let why = load_error(Lang::Python, dir.path(), Some("noentry.py:nope")).await;
        assert!(why.contains("no function nope"), "{why}");
        let why = load_error(Lang::Python, dir.path(), Some("badimport.py")).await;
        assert!(
            why.contains("ModuleNotFoundError") && why.contains("no_such_module_here"),
            "{why}"
        );
        let why = load_error(Lang::Python, dir.path(), Some("missing.py")).await;
        assert!(why.contains("no handler file"), "{why}");
    }

    #[tokio::test]
    async fn py_output_over_the_cap_is_an_error() {
        let dir = code(&[("fn.py", "def fn(input):\n    return 'x' * int(input)\n")]);
        let mut rt = Runtime::start_capped(Lang::Python, dir.path(), None, Some(10)).await;
        assert_eq!(text(&rt.call(1, Some("10")).await), "x".repeat(10));
        assert_eq!(
            error(&rt.call(2, Some("11")).await),
            "the output is 11 bytes, over the cap of 10 bytes"
        );
        assert_eq!(text(&rt.call(3, Some("3")).await), "xxx");
    }

    #[tokio::test]
    async fn py_bytes_and_invalid_utf8_round_trip() {
        let dir = code(&[(
            "fn.py",
            r#"def fn(input):
    if input == "all":
        return bytes(range(256))
    if input == "lone":
        return "a\ud800b"
    print(input)
    return input
"#,
        )]);
        let mut rt = Runtime::start(Lang::Python, dir.path(), None).await;
        let raw = b"\xff\xfe\x00abc\x80";
        let (logs, m) = rt.call_with(req(1, Some(raw))).await;
        assert_eq!(body(&m), raw);
        assert_eq!(
            logs,
            [(Stream::Stdout, "\u{fffd}\u{fffd}\0abc\u{fffd}\n".to_owned())]
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(body(&rt.call(2, Some("all")).await), all);
        // A lone surrogate cannot be UTF-8: its bytes go out as they are, the runtime lives.
        assert_eq!(body(&rt.call(3, Some("lone")).await), b"a\xed\xa0\x80b");
        let (_, m) = rt.call_with(req(4, Some(b""))).await;
        assert_eq!(body(&m), b"");
    }

    #[tokio::test]
    async fn py_malformed_requests_get_errors_and_the_runtime_goes_on() {
        malformed_requests(
            Lang::Python,
            &[("fn.py", "def main(event):\n    return 'fine'\n")],
        )
        .await;
    }

    async fn malformed_requests(lang: Lang, files: &[(&str, &str)]) {
        let dir = code(files);
        let mut rt = Runtime::start(lang, dir.path(), None).await;
        for (line, id) in [
            ("not json\n", None),
            ("[1, 2]\n", None),
            ("{\"body\": null}\n", None),
            ("{\"id\": \"7\", \"body\": null}\n", None),
            ("{\"id\": 5, \"body\": \"@@not base64@@\"}\n", Some(5)),
            ("{\"id\": 6, \"body\": 12}\n", Some(6)),
        ] {
            rt.send_raw(line.as_bytes()).await;
            match rt.next().await {
                Message::Error { id: got, message } => {
                    assert_eq!(got, id, "{line}");
                    assert!(message.starts_with("malformed request"), "{message}");
                }
                m => panic!("{line}: {m:?}"),
            }
        }
        assert_eq!(text(&rt.call(8, None).await), "fine");
        // A last line without its newline is still served before the exit.
        rt.send_raw(b"{\"id\": 9, \"body\": null}").await;
        let _ = rt.stdin.take();
        assert_eq!(text(&rt.answer(9).await.1), "fine");
        let (status, _) = rt.finish().await;
        assert!(status.success());
    }

    /// 1000 calls one after the other on one runtime; prints the mean round trip.
    async fn thousand_calls(lang: Lang, files: &[(&str, &str)]) {
        let dir = code(files);
        let mut rt = Runtime::start(lang, dir.path(), None).await;
        // Warm up, then measure.
        for id in 0..50 {
            assert_eq!(text(&rt.call(id, Some("{\"n\": 1}")).await), "{\"n\":2}");
        }
        let start = Instant::now();
        for id in 1000..2000 {
            let m = rt.call(id, Some("{\"n\": 1}")).await;
            assert_eq!(body(&m), b"{\"n\":2}");
        }
        let each = start.elapsed() / 1000;
        println!("{lang:?}: 1000 sequential invocations, {each:?} per round trip");
        // Generous for a loaded machine; the target is well under a millisecond.
        assert!(each < Duration::from_millis(20), "{each:?} per call");
        let (status, _) = rt.finish().await;
        assert!(status.success());
    }

    #[tokio::test]
    async fn py_thousand_sequential_invocations() {
        thousand_calls(
            Lang::Python,
            &[(
                "fn.py",
                "def main(event):\n    return {'n': event['n'] * 2}\n",
            )],
        )
        .await;
    }

    // ---- Node ----

    /// The example of FAAS's README (seeds/faas.txt), as it is.
    const FAAS_SUM: &str = "// takes an array of numbers and returns the sum
module.exports = (context, cb) => {
let sum
for (let num of context.numbers) {
sum += num
}
// respond to the caller with the sum of numbers
return cb({sum: sum})
}
";

    const PACKAGE_JSON: &str = r#"{"name": "example", "version": "1.0.0", "main": "index.js"}"#;

    #[tokio::test]
    async fn node_faas_context_and_cb() {
        let dir = code(&[("index.js", FAAS_SUM), ("package.json", PACKAGE_JSON)]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        // The README says {"sum":23}, but its `let sum` starts undefined: NaN, which JSON
        // writes as null. The runtime runs the code as Node would.
        assert_eq!(
            json(&rt.call(1, Some("{\"numbers\": [6, 4, 13]}")).await),
            serde_json::json!({"sum": null})
        );
        let fixed = FAAS_SUM.replace("let sum\n", "let sum = 0\n");
        let dir = code(&[("index.js", &fixed), ("package.json", PACKAGE_JSON)]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(
            json(&rt.call(1, Some("{\"numbers\": [6, 4, 13]}")).await),
            serde_json::json!({"sum": 23})
        );
        // The template of `faas init`, from the seed's tar, found through package.json main.
        let dir = code(&[
            (
                "main.js",
                "// Put the function logic below.\n// context contains the input data and the callback returns a result to the caller\nmodule.exports = (context, cb) => {\n  return cb({hello: \"world\"})\n}\n",
            ),
            ("package.json", r#"{"main": "main.js"}"#),
        ]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(text(&rt.call(1, None).await), "{\"hello\":\"world\"}");
    }

    #[tokio::test]
    async fn node_tinyfaas_req_res_send_string() {
        let dir = code(&[(
            "index.js",
            "module.exports = (req, res) => {\n  res.send('hello ' + req.body);\n};\n",
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let m = rt.call(1, Some("ana")).await;
        assert_eq!(text(&m), "hello ana");
        assert!(
            matches!(m, Message::Result { status: None, ref headers, .. } if headers.is_empty())
        );
    }

    #[tokio::test]
    async fn node_backstage_bare_main_with_and_without_a_body() {
        let dir = code(&[(
            "index.js",
            "function main(req, res) {\nconst name = (req.body && req.body.name) || \"World\"\nres.send({ say: `Hello ${name}!` })\n}\n",
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(
            text(&rt.call(1, Some("{\"name\": \"Pedro\"}")).await),
            "{\"say\":\"Hello Pedro!\"}"
        );
        assert_eq!(text(&rt.call(2, None).await), "{\"say\":\"Hello World!\"}");
        assert_eq!(
            text(&rt.call(3, Some("")).await),
            "{\"say\":\"Hello World!\"}"
        );
    }

    #[tokio::test]
    async fn node_async_req_returns_the_result() {
        let dir = code(&[(
            "index.js",
            "module.exports = async (req) => ({ body: req.body, q: req.query.k, m: req.method, p: req.path, h: req.headers['x-name'] });\n",
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(
            json(&rt.call(1, Some("{\"a\": 1}")).await),
            serde_json::json!({"body": {"a": 1}, "q": "v", "m": "POST", "p": "/functions/t/f/invoke", "h": "bob"})
        );
        assert_eq!(json(&rt.call(2, Some("text")).await)["body"], "text");
        let dir = code(&[("index.js", "exports.main = () => undefined;\n")]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(body(&rt.call(1, None).await), b"");
    }

    #[tokio::test]
    async fn node_entry_points() {
        let dir = code(&[
            (
                "index.js",
                "exports.handler = (request, response) => response.send('handler');\nexports.other = async () => [1, 2];\n",
            ),
            ("other.js", "exports.go = function (req) { return 'go ' + req.body; };\n"),
            // A bare main beside exports: the exports come first.
            ("both.js", "function main(req, res) { res.send('bare'); }\nexports.fn = (req, res) => res.send('exported');\n"),
            ("fn.mjs", "export default async (req) => ({ esm: req.body });\nexport function named(req, res) { res.send('named'); }\n"),
        ]);
        for (handler, want) in [
            (None, "handler"),
            (Some(":other"), "[1,2]"),
            (Some("other.js:go"), "go x"),
            (Some("other:go"), "go x"),
            (Some("both.js"), "exported"),
            (Some("both.js:main"), "bare"),
            (Some("fn.mjs"), "{\"esm\":\"x\"}"),
            (Some("fn.mjs:named"), "named"),
        ] {
            let mut rt = Runtime::start(Lang::Node, dir.path(), handler).await;
            assert_eq!(text(&rt.call(1, Some("x")).await), want, "{handler:?}");
        }
    }

    #[tokio::test]
    async fn node_shapes_are_told_apart_by_parameter_names() {
        let dir = code(&[
            ("a.js", "module.exports = function (request, response) { response.send(request.body.v); };\n"),
            ("b.js", "module.exports = (ctx, callback) => callback(ctx.v);\n"),
            ("c.js", "module.exports = (ctx, callback) => callback(null, { got: ctx.v });\n"),
            ("d.js", "module.exports = (ctx, callback) => callback(new Error('an Error alone'));\n"),
            ("d2.js", "module.exports = (ctx, callback) => callback('not an error', 1);\n"),
            ("e.js", "module.exports = {\n  main(req, res) { res.json(req.body.v); },\n};\n"),
            ("f.js", "module.exports = (req, res) => ({ returned: req.body.v });\n"),
            ("g.js", "module.exports = (req, res) => {\n  setTimeout(() => res.send('later'), 5);\n  return res.status(203);\n};\n"),
            ("h.js", "module.exports = /* (req, res) */ function (event, cb) { cb(event.v) };\n"),
            ("i.js", "module.exports = async function main({ body }, res) { res.send(body.v + '!'); };\n"),
        ]);
        for (file, want_status, want) in [
            ("a.js", None, "s"),
            ("b.js", None, "\"s\""),
            ("c.js", None, "{\"got\":\"s\"}"),
            ("e.js", None, "\"s\""),
            ("f.js", None, "{\"returned\":\"s\"}"),
            ("g.js", Some(203), "later"),
            ("h.js", None, "\"s\""),
            ("i.js", None, "s!"),
        ] {
            let mut rt = Runtime::start(Lang::Node, dir.path(), Some(file)).await;
            let m = rt.call(1, Some("{\"v\": \"s\"}")).await;
            assert_eq!(text(&m), want, "{file}");
            assert!(
                matches!(m, Message::Result { status, .. } if status == want_status),
                "{file}"
            );
        }
        let mut rt = Runtime::start(Lang::Node, dir.path(), Some("d.js")).await;
        assert!(error(&rt.call(1, Some("{}")).await).contains("Error: an Error alone"));
        let mut rt = Runtime::start(Lang::Node, dir.path(), Some("d2.js")).await;
        assert!(error(&rt.call(1, Some("{}")).await).contains("thrown: 'not an error'"));
    }

    #[tokio::test]
    async fn node_res_status_set_json_and_friends() {
        let dir = code(&[(
            "index.js",
            r#"module.exports = (req, res) => {
  switch (req.body) {
    case "json": return res.status(201).set('X-A', 'b').json({ created: true });
    case "set": return res.set({ 'X-B': 'c', 'X-C': 1 }).header('X-D', 'd').setHeader('X-E', ['e', 'f']).status(202).end('done');
    case "bytes": return res.send(Buffer.from([0xff, 0, 0x80]));
    case "string-json": return res.json('s');
    case "bad-status": return res.status(99).send('x');
    case "bad-header": return res.set('X-A', 'line\nbreak').send('x');
    case "twice": res.send('first'); res.send('second'); return;
  }
  res.send();
};
"#,
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let m = rt.call(1, Some("json")).await;
        assert_eq!(
            m,
            Message::Result {
                id: 1,
                status: Some(201),
                headers: [("X-A".to_owned(), "b".to_owned())].into(),
                body: b"{\"created\":true}".to_vec(),
            }
        );
        let m = rt.call(2, Some("set")).await;
        let want: BTreeMap<String, String> =
            [("X-B", "c"), ("X-C", "1"), ("X-D", "d"), ("X-E", "e, f")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        assert!(
            matches!(&m, Message::Result { status: Some(202), headers, body, .. } if *headers == want && body == b"done"),
            "{m:?}"
        );
        assert_eq!(body(&rt.call(3, Some("bytes")).await), b"\xff\x00\x80");
        assert_eq!(text(&rt.call(4, Some("string-json")).await), "\"s\"");
        assert!(error(&rt.call(5, Some("bad-status")).await).contains("invalid status code: 99"));
        assert!(error(&rt.call(6, Some("bad-header")).await).contains("invalid value for header"));
        assert_eq!(text(&rt.call(7, Some("twice")).await), "first");
        assert_eq!(body(&rt.call(8, Some("empty")).await), b"");
    }

    #[tokio::test]
    async fn node_prints_are_logs_of_their_invocation_before_its_result() {
        let dir = code(&[(
            "index.js",
            r#"console.log("at load");
module.exports = async (req) => {
  console.log("one", req.body);
  console.error("two");
  process.stdout.write("par");
  process.stdout.write("tial\n");
  console.warn("warned");
  process.stdout.write(Buffer.from("bytes\n"));
  process.stdout.write("h\u00e9 \u2603 no newline");
  await new Promise((r) => setTimeout(r, 5));
  console.info({ an: "object" });
  process.stdout.write("last", () => {});
  return "the body";
};
"#,
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        for id in [1, 2] {
            let (logs, m) = rt.call_with(req(id, Some(b"\"x\""))).await;
            assert_eq!(text(&m), "the body");
            assert_eq!(
                runs(&logs),
                [
                    (Stream::Stdout, "one x\n".to_owned()),
                    (Stream::Stderr, "two\n".to_owned()),
                    (Stream::Stdout, "partial\n".to_owned()),
                    (Stream::Stderr, "warned\n".to_owned()),
                    (
                        Stream::Stdout,
                        "bytes\nhé ☃ no newline{ an: 'object' }\nlast".to_owned()
                    ),
                ]
            );
        }
        let (status, stderr) = rt.finish().await;
        assert!(status.success());
        assert!(stderr.contains("at load"), "{stderr}");
    }

    #[tokio::test]
    async fn node_a_long_print_is_split_into_64k_messages() {
        let dir = code(&[(
            "index.js",
            "module.exports = () => { console.log('\\u00e9\\u2603x'.repeat(40000)); return 'done'; };\n",
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let (logs, m) = rt.call_with(req(1, None)).await;
        assert_eq!(text(&m), "done");
        assert!(logs.len() >= 4, "{} messages", logs.len());
        assert_eq!(runs(&logs), [(Stream::Stdout, "é☃x".repeat(40000) + "\n")]);
    }

    #[tokio::test]
    async fn node_throws_and_rejections_answer_an_error_and_the_next_call_works() {
        let dir = code(&[(
            "index.js",
            r#"module.exports = (req) => {
  switch (req.body) {
    case "throw": throw new TypeError("kaput");
    case "reject": return Promise.reject(new Error("rejected"));
    case "string": throw "a string";
    case "uncaught":
      setTimeout(() => { throw new Error("from a timer"); }, 1);
      return new Promise(() => {});
    case "unhandled":
      Promise.reject(new Error("nobody catches"));
      return new Promise(() => {});
    case "circular": { const o = {}; o.o = o; return o; }
    case "bigint": return { n: 1n };
    case "lone": throw new Error("a\ud800b");
  }
  return "fine";
};
"#,
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let m = rt.call(1, Some("throw")).await;
        let e = error(&m);
        assert!(
            e.starts_with("TypeError: kaput") && e.contains("index.js:3"),
            "{e}"
        );
        for (id, (input, want)) in (2..).zip([
            ("ok", ""),
            ("reject", "Error: rejected"),
            ("string", "thrown: 'a string'"),
            ("uncaught", "Error: from a timer"),
            ("ok", ""),
            ("unhandled", "Error: nobody catches"),
            ("circular", "could not be serialised"),
            ("bigint", "could not be serialised"),
            ("lone", "a\u{fffd}b"),
            ("ok", ""),
        ]) {
            let m = rt.call(id, Some(input)).await;
            if want.is_empty() {
                assert_eq!(text(&m), "fine");
            } else {
                assert!(error(&m).contains(want), "{input}: {m:?}");
            }
        }
        let (status, _) = rt.finish().await;
        assert!(status.success());
    }

    #[tokio::test]
    async fn node_os_level_writes_and_child_processes_stay_out_of_the_protocol() {
        let dir = code(&[(
            "index.js",
            r#"const fs = require("fs");
const cp = require("child_process");
module.exports = (req, res) => {
  fs.writeSync(1, '{"id": 1, "status": null, "headers": {}, "body": "ZmFrZQ=="}\n');
  fs.writeSync(2, "raw to fd 2\n");
  cp.spawnSync("sh", ["-c", "echo child out; echo child err >&2"], { stdio: "inherit" });
  cp.execSync("echo from exec >&2");
  const sneaky = cp.spawnSync("sh", ["-c", "echo sneaky >&3"], { stdio: "inherit" }).status;
  res.send({ event: req.body, fd3: sneaky });
};
"#,
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let mut both = req(1, Some(b"1")).to_line().unwrap();
        both.extend(req(2, Some(b"2")).to_line().unwrap());
        rt.send_raw(&both).await;
        for id in [1, 2] {
            let (logs, m) = rt.answer(id).await;
            // execSync hands the child's stderr to process.stderr.write: a log, rightly.
            assert_eq!(logs, [(Stream::Stderr, "from exec\n".to_owned())]);
            assert_eq!(json(&m)["event"], id);
            assert_ne!(json(&m)["fd3"], 0, "a child could write to fd 3");
        }
        let (status, stderr) = rt.finish().await;
        assert!(status.success());
        for s in ["ZmFrZQ==", "raw to fd 2", "child out", "child err"] {
            assert!(stderr.contains(s), "{s} not in {stderr}");
        }
    }

    #[tokio::test]
    async fn node_vendored_modules_require() {
        let dir = code(&[
            ("node_modules/greet/package.json", r#"{"name": "greet", "main": "main.js"}"#),
            ("node_modules/greet/main.js", "exports.hi = () => 'vendored';\n"),
            ("lib/helper.js", "module.exports = 'lib';\n"),
            (
                "index.js",
                "const greet = require('greet');\nconst helper = require('./lib/helper');\nmodule.exports = async () => [greet.hi(), helper];\n",
            ),
        ]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        assert_eq!(
            json(&rt.call(1, None).await),
            serde_json::json!(["vendored", "lib"])
        );
    }

    #[tokio::test]
    async fn node_load_errors() {
        let dir = code(&[
            ("index.js", "module.exports = (req, res) => {\n"),
            ("noentry.js", "module.exports = { x: 1 };\n"),
            ("throws.js", "throw new Error('at load');\n"),
            ("badrequire.js", "require('no-such-module-here');\n"),
        ]);
        let why = load_error(Lang::Node, dir.path(), None).await;
        assert!(
            why.contains("SyntaxError") && why.contains("index.js"),
            "{why}"
        );
        let why = load_error(Lang::Node, dir.path(), Some("noentry.js")).await;
        assert!(why.contains("no entry point"), "{why}");
        let why = load_error(Lang::Node, dir.path(), Some("noentry.js:x")).await;
        assert!(why.contains("no function x"), "{why}");
        let why = load_error(Lang::Node, dir.path(), Some("throws.js")).await;
        assert!(why.contains("Error: at load"), "{why}");
        let why = load_error(Lang::Node, dir.path(), Some("badrequire.js")).await;
        assert!(why.contains("no-such-module-here"), "{why}");
        let why = load_error(Lang::Node, dir.path(), Some("missing.js")).await;
        assert!(why.contains("no handler file"), "{why}");
        let empty = code(&[]);
        let why = load_error(Lang::Node, empty.path(), None).await;
        assert!(why.contains("no handler file"), "{why}");
    }

    #[tokio::test]
    async fn node_output_over_the_cap_is_an_error() {
        let dir = code(&[(
            "index.js",
            "module.exports = async (req) => 'x'.repeat(Number(req.body));\n",
        )]);
        let mut rt = Runtime::start_capped(Lang::Node, dir.path(), None, Some(10)).await;
        assert_eq!(text(&rt.call(1, Some("10")).await), "x".repeat(10));
        assert_eq!(
            error(&rt.call(2, Some("11")).await),
            "the output is 11 bytes, over the cap of 10 bytes"
        );
        assert_eq!(text(&rt.call(3, Some("3")).await), "xxx");
    }

    #[tokio::test]
    async fn node_bytes_and_invalid_utf8_round_trip() {
        let dir = code(&[(
            "index.js",
            "module.exports = async (req) => req.body === 'all' ? Buffer.from([...Array(256).keys()]) : req.rawBody;\n",
        )]);
        let mut rt = Runtime::start(Lang::Node, dir.path(), None).await;
        let raw = b"\xff\xfe\x00abc\x80";
        let (logs, m) = rt.call_with(req(1, Some(raw))).await;
        assert!(logs.is_empty());
        assert_eq!(body(&m), raw);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(body(&rt.call(2, Some("all")).await), all);
        assert_eq!(body(&rt.call(3, None).await), b"");
    }

    #[tokio::test]
    async fn node_malformed_requests_get_errors_and_the_runtime_goes_on() {
        malformed_requests(
            Lang::Node,
            &[("index.js", "module.exports = () => 'fine';\n")],
        )
        .await;
    }

    #[tokio::test]
    async fn node_thousand_sequential_invocations() {
        thousand_calls(
            Lang::Node,
            &[(
                "index.js",
                "module.exports = async (req) => ({ n: req.body.n * 2 });\n",
            )],
        )
        .await;
    }
}
