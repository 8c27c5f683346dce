//! `ufaas::client` against a real server: every REST route and the WebSocket through the
//! typed client, its records' fields checked as types, refusals as typed `Api` errors, and the
//! token on requests and on the handshake.

mod common;

use std::time::Duration;

use common::{sh, Server, BUSYBOX};
use futures_util::StreamExt;
use serde_json::json;
use ufaas::client::{Client, ClientError, Event, Task, TaskFilter, TaskPage, TOKEN_HINT};
use ufaas::error::Code;
use ufaas::model::{ContainerState, Locality, TaskId, TaskState};
use ufaas::runner::DeleteOptions;

const WAIT: Duration = Duration::from_secs(120);

/// A server whose tasks fail at once (no Docker engine there), for what only needs the API.
fn dockerless(c: &mut ufaas::config::ServeConfig) {
    c.docker_host = Some("unix:///nonexistent/docker.sock".into());
}

fn ids(page: &TaskPage) -> Vec<TaskId> {
    page.tasks.iter().map(|t| t.id).collect()
}

/// Reads frames until `task`'s state event says it ended; returns the states seen, in order,
/// and the last one's summary exit code.
async fn states_until_end(
    events: &mut ufaas::client::EventStream,
    task: TaskId,
) -> (Vec<TaskState>, Option<i64>) {
    let mut seen = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("a frame in time")
            .expect("the stream ended before the task did")
            .expect("a frame");
        if let Event::State {
            task_id,
            state,
            task: summary,
            ..
        } = frame.event
        {
            if task_id == task {
                seen.push(state);
                if state.is_terminal() {
                    return (seen, summary.exit_code);
                }
            }
        }
    }
}

#[tokio::test]
async fn submit_wait_get_list_cancel_and_purge_through_the_client() {
    let server = Server::start().await;
    let c = server.client();
    c.health().await.expect("healthz");
    assert_eq!(c.ready().await.expect("readyz").status, "ready");

    // Submit and wait: the terminal record, typed.
    let done: Task = c
        .submit_and_wait(&sh("echo out; echo err >&2; exit 3"), WAIT)
        .await
        .expect("submit and wait");
    assert_eq!((done.state, done.exit_code), (TaskState::Failed, Some(3)));
    assert_eq!(
        (done.stdout.as_str(), done.stderr.as_str()),
        ("out\n", "err\n")
    );
    assert!(!done.output_truncated);
    assert_eq!((done.error.as_deref(), done.locality), (None, None));
    assert_eq!(
        done.container.as_ref().map(|c| c.state),
        Some(ContainerState::Removed)
    );
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(done.image, BUSYBOX);
    assert_eq!(done.spec["cmd_list"][0], "sh");
    assert_eq!(c.get(done.id).await.expect("get"), done);

    // Submit: the record says PENDING; the harness's wait builds on the same client.
    let long = c.submit(&sh("sleep 60")).await.expect("submit");
    assert_eq!(
        (long.state, long.task_name.as_str()),
        (TaskState::Pending, "t")
    );
    assert_eq!(long.container, None);
    let running = server
        .wait_for(long.id, 60, |t| t.state == TaskState::Running)
        .await;
    assert_eq!(
        running.container.map(|c| c.state),
        Some(ContainerState::Ready)
    );

    // List: filtered, and paged newest first with `next` as the next `before`.
    let page = c
        .list(&TaskFilter {
            states: vec![TaskState::Running],
            ..TaskFilter::default()
        })
        .await
        .expect("list running");
    assert_eq!((ids(&page), page.next), (vec![long.id], None));
    let first = c
        .list(&TaskFilter {
            limit: Some(1),
            ..TaskFilter::default()
        })
        .await
        .expect("first page");
    assert_eq!(ids(&first), [long.id]);
    assert!(first.next.is_some());
    let second = c
        .list(&TaskFilter {
            limit: Some(1),
            before: first.next,
            ..TaskFilter::default()
        })
        .await
        .expect("second page");
    assert_eq!((ids(&second), second.next), (vec![done.id], None));
    let named = c
        .list(&TaskFilter {
            name: Some("t".into()),
            states: vec![TaskState::Failed, TaskState::Finished],
            ..TaskFilter::default()
        })
        .await
        .expect("by name");
    assert_eq!(ids(&named), [done.id]);

    // Cancel a running task: the record as it ended; again, a typed 409.
    let cancelled = c.cancel(long.id).await.expect("cancel");
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("cancelled while running"));
    let e = c.cancel(long.id).await.expect_err("already ended");
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some(Code::AlreadyEnded))
    );
    let e = c.update(done.id, &sh("true")).await.expect_err("started");
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some(Code::AlreadyStarted))
    );

    // The WebSocket replays the stored events, typed.
    let mut events = c.events(Some(0), &[done.id], false).await.expect("ws");
    assert_eq!(
        states_until_end(&mut events, done.id).await,
        (
            vec![
                TaskState::Received,
                TaskState::Pending,
                TaskState::Starting,
                TaskState::Running,
                TaskState::Failed
            ],
            Some(3)
        )
    );
    drop(events);

    // Purge: the last record, then a typed 404 naming the id.
    let purge = DeleteOptions {
        purge: true,
        ..DeleteOptions::default()
    };
    assert_eq!(c.delete(done.id, purge).await.expect("purge").id, done.id);
    let e = c.get(done.id).await.expect_err("purged");
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (Some(404), Some(Code::NotFound), Some("id"))
    );
    server.stop().await;
}

#[tokio::test]
async fn run_in_a_kept_container_is_a_typed_hit() {
    let server = Server::start().await;
    let c = server.client();
    let mut daemon = sh("echo 42 > /state");
    daemon["is_daemon"] = json!(true);
    let d = server.run_task(&daemon).await;
    assert_eq!(
        d.container.as_ref().map(|c| c.state),
        Some(ContainerState::Ready)
    );

    let follow = json!({"task_name": "follow", "cmd_list": ["cat", "/state"]});
    let f = c
        .run_in_and_wait(d.id, &follow, WAIT)
        .await
        .expect("run in");
    assert_eq!(
        (f.state, f.locality, f.reused_container_of),
        (TaskState::Finished, Some(Locality::Hit), Some(d.id))
    );
    assert_eq!((f.stdout.as_str(), f.image.as_str()), ("42\n", BUSYBOX));
    assert_eq!(
        f.container.as_ref().map(|c| &c.id),
        d.container.as_ref().map(|c| &c.id)
    );
    let queued = c.run_in(d.id, &follow).await.expect("run in, no wait");
    assert_eq!(queued.reused_container_of, Some(d.id));
    let ended = server
        .wait_for(queued.id, 120, |t| t.state.is_terminal())
        .await;
    assert_eq!(
        (ended.state, ended.stdout.as_str()),
        (TaskState::Finished, "42\n")
    );

    let remove = DeleteOptions {
        remove_container: true,
        ..DeleteOptions::default()
    };
    let r = c.delete(d.id, remove).await.expect("remove container");
    assert_eq!(r.container.map(|c| c.state), Some(ContainerState::Removed));
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_typed_api_error() {
    let server = Server::start_with(dockerless).await;
    let c = server.client();

    let mut spec = sh("true");
    spec["ttl"] = json!(0);
    let e = c.submit(&spec).await.expect_err("ttl 0");
    assert!(
        matches!(&e, ClientError::Api { status: 400, code, field: Some(f), message, .. }
            if code == "invalid_value" && f == "ttl" && !message.is_empty()),
        "{e:?}"
    );
    assert_eq!(e.code(), Some(Code::InvalidValue));
    assert!(e.to_string().contains("(field ttl)"), "{e}");

    let e = c
        .submit(&json!({"task_name": "x"}))
        .await
        .expect_err("no image");
    assert_eq!(
        (e.code(), e.field()),
        (Some(Code::MissingField), Some("image"))
    );
    let e = c
        .submit_and_wait(&sh("true"), Duration::from_secs(4000))
        .await
        .expect_err("too long a wait");
    assert_eq!(
        (e.code(), e.field()),
        (Some(Code::InvalidQuery), Some("wait"))
    );
    let e = c.get(TaskId::new()).await.expect_err("no such task");
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (Some(404), Some(Code::NotFound), Some("id"))
    );
    let e = c
        .list(&TaskFilter {
            before: Some(TaskId::new()),
            ..TaskFilter::default()
        })
        .await
        .expect_err("unknown before");
    assert_eq!(
        (e.code(), e.field()),
        (Some(Code::InvalidQuery), Some("before"))
    );
    let e = c
        .list(&TaskFilter {
            limit: Some(0),
            ..TaskFilter::default()
        })
        .await
        .expect_err("limit 0");
    assert_eq!(
        (e.code(), e.field()),
        (Some(Code::InvalidQuery), Some("limit"))
    );
    let e = c
        .merge_patch(TaskId::new(), &json!(["not", "an", "object"]))
        .await
        .expect_err("not a merge-patch");
    assert_eq!(e.code(), Some(Code::InvalidType));
    // The WebSocket's refusal before the upgrade is the same typed error.
    let e = c
        .events(Some(-1), &[], false)
        .await
        .err()
        .expect("since -1 is refused");
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (Some(400), Some(Code::InvalidQuery), Some("since"))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_token_goes_on_requests_and_on_the_handshake() {
    const TOKEN: &str = "client-token-0123456789abcdef";
    let server = Server::start_authed(TOKEN, dockerless).await;

    for token in [None, Some(""), Some("wrong-token-0123456789abcdef")] {
        let c = Client::new(&server.base, token.map(str::to_string)).expect("client");
        let e = c.health().await.expect_err("no valid token");
        assert!(
            matches!(e, ClientError::Unauthorized { .. }),
            "{token:?}: {e:?}"
        );
        assert!(e.to_string().ends_with(TOKEN_HINT), "{e}");
        let e = c.submit(&sh("true")).await.expect_err("no valid token");
        assert_eq!(e.code(), Some(Code::Unauthorized));
        let e = c.events(None, &[], false).await.err().expect("refused");
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e:?}");
    }

    // With it: a whole WebSocket session, filtered to nothing but what it submits.
    let c = server.client();
    let mut events = c
        .events(None, &[TaskId(uuid::Uuid::nil())], false)
        .await
        .expect("ws with the token");
    events.ping().await.expect("ping");
    events
        .submit(&sh("true"), Some(json!("a")))
        .await
        .expect("submit op");
    let mut saw_pong = false;
    let id = loop {
        let frame = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        match frame.event {
            Event::Pong => saw_pong = true,
            Event::Submitted { task_id, reference } => {
                assert_eq!(reference, Some(json!("a")));
                break task_id;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        saw_pong,
        "pong comes before submitted: messages are answered in order"
    );
    let (states, _) = states_until_end(&mut events, id).await;
    assert_eq!(states.last(), Some(&TaskState::Failed), "no Docker there");
    events
        .submit(&json!({"task_name": "x"}), Some(json!(7)))
        .await
        .expect("submit op");
    let frame = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("frame");
    assert_eq!(
        frame.event,
        Event::Error {
            code: "missing_field".into(),
            message: "`image` is required".into(),
            field: Some("image".into()),
            reference: Some(json!(7)),
        }
    );
    events.close().await.expect("close");
    assert!(events.next().await.is_none(), "nothing after close");
    server.stop().await;
}
