//! The one error type every route answers with: a status and the JSON body of API.md
//! (`{"code", "message", "field"}`).

use serde::Serialize;
use warp::http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(400, code, message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "not_found", message)
    }

    /// 404 for a task id in the path that names no task.
    pub fn no_task(id: impl std::fmt::Display) -> Self {
        ApiError::not_found(format!("no task {id}")).with_field("id")
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(409, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "internal", message)
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(503, code, message)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}
