//! FAAS's API (API.md section 6, `seeds/faas.txt`) against a real server and real node
//! containers: the README's own example payload (a tar cut short at its end), a function
//! with vendored dependencies, the same function through every other door, and every bad
//! input answered with FAAS's 400 `{"message"}`.

mod common;

use base64::Engine as _;
use serde_json::{json, Value};

use common::*;

/// A raw answer: status, headers, body as JSON (`Null` when it is not).
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// FAAS's error: 400 and a body that is `{"message"}` and nothing else.
    #[track_caller]
    fn assert_refused(&self, says: &str) {
        assert_eq!(self.status, 400, "{}", self.body);
        let obj = self.body.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "only `message`: {}", self.body);
        let m = obj["message"].as_str().expect("`message` is text");
        assert!(
            m.to_lowercase().contains(&says.to_lowercase()),
            "`{m}` should say `{says}`"
        );
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Raw {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

async fn post(s: &Server, path: &str, body: impl Into<reqwest::Body>) -> Raw {
    raw(s
        .http
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body))
    .await
}

/// A tar of `files` (path, text), as `tar -c` of a folder makes it.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, text.as_bytes())
            .expect("tar entry");
    }
    b.into_inner().expect("tar")
}

/// A zip of `files` (path, text), deflated.
fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, text) in files {
        z.start_file(*path, opts).expect("zip entry");
        z.write_all(text.as_bytes()).expect("zip entry");
    }
    z.finish().expect("zip").into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The files `faas init` writes beside `index.js`, which ufaas does not need.
const FN_YAML: &str = "language: node\n";
const SERVER_JS: &str = "const express = require('express')\nconst app = express()\n\
    const bodyParser = require('body-parser')\napp.use(bodyParser.json())\n\
    const fn = require('./index.js')\napp.post('/invoke', (req, res) => fn(req.body, (o) => res.json(o)))\n\
    app.listen(8080)\n";
const DOCKERFILE: &str = "FROM node:12\nWORKDIR /usr/src/app\nCOPY package*.json ./\n\
    RUN npm install\nCOPY . .\nEXPOSE 8080\nCMD [ \"node\", \"server.js\" ]\n";

#[tokio::test]
async fn the_readme_example_deploys_and_answers_through_every_door() {
    let s = Server::start().await;
    // The README's payload, byte for byte: its tar stops right after the last file.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/faas-example.json"
    ))
    .expect("tests/data/faas-example.json");
    let r = raw(s
        .http
        .post(s.url("/functions/"))
        .header("content-type", "application/json")
        .header("host", "faas.example:5555")
        .body(example.clone()))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"invoke": "http://faas.example:5555/functions/add"})
    );

    // Invoked where the answer said (with our address for its host).
    let a = post(&s, "/functions/add", "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"response": r#"{"hello":"world"}"#}));
    // A task like any other.
    let id = a.header("x-ufaas-task-id").to_string();
    let t = s.wait_ended(&id).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["function"]["namespace"], "default");
    assert_eq!(t["function"]["name"], "add");

    // An ordinary function: listed, and called through section 5 and Backstage's `/run`.
    let list = s.get("/functions").await;
    let names: Vec<String> = list.body["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| format!("{}/{}", f["namespace"], f["name"]).replace('"', ""))
        .collect();
    assert_eq!(names, ["default/add"]);
    let f = s.get("/functions/default/add").await;
    assert_eq!(f.body["runtime"], "node");
    // Deployed from a folder: no single code text to show.
    assert_eq!(
        (f.body["code"].clone(), f.body["hash"].clone()),
        (Value::Null, Value::Null)
    );
    for path in [
        "/functions/default/add/invoke",
        "/functions/default/add/run",
    ] {
        let a = post(&s, path, "{}").await;
        assert_eq!(
            (a.status, a.body.clone()),
            (200, json!({"hello": "world"})),
            "{path}"
        );
        assert!(!a.header("x-ufaas-task-id").is_empty());
    }

    // Without the trailing slash too; a second deploy replaces the first.
    let r = raw(s
        .http
        .post(s.url("/functions"))
        .header("content-type", "application/json")
        .body(example))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let host = s.base.trim_start_matches("http://");
    assert_eq!(
        r.body,
        json!({"invoke": format!("http://{host}/functions/add")})
    );
    assert_eq!(s.get("/functions/default/add").await.body["version"], 2);
    s.stop().await;
}

#[tokio::test]
async fn a_node_function_with_vendored_dependencies_sums_its_input() {
    let s = Server::start().await;
    // The README's sum example (with `sum` started at 0: its `let sum` adds to undefined),
    // requiring a package vendored in node_modules/, beside the files FAAS's build used.
    let index = "const add = require('adder')\n\
        // takes an array of numbers and returns the sum\n\
        module.exports = (context, cb) => {\n\
          let sum = 0\n\
          for (let num of context.numbers) {\n\
            sum = add(sum, num)\n\
          }\n\
          console.log('summed', context.numbers.length, 'numbers')\n\
          return cb({sum: sum})\n\
        }\n";
    let package = r#"{"name": "sum", "version": "1.0.0", "main": "index.js",
        "dependencies": {"adder": "1.0.0", "body-parser": "^1.19.0", "express": "^4.17.1"}}"#;
    let tar = tar_of(&[
        ("fn.yaml", FN_YAML),
        ("index.js", index),
        ("package.json", package),
        ("server.js", SERVER_JS),
        ("Dockerfile", DOCKERFILE),
        (
            "node_modules/adder/package.json",
            r#"{"name": "adder", "version": "1.0.0", "main": "lib/add.js"}"#,
        ),
        (
            "node_modules/adder/lib/add.js",
            "module.exports = (a, b) => a + b\n",
        ),
    ]);
    let r = post(
        &s,
        "/functions/",
        json!({"name": "sum", "file": b64(&tar)}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = post(&s, "/functions/sum", r#"{"numbers": [6,4,13]}"#).await;
    assert_eq!(a.body, json!({"response": r#"{"sum":23}"#}));
    let a = post(&s, "/functions/sum", r#"{"numbers": [7,33,12,18]}"#).await;
    assert_eq!(
        (a.status, a.body.clone()),
        (200, json!({"response": r#"{"sum":70}"#}))
    );
    // What it printed is in its logs, not its answer.
    let logs = s.get("/functions/default/sum/logs").await;
    let lines: Vec<&str> = logs.body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(lines.contains(&"summed 4 numbers"), "{lines:?}");

    // A function that answers text answers it as a string. Sent as a zip, deflated, as
    // the FAAS CLI's `faas build` packs a folder.
    let zip = zip_of(&[
        ("fn.yaml", FN_YAML),
        (
            "index.js",
            "module.exports = (context, cb) => cb('plain ' + context.n)\n",
        ),
    ]);
    let r = post(
        &s,
        "/functions",
        json!({"name": "text", "file": b64(&zip)}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = post(&s, "/functions/text", r#"{"n": 1}"#).await;
    // FAAS's server sent its container's `res.json(output)` body as the text: a string
    // output comes quoted, as FAAS's CLI printed it.
    assert_eq!(a.body, json!({"response": "\"plain 1\""}));
    s.stop().await;
}

#[tokio::test]
async fn functions_of_other_doors_in_default_are_faas_functions() {
    let s = Server::start().await;
    // Backstage's shape, deployed through section 5's route without a runtime.
    let r = s
        .put(
            "/functions/default/greet",
            &json!({"code": "function main(req, res) {\n  res.send({hi: req.body.name})\n}\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let a = post(&s, "/functions/greet", r#"{"name": "Ana"}"#).await;
    assert_eq!(
        (a.status, a.body.clone()),
        (200, json!({"response": r#"{"hi":"Ana"}"#}))
    );
    // Another namespace is not FAAS's.
    let r = s
        .put(
            "/functions/other/greet2",
            &json!({"runtime": "python", "code": "def main(event):\n    return 1\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    post(&s, "/functions/greet2", "{}")
        .await
        .assert_refused("no function default/greet2");
    s.stop().await;
}

#[tokio::test]
async fn bad_inputs_are_refused_with_faas_message() {
    let s = Server::start().await;
    let add = |body: String| post(&s, "/functions/", body);
    let index = "module.exports = (context, cb) => cb({ok: true})\n";
    let good = b64(&tar_of(&[("fn.yaml", FN_YAML), ("index.js", index)]));

    add("{not json".into()).await.assert_refused("JSON");
    add("[1, 2]".into()).await.assert_refused("object");
    add(json!({"file": good}).to_string())
        .await
        .assert_refused("`name` is required");
    add(json!({"name": "x"}).to_string())
        .await
        .assert_refused("`file` is required");
    add(json!({"name": "x", "file": 3}).to_string())
        .await
        .assert_refused("`file` must be a string");
    add(json!({"name": "x", "file": good, "language": "node"}).to_string())
        .await
        .assert_refused("unknown field `language`");
    add(json!({"name": "Not Valid", "file": good}).to_string())
        .await
        .assert_refused("name");
    add(json!({"name": "x", "file": "%%% not base64 %%%"}).to_string())
        .await
        .assert_refused("base64");
    add(json!({"name": "x", "file": b64(b"just some text, not a tar")}).to_string())
        .await
        .assert_refused("file");
    add(
        json!({"name": "x", "file": b64(&tar_of(&[("fn.yaml", FN_YAML), ("lib.js", index)]))})
            .to_string(),
    )
    .await
    .assert_refused("index.js");
    // Code that does not parse is refused at deploy, with node's reason.
    add(json!({"name": "x", "file": b64(&tar_of(&[("index.js", "module.exports = (context, cb) => {\n")]))}).to_string())
        .await
        .assert_refused("syntaxerror");
    // Nothing of those was kept.
    assert_eq!(s.get("/functions").await.body["functions"], json!([]));

    // Calls: unknown function, and a function that throws.
    post(&s, "/functions/nobody", "{}")
        .await
        .assert_refused("no function default/nobody");
    let throws = "module.exports = (context, cb) => { throw new Error('boom: ' + context.why) }\n";
    let r =
        add(json!({"name": "throws", "file": b64(&tar_of(&[("index.js", throws)]))}).to_string())
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = post(&s, "/functions/throws", r#"{"why": "asked to"}"#).await;
    a.assert_refused("boom: asked to");
    // Still a task, failed.
    let t = s.wait_ended(a.header("x-ufaas-task-id")).await;
    assert_eq!(t["state"], "FAILED", "{t}");

    // `pipeline` is section 5's pipeline route: such a function is deployed, and called by
    // its full name.
    let r = add(json!({"name": "pipeline", "file": good}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = post(&s, "/functions/pipeline", "{}").await;
    assert_eq!(
        (p.status, p.body["code"].clone()),
        (400, json!("missing_field"))
    );
    let a = post(&s, "/functions/default/pipeline/invoke", "{}").await;
    assert_eq!((a.status, a.body.clone()), (200, json!({"ok": true})));
    s.stop().await;
}
