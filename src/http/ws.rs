//! `GET /fn/ws`: lifecycle events over a WebSocket (API.md section 4).
//!
//! A session subscribes to the live broadcast *before* it reads the stored events after
//! `since`, then skips live events whose seq it has already sent: the seam between replay and
//! live has neither a gap nor a duplicate. Writes to a slow client only ever block its own
//! session; the broadcast never waits, and a session that falls `--ws-queue` events behind is
//! told `lagged` and closed.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use warp::ws::{Message, WebSocket};

use crate::error::{ApiError, Code};
use crate::events::OutputEvent;
use crate::model::TaskId;
use crate::runner::{DeleteOptions, Runner};

/// What the query string asked for.
#[derive(Debug, Clone, Default)]
pub struct WsParams {
    pub since: Option<i64>,
    pub tasks: HashSet<TaskId>,
    pub output: bool,
}

/// Checks the query before the upgrade, so a bad one is an ordinary 400.
pub fn parse_params(q: &[(String, String)]) -> Result<WsParams, ApiError> {
    let mut p = WsParams::default();
    for (key, value) in q {
        match key.as_str() {
            "since" => {
                p.since = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|s| *s >= 0)
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                Code::InvalidQuery,
                                "since",
                                "`since` must be a whole number, 0 or more",
                            )
                        })?,
                )
            }
            "task" => {
                for part in value.split(',').filter(|s| !s.is_empty()) {
                    let id = TaskId::from_str(part).map_err(|_| {
                        ApiError::bad_request(
                            Code::InvalidQuery,
                            "task",
                            format!("`{part}` is not a task id"),
                        )
                    })?;
                    p.tasks.insert(id);
                }
            }
            "output" => {
                p.output = match value.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            Code::InvalidQuery,
                            "output",
                            "`output` must be true or false",
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

type Sink = SplitSink<WebSocket, Message>;

/// Replay pages: big enough to be quick, small enough to bound memory.
const REPLAY_PAGE: u32 = 1000;

fn wants(filter: &HashSet<TaskId>, id: TaskId) -> bool {
    filter.is_empty() || filter.contains(&id)
}

async fn send(sink: &mut Sink, text: String) -> bool {
    sink.send(Message::text(text)).await.is_ok()
}

async fn close_with(sink: &mut Sink, text: &str) {
    let _ = sink.send(Message::text(text)).await;
    let _ = sink.close().await;
}

async fn next_output(
    rx: &mut Option<broadcast::Receiver<Arc<OutputEvent>>>,
) -> Result<Arc<OutputEvent>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One WebSocket connection, from upgrade to close.
pub async fn session(socket: WebSocket, runner: Arc<Runner>, params: WsParams) {
    let (mut sink, mut incoming) = socket.split();
    let events = runner.store().events().clone();
    let mut states = events.subscribe();
    let mut outputs = params.output.then(|| events.subscribe_output());
    let mut filter = params.tasks;
    // Highest seq already sent or passed over: live events at or below it are old news.
    let mut last_seq: i64 = 0;

    if let Some(since) = params.since {
        match runner.store().pruned_through().await {
            Ok(horizon) if since < horizon => {
                close_with(&mut sink, r#"{"event":"resync_required"}"#).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                close_with(&mut sink, &error_frame(&ApiError::from(e), None)).await;
                return;
            }
        }
        last_seq = since;
        loop {
            let page = match runner.store().events_after(last_seq, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    close_with(&mut sink, &error_frame(&ApiError::from(e), None)).await;
                    return;
                }
            };
            let Some(&(last, _, _)) = page.last() else {
                break;
            };
            for (_, task_id, wire) in page {
                if wants(&filter, task_id) && !send(&mut sink, wire).await {
                    return;
                }
            }
            last_seq = last;
        }
        // Pruning may have run while we paged: if it reached past `since`, some of what we
        // were to replay may be gone. Say so rather than leave a silent gap.
        if matches!(runner.store().pruned_through().await, Ok(h) if since < h) {
            close_with(&mut sink, r#"{"event":"resync_required"}"#).await;
            return;
        }
    }

    let (reply_tx, mut replies) = mpsc::channel::<String>(64);
    let ping_every = Duration::from_secs(runner.config().ws_ping);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    loop {
        // Biased: output chunks a task printed go out before the state change that ends it,
        // since the runner publishes them first.
        tokio::select! {
            biased;
            out = next_output(&mut outputs) => match out {
                Ok(o) => {
                    if wants(&filter, o.task_id) && !send(&mut sink, o.wire.clone()).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Output is best effort; state events are what must never be missed.
                    if !send(&mut sink, json!({"event": "output_lagged", "dropped": n}).to_string()).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => outputs = None,
            },
            ev = states.recv() => match ev {
                Ok(ev) => {
                    if ev.seq <= last_seq {
                        continue;
                    }
                    last_seq = ev.seq;
                    if wants(&filter, ev.task_id) && !send(&mut sink, ev.wire.clone()).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    close_with(&mut sink, r#"{"event":"lagged"}"#).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(reply) = replies.recv() => {
                if !send(&mut sink, reply).await {
                    return;
                }
            }
            msg = incoming.next() => match msg {
                None | Some(Err(_)) => return,
                Some(Ok(m)) => {
                    last_heard = Instant::now();
                    if m.is_close() {
                        let _ = sink.close().await;
                        return;
                    }
                    if let Ok(text) = m.to_str() {
                        if let Some(reply) = handle_op(text, &mut filter, &runner, &reply_tx).await {
                            if !send(&mut sink, reply).await {
                                return;
                            }
                        }
                    } else if m.is_binary() {
                        let e = ApiError::new(Code::InvalidMessage, "send JSON text frames, not binary");
                        if !send(&mut sink, error_frame(&e, None)).await {
                            return;
                        }
                    }
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    let _ = sink.close().await;
                    return;
                }
                if sink.send(Message::ping(Vec::new())).await.is_err() {
                    return;
                }
            }
            _ = runner.stopping() => {
                let _ = sink.close().await;
                return;
            }
        }
    }
}

fn error_frame(e: &ApiError, reference: Option<&Value>) -> String {
    let mut v = json!({"event": "error", "code": e.code, "message": e.message});
    if let Some(f) = &e.field {
        v["field"] = json!(f);
    }
    if let Some(r) = reference {
        v["ref"] = r.clone();
    }
    v.to_string()
}

/// Handles one client message; the answer, if any, is returned (or, for a cancel that waits
/// on a running task, sent later through `replies`).
async fn handle_op(
    text: &str,
    filter: &mut HashSet<TaskId>,
    runner: &Arc<Runner>,
    replies: &mpsc::Sender<String>,
) -> Option<String> {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Some(error_frame(
                &ApiError::new(Code::InvalidMessage, "a message must be a JSON object"),
                None,
            ))
        }
        Err(e) => {
            return Some(error_frame(
                &ApiError::new(Code::InvalidMessage, format!("not valid JSON: {e}")),
                None,
            ))
        }
    };
    let reference = msg.get("ref").cloned();
    let fail = |e: ApiError| Some(error_frame(&e, reference.as_ref()));
    match msg.get("op").and_then(Value::as_str) {
        Some("ping") => Some(json!({"event": "pong"}).to_string()),
        Some("subscribe") => {
            let Some(list) = msg.get("tasks").and_then(Value::as_array) else {
                return fail(ApiError::bad_request(
                    Code::InvalidMessage,
                    "tasks",
                    "`tasks` must be an array of task ids",
                ));
            };
            let mut ids = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                match v.as_str().and_then(|s| TaskId::from_str(s).ok()) {
                    Some(id) => ids.push(id),
                    None => {
                        return fail(ApiError::bad_request(
                            Code::InvalidMessage,
                            format!("tasks[{i}]"),
                            "not a task id",
                        ))
                    }
                }
            }
            filter.extend(ids.iter().copied());
            let mut v = json!({"event": "subscribed", "tasks": ids});
            if let Some(r) = &reference {
                v["ref"] = r.clone();
            }
            Some(v.to_string())
        }
        Some("submit") => {
            let Some(spec) = msg.get("spec").cloned() else {
                return fail(ApiError::bad_request(
                    Code::MissingField,
                    "spec",
                    "`submit` needs a `spec`",
                ));
            };
            match runner.submit(spec, None).await {
                Ok(record) => {
                    // A filtered connection follows what it submits.
                    if !filter.is_empty() {
                        filter.insert(record.id);
                    }
                    let mut v = json!({"event": "submitted", "task_id": record.id});
                    if let Some(r) = &reference {
                        v["ref"] = r.clone();
                    }
                    Some(v.to_string())
                }
                Err(e) => fail(e.into()),
            }
        }
        Some("cancel") => {
            let Some(id) = msg
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| TaskId::from_str(s).ok())
            else {
                return fail(ApiError::bad_request(
                    Code::InvalidMessage,
                    "id",
                    "`cancel` needs an `id` that is a task id",
                ));
            };
            // A running task's cancel waits for it to end: answer from a task of its own so
            // events keep flowing meanwhile.
            let runner = runner.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let reply = match runner.delete(id, DeleteOptions::default()).await {
                    Ok(r) => {
                        let mut v = json!({"event": "cancelled", "task_id": id, "state": r.state});
                        if let Some(rf) = &reference {
                            v["ref"] = rf.clone();
                        }
                        v.to_string()
                    }
                    Err(e) => error_frame(&e.into(), reference.as_ref()),
                };
                let _ = replies.send(reply).await;
            });
            None
        }
        Some(other) => fail(ApiError::bad_request(
            Code::UnknownOp,
            "op",
            format!("unknown op `{other}`: use subscribe, submit, cancel or ping"),
        )),
        None => fail(ApiError::bad_request(
            Code::MissingField,
            "op",
            "a message needs an `op`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn params_parse_and_refuse() {
        let id = TaskId::new();
        let p = parse_params(&q(&[
            ("since", "7"),
            ("task", &id.to_string()),
            ("output", "true"),
        ]));
        let p = p.ok().unwrap_or_default();
        assert_eq!((p.since, p.output, p.tasks.len()), (Some(7), true, 1));
        for bad in [
            ("since", "-1"),
            ("since", "x"),
            ("task", "nope"),
            ("output", "maybe"),
        ] {
            let e = parse_params(&q(&[bad])).err();
            assert_eq!(e.and_then(|e| e.field), Some(bad.0.to_string()), "{bad:?}");
        }
    }
}
