//! The `/fn` API end to end: real server on port 0, real SQLite file, real containers.

mod common;

use std::collections::HashSet;

use common::{container_exists, sh, Server, BUSYBOX, PYTHON};
use serde_json::{json, Value};

/// The states a task went through, read from the events table of the server's database.
async fn stored_states(server: &Server, id: &str) -> Vec<String> {
    let events = common::stored_events(&server.db, Some(id)).await;
    events.into_iter().map(|(_, _, state)| state).collect()
}

#[tokio::test]
async fn a_task_runs_and_every_transition_is_stored() {
    let server = Server::start().await;
    let r = server
        .post(
            "/fn",
            &json!({
                "task_name": "hello world",
                "image": PYTHON,
                "cmd_list": ["python3", "hello.py", "arg one"],
                "pwd": "/work",
                "env": {"GREETING": "hi", "N": 3, "FLAG": true},
                "resource_list": [{"dest": "hello.py", "data": "import os, sys\nprint(os.environ['GREETING'], os.environ['N'], os.environ['FLAG'], sys.argv[1], os.getcwd())\nprint('oops', file=sys.stderr)\n"}]
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.id();
    assert_eq!(r.location.as_deref(), Some(format!("/fn/{id}").as_str()));
    assert_eq!(r.body["task_name"], "hello_world");
    let t = server.wait_ended(&id).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["stdout"], "hi 3 true arg one /work\n");
    assert_eq!(t["stderr"], "oops\n");
    assert_eq!(t["output_truncated"], false);
    assert_eq!(t["error"], Value::Null);
    assert_eq!(t["container"]["state"], "removed");
    assert_eq!(t["locality"], Value::Null);
    for key in ["created_at", "started_at", "finished_at"] {
        assert!(
            t[key].as_str().is_some_and(|s| s.ends_with('Z')),
            "{key}: {t}"
        );
    }
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !cid.is_empty() && common::wait_container_gone(&cid).await,
        "container {cid} should be gone"
    );
    assert_eq!(
        stored_states(&server, &id).await,
        ["RECEIVED", "PENDING", "STARTING", "RUNNING", "FINISHED"]
    );
    server.stop().await;
}

#[tokio::test]
async fn non_zero_exit_is_failed_with_null_error_and_wait_answers_200() {
    let server = Server::start().await;
    let t = server.run(&sh("echo out; echo err >&2; exit 3")).await;
    assert_eq!(t["state"], "FAILED");
    assert_eq!(t["exit_code"], 3);
    assert_eq!(t["error"], Value::Null);
    assert_eq!(
        (t["stdout"].as_str(), t["stderr"].as_str()),
        (Some("out\n"), Some("err\n"))
    );
    server.stop().await;
}

#[tokio::test]
async fn wait_that_passes_first_answers_202_with_location() {
    let server = Server::start().await;
    let r = server.post("/fn?wait=0.2", &sh("sleep 30")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.id();
    assert_eq!(r.location.as_deref(), Some(format!("/fn/{id}").as_str()));
    assert!(!["FINISHED", "FAILED"].contains(&r.body["state"].as_str().unwrap_or("")));
    assert_eq!(
        server.delete(&format!("/fn/{id}")).await.body["state"],
        "CANCELLED"
    );
    server.stop().await;
}

#[tokio::test]
async fn stdin_tmpfs_base64_and_archives_reach_the_command() {
    let server = Server::start().await;
    // A tar.gz holding app/msg.txt, made here with the tar crate's own writer via ufaas.
    let mut w = ufaas::resources::TarWriter::new();
    w.file("msg.txt", b"from the archive", 0o644).expect("tar");
    w.file("bin/tool.sh", b"#!/bin/sh\necho tool ran\n", 0o755)
        .expect("tar");
    let tar = w.finish().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gz");
    let tgz = gz.finish().expect("gz");
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let t = server
        .run(&json!({
            "task_name": "mix",
            "image": BUSYBOX,
            "cmd_list": ["sh", "-c", "cat; echo; od -An -tx1 blob.bin; cat app/msg.txt; echo; app/bin/tool.sh; echo x > /scratch/f && grep -c tmpfs /proc/mounts; stat -c %a blob.bin"],
            "pwd": "/job",
            "stdin": "line from stdin",
            "resource_list": [
                {"dest": "blob.bin", "data": b64(&[0, 1, 2, 255]), "encoding": "base64", "mode": "0600"},
                {"dest": "app", "data": b64(&tgz), "encoding": "base64", "extract": true},
                {"dest": "/scratch", "tmpfs": true, "size": 1048576, "mode": "1777"}
            ]
        }))
        .await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    let out = t["stdout"].as_str().unwrap_or_default();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "line from stdin");
    assert_eq!(lines[1], "00 01 02 ff");
    assert_eq!(lines[2], "from the archive");
    assert_eq!(lines[3], "tool ran");
    assert!(lines[4].parse::<u32>().is_ok_and(|n| n >= 1), "{out}");
    assert_eq!(lines[5], "600");
    server.stop().await;
}

#[tokio::test]
async fn uri_resources_are_fetched_and_checked() {
    use warp::Filter;
    let route = warp::path!("data.txt").map(|| "fetched bytes");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    // Loopback is refused unless the operator allows it.
    let server = Server::start_with(|c| c.allow_fetch = vec!["127.0.0.1".into()]).await;
    let url = format!("http://{addr}/data.txt");
    let good = "b7e8d0bd2d4b3d4d0ab4e9e3f3d6f4e0c6f7ad0c5d47b4a1a0e5c2f4dd3a8a0a";
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"fetched bytes"))
    };
    assert_ne!(digest, good);
    let spec = |sha: &str| {
        json!({"task_name": "uri", "image": BUSYBOX, "cmd_list": ["cat", "/in/d.txt"],
               "resource_list": [{"dest": "/in/d.txt", "uri": url, "sha256": sha}]})
    };
    let t = server.run(&spec(&digest)).await;
    assert_eq!(
        (t["state"].as_str(), t["stdout"].as_str()),
        (Some("FINISHED"), Some("fetched bytes")),
        "{t}"
    );
    let t = server.run(&spec(good)).await;
    common::assert_ended(&t, "FAILED", "sha256");
    let mut missing = spec(&digest);
    missing["resource_list"][0]["uri"] = json!(format!("http://{addr}/nope"));
    let t = server.run(&missing).await;
    common::assert_ended(&t, "FAILED", "404");
    server.stop().await;
}

#[tokio::test]
async fn output_is_capped_and_flagged() {
    let server = Server::start_with(|c| c.max_output_bytes = 1000).await;
    let t = server.run(&sh("yes | head -c 50000; echo short >&2")).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["stdout"].as_str().map(str::len), Some(1000));
    assert_eq!(t["stderr"], "short\n");
    assert_eq!(t["output_truncated"], true);
    server.stop().await;
}

#[tokio::test]
async fn timeout_and_ttl_end_tasks_expired() {
    let server = Server::start().await;
    let mut spec = sh("sleep 60");
    spec["timeout"] = json!(1);
    let t = server.run(&spec).await;
    common::assert_ended(&t, "EXPIRED", "timed out");
    assert_eq!(t["container"]["state"], "removed");
    let mut spec = sh("sleep 60");
    spec["ttl"] = json!(1);
    let t = server.run(&spec).await;
    common::assert_ended(&t, "EXPIRED", "ttl");
    server.stop().await;
}

#[tokio::test]
async fn a_missing_image_fails_with_a_clear_error() {
    let server = Server::start().await;
    let t = server
        .run(&json!({"task_name": "x", "image": "ufaas/does-not-exist:1", "cmd_list": ["true"]}))
        .await;
    assert_eq!(t["state"], "FAILED");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("ufaas/does-not-exist:1") && err.contains("could not be pulled"),
        "{err}"
    );
    let t = server.run(&sh("exec no-such-program")).await;
    assert_eq!(t["state"], "FAILED");
    let t = server
        .run(&json!({"task_name": "x", "image": BUSYBOX, "cmd_list": ["no-such-program"]}))
        .await;
    common::assert_ended(&t, "FAILED", "no-such-program");
    server.stop().await;
}

#[tokio::test]
async fn limits_reach_the_container() {
    let server = Server::start().await;
    let mut spec = sh("cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; \
                       cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes");
    spec["limits"] = json!({"memory_mb": 64, "pids": 32, "cpus": 0.5});
    let t = server.run(&spec).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    let lines: Vec<&str> = t["stdout"].as_str().unwrap_or_default().lines().collect();
    assert_eq!(lines, ["32", &(64u64 << 20).to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn the_queue_holds_priority_order_and_pending_tasks_can_be_updated_and_cancelled() {
    let server = Server::start_with(|c| c.max_concurrent = 1).await;
    let blocker = server.submit(&sh("sleep 60")).await;
    server.wait_state(&blocker, "RUNNING").await;

    let low = server.submit(&sh("echo low")).await;
    let mut high = sh("echo high");
    high["priority"] = json!(10);
    let high = server.submit(&high).await;
    let doomed = server.submit(&sh("echo never")).await;
    let patched = server.submit(&sh("echo before")).await;

    // Full replace of a pending task.
    let r = server
        .put(&format!("/fn/{low}"), &json!({"task_name": "low2", "image": BUSYBOX, "cmd_list": ["echo", "replaced"], "priority": 5}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["task_name"].as_str(), r.body["state"].as_str()),
        (Some("low2"), Some("PENDING"))
    );
    assert_eq!(r.body["spec"]["cmd_list"], json!(["echo", "replaced"]));
    // Merge-patch: only what is given changes; null removes.
    let r = server
        .merge(
            &format!("/fn/{patched}"),
            &json!({"cmd_list": ["sh", "-c", "echo $V"], "env": {"V": "merged"}, "priority": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["spec"]["image"], BUSYBOX);
    assert_eq!(r.body["spec"]["env"]["V"], "merged");
    // Cancelling a queued task is immediate.
    let r = server.delete(&format!("/fn/{doomed}")).await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{}",
        r.body
    );
    let r = server.delete(&format!("/fn/{doomed}")).await;
    r.assert_error(409, "already_ended", None);

    // A started task can no longer be updated.
    let r = server
        .put(&format!("/fn/{blocker}"), &sh("echo late"))
        .await;
    r.assert_error(409, "already_started", None);

    // Filters and paging while things wait.
    let r = server.get("/fn?state=PENDING").await;
    let pending: HashSet<String> = r.body["tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        pending,
        HashSet::from([low.clone(), high.clone(), patched.clone()])
    );
    let r = server.get("/fn?state=running,CANCELLED&limit=1").await;
    assert_eq!(
        r.body["tasks"][0]["id"],
        doomed.as_str(),
        "newest first: {}",
        r.body
    );
    let next = r.body["next"].as_str().unwrap_or_default().to_string();
    let r = server
        .get(&format!(
            "/fn?state=RUNNING,CANCELLED&limit=1&before={next}"
        ))
        .await;
    assert_eq!(r.body["tasks"][0]["id"], blocker.as_str());
    assert_eq!(r.body["next"], Value::Null);
    let r = server.get("/fn?name=low2").await;
    assert_eq!(r.body["tasks"].as_array().map(Vec::len), Some(1));

    // Cancel the running blocker: its process is killed.
    let r = server.delete(&format!("/fn/{blocker}")).await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{}",
        r.body
    );

    let order = [&high, &low, &patched];
    let mut finished = Vec::new();
    for id in order {
        let t = server.wait_ended(id).await;
        assert_eq!(t["state"], "FINISHED", "{t}");
        finished.push((
            t["started_at"].as_str().unwrap_or_default().to_string(),
            t["stdout"].as_str().unwrap_or_default().to_string(),
        ));
    }
    assert_eq!(finished[0].1, "high\n");
    assert_eq!(finished[1].1, "replaced\n");
    assert_eq!(finished[2].1, "merged\n");
    assert!(
        finished[0].0 <= finished[1].0 && finished[1].0 <= finished[2].0,
        "priority order: {finished:?}"
    );
    assert_eq!(
        stored_states(&server, &blocker).await,
        ["RECEIVED", "PENDING", "STARTING", "RUNNING", "CANCELLED"]
    );
    server.stop().await;
}

#[tokio::test]
async fn reuse_hits_a_kept_container_and_misses_a_removed_one() {
    let server = Server::start().await;
    let mut daemon = sh("echo 42 > /state; echo made");
    daemon["is_daemon"] = json!(true);
    let d = server.run(&daemon).await;
    let did = d["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        (d["state"].as_str(), d["container"]["state"].as_str()),
        (Some("FINISHED"), Some("ready")),
        "{d}"
    );
    let cid = d["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(container_exists(&cid));

    let follow = json!({"task_name": "follow", "cmd_list": ["cat", "/state"]});
    let r = server.post(&format!("/fn/{did}?wait=60"), &follow).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["locality"], "hit");
    assert_eq!(r.body["reused_container_of"], did.as_str());
    assert_eq!(r.body["image"], BUSYBOX);
    assert_eq!(r.body["stdout"], "42\n");
    assert_eq!(r.body["container"]["id"], cid.as_str());
    assert_eq!(r.body["container"]["state"], "ready");

    // rm: false keeps a normal task's container too.
    let mut kept = sh("echo kept > /k");
    kept["rm"] = json!(false);
    let k = server.run(&kept).await;
    assert_eq!(k["container"]["state"], "ready");
    let kid = k["id"].as_str().unwrap_or_default().to_string();
    let r = server
        .post(
            &format!("/fn/{kid}?wait=60"),
            &json!({"task_name": "f", "cmd_list": ["cat", "/k"]}),
        )
        .await;
    assert_eq!(
        (r.body["locality"].as_str(), r.body["stdout"].as_str()),
        (Some("hit"), Some("kept\n"))
    );

    // Removing the daemon's container makes the next follow-up a miss in a fresh container.
    let r = server
        .delete(&format!("/fn/{did}?remove_container=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["container"]["state"], "removed");
    assert!(!container_exists(&cid));
    let r = server
        .post(
            &format!("/fn/{did}?wait=60"),
            &json!({"task_name": "f", "cmd_list": ["sh", "-c", "cat /state || echo none"]}),
        )
        .await;
    assert_eq!(r.body["locality"], "miss", "{}", r.body);
    assert_eq!(r.body["stdout"], "none\n");
    assert_ne!(r.body["container"]["id"], cid.as_str());

    // A container removed from outside is a miss too.
    let kcid = k["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &kcid])
        .output();
    assert!(out.is_ok_and(|o| o.status.success()));
    let r = server
        .post(
            &format!("/fn/{kid}?wait=60"),
            &json!({"task_name": "f", "cmd_list": ["true"]}),
        )
        .await;
    assert_eq!(r.body["locality"], "miss", "{}", r.body);

    // Purge forgets a task.
    let r = server.delete(&format!("/fn/{kid}?purge=true")).await;
    assert_eq!(r.status, 200);
    assert_eq!(server.get(&format!("/fn/{kid}")).await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn idle_kept_containers_are_reaped_and_none_outlive_the_server() {
    let server = Server::start_with(|c| c.keep_alive = 1).await;
    let mut daemon = sh("true");
    daemon["is_daemon"] = json!(true);
    let d = server.run(&daemon).await;
    let id = d["id"].as_str().unwrap_or_default().to_string();
    let t = server
        .wait_until(&id, 30, |t| t["container"]["state"] == "removed")
        .await;
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!container_exists(&cid));
    server.stop().await;

    let server = Server::start().await;
    let d = server.run(&daemon).await;
    let cid = d["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(container_exists(&cid));
    let running = server.submit(&sh("sleep 60")).await;
    let r = server.wait_state(&running, "RUNNING").await;
    let rcid = r["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dir = server.stop().await;
    assert!(!container_exists(&cid), "kept container leaked");
    assert!(!container_exists(&rcid), "running container leaked");

    // The records survive a restart, and the interrupted task has ended.
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    let server = Server::start_on(cfg, dir).await;
    let t = server.get(&format!("/fn/{running}")).await;
    assert_eq!(t.body["state"], "FAILED", "{}", t.body);
    assert!(
        t.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("shut down")),
        "{}",
        t.body
    );
    server.stop().await;
}

#[tokio::test]
async fn queued_tasks_survive_a_restart_and_then_run() {
    let server = Server::start_with(|c| c.max_concurrent = 1).await;
    let blocker = server.submit(&sh("sleep 60")).await;
    server.wait_state(&blocker, "RUNNING").await;
    let queued = server.submit(&sh("echo later")).await;
    let dir = server.stop().await;
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    let server = Server::start_on(cfg, dir).await;
    let t = server.wait_ended(&queued).await;
    assert_eq!(
        (t["state"].as_str(), t["stdout"].as_str()),
        (Some("FINISHED"), Some("later\n"))
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let server = Server::start().await;
    let r = server.get("/healthz").await;
    assert_eq!(r.status, 200);
    let r = server.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.stop().await;

    // An engine that does not answer: readyz names Docker, the API still answers, and a
    // task fails saying why.
    let server =
        Server::start_with(|c| c.docker_host = Some("unix:///nonexistent/docker.sock".into()))
            .await;
    let r = server.get("/readyz").await;
    r.assert_error(503, "docker_unavailable", None);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Docker")),
        "{}",
        r.body
    );
    assert_eq!(server.get("/healthz").await.status, 200);
    let t = server.run(&sh("true")).await;
    common::assert_ended(&t, "FAILED", "Docker engine does not answer");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_does_not_hold_up_shutdown() {
    let server = Server::start().await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // Connected, never a request: graceful shutdown would wait on it for ever.
    let _idle = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[tokio::test]
async fn clients_hanging_up_mid_request_leave_the_database_writable() {
    let server = Server::start_with(|c| c.max_concurrent = 1).await;
    let blocker = server.submit(&sh("sleep 60")).await;
    server.wait_state(&blocker, "RUNNING").await;
    // Many submissions abandoned almost at once: each request future is dropped wherever it
    // happens to be, inside a write transaction included.
    let hasty = reqwest::Client::builder()
        .timeout(std::time::Duration::from_micros(300))
        .build()
        .expect("client");
    for _ in 0..200 {
        let _ = hasty.post(server.url("/fn")).json(&sh("true")).send().await;
    }
    // Writes still work: a submission, an update and a cancel.
    let id = server.submit(&sh("echo fine")).await;
    let r = server
        .merge(&format!("/fn/{id}"), &json!({"priority": 3}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.delete(&format!("/fn/{blocker}")).await;
    assert_eq!(r.body["state"], "CANCELLED", "{}", r.body);
    let t = server.wait_ended(&id).await;
    assert_eq!(t["stdout"], "fine\n", "{t}");
    assert_eq!(server.get("/readyz").await.status, 200);
    // The abandoned ones that got in are ordinary tasks: cancel what is still queued.
    let queued = server.get("/fn?state=PENDING&limit=1000").await;
    for t in queued.body["tasks"].as_array().cloned().unwrap_or_default() {
        let id = t["id"].as_str().unwrap_or_default();
        server.delete(&format!("/fn/{id}")).await;
    }
    server.stop().await;
}

/// A task costs four database writes, whether it gets a container of its own or is lent a
/// kept one: accepted (RECEIVED and PENDING with their events), claimed, RUNNING (with its
/// container and job), ended. `/readyz` counts the server's writes.
#[tokio::test]
async fn a_task_costs_four_writes() {
    // No pruning of the event log during the count: that is a write of its own.
    let server = Server::start_with(|c| c.event_prune_every = 3600).await;
    let writes = || async { server.get("/readyz").await.body["database_writes"].as_u64() };
    let before = writes().await.expect("readyz counts writes");
    let t = server.run(&common::sh("echo cold")).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    let cold = writes().await.expect("writes") - before;
    let daemon = server
        .run(&json!({"task_name": "d", "image": common::BUSYBOX, "cmd_list": ["true"], "is_daemon": true}))
        .await;
    let id = daemon["id"].as_str().unwrap_or_default().to_string();
    let before = writes().await.expect("writes");
    let r = server
        .post(&format!("/fn/{id}?wait=60"), &common::sh("echo warm"))
        .await;
    assert_eq!(r.body["locality"], "hit", "{}", r.body);
    let warm = writes().await.expect("writes") - before;
    assert_eq!((cold, warm), (4, 4), "writes of a cold and of a warm task");
    server.stop().await;
}
