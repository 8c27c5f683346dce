//! The one error every route answers with: a [`Code`] (which fixes the HTTP status) and the
//! JSON body `{"code", "message", "field"}` of `docs/api.rst`.
//!
//! [`Code`] is the whole list of codes the server sends, each with its status; README's table
//! of error codes is checked against it by a test, so neither can drift from the other.

use serde::Serialize;
use warp::http::StatusCode;

macro_rules! codes {
    ($($variant:ident = $name:literal, $status:literal;)*) => {
        /// Every error code the server sends, each with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code, in README's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as the body's `code` says it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }

            /// The HTTP status every error with this code is answered with.
            pub fn status(self) -> u16 {
                match self {
                    $(Code::$variant => $status,)*
                }
            }
        }
    };
}

codes! {
    InvalidJson = "invalid_json", 400;
    InvalidBody = "invalid_body", 400;
    InvalidType = "invalid_type", 400;
    InvalidValue = "invalid_value", 400;
    MissingField = "missing_field", 400;
    UnknownField = "unknown_field", 400;
    InvalidImage = "invalid_image", 400;
    InvalidEnvName = "invalid_env_name", 400;
    InvalidDest = "invalid_dest", 400;
    InvalidResource = "invalid_resource", 400;
    InvalidBase64 = "invalid_base64", 400;
    InvalidUri = "invalid_uri", 400;
    InvalidArchive = "invalid_archive", 400;
    TooManyResources = "too_many_resources", 400;
    LimitExceeded = "limit_exceeded", 400;
    ImageMismatch = "image_mismatch", 400;
    MountOnReuse = "mount_on_reuse", 400;
    InvalidId = "invalid_id", 400;
    InvalidQuery = "invalid_query", 400;
    InvalidHeader = "invalid_header", 400;
    InvalidMessage = "invalid_message", 400;
    UnknownOp = "unknown_op", 400;
    InvalidCode = "invalid_code", 400;
    MissingDependency = "missing_dependency", 400;
    Unauthorized = "unauthorized", 401;
    NetworkNotAllowed = "network_not_allowed", 403;
    BindNotAllowed = "bind_not_allowed", 403;
    UriNotAllowed = "uri_not_allowed", 403;
    NotFound = "not_found", 404;
    MethodNotAllowed = "method_not_allowed", 405;
    AlreadyStarted = "already_started", 409;
    AlreadyEnded = "already_ended", 409;
    LengthRequired = "length_required", 411;
    PayloadTooLarge = "payload_too_large", 413;
    UnsupportedMediaType = "unsupported_media_type", 415;
    UnsupportedRuntime = "unsupported_runtime", 415;
    StepFailed = "step_failed", 422;
    UpgradeRequired = "upgrade_required", 426;
    QueueFull = "queue_full", 429;
    Internal = "internal", 500;
    FunctionError = "function_error", 500;
    DockerUnavailable = "docker_unavailable", 503;
    DatabaseUnavailable = "database_unavailable", 503;
    CancelPending = "cancel_pending", 503;
    FunctionUnavailable = "function_unavailable", 503;
    FunctionTimeout = "function_timeout", 504;
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A refusal of the request's input, naming the field at fault.
    pub fn bad_request(code: Code, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(code, message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(Code::NotFound, message)
    }

    /// 404 for a task id in the path that names no task.
    pub fn no_task(id: impl std::fmt::Display) -> Self {
        ApiError::not_found(format!("no task {id}")).with_field("id")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(Code::Internal, message)
    }

    /// The HTTP status: the code's.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's table of error codes (lines "``code``  status  when") is exactly [`Code`].
    #[test]
    fn readme_documents_exactly_the_codes_the_server_sends() {
        let readme = include_str!("../README.rst");
        let start = readme
            .find("Error codes\n")
            .unwrap_or_else(|| panic!("README has no `Error codes` section"));
        let mut documented = Vec::new();
        for line in readme[start..].lines().skip(2) {
            if line.starts_with("Events and the WebSocket") {
                break;
            }
            let Some(rest) = line.strip_prefix("``") else {
                continue;
            };
            let Some((code, after)) = rest.split_once("``") else {
                continue;
            };
            let status: u16 = after
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status for `{code}` in README: {line}"));
            documented.push((code.to_string(), status));
        }
        let sent: Vec<(String, u16)> = Code::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.status()))
            .collect();
        assert_eq!(
            documented, sent,
            "README's table of error codes vs the Code enum"
        );
    }

    #[test]
    fn the_body_carries_code_message_and_field() {
        let e = ApiError::bad_request(Code::InvalidValue, "ttl", "ttl must be positive");
        assert_eq!(
            serde_json::to_value(&e).unwrap_or_default(),
            serde_json::json!({"code": "invalid_value", "message": "ttl must be positive", "field": "ttl"})
        );
        assert_eq!(e.status(), 400);
        assert_eq!(ApiError::no_task("x").status(), 404);
    }
}
