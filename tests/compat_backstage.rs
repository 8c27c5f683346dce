//! Backstage Functions' API (API.md section 6, `seeds/backstage-functions.txt`) against a
//! real server and real node containers. The document's curl commands run as written, with
//! the real `curl` through `sh`, only `localhost:8100` replaced by the test server's address;
//! then the env routes, `/run`'s methods, what `res` sets, the logs, and the bad inputs.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use common::*;

/// What `curl -i` printed: the status, the headers (lower-case names) and the body.
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `command` (a shell command line, as the document writes it) with the document's
/// server address replaced by `s`'s.
async fn curl(s: &Server, command: &str) -> Curl {
    let line = command.replace("http://localhost:8100", &s.base);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(&line);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("curl ended within 120 s")
        .expect("sh and curl run");
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curl {
        status,
        headers,
        body: body.to_string(),
    }
}

fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// The document's commands, verbatim.
const SET: &str = r#"curl -i -X PUT http://localhost:8100/functions/example/hello-world \
-H 'content-type: application/json' \
-d '{"code":"function main(req, res) {\n const name = (req.body && req.body.name) || \"World\"\n res.send({ say: `Hello ${name}! Nice meeting you...` })\n}\n"}'"#;
const DELETE: &str = r#"curl -i -X DELETE http://localhost:8100/functions/example/hello-world \
-H 'content-type: application/json'"#;
const RUN: &str = r#"curl -i -X PUT http://localhost:8100/functions/example/hello-world/run \
-H 'content-type: application/json'"#;
const RUN_PEDRO: &str = r#"curl -i -X PUT http://localhost:8100/functions/example/hello-world/run \
-H 'content-type: application/json' \
-d '{"name": "Pedro"}'"#;
/// The document's pipeline command, with the `\` its second line lacks (without it the
/// shell would run `-d '{"x": 1}'` as a command of its own).
const PIPELINE: &str = r#"curl -g -i -X PUT 'http://localhost:8100/functions/pipeline?steps[0]=namespace/function0&steps[1]=namespace/function1' \
-H 'content-type: application/json' \
-d '{"x": 1}'"#;

/// The document's sample function.
const HELLO: &str = "function main(req, res) {\n  const name = (req.body && req.body.name) || \"World\"\n  res.send({ say: `Hello ${name}!` })\n}\n";
/// The document's Function0, as printed (with a stray `\` after its first `{`).
const FUNCTION0_AS_PRINTED: &str =
    "function main(req, res) {\\\n  res.send({x: req.body.x * 10});\n}\n";
const FUNCTION0: &str = "function main(req, res) {\n  res.send({x: req.body.x * 10});\n}\n";
const FUNCTION1: &str = "function main(req, res) {\n  res.send({x: req.body.x * 20});\n}\n";

#[tokio::test]
async fn the_documents_commands_give_its_answers() {
    let s = Server::start().await;
    let code = "function main(req, res) {\n const name = (req.body && req.body.name) || \"World\"\n res.send({ say: `Hello ${name}! Nice meeting you...` })\n}\n";

    // Set: created, then replaced.
    let set = curl(&s, SET).await;
    assert_eq!(set.status, 201, "{}", set.body);
    let f = set.json();
    assert_eq!(f["id"], "example/hello-world");
    assert_eq!(f["code"], code);
    assert_eq!(f["hash"], sha1_hex(code));
    assert_eq!(f["runtime"], "node");
    let etag = set.header("etag").expect("ETag").to_string();
    let again = curl(&s, SET).await;
    assert_eq!(
        (again.status, again.json()["version"].clone()),
        (200, json!(2))
    );
    assert_ne!(
        again.header("etag"),
        Some(etag.as_str()),
        "a new version, a new ETag"
    );
    let got = s
        .http
        .get(s.url("/functions/example/hello-world"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        got.headers().get("etag").and_then(|v| v.to_str().ok()),
        again.header("etag")
    );
    let got: Value = got.json().await.expect("JSON");
    assert_eq!(
        (got["id"].clone(), got["hash"].clone()),
        (f["id"].clone(), f["hash"].clone())
    );

    // Run, without a body and with one (this code says a little more than the document's
    // printed answer, which is the sample function's: see below).
    let run = curl(&s, RUN).await;
    assert_eq!(run.status, 200, "{}", run.body);
    assert!(run
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(
        run.json(),
        json!({"say": "Hello World! Nice meeting you..."})
    );
    assert!(run.header("x-ufaas-task-id").is_some());
    let pedro = curl(&s, RUN_PEDRO).await;
    assert_eq!(
        pedro.json(),
        json!({"say": "Hello Pedro! Nice meeting you..."})
    );

    // Delete; then it is gone.
    let del = curl(&s, DELETE).await;
    assert_eq!(del.status, 204, "{}", del.body);
    assert_eq!(curl(&s, RUN).await.status, 404);
    assert_eq!(curl(&s, DELETE).await.status, 404);

    // The sample function gives the printed answers exactly.
    let r = s
        .put("/functions/example/hello-world", &json!({"code": HELLO}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = curl(&s, RUN).await;
    assert_eq!(
        (run.status, run.body.as_str()),
        (200, r#"{"say":"Hello World!"}"#)
    );
    assert_eq!(run.header("content-length"), Some("22"));
    let pedro = curl(&s, RUN_PEDRO).await;
    assert_eq!(
        (pedro.status, pedro.body.as_str()),
        (200, r#"{"say":"Hello Pedro!"}"#)
    );

    // The pipeline: Function0 as printed does not parse, and is refused at deploy.
    let r = s
        .put(
            "/functions/namespace/function0",
            &json!({"code": FUNCTION0_AS_PRINTED}),
        )
        .await;
    r.assert_error(400, "invalid_code", Some("code"));
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("SyntaxError")),
        "{}",
        r.body
    );
    for (name, code) in [("function0", FUNCTION0), ("function1", FUNCTION1)] {
        let r = s
            .put(
                &format!("/functions/namespace/{name}"),
                &json!({"code": code}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let p = curl(&s, PIPELINE).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.json(), json!({"x": 200}));
    // A task, with its steps.
    let id = p.header("x-ufaas-task-id").expect("task id").to_string();
    let t = s.wait_ended(&id).await;
    assert_eq!(t["steps"].as_array().map(Vec::len), Some(2), "{t}");
    s.stop().await;
}

#[tokio::test]
async fn env_run_and_what_res_sets_reach_the_caller() {
    let s = Server::start().await;
    let code = "function main(req, res) {\n  console.log('called with', req.method, JSON.stringify(req.body))\n  res.status(202).set('X-Who', process.env.WHO || 'nobody').set({'X-A': '1', 'X-B': '2'})\n  res.send({who: process.env.WHO || null, greeting: process.env.GREETING})\n}\n";
    let r = s
        .put(
            "/functions/bs/envy",
            &json!({"code": code, "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["env"], json!({"GREETING": "hi"}));
    let first_etag = s
        .http
        .get(s.url("/functions/bs/envy"))
        .send()
        .await
        .expect("GET")
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let call = |method: reqwest::Method, body: &'static str| {
        let req = s.http.request(method, s.url("/functions/bs/envy/run"));
        async move {
            let resp = req.body(body).send().await.expect("run");
            let status = resp.status().as_u16();
            let h = resp.headers().clone();
            let header = |n: &str| {
                h.get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let got = (
                status,
                header("x-who"),
                header("x-a"),
                header("x-b"),
                header("x-ufaas-task-id"),
            );
            (got, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for m in [
        reqwest::Method::PUT,
        reqwest::Method::POST,
        reqwest::Method::GET,
    ] {
        let ((status, who, a, b, task), body) = call(m.clone(), "").await;
        assert_eq!(
            (status, who.as_str(), a.as_str(), b.as_str()),
            (202, "nobody", "1", "2"),
            "{m}"
        );
        assert_eq!(body, json!({"who": null, "greeting": "hi"}), "{m}");
        assert!(!task.is_empty());
    }

    // Set a variable: a new version, which the next call sees.
    let set = s
        .send(
            s.http
                .put(s.url("/functions/bs/envy/env/WHO"))
                .body(r#""Ana""#),
        )
        .await;
    assert_eq!(set.status, 204, "{}", set.body);
    let f = s.get("/functions/bs/envy").await;
    assert_eq!(f.body["version"], 2);
    assert_eq!(f.body["env"], json!({"GREETING": "hi", "WHO": "Ana"}));
    assert_eq!(f.body["code"], code, "the code is kept");
    let etag = s
        .http
        .get(s.url("/functions/bs/envy"))
        .send()
        .await
        .expect("GET")
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(
        etag.is_some() && etag != first_etag,
        "{etag:?} vs {first_etag:?}"
    );
    let ((_, who, ..), body) = call(reqwest::Method::POST, r#"{"n": 1}"#).await;
    assert_eq!(who, "Ana");
    assert_eq!(body, json!({"who": "Ana", "greeting": "hi"}));

    // Remove it: gone from the next call; removing it again is 404.
    let del = s.delete("/functions/bs/envy/env/WHO").await;
    assert_eq!(del.status, 204, "{}", del.body);
    let ((_, who, ..), body) = call(reqwest::Method::GET, "").await;
    assert_eq!((who.as_str(), body["who"].clone()), ("nobody", Value::Null));
    s.delete("/functions/bs/envy/env/WHO")
        .await
        .assert_error(404, "not_found", Some("env.WHO"));
    // The last variable removed leaves no `env`.
    assert_eq!(
        s.delete("/functions/bs/envy/env/GREETING").await.status,
        204
    );
    assert_eq!(s.get("/functions/bs/envy").await.body["env"], json!({}));

    // What it printed is in its logs.
    let logs = s.get("/functions/bs/envy/logs").await;
    let lines: Vec<&str> = logs.body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(lines.contains(&r#"called with POST {"n":1}"#), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("called with GET")),
        "{lines:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_inputs_are_refused() {
    let s = Server::start().await;
    let r = s
        .put(
            "/functions/bs/ok",
            &json!({"code": "function main(req, res) { res.send(req.body) }"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Env: the body must be a JSON string, the name an environment name, the function known.
    let put_env = |path: &str, body: &'static str| s.send(s.http.put(s.url(path)).body(body));
    put_env("/functions/bs/ok/env/A", "not json")
        .await
        .assert_error(400, "invalid_json", None);
    put_env("/functions/bs/ok/env/A", "")
        .await
        .assert_error(400, "invalid_json", None);
    put_env("/functions/bs/ok/env/A", "3")
        .await
        .assert_error(400, "invalid_type", Some("env.A"));
    put_env("/functions/bs/ok/env/A", r#"{"v": "x"}"#)
        .await
        .assert_error(400, "invalid_type", Some("env.A"));
    put_env("/functions/bs/ok/env/1A", r#""x""#)
        .await
        .assert_error(400, "invalid_env_name", Some("env.1A"));
    put_env("/functions/bs/ok/env/A-B", r#""x""#)
        .await
        .assert_error(400, "invalid_env_name", Some("env.A-B"));
    put_env("/functions/bs/ok/env/A", r#""a\u0000b""#)
        .await
        .assert_error(400, "invalid_value", Some("env.A"));
    put_env("/functions/bs/nobody/env/A", r#""x""#)
        .await
        .assert_error(404, "not_found", Some("name"));
    s.delete("/functions/bs/nobody/env/A")
        .await
        .assert_error(404, "not_found", Some("name"));
    s.delete("/functions/bs/ok/env/NEVER")
        .await
        .assert_error(404, "not_found", Some("env.NEVER"));
    s.delete("/functions/bs/ok/env/9")
        .await
        .assert_error(400, "invalid_env_name", Some("env.9"));
    // None of that changed the function.
    let f = s.get("/functions/bs/ok").await;
    assert_eq!(
        (f.body["version"].clone(), f.body["env"].clone()),
        (json!(1), json!({}))
    );

    // Code that does not parse, with Backstage's body (default `warm`): refused, not stored.
    let r = s
        .put(
            "/functions/bs/broken",
            &json!({"code": "function main(req, res) { res.send(1) "}),
        )
        .await;
    r.assert_error(400, "invalid_code", Some("code"));
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("SyntaxError")),
        "{}",
        r.body
    );
    s.get("/functions/bs/broken")
        .await
        .assert_error(404, "not_found", Some("name"));
    // Code without `main` nor an export.
    s.put(
        "/functions/bs/nomain",
        &json!({"code": "function other(req, res) { res.send(1) }"}),
    )
    .await
    .assert_error(400, "invalid_code", Some("code"));

    // Pipelines by query: indices in order from 0, steps named `ns/name`, functions known.
    let pipeline = |query: &'static str| {
        s.send(
            s.http
                .put(s.url(&format!("/functions/pipeline?{query}")))
                .body(r#"{"x": 1}"#),
        )
    };
    pipeline("steps%5B1%5D=bs/ok")
        .await
        .assert_error(400, "invalid_query", Some("steps[1]"));
    pipeline("steps[0]=bs/ok&steps[2]=bs/ok")
        .await
        .assert_error(400, "invalid_query", Some("steps[2]"));
    pipeline("steps[1]=bs/ok&steps[0]=bs/ok")
        .await
        .assert_error(400, "invalid_query", Some("steps[1]"));
    pipeline("steps=bs/ok")
        .await
        .assert_error(400, "invalid_query", Some("steps"));
    pipeline("steps[0]=ok")
        .await
        .assert_error(400, "invalid_value", Some("steps[0]"));
    pipeline("steps[0]=bs/nobody")
        .await
        .assert_error(404, "not_found", Some("steps"));
    // And a good one: the body is the input.
    let ok = s
        .send(
            s.http
                .put(s.url("/functions/pipeline?steps[0]=bs/ok&steps[1]=bs/ok"))
                .body(r#"{"x": 1}"#),
        )
        .await;
    assert_eq!((ok.status, ok.body.clone()), (200, json!({"x": 1})));
    s.stop().await;
}
