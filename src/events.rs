//! The live side of the event log: every committed state change is broadcast to whoever
//! listens (`?wait=` handlers today, WebSocket subscribers later). The durable side is the
//! `events` table, written by the store in the same transaction as the change.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{TaskId, TaskState};
use crate::store::TaskRecord;

/// One state change, as committed.
#[derive(Debug, Clone, Serialize)]
pub struct StateEvent {
    pub seq: i64,
    pub task_id: TaskId,
    pub state: TaskState,
    pub at: String,
    /// The record right after the change.
    pub task: TaskRecord,
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<StateEvent>>,
}

impl Events {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Events { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StateEvent>> {
        self.tx.subscribe()
    }

    pub fn publish(&self, event: StateEvent) {
        // No receiver is not an error: nobody is listening right now.
        let _ = self.tx.send(Arc::new(event));
    }
}
