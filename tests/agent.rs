//! The agent in real containers (real engine, real SQLite): how it gets there (bind-mounted,
//! uploaded, and the switch to uploading when the engine cannot see its file), commands that
//! cannot start, stdin bytes that would detach a Docker attach, and tasks side by side in one
//! kept container.

mod common;

use serde_json::{json, Value};

use common::{sh, Server, BUSYBOX};

fn echo_task(word: &str) -> Value {
    json!({"task_name": "echo", "image": BUSYBOX, "cmd_list": ["echo", word]})
}

async fn assert_echoes(server: &Server, word: &str) {
    let t = server.run(&echo_task(word)).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["stdout"], format!("{word}\n"), "{t}");
}

/// The agent files the server placed beside its database.
fn agent_files(server: &Server) -> Vec<std::path::PathBuf> {
    let dir = server.db.parent().unwrap_or(std::path::Path::new("."));
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".ufaas-agent-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_agent_is_bind_mounted_and_uploading_takes_over_when_the_engine_cannot_see_it() {
    let server = Server::start().await;
    let files = agent_files(&server);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_echoes(&server, "bound").await;
    // The engine can no longer see the file: the next container gets the agent uploaded,
    // and so does every later one.
    for f in &files {
        std::fs::remove_file(f).unwrap_or_else(|e| panic!("remove {f:?}: {e}"));
    }
    assert_echoes(&server, "switched").await;
    assert_echoes(&server, "uploaded").await;
    server.stop().await;
}

#[tokio::test]
async fn an_uploaded_agent_runs_with_and_without_a_read_only_root() {
    let server = Server::start_with(|c| c.agent_upload = true).await;
    assert!(agent_files(&server).is_empty());
    assert_echoes(&server, "uploaded").await;
    server.stop().await;

    let server = Server::start_with(|c| {
        c.agent_upload = true;
        c.read_only_root = true;
    })
    .await;
    let t = server
        .run(&json!({"task_name": "ro", "image": BUSYBOX, "pwd": "/work",
                     "resource_list": [{"dest": "in.txt", "data": "placed"}],
                     "cmd_list": ["sh", "-c", "cat in.txt; touch /etc/x 2>/dev/null || echo ' read-only'"]}))
        .await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["stdout"], "placed read-only\n", "{t}");
    server.stop().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_saying_why() {
    let server = Server::start().await;
    let t = server
        .run(&json!({"task_name": "nope", "image": BUSYBOX, "cmd_list": ["no-such-program", "x"]}))
        .await;
    common::assert_ended(&t, "FAILED", "could not run `no-such-program`");
    assert_eq!(t["exit_code"], 127, "{t}");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("executable file not found")),
        "{t}"
    );
    let t = server
        .run(&json!({"task_name": "dir", "image": BUSYBOX, "cmd_list": ["/etc"]}))
        .await;
    common::assert_ended(&t, "FAILED", "Permission denied");
    assert_eq!(t["exit_code"], 126, "{t}");
    server.stop().await;
}

#[tokio::test]
async fn stdin_with_the_attach_detach_keys_reaches_the_command() {
    let server = Server::start().await;
    // ctrl-p ctrl-q is Docker's detach sequence on an attached stdin.
    let input = "before\u{10}\u{11}after\u{1f}\n";
    let mut spec = sh("cat");
    spec["stdin"] = json!(input);
    let t = server.run(&spec).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["stdout"], input, "{t}");
    server.stop().await;
}

#[tokio::test]
async fn tasks_side_by_side_in_one_kept_container_each_get_their_own_end() {
    let server = Server::start().await;
    let d = server
        .run(
            &json!({"task_name": "d", "image": BUSYBOX, "is_daemon": true,
                     "cmd_list": ["sh", "-c", "echo ready > /state"]}),
        )
        .await;
    assert_eq!(d["state"], "FINISHED", "{d}");
    let did = d["id"].as_str().unwrap_or_default().to_string();
    let cid = d["container"]["id"].clone();
    // One follow-up waits for a file the other writes: they must run at the same time.
    let waiter = json!({"task_name": "w", "cmd_list": ["sh", "-c",
        "i=0; while [ ! -f /go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; [ -f /go ] || exit 9; cat /state; exit 4"]});
    let writer = json!({"task_name": "g", "cmd_list": ["sh", "-c", "touch /go; echo wrote"]});
    let w = server.post(&format!("/fn/{did}"), &waiter).await;
    assert_eq!(w.status, 201, "{}", w.body);
    let g = server.post(&format!("/fn/{did}"), &writer).await;
    assert_eq!(g.status, 201, "{}", g.body);
    let g = server.wait_ended(&g.id()).await;
    let w = server.wait_ended(&w.id()).await;
    assert_eq!(
        (&g["state"], &g["stdout"], &g["locality"]),
        (&json!("FINISHED"), &json!("wrote\n"), &json!("hit")),
        "{g}"
    );
    assert_eq!(
        (&w["state"], &w["exit_code"], &w["stdout"], &w["locality"]),
        (
            &json!("FAILED"),
            &json!(4),
            &json!("ready\n"),
            &json!("hit")
        ),
        "{w}"
    );
    assert_eq!(w["container"]["id"], cid);
    assert_eq!(g["container"]["id"], cid);
    server.stop().await;
}

#[tokio::test]
async fn a_task_cannot_reach_the_agents_stdio_and_the_container_stays_usable() {
    let server = Server::start().await;
    let d = server
        .run(
            &json!({"task_name": "d", "image": BUSYBOX, "is_daemon": true, "cmd_list": ["sh", "-c",
            "echo garbage > /proc/1/fd/1 2>/dev/null; echo out=$?; \
             echo 'R 1 AAAA' > /proc/1/fd/0 2>/dev/null; echo in=$?; \
             head -c 1 /proc/1/fd/0 2>/dev/null; echo read=$?; \
             readlink /proc/1/exe >/dev/null 2>&1; echo exe=$?"]}),
        )
        .await;
    assert_eq!(d["state"], "FINISHED", "{d}");
    assert_eq!(d["stdout"], "out=1\nin=1\nread=1\nexe=1\n", "{d}");
    let did = d["id"].as_str().unwrap_or_default().to_string();
    let r = server
        .post(
            &format!("/fn/{did}?wait=60"),
            &json!({"task_name": "after", "cmd_list": ["echo", "still fine"]}),
        )
        .await;
    assert_eq!(
        (&r.body["state"], &r.body["stdout"], &r.body["locality"]),
        (&json!("FINISHED"), &json!("still fine\n"), &json!("hit")),
        "{}",
        r.body
    );
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_task_in_a_lent_container_kills_its_process_not_the_container() {
    let server = Server::start().await;
    let d = server
        .run(&json!({"task_name": "d", "image": BUSYBOX, "is_daemon": true, "cmd_list": ["true"]}))
        .await;
    let did = d["id"].as_str().unwrap_or_default().to_string();
    let sleeper = server
        .post(
            &format!("/fn/{did}"),
            &json!({"task_name": "s", "cmd_list": ["sleep", "300"]}),
        )
        .await;
    assert_eq!(sleeper.status, 201, "{}", sleeper.body);
    let neighbour = server
        .post(&format!("/fn/{did}"), &json!({"task_name": "n", "cmd_list": ["sh", "-c",
            "i=0; while [ ! -f /go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; [ -f /go ] || exit 9; echo survived"]}))
        .await;
    assert_eq!(neighbour.status, 201, "{}", neighbour.body);
    server.wait_state(&sleeper.id(), "RUNNING").await;
    server.wait_state(&neighbour.id(), "RUNNING").await;

    let r = server.delete(&format!("/fn/{}", sleeper.id())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "CANCELLED", "{}", r.body);
    assert_eq!(r.body["exit_code"], 137, "{}", r.body);
    assert_eq!(r.body["container"]["state"], "ready", "{}", r.body);

    // The container lives on: the neighbour still runs, and a new task gets in.
    let go = server
        .post(
            &format!("/fn/{did}?wait=60"),
            &json!({"task_name": "go", "cmd_list": ["touch", "/go"]}),
        )
        .await;
    assert_eq!(
        (&go.body["state"], &go.body["locality"]),
        (&json!("FINISHED"), &json!("hit")),
        "{}",
        go.body
    );
    let n = server.wait_ended(&neighbour.id()).await;
    assert_eq!(
        (&n["state"], &n["stdout"]),
        (&json!("FINISHED"), &json!("survived\n")),
        "{n}"
    );
    server.stop().await;
}
