//! Crashes and faults: the server killed with SIGKILL mid-task, a container removed from
//! outside. Nothing accepted is lost, nothing stays unfinished, nothing leaks, and the event
//! log has no gap.

mod common;

use std::process::Stdio;

use common::{sh, stored_events, Server};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `ufaas serve` as a child process on a free port, with the database at `db`.
async fn spawn_server(db: &std::path::Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent",
            "1",
            // tinyFaaS's doors have fixed default ports, which servers running side by side
            // cannot share.
            "--gateway-listen",
            "off",
            "--grpc-listen",
            "off",
            "--coap-listen",
            "off",
            "--db",
        ])
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ufaas serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server says where it listens")
        .expect("read")
        .expect("a line");
    let base = line.rsplit(' ').next().unwrap_or_default().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    (child, base)
}

/// Polls `GET {base}/fn/{id}` of a server run as a child until `pred` holds (30 s at most).
async fn poll_child(
    base: &str,
    id: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/fn/{id}")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if pred(&v) {
                    return v;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never got there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn post_child(base: &str, spec: serde_json::Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/fn"))
        .json(&spec)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    v["id"].as_str().unwrap_or_default().to_string()
}

/// The record of a running task holds its output as it comes; SIGKILL and a restart lose
/// none of it: what came before the kill, while the server was down, and after.
#[tokio::test]
async fn sigkill_mid_task_then_restart_loses_no_output() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("ufaas.db");
    let (mut child, base) = spawn_server(&db).await;
    let running = post_child(
        &base,
        sh("echo before; sleep 3; echo after; echo err >&2; exit 5"),
    )
    .await;
    let queued = post_child(&base, sh("echo later")).await;
    // Stored while it runs: a RUNNING record shows the output so far.
    let t = poll_child(&base, &running, |t| {
        t["stdout"].as_str().is_some_and(|s| s.contains("before"))
    })
    .await;
    assert_eq!(t["state"], "RUNNING", "{t}");
    child.kill().await.expect("SIGKILL");

    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = db.clone();
    cfg.max_concurrent = 1;
    let server = Server::start_on(cfg, dir).await;
    let t = server.wait_ended(&running).await;
    assert_eq!(
        (
            t["state"].as_str(),
            t["exit_code"].as_i64(),
            t["stdout"].as_str(),
            t["stderr"].as_str()
        ),
        (
            Some("FAILED"),
            Some(5),
            Some("before\nafter\n"),
            Some("err\n")
        ),
        "{t}"
    );
    assert_eq!(t["error"], serde_json::Value::Null, "{t}");
    assert_eq!(t["output_truncated"], false, "{t}");
    assert_eq!(t["container"]["state"], "removed");
    let q = server.wait_ended(&queued).await;
    assert_eq!(
        (q["state"].as_str(), q["stdout"].as_str()),
        (Some("FINISHED"), Some("later\n")),
        "{q}"
    );
    let seqs: Vec<i64> = stored_events(&server.db, None)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "no gap in the event log"
    );
    server.stop().await;
}

/// A task that ends while the server is down: its exit code and all its output (most of it
/// printed while nobody listened) are in the record after the restart.
#[tokio::test]
async fn a_task_that_ends_while_the_server_is_down_keeps_its_output() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("ufaas.db");
    let (mut child, base) = spawn_server(&db).await;
    let script = "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; \
                  i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; \
                  echo bye >&2; touch /tmp/done";
    let id = post_child(&base, sh(script)).await;
    let t = poll_child(&base, &id, |t| {
        t["stdout"].as_str().is_some_and(|s| s.contains("one"))
    })
    .await;
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    child.kill().await.expect("SIGKILL");
    // Let it go on and end while no server listens.
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(docker(&["exec", &cid, "touch", "/tmp/go"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !docker(&["exec", &cid, "test", "-e", "/tmp/done"]) {
        assert!(std::time::Instant::now() < deadline, "the task never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = db.clone();
    let server = Server::start_on(cfg, dir).await;
    let t = server.wait_ended(&id).await;
    let mut want = String::from("one\n");
    for i in 0..2000 {
        want.push_str(&format!("line {i}\n"));
    }
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["exit_code"], 0, "{t}");
    assert_eq!(t["stdout"].as_str(), Some(want.as_str()));
    assert_eq!(t["stderr"], "bye\n");
    server.stop().await;
}

#[tokio::test]
async fn a_container_removed_from_outside_fails_its_task_clearly() {
    let server = Server::start().await;
    let id = server.submit(&sh("sleep 60")).await;
    let t = server.wait_state(&id, "RUNNING").await;
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &cid])
        .output();
    assert!(out.is_ok_and(|o| o.status.success()));
    let t = server.wait_ended(&id).await;
    common::assert_ended(&t, "FAILED", "removed from outside");
    // The server goes on.
    let t = server
        .run(&json!({"task_name": "after", "image": common::BUSYBOX, "cmd_list": ["true"]}))
        .await;
    assert_eq!(t["state"], "FINISHED");
    server.stop().await;
}

/// Under load: tasks submitted while the server is killed with SIGKILL three times (each
/// restart finds work queued, starting and running) all end with every line they printed.
#[tokio::test]
async fn repeated_sigkills_under_load_lose_no_task_and_no_output() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("ufaas.db");
    let (mut child, mut base) = spawn_server(&db).await;
    let sleeps = ["0", "0.2", "0.5", "1"];
    let mut ids = Vec::new();
    for n in 0..48usize {
        let script = format!(
            "echo a{n}; sleep {}; echo b{n} >&2; echo c{n}",
            sleeps[n % sleeps.len()]
        );
        ids.push((post_child(&base, sh(&script)).await, n));
        if n % 12 == 11 && n < 47 {
            // Something is running when the kill comes.
            let (last, _) = &ids[ids.len() - 1];
            poll_child(&base, last, |t| t["state"] != "PENDING").await;
            child.kill().await.expect("SIGKILL");
            (child, base) = spawn_server(&db).await;
        }
    }
    for (id, n) in &ids {
        let t = poll_child(&base, id, |t| {
            matches!(
                t["state"].as_str(),
                Some("FINISHED" | "FAILED" | "CANCELLED" | "EXPIRED")
            )
        })
        .await;
        assert_eq!(
            (
                t["state"].as_str(),
                t["exit_code"].as_i64(),
                t["stdout"].as_str(),
                t["stderr"].as_str()
            ),
            (
                Some("FINISHED"),
                Some(0),
                Some(format!("a{n}\nc{n}\n").as_str()),
                Some(format!("b{n}\n").as_str())
            ),
            "task {n}: {t}"
        );
    }
    child.kill().await.expect("SIGKILL");
    // The last server's containers go with a clean start and stop on the same database.
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = db.clone();
    Server::start_on(cfg, dir).await.stop().await;
}
