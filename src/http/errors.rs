//! The one place where what the runner and the store fail with becomes the API's JSON error
//! (`{"code", "message", "field"}` with its status), for HTTP and WebSocket alike.

use crate::error::{ApiError, Code};
use crate::runner::RunnerError;
use crate::store::StoreError;

impl From<RunnerError> for ApiError {
    fn from(e: RunnerError) -> Self {
        let message = e.to_string();
        match e {
            RunnerError::Refused(e) => e,
            RunnerError::NoTask(id) => ApiError::no_task(id),
            RunnerError::AlreadyStarted { .. } => ApiError::new(Code::AlreadyStarted, message),
            RunnerError::AlreadyEnded { .. } => ApiError::new(Code::AlreadyEnded, message),
            RunnerError::CancelPending(_) => ApiError::new(Code::CancelPending, message),
            RunnerError::QueueFull(_) => ApiError::new(Code::QueueFull, message),
            RunnerError::Docker(_) => ApiError::new(Code::DockerUnavailable, message),
            RunnerError::Store(e) => ApiError::from(e),
            RunnerError::Internal(_) => ApiError::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull(n) => ApiError::from(RunnerError::QueueFull(n)),
            StoreError::Quota(why) => ApiError::new(Code::PayloadTooLarge, why),
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::new(Code::DatabaseUnavailable, other.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskId, TaskState};

    #[test]
    fn each_runner_error_has_its_code() {
        let id = TaskId::new();
        let cases = [
            (RunnerError::NoTask(id), Code::NotFound),
            (
                RunnerError::AlreadyStarted {
                    id,
                    state: TaskState::Running,
                },
                Code::AlreadyStarted,
            ),
            (
                RunnerError::AlreadyEnded {
                    id,
                    state: TaskState::Failed,
                },
                Code::AlreadyEnded,
            ),
            (RunnerError::CancelPending(id), Code::CancelPending),
            (RunnerError::QueueFull(3), Code::QueueFull),
            (
                RunnerError::Docker(crate::docker::DockerError::Unavailable("x".into())),
                Code::DockerUnavailable,
            ),
            (
                RunnerError::Store(StoreError::Corrupt("x".into())),
                Code::DatabaseUnavailable,
            ),
            (RunnerError::Internal("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let message = e.to_string();
            let api = ApiError::from(e);
            assert_eq!((api.code, api.message), (code, message));
        }
        let no_task = ApiError::from(RunnerError::NoTask(id));
        assert_eq!(no_task.field.as_deref(), Some("id"));
    }
}
