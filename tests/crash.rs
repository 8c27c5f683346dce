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

#[tokio::test]
async fn sigkill_mid_task_then_restart_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("ufaas.db");
    let (mut child, base) = spawn_server(&db).await;
    let http = reqwest::Client::new();
    let post = |spec: serde_json::Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/fn"))
                .json(&spec)
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.expect("json");
            v["id"].as_str().unwrap_or_default().to_string()
        }
    };
    // Running when the server dies (its first output has come back, so the command really
    // runs); it ends on its own a little later.
    let url = format!("{}/fn/ws?output=true", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    let running = post(sh("echo begun; sleep 2; exit 5")).await;
    let queued = post(sh("echo later")).await;
    loop {
        let ev = common::next_json(&mut ws, 60)
            .await
            .expect("events until the output");
        if ev["event"] == "output" && ev["task_id"] == running.as_str() {
            break;
        }
    }
    child.kill().await.expect("SIGKILL");

    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = db.clone();
    cfg.max_concurrent = 1;
    let server = Server::start_on(cfg, dir).await;
    let t = server.wait_ended(&running).await;
    assert_eq!(
        (t["state"].as_str(), t["exit_code"].as_i64()),
        (Some("FAILED"), Some(5)),
        "{t}"
    );
    assert!(
        t["error"].as_str().is_some_and(|e| e.contains("restarted")),
        "{t}"
    );
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
