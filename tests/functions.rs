//! Named functions over HTTP against a real server, the real engine and real runtimes
//! (API.md section 5): deploy, invoke in every handler shape, async, pipelines, logs,
//! secrets, errors, and a restart.

mod common;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;

use common::*;

async fn deploy(s: &Server, name: &str, body: Value) -> Reply {
    s.put(&format!("/functions/{name}"), &body).await
}

#[track_caller]
fn deployed(r: &Reply) {
    assert!(
        r.status == 201 || r.status == 200,
        "deploy answered {}: {}",
        r.status,
        r.body
    );
}

async fn invoke(s: &Server, name: &str, body: &str) -> Raw {
    raw(s
        .http
        .post(s.url(&format!("/functions/{name}/invoke")))
        .body(body.to_string()))
    .await
}

#[tokio::test]
async fn python_functions_deploy_invoke_replace_and_log() {
    let s = Server::start().await;
    let r = deploy(
        &s,
        "demo/echo",
        json!({"runtime": "python", "code": "def fn(input):\n    print('got', input)\n    return 'echo: ' + (input or '')\n"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["runtime"], "python");

    let a = invoke(&s, "demo/echo", "hello").await;
    assert_eq!((a.status, a.text.as_str()), (200, "echo: hello"));
    assert!(a.header("content-type").starts_with("text/plain"));
    let id = a.header("x-ufaas-task-id").to_string();
    let task = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(task["function"]["namespace"], "demo");
    assert_eq!(task["function"]["version"], 1);
    assert_eq!(task["result"]["body"], "echo: hello");
    assert_eq!(
        task["stdout"], "got hello\n",
        "prints go to the logs, not the output"
    );

    // Replace: version 2 answers, nothing mixes.
    let r = deploy(
        &s,
        "demo/echo",
        json!({"runtime": "python", "code": "def main(event):\n    return {'v': 2, 'event': event}\n"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let a = invoke(&s, "demo/echo", "{\"n\": 1}").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json(), json!({"v": 2, "event": {"n": 1}}));
    assert_eq!(a.header("content-type"), "application/json");

    let logs = s.get("/functions/demo/echo/logs").await;
    assert_eq!(logs.status, 200);
    let lines = logs.body["lines"].as_array().cloned().unwrap_or_default();
    assert!(
        lines.iter().any(|l| l["line"] == "got hello"
            && l["stream"] == "stdout"
            && l["task_id"] == id.as_str()),
        "{}",
        logs.body
    );
    let listed = s.get("/functions").await;
    assert_eq!(
        listed.body["functions"][0]["name"], "echo",
        "{}",
        listed.body
    );
    let one = s.get("/functions/demo/echo").await;
    assert_eq!(one.body["invocations"]["total"], 2, "{}", one.body);

    assert_eq!(s.delete("/functions/demo/echo").await.status, 204);
    invoke(&s, "demo/echo", "x").await;
    let gone = s.get("/functions/demo/echo").await;
    gone.assert_error(404, "not_found", None);
    s.stop().await;
}

#[tokio::test]
async fn node_shapes_faas_tinyfaas_backstage_and_async() {
    let s = Server::start().await;
    // FAAS: (context, cb), context is the input.
    deployed(
        &deploy(
            &s,
            "faas/sum",
            json!({"runtime": "node", "code": "module.exports = (context, cb) => {\n  let sum = 0\n  for (let num of context.numbers) { sum += num }\n  return cb({sum: sum})\n}\n"}),
        )
        .await,
    );
    let a = invoke(&s, "faas/sum", "{\"numbers\": [6,4,13]}").await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"sum": 23})),
        "{}",
        a.text
    );

    // Backstage: a bare main(req, res) that exports nothing; status and headers reach us.
    deployed(
        &deploy(
            &s,
            "example/hello-world",
            json!({"runtime": "node", "code": "function main(req, res) {\n  const name = (req.body && req.body.name) || \"World\"\n  console.log('called by', req.method)\n  res.status(201).set('X-Said', 'hi').send({ say: `Hello ${name}!` })\n}\n"}),
        )
        .await,
    );
    let a = raw(s
        .http
        .put(s.url("/functions/example/hello-world/invoke"))
        .header("content-type", "application/json"))
    .await;
    assert_eq!(
        (a.status, a.json()),
        (201, json!({"say": "Hello World!"})),
        "{}",
        a.text
    );
    assert_eq!(a.header("x-said"), "hi");
    let a = invoke(&s, "example/hello-world", "{\"name\": \"Pedro\"}").await;
    assert_eq!(a.json(), json!({"say": "Hello Pedro!"}));
    let id = a.header("x-ufaas-task-id").to_string();
    let task = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(task["stdout"], "called by POST\n", "{task}");

    // tinyFaaS (req, res) with a string, asynchronously.
    deployed(
        &deploy(
            &s,
            "tiny/shout",
            json!({"runtime": "node", "code": "module.exports = (req, res) => res.send(String(req.body).toUpperCase())\n"}),
        )
        .await,
    );
    let a = raw(s
        .http
        .post(s.url("/functions/tiny/shout/invoke?async=true"))
        .body("quiet"))
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(a.header("location"), format!("/fn/{id}"));
    let task = s.wait_ended(&id).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(task["result"]["body"], "QUIET");
    s.stop().await;
}

#[tokio::test]
async fn shell_functions_get_the_request_in_their_environment() {
    let s = Server::start().await;
    deployed(
        &deploy(
            &s,
            "sh/echo",
            json!({"runtime": "shell", "code": "#!/bin/sh\necho \"$UFAAS_METHOD $HTTP_X_NAME $(cat)\"\necho logged >&2\n"}),
        )
        .await,
    );
    let a = raw(s
        .http
        .post(s.url("/functions/sh/echo/invoke"))
        .header("x-name", "ann")
        .body("in"))
    .await;
    assert_eq!((a.status, a.text.as_str()), (200, "POST ann in\n"));
    let task = s
        .get(&format!("/fn/{}", a.header("x-ufaas-task-id")))
        .await
        .body;
    assert_eq!(task["stderr"], "logged\n");
    deployed(
        &deploy(
            &s,
            "sh/fail",
            json!({"runtime": "shell", "code": "echo broken >&2; exit 3\n"}),
        )
        .await,
    );
    let a = invoke(&s, "sh/fail", "").await;
    assert_eq!(a.status, 500, "{}", a.text);
    assert_eq!(a.json()["code"], "function_error");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("broken"),
        "{}",
        a.text
    );
    s.stop().await;
}

#[tokio::test]
async fn pipelines_chain_outputs_and_name_the_failing_step() {
    let s = Server::start().await;
    for (name, k) in [("p/x10", 10), ("p/x20", 20)] {
        deployed(
            &deploy(
                &s,
                name,
                json!({"runtime": "node", "code": format!("function main(req, res) {{ res.send({{x: req.body.x * {k}}}) }}\n")}),
            )
            .await,
        );
    }
    deployed(
        &deploy(
            &s,
            "p/boom",
            json!({"runtime": "python", "code": "def main(event):\n    raise ValueError('no good')\n"}),
        )
        .await,
    );
    let r = s
        .post(
            "/functions/pipeline",
            &json!({"steps": ["p/x10", "p/x20"], "input": {"x": 1}}),
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"x": 200})));

    let r = s
        .post(
            "/functions/pipeline",
            &json!({"steps": ["p/x10", "p/boom", "p/x20"], "input": {"x": 1}}),
        )
        .await;
    r.assert_error(422, "step_failed", Some("steps[1]"));
    assert_eq!(r.body["step"], 1);
    assert!(
        r.body["error"].as_str().unwrap_or("").contains("no good"),
        "{}",
        r.body
    );
    let step_task = r.body["task_id"].as_str().unwrap_or_default().to_string();
    let t = s.get(&format!("/fn/{step_task}")).await.body;
    assert_eq!(t["state"], "FAILED");
    let pipe = s
        .get(&format!(
            "/fn/{}",
            r.body["pipeline_id"].as_str().unwrap_or_default()
        ))
        .await
        .body;
    assert_eq!(pipe["state"], "FAILED");
    assert_eq!(pipe["steps"].as_array().map(Vec::len), Some(2), "{pipe}");

    s.post(
        "/functions/pipeline",
        &json!({"steps": ["p/x10", "p/nope"], "input": 1}),
    )
    .await
    .assert_error(404, "not_found", Some("steps"));
    s.post("/functions/pipeline", &json!({"steps": "p/x10"}))
        .await
        .assert_error(400, "invalid_type", Some("steps"));
    s.post("/functions/pipeline", &json!({"steps": ["nope"]}))
        .await
        .assert_error(400, "invalid_value", Some("steps[0]"));
    s.post(
        "/functions/pipeline",
        &json!({"steps": ["p/x10"], "extra": 1}),
    )
    .await
    .assert_error(400, "unknown_field", Some("extra"));
    s.stop().await;
}

#[tokio::test]
async fn errors_timeouts_crashes_and_a_full_queue() {
    let s = Server::start().await;
    invoke(&s, "no/such", "x").await;
    let a = invoke(&s, "no/such", "x").await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (404, json!("not_found"))
    );

    deployed(
        &deploy(
            &s,
            "e/raise",
            json!({"runtime": "python", "code": "def fn(input):\n    raise RuntimeError('bad input ' + input)\n"}),
        )
        .await,
    );
    let a = invoke(&s, "e/raise", "x").await;
    assert_eq!(a.status, 500, "{}", a.text);
    assert_eq!(a.json()["code"], "function_error");
    assert!(a.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("bad input x"));
    assert_eq!(a.json()["task_id"], a.header("x-ufaas-task-id"));

    deployed(
        &deploy(
            &s,
            "e/loop",
            json!({"runtime": "python", "timeout": 1, "code": "import time\ndef fn(input):\n    if input == 'loop':\n        while True: pass\n    return 'fine'\n"}),
        )
        .await,
    );
    let a = invoke(&s, "e/loop", "loop").await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (504, json!("function_timeout")),
        "{}",
        a.text
    );
    let t = s
        .get(&format!("/fn/{}", a.header("x-ufaas-task-id")))
        .await
        .body;
    assert_eq!(t["state"], "EXPIRED");
    let a = invoke(&s, "e/loop", "ok").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (200, "fine"),
        "the next call is fine"
    );

    deployed(
        &deploy(
            &s,
            "e/die",
            json!({"runtime": "python", "code": "import os\ndef fn(input):\n    if input == 'die':\n        os._exit(9)\n    return 'alive'\n"}),
        )
        .await,
    );
    let a = invoke(&s, "e/die", "die").await;
    assert_eq!(a.status, 500, "{}", a.text);
    let a = invoke(&s, "e/die", "again").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (200, "alive"),
        "a crash costs one call"
    );

    // One worker, no queue: a second call while one runs is refused at once.
    deployed(
        &deploy(
            &s,
            "e/slow",
            json!({"runtime": "python", "max_containers": 1, "max_queue": 0, "code": "import time\ndef fn(input):\n    time.sleep(3)\n    return 'slept'\n"}),
        )
        .await,
    );
    let first = {
        let req = s.http.post(s.url("/functions/e/slow/invoke")).body("a");
        tokio::spawn(async move { raw(req).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy = s.get("/functions/e/slow").await.body["containers"]["busy"].clone();
        if busy == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the first call never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = invoke(&s, "e/slow", "b").await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (429, json!("queue_full")),
        "{}",
        a.text
    );
    let first = first.await.expect("first call");
    assert_eq!(first.text, "slept");

    // Code that cannot load is refused at deploy, and nothing is stored.
    let r = deploy(
        &s,
        "e/syntax",
        json!({"runtime": "python", "code": "def fn(input:\n"}),
    )
    .await;
    r.assert_error(400, "invalid_code", Some("code"));
    s.get("/functions/e/syntax")
        .await
        .assert_error(404, "not_found", None);
    s.stop().await;
}

#[tokio::test]
async fn secrets_reach_only_the_function_and_are_sealed_on_disk() {
    let s = Server::start().await;
    let value = "s3cr3t-value-7f1d";
    let r = raw(s.http.put(s.url("/secrets/api-key")).body(value)).await;
    assert_eq!(r.status, 204, "{}", r.text);
    deployed(
        &deploy(
            &s,
            "sec/read",
            json!({"runtime": "python", "secrets": ["api-key"], "code": "def fn(input):\n    return str(len(open('/run/secrets/api-key').read()))\n"}),
        )
        .await,
    );
    let a = invoke(&s, "sec/read", "").await;
    assert_eq!((a.status, a.text.clone()), (200, value.len().to_string()));
    let shown = s.get("/functions/sec/read").await.body.to_string();
    assert!(!shown.contains(value));
    let db = std::fs::read(&s.db).unwrap_or_default();
    let wal = std::fs::read(s.db.with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "the secret is in the database file"
        );
    }
    deploy(
        &s,
        "sec/missing",
        json!({"runtime": "python", "secrets": ["nope"], "code": "def fn(i): return i\n"}),
    )
    .await
    .assert_error(400, "invalid_value", Some("secrets[0]"));
    raw(s.http.put(s.url("/secrets/bad%2Fname")).body("x")).await;
    assert_eq!(s.delete("/secrets/api-key").await.status, 204);
    s.delete("/secrets/api-key")
        .await
        .assert_error(404, "not_found", Some("name"));
    s.stop().await;
}

#[tokio::test]
async fn functions_come_back_after_a_restart() {
    let s = Server::start().await;
    deployed(
        &deploy(
            &s,
            "r/keep",
            json!({"runtime": "python", "code": "def fn(input):\n    return 'still here'\n"}),
        )
        .await,
    );
    let dir = s.stop().await;
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    let s = Server::start_on(cfg, dir).await;
    let a = invoke(&s, "r/keep", "").await;
    assert_eq!((a.status, a.text.as_str()), (200, "still here"));
    let f = s.get("/functions/r/keep").await.body;
    assert_eq!(f["version"], 1);
    s.stop().await;
}

#[tokio::test]
async fn bad_deploy_bodies_are_refused_naming_the_field() {
    let s = Server::start().await;
    // Without `runtime` the code is node's (Backstage Functions' bodies): `x` does not load.
    let r = deploy(&s, "ok/x", json!({"code": "x"})).await;
    r.assert_error(400, "invalid_code", Some("code"));
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("node")),
        "{}",
        r.body
    );
    deploy(&s, "ok/x", json!({"runtime": "cobol", "code": "x"}))
        .await
        .assert_error(400, "invalid_value", Some("runtime"));
    deploy(
        &s,
        "ok/x",
        json!({"runtime": "python", "code": "x", "warm": "1"}),
    )
    .await
    .assert_error(400, "invalid_type", Some("warm"));
    deploy(
        &s,
        "ok/x",
        json!({"runtime": "python", "code": "x", "colour": 1}),
    )
    .await
    .assert_error(400, "unknown_field", Some("colour"));
    deploy(&s, "Bad/x", json!({"runtime": "python", "code": "x"}))
        .await
        .assert_error(400, "invalid_value", Some("namespace"));
    let tar = base64::engine::general_purpose::STANDARD.encode(b"not an archive at all");
    deploy(&s, "ok/x", json!({"runtime": "python", "archive": tar}))
        .await
        .assert_error(400, "invalid_archive", Some("archive"));
    let r = s
        .send(s.http.put(s.url("/functions/ok/x")).body("{not json"))
        .await;
    r.assert_error(400, "invalid_json", None);
    assert_eq!(s.get("/functions").await.body["functions"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn the_request_env_and_logs_reach_the_handler_and_back() {
    let s = Server::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    deployed(
        &deploy(
            &s,
            "ctx/show",
            json!({"runtime": "python", "env": {"GREETING": "hi", "N": 3},
                   "code": "import os\ndef main(event, context):\n    print('line one')\n    print('line two')\n    return {'method': context.method, 'path': context.path, 'query': context.query,\n            'x': context.headers.get('x-thing'), 'auth': context.headers.get('authorization'),\n            'env': [os.environ['GREETING'], os.environ['N']], 'event': event}\n"}),
        )
        .await,
    );
    let a = raw(s
        .http
        .put(s.url("/functions/ctx/show/invoke?a=1&b=two"))
        .header("x-thing", "yes")
        .header("authorization", "Bearer not-for-handlers")
        .body("[1, 2]"))
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.json(),
        json!({"method": "PUT", "path": "/functions/ctx/show/invoke", "query": {"a": "1", "b": "two"},
               "x": "yes", "auth": null, "env": ["hi", "3"], "event": [1, 2]})
    );
    let id = a.header("x-ufaas-task-id").to_string();
    let rec = s.get(&format!("/fn/{id}")).await.body;
    assert!(!rec.to_string().contains("not-for-handlers"), "{rec}");

    // Logs: tail, task, since.
    invoke(&s, "ctx/show", "2").await;
    let logs = s.get("/functions/ctx/show/logs?tail=1").await.body;
    assert_eq!(logs["lines"].as_array().map(Vec::len), Some(1), "{logs}");
    assert_eq!(logs["lines"][0]["line"], "line two");
    let logs = s
        .get(&format!("/functions/ctx/show/logs?task={id}"))
        .await
        .body;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["line"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(lines, ["line one", "line two"]);
    let logs = s
        .get("/functions/ctx/show/logs?since=2999-01-01T00:00:00Z")
        .await
        .body;
    assert_eq!(logs["lines"], json!([]));
    for (q, field) in [
        ("tail=0", "tail"),
        ("since=yesterday", "since"),
        ("task=42", "task"),
    ] {
        s.get(&format!("/functions/ctx/show/logs?{q}"))
            .await
            .assert_error(400, "invalid_query", Some(field));
    }
    s.get("/functions/ctx/nope/logs")
        .await
        .assert_error(404, "not_found", None);

    // An input over the cap is refused before anything runs.
    let big = "x".repeat(100 * 1024);
    let a = invoke(&s, "ctx/show", &big).await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (413, json!("payload_too_large"))
    );
    let a = raw(s
        .http
        .post(s.url("/functions/ctx/show/invoke"))
        .header("x-ufaas-async", "maybe"))
    .await;
    assert_eq!(
        (a.status, a.json()["field"].clone()),
        (400, json!("X-Ufaas-Async"))
    );
    s.stop().await;
}

/// Receives callbacks on loopback: each POST's headers and body.
async fn callback_receiver() -> (
    String,
    tokio::sync::mpsc::Receiver<(String, String, String)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by its length.
            let (head, body) = loop {
                let Ok(n) = sock.read(&mut chunk).await else {
                    break (String::new(), String::new());
                };
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = text[..end].to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (head, text[end + 4..end + 4 + len].to_string());
                    }
                }
            };
            // The first delivery is refused: the server must retry.
            let status = if first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            if !first {
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                let _ = tx
                    .send((header("x-ufaas-task-id"), header("x-ufaas-status"), body))
                    .await;
            }
            first = false;
        }
    });
    (url, rx)
}

#[tokio::test]
async fn async_calls_and_pipelines_with_callbacks() {
    let s = Server::start_with(|c| c.allow_fetch = vec!["127.0.0.1".into()]).await;
    deployed(
        &deploy(
            &s,
            "cb/up",
            json!({"runtime": "python", "code": "def fn(input):\n    return input.upper()\n"}),
        )
        .await,
    );
    let (url, mut rx) = callback_receiver().await;
    let a = raw(s
        .http
        .post(s.url("/functions/cb/up/invoke"))
        .header("x-callback-url", &url)
        .body("called back"))
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap_or_default().to_string();
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .ok()
        .flatten()
        .expect("the callback came (after one refused delivery)");
    assert_eq!(
        got,
        (id.clone(), "200".to_string(), "CALLED BACK".to_string())
    );

    // A callback to a host that is not allowed is refused at the request.
    let s2 = Server::start().await;
    deployed(
        &deploy(
            &s2,
            "cb/up",
            json!({"runtime": "python", "code": "def fn(i): return i\n"}),
        )
        .await,
    );
    let a = raw(s2
        .http
        .post(s2.url("/functions/cb/up/invoke"))
        .header("x-callback-url", "http://127.0.0.1:9/x"))
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (403, json!("uri_not_allowed")),
        "{}",
        a.text
    );
    let a = raw(s2
        .http
        .post(s2.url("/functions/cb/up/invoke"))
        .header("x-callback-url", "ftp://x/"))
    .await;
    assert_eq!(
        (a.status, a.json()["field"].clone()),
        (400, json!("X-Callback-Url"))
    );
    s2.stop().await;

    // An async pipeline is a task listing its steps.
    let r = s
        .post(
            "/functions/pipeline?async=true",
            &json!({"steps": ["cb/up", "cb/up"], "input": "ab"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let pipe = s.wait_ended(&r.id()).await;
    assert_eq!(pipe["state"], "FINISHED", "{pipe}");
    assert_eq!(pipe["result"]["body"], "AB");
    assert_eq!(pipe["steps"].as_array().map(Vec::len), Some(2));
    s.stop().await;
}

#[tokio::test]
async fn an_invocation_is_a_task_with_every_event() {
    let s = Server::start().await;
    deployed(&deploy(&s, "ev/one", json!({"runtime": "shell", "code": "cat\n"})).await);
    let mut ws = s.ws("since=0").await;
    let a = invoke(&s, "ev/one", "x").await;
    assert_eq!(a.status, 200);
    let id = a.header("x-ufaas-task-id").to_string();
    let mut states = Vec::new();
    let mut last_seq = 0;
    while states.last().map(String::as_str) != Some("FINISHED") {
        let ev = next_json(&mut ws, 20).await.expect("an event");
        if ev["task_id"] == id.as_str() {
            let seq = ev["seq"].as_i64().unwrap_or(0);
            assert!(seq > last_seq, "seq order");
            last_seq = seq;
            states.push(ev["state"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(states, ["RECEIVED", "PENDING", "RUNNING", "FINISHED"]);
    let listed = s.get("/fn?name=ev/one").await.body;
    assert_eq!(listed["tasks"][0]["id"], id.as_str(), "{listed}");
    s.put(
        &format!("/fn/{id}"),
        &json!({"task_name": "x", "image": "ufaas/busybox:latest", "cmd_list": ["true"]}),
    )
    .await
    .assert_error(400, "invalid_value", Some("id"));
    s.stop().await;
}
