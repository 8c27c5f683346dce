//! The live side of the event log: every committed state change is broadcast to whoever
//! listens (`?wait=` handlers, WebSocket subscribers), and running tasks' output chunks are
//! broadcast beside them (live only: not stored, no seq). The durable side is the `events`
//! table, written by the store in the same transaction as the change.
//!
//! Each event carries its wire form, serialised once, so a thousand subscribers cost a
//! thousand copies of a string rather than a thousand serialisations. A subscriber that falls
//! more than the channel's capacity behind is told it lagged; the sender never waits.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::model::{ContainerRef, Locality, TaskId, TaskRecord, TaskState};

/// A task as events show it: the record without its output and spec.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary<'a> {
    pub id: TaskId,
    pub task_name: &'a str,
    pub state: TaskState,
    pub image: &'a str,
    pub priority: i64,
    pub created_at: &'a str,
    pub started_at: Option<&'a str>,
    pub finished_at: Option<&'a str>,
    pub exit_code: Option<i64>,
    pub error: Option<&'a str>,
    pub output_truncated: bool,
    pub container: Option<ContainerRef>,
    pub reused_container_of: Option<TaskId>,
    pub locality: Option<Locality>,
}

impl<'a> From<&'a TaskRecord> for TaskSummary<'a> {
    fn from(r: &'a TaskRecord) -> Self {
        TaskSummary {
            id: r.id,
            task_name: &r.task_name,
            state: r.state,
            image: &r.image,
            priority: r.priority,
            created_at: &r.created_at,
            started_at: r.started_at.as_deref(),
            finished_at: r.finished_at.as_deref(),
            exit_code: r.exit_code,
            error: r.error.as_deref(),
            output_truncated: r.output_truncated,
            container: r.container.clone(),
            reused_container_of: r.reused_container_of,
            locality: r.locality,
        }
    }
}

/// The wire form of a state event (API.md section 4).
pub fn state_wire(
    seq: i64,
    task_id: TaskId,
    state: TaskState,
    at: &str,
    summary: &Value,
) -> String {
    serde_json::json!({
        "seq": seq,
        "event": "state",
        "task_id": task_id,
        "state": state,
        "at": at,
        "task": summary,
    })
    .to_string()
}

/// One committed state change.
#[derive(Debug, Clone)]
pub struct StateEvent {
    pub seq: i64,
    pub task_id: TaskId,
    pub state: TaskState,
    /// The full record right after the change (for `?wait=` answers).
    pub task: TaskRecord,
    /// The JSON text frame subscribers get.
    pub wire: String,
}

/// A chunk a running task printed.
#[derive(Debug, Clone)]
pub struct OutputEvent {
    pub task_id: TaskId,
    pub wire: String,
}

impl OutputEvent {
    pub fn new(task_id: TaskId, stream: &str, data: &[u8]) -> Self {
        let wire = serde_json::json!({
            "event": "output",
            "task_id": task_id,
            "stream": stream,
            "data": String::from_utf8_lossy(data),
        })
        .to_string();
        OutputEvent { task_id, wire }
    }
}

#[derive(Clone)]
pub struct Events {
    states: broadcast::Sender<Arc<StateEvent>>,
    output: broadcast::Sender<Arc<OutputEvent>>,
}

impl Events {
    /// `capacity`: how many events a subscriber may fall behind before it is told it lagged.
    pub fn new(capacity: usize) -> Self {
        let (states, _) = broadcast::channel(capacity.max(1));
        let (output, _) = broadcast::channel(capacity.max(1));
        Events { states, output }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StateEvent>> {
        self.states.subscribe()
    }

    pub fn subscribe_output(&self) -> broadcast::Receiver<Arc<OutputEvent>> {
        self.output.subscribe()
    }

    pub fn publish(&self, event: StateEvent) {
        // No receiver is not an error: nobody is listening right now.
        let _ = self.states.send(Arc::new(event));
    }

    pub fn publish_output(&self, event: OutputEvent) {
        if self.output.receiver_count() > 0 {
            let _ = self.output.send(Arc::new(event));
        }
    }

    pub fn has_output_listeners(&self) -> bool {
        self.output.receiver_count() > 0
    }
}
