//! Hostile handlers and callers against a real server and real containers: each one costs at
//! most its own call, and the next call is fine.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use common::*;

async fn deploy(s: &Server, name: &str, body: Value) {
    let r = s.put(&format!("/functions/{name}"), &body).await;
    assert!(
        r.status == 201 || r.status == 200,
        "deploy {name}: {} {}",
        r.status,
        r.body
    );
}

/// Status, content type, task id and body of a call.
async fn call(s: &Server, name: &str, input: &str) -> (u16, String, String, Vec<u8>) {
    let resp = s
        .http
        .post(s.url(&format!("/functions/{name}/invoke")))
        .body(input.to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ctype, id) = (header("content-type"), header("x-ufaas-task-id"));
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, ctype, id, body)
}

async fn ok_after(s: &Server, name: &str) {
    let (status, _, _, body) = call(s, name, "ok").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "fine".to_string()),
        "the call after the hostile one"
    );
}

/// A python function that misbehaves when its input says how, and answers "fine" to "ok".
const PY: &str = r#"
import os, sys, subprocess, time
def fn(input):
    if input == 'ok':
        return 'fine'
    if input == 'hog':
        blocks = []
        while True:
            blocks.append(b'x' * (16 << 20))
    if input == 'close':
        os.closerange(0, 4096)
        return 'closed'
    if input == 'flood':
        chunk = b'y' * 65536
        for _ in range(400):
            os.write(1, chunk)
        return 'flooded'
    if input == 'logs':
        line = 'z' * 1000
        for _ in range(5000):
            print(line)
        return 'logged'
    if input == 'daemon':
        subprocess.Popen(['sh', '-c', 'while true; do echo noise >&2; sleep 0.01; done'], start_new_session=True)
        return 'forked'
    if input == 'suicide':
        os.kill(os.getpid(), 9)
    if input == 'bytes':
        return b'\xff\xfe\x00ok'
    if input == 'huge':
        return 'x' * (100 << 20)
    if input == 'big':
        return 'b' * (5 << 20)
    return 'unknown'
"#;

#[tokio::test]
async fn hostile_handlers_cost_one_call_at_most() {
    let s = Server::start().await;
    deploy(
        &s,
        "h/py",
        json!({"runtime": "python", "timeout": 20, "limits": {"memory_mb": 128}, "code": PY}),
    )
    .await;

    // A memory hog is killed by its container's limit; the container is replaced.
    let (status, _, id, body) = call(&s, "h/py", "hog").await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let t = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(t["state"], "FAILED", "{t}");
    ok_after(&s, "h/py").await;

    // Closing every descriptor leaves the runtime unable to answer: one call lost.
    let (status, _, _, _) = call(&s, "h/py", "close").await;
    assert!(status == 500 || status == 200, "close answered {status}");
    ok_after(&s, "h/py").await;

    // 25 MiB straight to fd 1: the logs are capped, the answer is whole.
    let (status, _, id, body) = call(&s, "h/py", "flood").await;
    assert_eq!((status, body.as_slice()), (200, b"flooded".as_slice()));
    let t = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(
        t["output_truncated"],
        true,
        "{}",
        t["stderr"].as_str().map(str::len).unwrap_or(0)
    );
    assert!(t["stderr"].as_str().map(str::len).unwrap_or(0) <= 1 << 20);
    ok_after(&s, "h/py").await;

    // 5 MB of prints: capped in the record, never in the answer.
    let (status, _, id, body) = call(&s, "h/py", "logs").await;
    assert_eq!((status, body.as_slice()), (200, b"logged".as_slice()));
    let t = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(t["output_truncated"], true);
    assert!(t["stdout"].as_str().map(str::len).unwrap_or(0) <= 1 << 20);

    // A daemon left behind printing for ever does not leak into later calls' records.
    let (status, _, _, body) = call(&s, "h/py", "daemon").await;
    assert_eq!((status, body.as_slice()), (200, b"forked".as_slice()));
    let (status, _, id, _) = call(&s, "h/py", "ok").await;
    assert_eq!(status, 200);
    let t = s.get(&format!("/fn/{id}")).await.body;
    assert!(
        t["stderr"].as_str().map(str::len).unwrap_or(0) < 4096,
        "{t}"
    );

    // Killing its own runtime costs that call.
    let (status, _, _, body) = call(&s, "h/py", "suicide").await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    ok_after(&s, "h/py").await;

    // Bytes that are not UTF-8 come back as they are; the record keeps them in base64.
    let (status, ctype, id, body) = call(&s, "h/py", "bytes").await;
    assert_eq!(
        (status, body.as_slice()),
        (200, b"\xff\xfe\x00ok".as_slice())
    );
    assert_eq!(ctype, "application/octet-stream");
    let t = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(t["result"]["encoding"], "base64", "{t}");

    // 100 MiB of output is over the cap: a clear error, and the runtime lives on (in a
    // container with room for it: the one above would run out of memory first).
    deploy(
        &s,
        "h/huge",
        json!({"runtime": "python", "limits": {"memory_mb": 1024}, "code": PY}),
    )
    .await;
    let (status, _, _, body) = call(&s, "h/huge", "huge").await;
    assert_eq!(status, 500);
    let err: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(err["code"], "function_error");
    assert!(
        err["message"].as_str().unwrap_or("").contains("cap"),
        "{err}"
    );
    ok_after(&s, "h/huge").await;
    s.stop().await;
}

#[tokio::test]
async fn a_caller_that_never_reads_does_not_hold_the_function() {
    let s = Server::start().await;
    deploy(
        &s,
        "h/big",
        json!({"runtime": "python", "code": PY, "max_containers": 1}),
    )
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    sock.write_all(
        b"POST /functions/h/big/invoke HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nbig",
    )
    .await
    .expect("write");
    // The call is recorded as answered although nobody reads its 5 MB.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = s.get("/functions/h/big").await.body;
        if f["invocations"]["by_state"]["FINISHED"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unread call never finished: {f}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok_after(&s, "h/big").await;
    drop(sock);
    s.stop().await;
}

#[tokio::test]
async fn two_hundred_calls_share_two_containers() {
    let s = Server::start().await;
    deploy(
        &s,
        "h/many",
        json!({"runtime": "python", "warm": 1, "max_containers": 2, "max_queue": 300,
               "code": "import time\ndef fn(input):\n    time.sleep(0.01)\n    return input\n"}),
    )
    .await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let req = s
            .http
            .post(s.url("/functions/h/many/invoke"))
            .body(format!("call-{i}"));
        calls.push(tokio::spawn(async move {
            let r = req.send().await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    let mut peak = 0;
    for (i, c) in calls.into_iter().enumerate() {
        let (status, text) = c.await.expect("call");
        assert_eq!((status, text), (200, format!("call-{i}")));
        let counts = s.get("/functions/h/many").await.body["containers"].clone();
        let up = counts["ready"].as_u64().unwrap_or(0) + counts["busy"].as_u64().unwrap_or(0);
        peak = peak.max(up);
    }
    assert!(peak <= 2, "more than max_containers: {peak}");
    let f = s.get("/functions/h/many").await.body;
    assert_eq!(f["invocations"]["by_state"]["FINISHED"], 200, "{f}");
    s.stop().await;
}

#[tokio::test]
async fn scale_up_while_calls_wait_then_back_to_warm_when_idle() {
    let s = Server::start_with(|c| c.keep_alive = 1).await;
    deploy(
        &s,
        "h/scale",
        json!({"runtime": "python", "warm": 1, "max_containers": 3,
               "code": "import time\ndef fn(input):\n    time.sleep(1.5)\n    return 'done'\n"}),
    )
    .await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let req = s.http.post(s.url("/functions/h/scale/invoke")).body("x");
        calls.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = s.get("/functions/h/scale").await.body["containers"].clone();
        if c["busy"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second container while calls waited: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in calls {
        assert_eq!(c.await.ok().and_then(Result::ok), Some(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = s.get("/functions/h/scale").await.body["containers"].clone();
        if c["ready"] == 1 && c["busy"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle containers above warm stayed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_replace_under_load_fails_no_call_and_mixes_no_versions() {
    let s = Server::start().await;
    let code = |v: u32| {
        json!({"runtime": "python", "warm": 1, "max_containers": 2,
               "code": format!("import time\nV = {v}\ndef fn(input):\n    time.sleep(0.02)\n    return str(V)\n")})
    };
    deploy(&s, "h/live", code(1)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let http = s.http.clone();
        let url = s.url("/functions/h/live/invoke");
        let base = s.base.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.post(&url).body("x").send().await.expect("call");
                let status = r.status().as_u16();
                let id = r
                    .headers()
                    .get("x-ufaas-task-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(status, 200, "a call failed during a replace: {text}");
                let rec: Value = http
                    .get(format!("{base}/fn/{id}"))
                    .send()
                    .await
                    .expect("record")
                    .json()
                    .await
                    .unwrap_or(Value::Null);
                assert_eq!(
                    rec["function"]["version"].to_string(),
                    text,
                    "the answer and the record name different versions"
                );
                seen.push(text);
            }
            seen
        }));
    }
    for v in 2..=4 {
        deploy(&s, "h/live", code(v)).await;
    }
    // Every client sees the last version before it stops.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _, body) = call(&s, "h/live", "x").await;
        if status == 200 && body == b"4" {
            break;
        }
        assert!(Instant::now() < deadline, "version 4 never answered");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let seen = c.await.expect("client");
        total += seen.len();
        let mut last = 0;
        for v in seen {
            let v: u32 = v.parse().unwrap_or(0);
            assert!(v >= last, "a client went back from version {last} to {v}");
            last = v;
        }
    }
    assert!(total > 0);
    s.stop().await;
}
