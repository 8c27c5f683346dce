//! `GET /fn/ws` end to end, with tokio-tungstenite as the client.

mod common;

use std::collections::HashMap;

use common::{next_json, send_json, sh, stored_events, Server, Ws};
use futures_util::StreamExt;
use serde_json::{json, Value};

const TERMINAL: [&str; 4] = ["FINISHED", "FAILED", "CANCELLED", "EXPIRED"];

/// A server whose tasks fail at once (no Docker engine there): state changes at database
/// speed, for tests about the event stream itself.
async fn dockerless(tweak: impl FnOnce(&mut ufaas::config::ServeConfig)) -> Server {
    Server::start_with(|c| {
        c.docker_host = Some("unix:///nonexistent/docker.sock".into());
        tweak(c);
    })
    .await
}

/// Reads state events until `task` reaches a terminal state; returns them in order.
async fn states_until_end(ws: &mut Ws, task: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while let Some(ev) = next_json(ws, 120).await {
        if ev["event"] == "state" && ev["task_id"] == task {
            let end = TERMINAL.contains(&ev["state"].as_str().unwrap_or_default());
            seen.push(ev);
            if end {
                return seen;
            }
        }
    }
    panic!("socket closed before {task} ended; saw {seen:?}");
}

#[tokio::test]
async fn a_task_s_full_event_sequence_arrives_in_order_with_output() {
    let server = Server::start().await;
    let mut ws = server.ws("output=true").await;
    let id = server.submit(&sh("echo one; echo two >&2")).await;
    let mut states = Vec::new();
    let mut output = String::new();
    let mut last_seq = 0;
    while let Some(ev) = next_json(&mut ws, 120).await {
        if ev["task_id"] != id.as_str() {
            continue;
        }
        match ev["event"].as_str() {
            Some("output") => output.push_str(&format!(
                "{}:{}",
                ev["stream"].as_str().unwrap_or("?"),
                ev["data"].as_str().unwrap_or("")
            )),
            Some("state") => {
                let seq = ev["seq"].as_i64().unwrap_or(-1);
                assert!(seq > last_seq, "seq must increase: {seq} after {last_seq}");
                last_seq = seq;
                assert_eq!(ev["task"]["id"], id.as_str());
                assert_eq!(ev["task"]["state"], ev["state"]);
                assert!(ev["at"].as_str().is_some_and(|a| a.ends_with('Z')));
                assert!(
                    ev["task"].get("stdout").is_none(),
                    "summaries carry no output"
                );
                let st = ev["state"].as_str().unwrap_or_default().to_string();
                states.push(st.clone());
                if TERMINAL.contains(&st.as_str()) {
                    break;
                }
            }
            other => panic!("unexpected frame {other:?}: {ev}"),
        }
    }
    assert_eq!(
        states,
        ["RECEIVED", "PENDING", "STARTING", "RUNNING", "FINISHED"]
    );
    assert!(
        output.contains("stdout:one\n") && output.contains("stderr:two\n"),
        "output came before the end: {output:?}"
    );
    let stored: Vec<String> = stored_events(&server.db, Some(&id))
        .await
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(stored, states);
    server.stop().await;
}

#[tokio::test]
async fn resuming_with_since_misses_nothing_and_repeats_nothing() {
    let server = Server::start_with(|c| c.max_concurrent = 3).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(server.submit(&sh(&format!("echo {i}"))).await);
    }
    // Read a few events, drop the connection, resume from the last seq: again and again
    // while the tasks run.
    let mut seen: Vec<i64> = Vec::new();
    let mut ended = 0;
    let mut since = 0;
    let mut round = 0usize;
    while ended < ids.len() {
        round += 1;
        let mut ws = server.ws(&format!("since={since}")).await;
        let take = 1 + round % 4;
        for _ in 0..take {
            let Some(ev) = next_json(&mut ws, 120).await else {
                break;
            };
            let seq = ev["seq"].as_i64().expect("state events only");
            seen.push(seq);
            since = seq;
            if TERMINAL.contains(&ev["state"].as_str().unwrap_or_default()) {
                ended += 1;
            }
        }
        drop(ws);
    }
    let stored: Vec<i64> = stored_events(&server.db, None)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        seen,
        stored[..seen.len()].to_vec(),
        "every stored event once, in order"
    );
    assert_eq!(seen.len(), ids.len() * 5);
    server.stop().await;
}

#[tokio::test]
async fn replay_then_live_has_no_gap_or_duplicate_at_the_seam() {
    let server = dockerless(|_| {}).await;
    for _ in 0..5 {
        server.submit(&sh("true")).await;
    }
    let first_batch = 5 * 4;
    // Wait until the first batch is all stored, then subscribe from 0 while more tasks go.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored_events(&server.db, None).await.len() < first_batch {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first batch never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let submitter = {
        let base = server.base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..20 {
                let r = http
                    .post(format!("{base}/fn"))
                    .json(&sh("true"))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
        })
    };
    let mut ws = server.ws("since=0").await;
    let total = (5 + 20) * 4;
    let mut seqs = Vec::new();
    while seqs.len() < total {
        let ev = next_json(&mut ws, 60).await.expect("open");
        seqs.push(ev["seq"].as_i64().expect("seq"));
    }
    submitter.await.expect("submitter");
    let expected: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(seqs, expected);
    server.stop().await;
}

#[tokio::test]
async fn task_filters_and_subscribe() {
    let server = dockerless(|_| {}).await;
    let a = server.submit(&sh("true")).await;
    let b = server.submit(&sh("true")).await;
    server.wait_ended(&b).await;
    let mut only_a = server.ws(&format!("since=0&task={a}")).await;
    let got = states_until_end(&mut only_a, &a).await;
    assert_eq!(got.len(), 4);
    // Replay of a filtered connection skips b entirely; subscribe adds b for live events.
    send_json(
        &mut only_a,
        &json!({"op": "subscribe", "tasks": [b], "ref": 1}),
    )
    .await;
    let reply = next_json(&mut only_a, 10).await.expect("reply");
    assert_eq!(
        (reply["event"].as_str(), reply["ref"].as_i64()),
        (Some("subscribed"), Some(1))
    );
    let c = server.submit(&sh("true")).await;
    send_json(&mut only_a, &json!({"op": "ping"})).await;
    let pong = next_json(&mut only_a, 10).await.expect("pong");
    assert_eq!(
        pong["event"], "pong",
        "no event of c ({c}) may come: {pong}"
    );
    let mut two = server.ws(&format!("since=0&task={a}&task={b}")).await;
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for _ in 0..8 {
        let ev = next_json(&mut two, 10).await.expect("event");
        *per_task
            .entry(ev["task_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_task, HashMap::from([(a.clone(), 4), (b.clone(), 4)]));
    server.stop().await;
}

#[tokio::test]
async fn submit_cancel_and_bad_frames_over_the_socket() {
    let server = Server::start_with(|c| c.max_concurrent = 1).await;
    let blocker = server.submit(&sh("sleep 60")).await;
    server.wait_state(&blocker, "RUNNING").await;
    let mut ws = server.ws(&format!("task={blocker}")).await;

    send_json(
        &mut ws,
        &json!({"op": "submit", "ref": "r1", "spec": sh("echo queued")}),
    )
    .await;
    let reply = next_json(&mut ws, 10).await.expect("reply");
    assert_eq!(
        (reply["event"].as_str(), reply["ref"].as_str()),
        (Some("submitted"), Some("r1")),
        "{reply}"
    );
    let queued = reply["task_id"].as_str().unwrap_or_default().to_string();
    // The filtered connection now follows the task it submitted.
    for want in ["RECEIVED", "PENDING"] {
        let ev = next_json(&mut ws, 10).await.expect("event");
        assert_eq!(
            (ev["task_id"].as_str(), ev["state"].as_str()),
            (Some(queued.as_str()), Some(want))
        );
    }

    send_json(
        &mut ws,
        &json!({"op": "submit", "ref": "r2", "spec": {"task_name": "x", "image": "BAD!"}}),
    )
    .await;
    let err = next_json(&mut ws, 10).await.expect("reply");
    assert_eq!(
        (
            err["event"].as_str(),
            err["ref"].as_str(),
            err["code"].as_str(),
            err["field"].as_str()
        ),
        (
            Some("error"),
            Some("r2"),
            Some("invalid_image"),
            Some("image")
        ),
        "{err}"
    );

    for (frame, code) in [
        ("not json", "invalid_message"),
        ("[1]", "invalid_message"),
        (r#"{"op": "dance"}"#, "unknown_op"),
        (r#"{"no": "op"}"#, "missing_field"),
        (r#"{"op": "cancel", "id": "nope"}"#, "invalid_message"),
        (
            r#"{"op": "subscribe", "tasks": ["nope"]}"#,
            "invalid_message",
        ),
        (r#"{"op": "submit"}"#, "missing_field"),
    ] {
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
            .await
            .expect("send");
        let e = next_json(&mut ws, 10)
            .await
            .expect("the connection stays up");
        assert_eq!(
            (e["event"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}: {e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Cancel the queued task, then the running one, over the socket.
    send_json(&mut ws, &json!({"op": "cancel", "id": queued, "ref": "c1"})).await;
    let mut got_reply = false;
    let mut got_event = false;
    while !(got_reply && got_event) {
        let ev = next_json(&mut ws, 10).await.expect("frame");
        match ev["event"].as_str() {
            Some("cancelled") => {
                assert_eq!(
                    (ev["ref"].as_str(), ev["state"].as_str()),
                    (Some("c1"), Some("CANCELLED"))
                );
                got_reply = true;
            }
            Some("state") => {
                assert_eq!(
                    (ev["task_id"].as_str(), ev["state"].as_str()),
                    (Some(queued.as_str()), Some("CANCELLED"))
                );
                got_event = true;
            }
            _ => panic!("unexpected {ev}"),
        }
    }
    send_json(&mut ws, &json!({"op": "cancel", "id": blocker})).await;
    let states = states_until_end(&mut ws, &blocker).await;
    assert_eq!(
        states.last().map(|e| e["state"].clone()),
        Some(json!("CANCELLED"))
    );
    send_json(&mut ws, &json!({"op": "cancel", "id": blocker, "ref": 9})).await;
    loop {
        let e = next_json(&mut ws, 10).await.expect("frame");
        if e["event"] == "error" {
            assert_eq!(
                (e["code"].as_str(), e["ref"].as_i64()),
                (Some("already_ended"), Some(9))
            );
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_lags_while_a_fast_one_sees_everything() {
    let server = dockerless(|c| {
        c.ws_queue = 64;
        c.socket_send_buffer = 8192;
    })
    .await;
    // The slow reader's socket has a tiny receive buffer and is never read until the end,
    // so its session blocks on write and falls behind the broadcast.
    let addr = server.base.trim_start_matches("http://").to_string();
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(2048).expect("rcvbuf");
    let stream = sock
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{addr}/fn/ws"), stream)
        .await
        .expect("slow ws");
    let mut fast = server.ws("").await;
    let tasks = 150;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < tasks * 4 {
            match next_json(&mut fast, 60).await {
                Some(ev) if ev["event"] == "state" => seqs.push(ev["seq"].as_i64().unwrap_or(-1)),
                Some(ev) => panic!("fast reader got {ev}"),
                None => panic!("fast reader closed after {} events", seqs.len()),
            }
        }
        seqs
    });
    for _ in 0..tasks {
        server.submit(&sh("true")).await;
    }
    let seqs = reader.await.expect("fast reader");
    assert_eq!(
        seqs,
        (1..=(tasks * 4) as i64).collect::<Vec<_>>(),
        "fast reader saw every event in order"
    );
    // The slow one was cut off: what it has ends with `lagged`, then the close.
    let mut last = None;
    let mut frames = 0;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), slow.next()).await;
        match next {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                frames += 1;
                last = Some(t.to_string());
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => break,
            Err(_) => panic!("the slow reader was never cut off; {frames} frames, last {last:?}"),
        }
    }
    assert_eq!(
        last.as_deref(),
        Some(r#"{"event":"lagged"}"#),
        "after {frames} frames"
    );
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_subscribers_all_receive_an_event() {
    let server = dockerless(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(server.ws("").await);
    }
    let id = server.submit(&sh("true")).await;
    let mut handles = Vec::new();
    for mut ws in clients {
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let ev = next_json(&mut ws, 30).await.expect("event");
            (ev["task_id"] == id.as_str() && ev["state"] == "RECEIVED") as usize
        }));
    }
    let mut got = 0;
    for h in handles {
        got += h.await.expect("client");
    }
    assert_eq!(got, 200);
    server.stop().await;
}

#[tokio::test]
async fn since_older_than_the_kept_events_gets_resync_required() {
    let server = dockerless(|c| {
        c.event_retention = ufaas::store::Retention::Count(4);
        c.event_prune_every = 1;
    })
    .await;
    for _ in 0..5 {
        server.submit(&sh("true")).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut ws = server.ws("since=1").await;
        let first = next_json(&mut ws, 10).await;
        if first
            .as_ref()
            .is_some_and(|f| f["event"] == "resync_required")
        {
            assert!(
                next_json(&mut ws, 10).await.is_none(),
                "closed after resync_required"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never pruned; first frame {first:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        stored_events(&server.db, None).await.len() <= 8,
        "pruned to about the retention"
    );
    // A since inside what is kept still replays.
    let kept = stored_events(&server.db, None).await;
    let from = kept[0].0;
    let mut ws = server.ws(&format!("since={from}")).await;
    let ev = next_json(&mut ws, 10).await.expect("replay");
    assert!(ev["seq"].as_i64() > Some(from));
    server.stop().await;
}

#[tokio::test]
async fn bad_websocket_requests_are_refused_before_the_upgrade() {
    let server = Server::start().await;
    for (q, field) in [
        ("since=-1", "since"),
        ("since=x", "since"),
        ("task=nope", "task"),
        ("output=maybe", "output"),
    ] {
        let url = format!("{}/fn/ws?{q}", server.base.replace("http://", "ws://"));
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{q}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .expect("JSON error");
                assert_eq!(
                    (body["code"].as_str(), body["field"].as_str()),
                    (Some("invalid_query"), Some(field))
                );
            }
            other => panic!("{q}: expected a 400, got {:?}", other.map(|_| ())),
        }
    }
    let r = server.get("/fn/ws").await;
    r.assert_error(426, "upgrade_required", None);
    server.stop().await;
}

/// `ufaas run --follow SPEC` against `base`.
async fn run_follow(base: &str, spec: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"))
        .args(["run", "--follow", "--server", base])
        .arg(spec)
        .output()
        .await
        .expect("run ufaas")
}

#[tokio::test]
async fn cli_run_follow_streams_output_and_exits_with_the_task_code() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        sh("echo out-line; echo err-line >&2; exit 7").to_string(),
    )
    .expect("write");
    let out = run_follow(&server.base, &spec).await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-line\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("err-line") && err.contains("FAILED"), "{err}");

    // A refused spec exits 2 with the server's reason.
    std::fs::write(&spec, r#"{"task_name": "x"}"#).expect("write");
    let out = run_follow(&server.base, &spec).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image"));

    // watch --json --since 0 prints stored events as JSON lines.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"))
        .args(["watch", "--json", "--since", "0", "--server", &server.base])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut states = Vec::new();
    while states.len() < 5 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("a line");
        let ev: Value = serde_json::from_str(&line).expect("JSON line");
        states.push(ev["state"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        states,
        ["RECEIVED", "PENDING", "STARTING", "RUNNING", "FAILED"]
    );
    child.kill().await.expect("kill watch");
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_two_ping_intervals() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = dockerless(|c| c.ws_ping = 1).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // A hand-made handshake, then silence: the pings are never answered.
    let mut raw = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /fn/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.expect("handshake");
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), raw.read(&mut buf))
            .await
            .expect("the server closes a silent peer")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "upgraded first"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "not before two intervals"
    );
    server.stop().await;
}
