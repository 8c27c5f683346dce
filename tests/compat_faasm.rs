//! Faasm's API (API.md section 6, seeds/faasm-http-api.txt) against a real server and real
//! containers: the seed's curl uploads run by the real `curl`, its Python `requests` example
//! run by `python3` as written (only the endpoint changed), state over HTTP and through
//! `pyfaasm.core`, files in warm containers, chained calls, and every bad form.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use common::*;

/// Faasm's Python echo, with a print.
const ECHO: &str = r#"from pyfaasm.core import get_input_len, read_input, write_output


def faasm_main():
    n = get_input_len()
    data = read_input(n)
    print("echo got {} bytes".format(n))
    write_output(data)
    return 0
"#;

/// A raw answer: status, the task header, body bytes.
struct Raw {
    status: u16,
    task: String,
    body: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        let v = self.json();
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(v["code"], code, "{}", self.text());
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let resp = req.send().await.expect("request");
    Raw {
        status: resp.status().as_u16(),
        task: resp
            .headers()
            .get("x-ufaas-task-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    }
}

fn host(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Runs `curl` with `args` as the seed writes them; its stdout.
async fn curl(args: &[&str]) -> Vec<u8> {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("the curl binary (apt install curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn post(s: &Server, body: &Value) -> Raw {
    raw(s.http.post(s.url("/")).json(body)).await
}

async fn upload(s: &Server, user: &str, name: &str, code: &str) {
    let r = raw(s
        .http
        .put(s.url(&format!("/p/{user}/{name}")))
        .body(code.to_string()))
    .await;
    assert_eq!(r.status, 200, "upload of {user}/{name}: {}", r.text());
}

/// An async call through `POST /`; its call id.
async fn call_async(s: &Server, msg: Value) -> i64 {
    let mut msg = msg;
    msg["async"] = json!(true);
    let r = post(s, &msg).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a call id: {}", r.text()))
}

/// Polls the status of call `id` until it is neither PENDING nor RUNNING.
async fn status_until_ended(s: &Server, id: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = post(s, &json!({"id": id, "status": true})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.text();
        if !(t == "PENDING" || t == "RUNNING") {
            return t;
        }
        assert!(Instant::now() < deadline, "call {id} still {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Python interpreter that has `requests` (Debian's python3-requests); the test fails,
/// never skips, without one.
async fn python_with_requests() -> String {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = tokio::process::Command::new(py)
            .args(["-c", "import requests"])
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        if ok {
            return py.to_string();
        }
    }
    panic!("no python3 with `requests`: apt-get install python3-requests (tox-like-scripts/setup does)");
}

#[tokio::test]
async fn the_seeds_curl_uploads_and_every_bad_form() {
    let s = Server::start().await;
    let h = host(&s);
    let dir = tempfile::tempdir().expect("dir");
    let py = dir.path().join("echo.py");
    std::fs::write(&py, ECHO).expect("write");
    let py = py.to_str().expect("path");

    // Upload a Python function file, download it again.
    curl(&["-X", "PUT", &format!("{h}/p/demo/echo"), "-T", py]).await;
    let out = dir.path().join("out.py");
    let out_s = out.to_str().expect("path");
    curl(&["-X", "GET", &format!("{h}/p/demo/echo"), "-o", out_s]).await;
    assert_eq!(std::fs::read_to_string(&out).expect("read"), ECHO);

    // An ordinary function: listed, invokable through section 5, with a task record.
    let list = s.get("/functions?namespace=demo").await;
    assert_eq!(list.body["functions"][0]["name"], "echo", "{}", list.body);
    assert_eq!(list.body["functions"][0]["handler"], "fn.py:faasm_main");
    let r = raw(s
        .http
        .post(s.url("/functions/demo/echo/invoke"))
        .body("via section 5"))
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "via section 5"));
    let t = s.wait_state(&r.task, "FINISHED").await;
    assert_eq!(t["function"]["name"], "echo", "{t}");
    assert!(
        t["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("echo got 13 bytes"),
        "{t}"
    );

    // State: directly, from a file, downloaded.
    curl(&[
        "-X",
        "PUT",
        &format!("{h}/s/demo/greeting"),
        "-d",
        "some state",
    ])
    .await;
    let got = dir.path().join("state.out");
    let got_s = got.to_str().expect("path");
    curl(&["-X", "GET", &format!("{h}/s/demo/greeting"), "-o", got_s]).await;
    assert_eq!(std::fs::read(&got).expect("read"), b"some state");
    let state_file = dir.path().join("state.bin");
    let bytes: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&state_file, &bytes).expect("write");
    let state_s = state_file.to_str().expect("path");
    curl(&["-X", "PUT", &format!("{h}/s/demo/blob"), "-T", state_s]).await;
    curl(&["-X", "GET", &format!("{h}/s/demo/blob"), "-o", got_s]).await;
    assert_eq!(std::fs::read(&got).expect("read"), bytes);

    // A file at a path, downloaded again.
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "shared data\n").expect("write");
    let data_s = data.to_str().expect("path");
    curl(&[
        "-X",
        "PUT",
        "-H",
        "FilePath: /data/in.txt",
        &format!("{h}/file"),
        "-T",
        data_s,
    ])
    .await;
    curl(&[
        "-X",
        "GET",
        "-H",
        "FilePath: /data/in.txt",
        &format!("{h}/file"),
        "-o",
        got_s,
    ])
    .await;
    assert_eq!(std::fs::read(&got).expect("read"), b"shared data\n");

    // WebAssembly is refused, upload and download alike.
    let wasm = raw(s
        .http
        .put(s.url("/f/demo/hello"))
        .body(vec![0u8, 0x61, 0x73, 0x6d]))
    .await;
    wasm.assert_error(415, "unsupported_runtime", None);
    raw(s.http.get(s.url("/f/demo/hello")))
        .await
        .assert_error(415, "unsupported_runtime", None);

    // Bad forms.
    raw(s.http.put(s.url("/p/Demo!/echo")).body(ECHO))
        .await
        .assert_error(400, "invalid_value", Some("user"));
    raw(s.http.put(s.url("/p/demo/Bad%20Name")).body(ECHO))
        .await
        .assert_error(400, "invalid_value", Some("name"));
    raw(s.http.put(s.url("/p/demo/empty")).body(""))
        .await
        .assert_error(400, "invalid_body", None);
    raw(s
        .http
        .put(s.url("/p/demo/nomain"))
        .body("def other():\n    return 0\n"))
    .await
    .assert_error(400, "invalid_code", Some("code"));
    raw(s.http.put(s.url("/p/demo/binary")).body(vec![0xffu8, 0xfe]))
        .await
        .assert_error(400, "invalid_code", None);
    raw(s.http.get(s.url("/p/demo/absent")))
        .await
        .assert_error(404, "not_found", Some("name"));
    raw(s.http.get(s.url("/s/demo/absent")))
        .await
        .assert_error(404, "not_found", Some("key"));
    raw(s.http.put(s.url("/s/NoSuch!/k")).body("x"))
        .await
        .assert_error(400, "invalid_value", Some("user"));
    raw(s.http.get(s.url("/s/demo/%ff")))
        .await
        .assert_error(400, "invalid_value", Some("key"));
    raw(s.http.put(s.url("/file")).body("x"))
        .await
        .assert_error(400, "invalid_header", Some("FilePath"));
    raw(s.http.get(s.url("/file")))
        .await
        .assert_error(400, "invalid_header", Some("FilePath"));
    for bad in ["../etc/passwd", "/proc/self/x", "/a/", ""] {
        raw(s.http.put(s.url("/file")).header("FilePath", bad).body("x"))
            .await
            .assert_error(400, "invalid_header", Some("FilePath"));
    }
    raw(s
        .http
        .get(s.url("/file"))
        .header("FilePath", "/never/uploaded"))
    .await
    .assert_error(404, "not_found", Some("FilePath"));
    raw(s.http.post(s.url("/")).body("not json"))
        .await
        .assert_error(400, "invalid_json", None);
    raw(s.http.post(s.url("/")).body(""))
        .await
        .assert_error(400, "invalid_json", None);
    post(&s, &json!({"user": "demo", "function": "nosuch"}))
        .await
        .assert_error(404, "not_found", Some("function"));
    post(&s, &json!({"user": "demo"}))
        .await
        .assert_error(400, "missing_field", Some("function"));
    post(
        &s,
        &json!({"user": "demo", "function": "echo", "async": "yes"}),
    )
    .await
    .assert_error(400, "invalid_type", Some("async"));
    post(&s, &json!({"python": true, "py_user": "demo"}))
        .await
        .assert_error(400, "missing_field", Some("py_func"));
    post(
        &s,
        &json!({"user": "demo", "function": "echo", "mpi": true, "mpi_world_size": 2}),
    )
    .await
    .assert_error(400, "invalid_value", Some("mpi"));
    post(&s, &json!({"id": 424242, "status": true}))
        .await
        .assert_error(404, "not_found", Some("id"));
    post(&s, &json!({"status": true}))
        .await
        .assert_error(400, "invalid_value", Some("id"));
    s.stop().await;
}

#[tokio::test]
async fn sync_async_status_and_the_seeds_requests_script() {
    let s = Server::start().await;
    upload(&s, "demo", "echo", ECHO).await;
    upload(
        &s,
        "demo",
        "fails",
        "from pyfaasm.core import write_output\n\ndef faasm_main():\n    print('about to fail')\n    write_output(b'partial')\n    return 3\n",
    )
    .await;

    // Sync: the output, then what it printed.
    let r = post(
        &s,
        &json!({"user": "demo", "function": "echo", "input_data": "Hello API"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello API\necho got 9 bytes\n");
    s.wait_state(&r.task, "FINISHED").await;

    // The Python shape: py_user/py_func name the function.
    let r = post(
        &s,
        &json!({"user": "python", "function": "py_func", "python": true,
                "py_user": "demo", "py_func": "echo", "input_data": "py"}),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "py\necho got 2 bytes\n")
    );

    // Any function of ufaas answers POST /.
    let d = s
        .put(
            "/functions/other/upper",
            &json!({"runtime": "python", "code": "def main(event):\n    return event.upper()\n"}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let r = post(
        &s,
        &json!({"user": "other", "function": "upper", "input_data": "abc"}),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ABC"));

    // A failure, sync and async.
    let r = post(&s, &json!({"user": "demo", "function": "fails"})).await;
    r.assert_error(500, "function_error", None);
    assert!(r.text().contains("faasm_main returned 3"), "{}", r.text());
    let id = call_async(&s, json!({"user": "demo", "function": "fails"})).await;
    let t = status_until_ended(&s, id).await;
    assert!(t.starts_with("FAILED: faasm_main returned 3"), "{t}");

    // Async success, and its id is stored: a second status gives the same.
    let id = call_async(
        &s,
        json!({"user": "demo", "function": "echo", "input_data": "later"}),
    )
    .await;
    assert_eq!(status_until_ended(&s, id).await, "SUCCESS: later");
    let again = post(&s, &json!({"id": id, "status": true})).await;
    assert_eq!(again.text(), "SUCCESS: later");
    s.wait_state(&again.task, "FINISHED").await;

    // The seed's asynchronous example, as written but for the endpoint.
    let script = format!(
        r#"import requests
from time import sleep
endpoint = "{}"
invoke_json = {{
"user": "demo",
"function": "echo",
"input_data": "Hello API",
"async": True
}}
res = requests.post(endpoint, json=invoke_json)
call_id = res.content.decode()
print("Async call {{}}".format(call_id))
status_json = {{
"id": int(call_id),
"status": True,
}}
str_res = ""
count = 0
while not str_res.startswith("SUCCESS") and count < 5:
    res = requests.post(endpoint, json=status_json)
    str_res = res.content.decode()
    count+=1
    sleep(0.2)
print(str_res)
"#,
        s.base
    );
    let py = python_with_requests().await;
    let out = tokio::process::Command::new(&py)
        .args(["-c", &script])
        .output()
        .await
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("Async call "), "{said}");
    assert!(
        lines[0]["Async call ".len()..].parse::<i64>().is_ok(),
        "{said}"
    );
    assert_eq!(lines.last().copied(), Some("SUCCESS: Hello API"), "{said}");
    s.stop().await;
}

#[tokio::test]
async fn state_is_shared_between_http_and_functions_and_files_reach_warm_containers() {
    let s = Server::start().await;
    let code = r#"import os
import time
from pyfaasm.core import (read_state, read_state_size, read_state_offset, write_state,
    write_state_offset, push_state, pull_state, write_output, get_input, set_state, get_state)


def faasm_main():
    op = get_input().decode()
    if op == "read":
        n = read_state_size("from_http")
        pull_state("from_http", n)
        write_output(read_state("from_http", n))
    elif op == "write":
        write_state("from_fn", b"\x00written\xff")
        push_state("from_fn")
        write_output(b"ok")
    elif op == "offsets":
        set_state("counter", b"0123456789")
        write_state_offset("counter", 10, 2, b"999")
        part = read_state_offset("counter", 10, 2, 3)
        padded = get_state("absent", 4)
        write_output(part + b"|" + get_state("counter", 10) + b"|" + padded + b"|" + str(read_state_size("absent")).encode())
    elif op == "past":
        write_state_offset("counter", 4, 3, b"xx")
    elif op == "wait":
        deadline = time.time() + 30
        while not os.path.exists("/data/late.txt") and time.time() < deadline:
            time.sleep(0.05)
        with open("/data/late.txt", "rb") as f:
            write_output(f.read())
    elif op == "file":
        with open("/data/shared.txt", "rb") as f:
            data = f.read()
        try:
            open("/data/shared.txt", "wb").write(b"changed")
            ro = "writable"
        except OSError:
            ro = "read-only"
        with open("rel/file.txt", "rb") as f:
            rel = f.read()
        write_output(data + b"|" + ro.encode() + b"|" + rel)
    return 0
"#;
    upload(&s, "demo", "state", code).await;

    // HTTP → function.
    let value: Vec<u8> = vec![0, 1, 2, 255, 254, b'\n', 7];
    let r = raw(s.http.put(s.url("/s/demo/from_http")).body(value.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "read"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, value);

    // Function → HTTP.
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "write"}),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = raw(s.http.get(s.url("/s/demo/from_fn"))).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"\x00written\xff".as_slice())
    );
    // Another user's state is another store.
    raw(s.http.get(s.url("/s/other/from_fn")))
        .await
        .assert_error(404, "not_found", Some("key"));

    // Offsets; a missing key reads as zeros of the length asked, its size 0.
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "offsets"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"999|0199956789|\0\0\0\0|0".to_vec());
    let r = raw(s.http.get(s.url("/s/demo/counter"))).await;
    assert_eq!(r.body, b"0199956789");
    // A write past the value's length fails the call.
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "past"}),
    )
    .await;
    r.assert_error(500, "function_error", None);
    assert!(r.text().contains("past the value"), "{}", r.text());

    // Files: uploaded while the function's container is warm, seen read-only at their path
    // (a relative FilePath under the function's directory).
    let r = raw(s
        .http
        .put(s.url("/file"))
        .header("FilePath", "/data/shared.txt")
        .body("shared!"))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw(s
        .http
        .put(s.url("/file/"))
        .header("FilePath", "rel/file.txt")
        .body("relative"))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "file"}),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "shared!|read-only|relative")
    );
    // A replaced file is seen by the next call.
    let r = raw(s
        .http
        .put(s.url("/file"))
        .header("FilePath", "/data/shared.txt")
        .body("v2"))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "file"}),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "v2|read-only|relative")
    );
    // A call already running sees a file uploaded meanwhile.
    let waiting = call_async(
        &s,
        json!({"user": "demo", "function": "state", "input_data": "wait"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(&s, &json!({"id": waiting, "status": true})).await;
        if r.text() == "RUNNING" {
            break;
        }
        assert_eq!(r.text(), "PENDING");
        assert!(Instant::now() < deadline, "call {waiting} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = raw(s
        .http
        .put(s.url("/file"))
        .header("FilePath", "/data/late.txt")
        .body("arrived"))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status_until_ended(&s, waiting).await, "SUCCESS: arrived");

    let id = call_async(
        &s,
        json!({"user": "demo", "function": "state", "input_data": "write"}),
    )
    .await;
    assert_eq!(status_until_ended(&s, id).await, "SUCCESS: ok");

    // After a restart: the call id still answers, the state is there, and the files are in
    // the new container from its start.
    let dir = s.stop().await;
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    let s = Server::start_on(cfg, dir).await;
    let r = post(&s, &json!({"id": id, "status": true})).await;
    assert_eq!((r.status, r.text().as_str()), (200, "SUCCESS: ok"));
    let r = raw(s.http.get(s.url("/s/demo/counter"))).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"0199956789".as_slice())
    );
    let r = post(
        &s,
        &json!({"user": "demo", "function": "state", "input_data": "file"}),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "v2|read-only|relative")
    );
    s.stop().await;
}

#[tokio::test]
async fn chained_calls_run_and_are_awaited_without_deadlock() {
    let s = Server::start().await;
    // Faasm's own chaining example (func/python/chain.py), unchanged.
    let chain = r#"from pyfaasm.core import chain_this_with_input, await_call


def chain_one(input_bytes):
    expected = b'1234'
    print("Chained 1: {} {}".format(input_bytes, expected))
    if input_bytes != expected:
        exit(1)


def chain_two(input_bytes):
    expected = b'5678'
    print("Chained 2: {} {}".format(input_bytes, expected))
    if input_bytes != expected:
        exit(1)


def faasm_main():
    print("Main chaining entry point")
    call_a = chain_this_with_input(chain_one, b'1234')
    call_b = chain_this_with_input(chain_two, b'5678')

    print("Awaiting calls {} and {}".format(call_a, call_b))

    res_a = await_call(call_a)
    res_b = await_call(call_b)

    if res_a != 0 or res_b != 0:
        print("Chained functions failed: {} {}".format(res_a, res_b))
        exit(1)
"#;
    // One container of one runtime: the chained calls cannot wait for their caller's.
    let d = s
        .put(
            "/functions/demo/chain",
            &json!({"runtime": "python", "code": chain, "handler": "fn.py:faasm_main",
                    "max_containers": 1, "concurrency": 1, "timeout": 60}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let r = post(&s, &json!({"user": "demo", "function": "chain"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .starts_with("Main chaining entry point\nAwaiting calls "),
        "{}",
        r.text()
    );
    let t = s.wait_state(&r.task, "FINISHED").await;
    assert!(
        t["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("Awaiting calls"),
        "{t}"
    );

    // Each chained call is a task of its own, with its own output, and its id polls.
    let ids: Vec<i64> = r
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("Awaiting calls "))
        .map(|l| {
            l.split(" and ")
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "{}", r.text());
    let expected = [
        ("chain_one", "Chained 1: b'1234'"),
        ("chain_two", "Chained 2: b'5678'"),
    ];
    for (id, (entry, said)) in ids.iter().zip(expected) {
        let st = post(&s, &json!({"id": id, "status": true})).await;
        assert_eq!(st.text(), "SUCCESS: ", "call {id}");
        let task = s.wait_state(&st.task, "FINISHED").await;
        assert!(
            task["stdout"].as_str().unwrap_or("").contains(said),
            "{task}"
        );
        assert_eq!(
            task["spec"]["request"]["headers"]["x-faasm-chain"], entry,
            "{task}"
        );
    }

    // Faasm's older chaining by index: faasm_main runs again with get_function_idx().
    let by_index = r#"from pyfaasm.core import get_function_idx, get_input, chain_this_with_input, register_function, PYTHON_LOCAL_CHAINING, \
    await_call, write_output


def chain_one(input_bytes):
    if input_bytes != b'1234':
        exit(1)


def faasm_main():
    if PYTHON_LOCAL_CHAINING:
        register_function(1, chain_one)
    idx = get_function_idx()
    if idx == 0:
        call_a = chain_this_with_input(1, b'1234')
        call_b = chain_this_with_input(1, b'wrong')
        write_output("{} {}".format(await_call(call_a), await_call(call_b)).encode())
    elif idx == 1:
        chain_one(get_input())
"#;
    upload(&s, "demo", "byindex", by_index).await;
    let r = post(&s, &json!({"user": "demo", "function": "byindex"})).await;
    assert_eq!((r.status, r.text().as_str()), (200, "0 1"));

    // A chained call that fails gives await_call its code; a chain to no such function fails.
    let code = r#"from pyfaasm.core import chain, await_call, write_output, get_input


def bad(input_bytes):
    return 7


def faasm_main():
    a = await_call(chain(bad, b''))
    b = await_call(chain("nosuch", b''))
    try:
        await_call(int(get_input()))
        theirs = "awaited"
    except RuntimeError as e:
        theirs = str(e)
    write_output("{} {} {}".format(a, b, theirs).encode())
    return 0
"#;
    upload(&s, "demo", "codes", code).await;
    // A call of another user, which demo's functions may not await.
    let d = s
        .put(
            "/functions/other/echo",
            &json!({"runtime": "python", "code": "def main(event):\n    return event\n"}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let theirs = call_async(
        &s,
        json!({"user": "other", "function": "echo", "input_data": "x"}),
    )
    .await;
    let r = post(
        &s,
        &json!({"user": "demo", "function": "codes", "input_data": theirs.to_string()}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A chain to a function the file lacks is accepted; its call fails in its own task.
    assert_eq!(
        r.text(),
        format!("7 1 pyfaasm.core: await: no call {theirs} of user demo")
    );
    s.stop().await;
}

/// The containers a function has now (ready, busy and starting).
async fn containers_of(s: &Server, path: &str) -> u64 {
    let v = s.get(path).await.body;
    let c = &v["containers"];
    ["ready", "busy", "starting"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn chains_are_bounded_in_depth_and_in_containers() {
    let s = Server::start().await;
    // Each level chains the next and awaits it; the one that may not chain says so in state.
    let deep = r#"from pyfaasm.core import chain, await_call, write_output, write_state, read_state, read_state_size


def deeper(input_bytes):
    n = int(input_bytes)
    try:
        call = chain(deeper, str(n + 1).encode())
    except RuntimeError as e:
        write_state("refused", "{}: {}".format(n, e).encode())
        return 0
    return await_call(call)


def faasm_main():
    code = await_call(chain(deeper, b"1"))
    said = read_state("refused", read_state_size("refused"))
    write_output("{} {}".format(code, said.decode()).encode())
"#;
    let d = s
        .put(
            "/functions/demo/deep",
            &json!({"runtime": "python", "code": deep, "handler": "fn.py:faasm_main",
                    "max_containers": 1, "concurrency": 4, "timeout": 240}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let r = post(&s, &json!({"user": "demo", "function": "deep"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // faasm_main is 0 deep, the calls it chains 1 to 16: the 16th may not chain.
    assert!(
        r.text()
            .starts_with("0 16: pyfaasm.core: chain: chains go at most 16 calls deep"),
        "{}",
        r.text()
    );
    // Blocked callers let the pool pass max_containers, one container for each, no more:
    // 17 calls of 4 workers per container hold at most 5.
    assert!(containers_of(&s, "/functions/demo/deep").await <= 5);

    // Chained calls nobody awaits queue as any other: max_containers 1 stays 1.
    let fan = r#"from pyfaasm.core import chain, write_output


def noop(input_bytes):
    return 0


def faasm_main():
    ids = [chain(noop, b"") for _ in range(20)]
    write_output(" ".join(str(i) for i in ids).encode())
"#;
    let d = s
        .put(
            "/functions/demo/fan",
            &json!({"runtime": "python", "code": fan, "handler": "fn.py:faasm_main",
                    "max_containers": 1, "concurrency": 1, "timeout": 60}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let r = post(&s, &json!({"user": "demo", "function": "fan"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<i64> = r
        .text()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(ids.len(), 20, "{}", r.text());
    for id in ids {
        assert_eq!(status_until_ended(&s, id).await, "SUCCESS: ");
        let n = containers_of(&s, "/functions/demo/fan").await;
        assert!(n <= 1, "{n} containers for max_containers 1");
    }
    s.stop().await;
}

#[tokio::test]
async fn files_under_a_read_only_root_and_files_that_cannot_be_placed() {
    let s = Server::start_with(|cfg| cfg.read_only_root = true).await;
    let put = |path: &'static str, body: &'static str| {
        raw(s
            .http
            .put(s.url("/file"))
            .header("FilePath", path)
            .body(body))
    };
    // Refused at once: no container could take it.
    for bad in ["/data/in.txt", "/etc/motd", "/tmp"] {
        put(bad, "x")
            .await
            .assert_error(400, "invalid_header", Some("FilePath"));
        raw(s.http.get(s.url("/file")).header("FilePath", bad))
            .await
            .assert_error(404, "not_found", Some("FilePath"));
    }
    // `/tmp/a` then `/tmp/a/b`: the second cannot be placed once the first is (a file is
    // no directory). It is passed over; the files after it still arrive.
    for (path, body) in [("/tmp/a", "A"), ("/tmp/a/b", "B"), ("/tmp/c", "C")] {
        let r = put(path, body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // A relative path that names the function's own code is stored but never replaces it.
    let r = put("fn.py", "not the code").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r#"import os
from pyfaasm.core import write_output, get_input


def faasm_main():
    names = get_input().decode().split()
    out = []
    for n in names:
        try:
            with open(n, "rb") as f:
                out.append(f.read().decode()[:20])
        except OSError as e:
            out.append(type(e).__name__)
    write_output("|".join(out).encode())
"#;
    upload(&s, "demo", "files", code).await;
    let read = |names: &'static str| {
        raw(s
            .http
            .post(s.url("/"))
            .json(&json!({"user": "demo", "function": "files", "input_data": names})))
    };
    let r = read("/tmp/a /tmp/c fn.py").await;
    assert_eq!((r.status, r.text()), (200, format!("A|C|{}", &code[..20])));
    // Uploaded while the container is warm: the same.
    for (path, body) in [("/tmp/c/d", "D"), ("/tmp/e", "E"), ("fn.py", "again")] {
        let r = put(path, body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = read("/tmp/c /tmp/e fn.py").await;
    assert_eq!((r.status, r.text()), (200, format!("C|E|{}", &code[..20])));
    // What was stored is still there for GET /file.
    let r = raw(s.http.get(s.url("/file")).header("FilePath", "fn.py")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "again"));
    s.stop().await;
}

#[tokio::test]
async fn state_has_a_quota_per_user() {
    let s = Server::start().await;
    // Writes new keys until one is refused: the function sees why.
    let code = r#"from pyfaasm.core import write_state, write_output


def faasm_main():
    n = 0
    try:
        while n < 20000:
            write_state("k{}".format(n), b"v")
            n += 1
        said = "never refused"
    except RuntimeError as e:
        said = str(e)
    write_output("{} {}".format(n, said).encode())
"#;
    let d = s
        .put(
            "/functions/demo/fill",
            &json!({"runtime": "python", "code": code, "handler": "fn.py:faasm_main",
                    "timeout": 300}),
        )
        .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let r = post(&s, &json!({"user": "demo", "function": "fill"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("10000 pyfaasm.core: write_state: "),
        "{}",
        r.text()
    );
    assert!(r.text().contains("10000 keys"), "{}", r.text());
    // Over HTTP: a new key is refused (413); an existing one may still change; another
    // user's state is its own.
    raw(s.http.put(s.url("/s/demo/one_more")).body("x"))
        .await
        .assert_error(413, "payload_too_large", None);
    let r = raw(s.http.put(s.url("/s/demo/k0")).body("changed")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw(s.http.put(s.url("/s/other/k0")).body("x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await;
}
