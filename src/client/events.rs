//! The client side of `GET /fn/ws`: the server's frames as a typed [`Event`] (each kept with
//! its text, which `ufaas watch --json` prints as it came), and the client messages (submit,
//! cancel, subscribe, ping) as methods.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{ClientError, TaskSummary};
use crate::model::{TaskId, TaskState};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Which stream an output chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One server frame (`docs/api.rst`, Server frames). `reference` is the `ref` of the client
/// message a reply answers, when it had one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A committed state change, replayed or live.
    State {
        seq: i64,
        task_id: TaskId,
        state: TaskState,
        at: String,
        task: TaskSummary,
    },
    /// A chunk a running task printed (with `output=true`).
    Output {
        task_id: TaskId,
        stream: OutputStream,
        data: String,
    },
    /// This many output chunks were dropped; the connection stays up.
    OutputLagged {
        dropped: u64,
    },
    /// The connection fell behind on state events and is closed: reconnect with `since`.
    Lagged,
    /// `since` is older than the stored events; the connection is closed.
    ResyncRequired,
    Submitted {
        task_id: TaskId,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Cancelled {
        task_id: TaskId,
        state: TaskState,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Subscribed {
        tasks: Vec<TaskId>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Pong,
    /// A refused client message (or a failed replay): the REST error body as a frame.
    Error {
        code: String,
        message: String,
        #[serde(default)]
        field: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// A frame this client does not know: its JSON, or its text as a string if it is not
    /// JSON. Kept rather than refused, so that `ufaas watch` shows what a newer server sends.
    #[serde(skip)]
    Other(Value),
}

/// A server frame: its text as it came and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub text: String,
    pub event: Event,
}

impl Frame {
    pub fn parse(text: String) -> Frame {
        let event = serde_json::from_str::<Event>(&text).unwrap_or_else(|_| {
            Event::Other(
                serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone())),
            )
        });
        Frame { text, event }
    }

    /// The frame's `seq`: what to resume from with `since`.
    pub fn seq(&self) -> Option<i64> {
        match &self.event {
            Event::State { seq, .. } => Some(*seq),
            Event::Other(v) => v["seq"].as_i64(),
            _ => None,
        }
    }
}

/// An open `GET /fn/ws`: a [`Stream`] of frames, ending when the server closes, and the
/// client messages. Ping frames are answered by the WebSocket library while it is read.
pub struct EventStream {
    socket: Socket,
    /// Set once the server closed or the socket failed: nothing more will come.
    ended: bool,
}

impl EventStream {
    pub(super) fn new(socket: Socket) -> Self {
        EventStream {
            socket,
            ended: false,
        }
    }

    async fn send_op(
        &mut self,
        mut msg: Value,
        reference: Option<Value>,
    ) -> Result<(), ClientError> {
        if let Some(r) = reference {
            msg["ref"] = r;
        }
        self.socket.send(Message::text(msg.to_string())).await?;
        Ok(())
    }

    /// Submits a task, as `POST /fn` does; the answer is an [`Event::Submitted`] (or an
    /// [`Event::Error`]) with `reference`. A filtered connection then follows the task.
    pub async fn submit(
        &mut self,
        spec: &Value,
        reference: Option<Value>,
    ) -> Result<(), ClientError> {
        self.send_op(json!({"op": "submit", "spec": spec}), reference)
            .await
    }

    /// Cancels a task; answered by [`Event::Cancelled`] once it has ended.
    pub async fn cancel(
        &mut self,
        id: TaskId,
        reference: Option<Value>,
    ) -> Result<(), ClientError> {
        self.send_op(json!({"op": "cancel", "id": id}), reference)
            .await
    }

    /// Adds tasks to the connection's filter; answered by [`Event::Subscribed`].
    pub async fn subscribe(
        &mut self,
        tasks: &[TaskId],
        reference: Option<Value>,
    ) -> Result<(), ClientError> {
        self.send_op(json!({"op": "subscribe", "tasks": tasks}), reference)
            .await
    }

    /// Answered by [`Event::Pong`].
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_op(json!({"op": "ping"}), None).await
    }

    /// Closes the connection.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.ended = true;
        self.socket.close(None).await?;
        Ok(())
    }
}

impl Stream for EventStream {
    type Item = Result<Frame, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match ready!(this.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(t))) => {
                    return Poll::Ready(Some(Ok(Frame::parse(t.to_string()))))
                }
                // Pings, pongs and (never sent) binary frames carry no event.
                Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_),
                )) => {}
                Some(Ok(Message::Close(_))) | None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Locality;

    #[test]
    fn frames_parse_into_typed_events() {
        let id = TaskId::new();
        let state = json!({
            "seq": 42, "event": "state", "task_id": id, "state": "FAILED",
            "at": "2026-11-21T10:00:00.081Z",
            "task": {"id": id, "task_name": "t", "state": "FAILED", "image": "i", "priority": 0,
                     "created_at": "a", "started_at": "b", "finished_at": "c", "exit_code": 3,
                     "error": null, "output_truncated": false,
                     "container": {"id": "c1", "state": "removed"},
                     "reused_container_of": null, "locality": "miss"}
        });
        let f = Frame::parse(state.to_string());
        assert_eq!(f.seq(), Some(42));
        match &f.event {
            Event::State {
                state: TaskState::Failed,
                task,
                ..
            } => {
                assert_eq!((task.id, task.exit_code), (id, Some(3)));
                assert_eq!(task.locality, Some(Locality::Miss));
            }
            other => panic!("not a state event: {other:?}"),
        }
        assert_eq!(f.text, state.to_string(), "the text is kept as it came");

        let f = Frame::parse(
            json!({"event": "output", "task_id": id, "stream": "stderr", "data": "x\n"})
                .to_string(),
        );
        assert_eq!(
            f.event,
            Event::Output {
                task_id: id,
                stream: OutputStream::Stderr,
                data: "x\n".into()
            }
        );
        assert_eq!(f.seq(), None);
        assert_eq!(
            Frame::parse(r#"{"event":"lagged"}"#.into()).event,
            Event::Lagged
        );
        assert_eq!(
            Frame::parse(r#"{"event":"resync_required"}"#.into()).event,
            Event::ResyncRequired
        );
        let f = Frame::parse(
            r#"{"event":"error","code":"missing_field","message":"m","field":"spec","ref":"run"}"#
                .into(),
        );
        assert_eq!(
            f.event,
            Event::Error {
                code: "missing_field".into(),
                message: "m".into(),
                field: Some("spec".into()),
                reference: Some(json!("run"))
            }
        );
    }

    #[test]
    fn unknown_frames_are_kept_not_refused() {
        let f = Frame::parse(r#"{"event":"from_the_future","seq":7}"#.into());
        assert_eq!(
            f.event,
            Event::Other(json!({"event": "from_the_future", "seq": 7}))
        );
        assert_eq!(f.seq(), Some(7));
        // A known event with a field of the wrong shape is not guessed at either.
        let f = Frame::parse(r#"{"event":"output","task_id":"nope"}"#.into());
        assert!(matches!(f.event, Event::Other(_)), "{f:?}");
        let f = Frame::parse("not json".into());
        assert_eq!(f.event, Event::Other(Value::String("not json".into())));
    }
}
