//! What the runner's commands can fail with, in its own terms. The HTTP and WebSocket layers
//! turn these into their JSON error in one place (`http::errors`).

use crate::docker::DockerError;
use crate::error::ApiError;
use crate::model::{TaskId, TaskState};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The input was refused (the spec, one of its resources): the error names the field.
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("no task {0}")]
    NoTask(TaskId),
    #[error("task {id} is {state}: only a task that has not started can be updated")]
    AlreadyStarted { id: TaskId, state: TaskState },
    #[error("task {id} already ended ({state}); use ?remove_container=true or ?purge=true")]
    AlreadyEnded { id: TaskId, state: TaskState },
    #[error("task {0} did not stop in time")]
    CancelPending(TaskId),
    #[error("the queue is full ({0} tasks waiting); try again later")]
    QueueFull(u32),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(StoreError),
    /// A bug or a broken invariant: the message says what.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for RunnerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull(n) => RunnerError::QueueFull(n),
            other => RunnerError::Store(other),
        }
    }
}
