//! One function, every door (issue 11, API.md section 6): a function deployed through any
//! seed's API (FAAS, Backstage Functions, Faasm, tinyFaaS) is an ordinary function. Each of
//! four echo functions, one deployed through each seed, is listed by `GET /functions`, answers
//! the same input through every door (section 5's invoke, Backstage's `/run`, FAAS's
//! `POST /functions/{name}`, Faasm's `POST /`, tinyFaaS's HTTP gateway, gRPC and CoAP), and
//! every one of those calls is a task with its record, its events and its logs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use coap_lite::{MessageClass, ResponseType};
use serde_json::{json, Value};
use tokio::time::Instant;

use common::coap::{con_get, Coap};
use common::*;
use ufaas::compat::tinyfaas::grpc::proto::tiny_faa_s_client::TinyFaaSClient;
use ufaas::compat::tinyfaas::grpc::proto::Data;

/// What every call sends, and every echo answers (whitespace and all: the echoes give back
/// the bytes, or the value, they were given).
const INPUT: &str = r#"{"n": 7}"#;

/// Each door's functions, deployed through each seed; all in `default` so that the doors
/// without namespaces (FAAS, tinyFaaS) reach them.
const FUNCTIONS: [&str; 4] = ["faasfn", "backstagefn", "faasmfn", "tinyfn"];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, text) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, text.as_bytes())
            .expect("tar entry");
    }
    b.into_inner().expect("tar")
}

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, text) in files {
        z.start_file(*name, opts).expect("zip file");
        z.write_all(text.as_bytes()).expect("zip write");
    }
    z.finish().expect("zip").into_inner()
}

/// Deploys the four echoes, each through its own seed's API.
async fn deploy_through_every_seed(s: &Server) {
    // FAAS: a base64 tar of the folder, `(context, cb)`.
    let faas = tar_of(&[
        ("fn.yaml", "language: node\n"),
        (
            "index.js",
            "module.exports = (context, cb) => {\n  console.log('faas saw', JSON.stringify(context))\n  cb(context)\n}\n",
        ),
    ]);
    let r = s
        .post(
            "/functions/",
            &json!({"name": "faasfn", "file": b64(&faas)}),
        )
        .await;
    assert_eq!(r.status, 200, "FAAS deploy: {}", r.body);
    assert!(
        r.body["invoke"]
            .as_str()
            .is_some_and(|u| u.ends_with("/functions/faasfn")),
        "{}",
        r.body
    );

    // Backstage Functions: code without a runtime, a bare `main` exporting nothing.
    let r = s
        .put(
            "/functions/default/backstagefn",
            &json!({"code": "function main(req, res) {\n  console.log('backstage saw', JSON.stringify(req.body))\n  res.send(req.body)\n}\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "Backstage deploy: {}", r.body);
    assert!(r.body["hash"].is_string(), "{}", r.body);

    // Faasm: a Python file uploaded for the user `default`, `faasm_main` and pyfaasm.core.
    let faasm = "from pyfaasm.core import get_input_len, read_input, write_output\n\n\
                 def faasm_main():\n    data = read_input(get_input_len())\n    \
                 print('faasm saw', data.decode())\n    write_output(data)\n    return 0\n";
    let r = s
        .send(s.http.put(s.url("/p/default/faasmfn")).body(faasm))
        .await;
    assert!(r.status < 300, "Faasm upload: {} {}", r.status, r.body);

    // tinyFaaS: a zipped folder with `fn(input, headers)` and an empty requirements.txt.
    let tiny = zip_of(&[
        (
            "fn.py",
            "def fn(input, headers):\n    print('tiny saw', input)\n    return input\n",
        ),
        ("requirements.txt", ""),
    ]);
    let upload = json!({"name": "tinyfn", "env": "python3", "threads": 1, "zip": b64(&tiny)});
    let r = s
        .send(s.http.post(s.url("/upload")).body(upload.to_string()))
        .await;
    assert_eq!(r.status, 200, "tinyFaaS upload: {}", r.body);
}

/// The first JSON value of `text` (Faasm's synchronous answer is the output, then what the
/// function printed).
#[track_caller]
fn first_json(text: &str, door: &str) -> Value {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("{door} answered {text:?}, not JSON first"))
}

/// Calls `name` through every door; each must answer the input back.
async fn call_through_every_door(s: &Server, name: &str) {
    let want: Value = serde_json::from_str(INPUT).expect("the input is JSON");
    let text = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };

    // Section 5.
    let (st, body) = text(
        s.http
            .post(s.url(&format!("/functions/default/{name}/invoke")))
            .body(INPUT)
            .send()
            .await
            .expect("invoke"),
    )
    .await;
    assert_eq!(st, 200, "{name} via invoke: {body}");
    assert_eq!(first_json(&body, "invoke"), want, "{name} via invoke");

    // Backstage's /run.
    let (st, body) = text(
        s.http
            .put(s.url(&format!("/functions/default/{name}/run")))
            .header("content-type", "application/json")
            .body(INPUT)
            .send()
            .await
            .expect("run"),
    )
    .await;
    assert_eq!(st, 200, "{name} via /run: {body}");
    assert_eq!(first_json(&body, "/run"), want, "{name} via /run");

    // FAAS: `{"response": the output's text}`.
    let (st, body) = text(
        s.http
            .post(s.url(&format!("/functions/{name}")))
            .body(INPUT)
            .send()
            .await
            .expect("FAAS"),
    )
    .await;
    assert_eq!(st, 200, "{name} via FAAS: {body}");
    let answer: Value = serde_json::from_str(&body).expect("FAAS answers JSON");
    let response = answer["response"]
        .as_str()
        .unwrap_or_else(|| panic!("FAAS's response is text: {answer}"));
    assert_eq!(first_json(response, "FAAS"), want, "{name} via FAAS");

    // Faasm's invoke message, synchronous.
    let msg = json!({"user": "default", "function": name, "input_data": INPUT});
    let (st, body) = text(
        s.http
            .post(s.url("/"))
            .body(msg.to_string())
            .send()
            .await
            .expect("Faasm"),
    )
    .await;
    assert_eq!(st, 200, "{name} via Faasm: {body}");
    assert_eq!(first_json(&body, "Faasm"), want, "{name} via Faasm");

    // tinyFaaS's HTTP gateway: the output as it is.
    let (st, body) = text(
        s.http
            .post(s.gateway_url(&format!("/{name}")))
            .body(INPUT)
            .send()
            .await
            .expect("gateway"),
    )
    .await;
    assert_eq!(st, 200, "{name} via the gateway: {body}");
    assert_eq!(first_json(&body, "gateway"), want, "{name} via the gateway");

    // tinyFaaS's gRPC.
    let addr = s.grpc.expect("a server with gRPC");
    let mut c = TinyFaaSClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect");
    let r = c
        .request(tonic::Request::new(Data {
            function_identifier: name.into(),
            data: INPUT.into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("{name} via gRPC: {e:?}"));
    assert_eq!(
        first_json(&r.into_inner().response, "gRPC"),
        want,
        "{name} via gRPC"
    );

    // tinyFaaS's CoAP.
    let coap = Coap::new(s.coap.expect("a server with CoAP")).await;
    let a = coap.call(&con_get(7, &[name], INPUT.as_bytes())).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::Content),
        "{name} via CoAP"
    );
    assert_eq!(
        first_json(&String::from_utf8_lossy(&a.payload), "CoAP"),
        want,
        "{name} via CoAP"
    );
}

/// The doors each call went through, so the number of tasks each function must have.
const DOORS: usize = 7;

#[tokio::test]
async fn a_function_deployed_through_any_seed_answers_through_every_door() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy_through_every_seed(&s).await;

    let listed = s.get("/functions?namespace=default").await.body;
    let names: BTreeSet<&str> = listed["functions"]
        .as_array()
        .map(|fs| fs.iter().filter_map(|f| f["name"].as_str()).collect())
        .unwrap_or_default();
    for name in FUNCTIONS {
        assert!(names.contains(name), "{name} not listed: {listed}");
    }

    for name in FUNCTIONS {
        call_through_every_door(&s, name).await;
    }

    // Every call is a task: its record ended FINISHED, naming the function.
    let mut ids: BTreeMap<String, &str> = BTreeMap::new();
    for name in FUNCTIONS {
        let full = format!("default/{name}");
        let tasks = s.get(&format!("/fn?name={full}")).await.body;
        let tasks = tasks["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), DOORS, "{full}'s tasks: {tasks:?}");
        for t in &tasks {
            let id = t["id"].as_str().expect("a task id").to_string();
            let record = s.get(&format!("/fn/{id}")).await.body;
            assert_eq!(record["state"], "FINISHED", "{record}");
            assert_eq!(record["function"]["name"], name, "{record}");
            ids.insert(id, name);
        }
        // What it printed is in its logs, a line per call.
        let logs = s.get(&format!("/functions/{full}/logs")).await.body;
        let lines = logs["lines"].as_array().cloned().unwrap_or_default();
        let saw = lines
            .iter()
            .filter(|l| l["line"].as_str().is_some_and(|t| t.contains(" saw ")))
            .count();
        assert_eq!(saw, DOORS, "{full}'s logs: {logs}");
    }

    // And every one has its events, to FINISHED, on the WebSocket.
    let mut ws = s.ws("since=0").await;
    let mut finished = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while finished.len() < ids.len() && Instant::now() < deadline {
        let Some(ev) = next_json(&mut ws, 10).await else {
            break;
        };
        if let Some(id) = ev["task_id"].as_str() {
            if ids.contains_key(id) && ev["state"] == "FINISHED" {
                finished.insert(id.to_string());
            }
        }
    }
    let missing: Vec<_> = ids.keys().filter(|id| !finished.contains(*id)).collect();
    assert!(missing.is_empty(), "no FINISHED event for {missing:?}");
    s.stop().await;
}
