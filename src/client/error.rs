//! What can go wrong talking to a server, as one enum: the server's own refusals (its error
//! body, `docs/api.rst`, Errors) are kept apart from transport failures and from answers this
//! client cannot read, so a caller can tell "the spec was refused" from "the server is down".

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite;

use crate::error::Code;
use crate::model::TaskId;

/// What the CLI says when the server answers 401: the fix is always the same.
pub const TOKEN_HINT: &str = "the server wants a valid API token: pass --token or set UFAAS_TOKEN";

/// An answer longer than this is cut in [`ClientError::Status`]: it is there to show what
/// came back (an HTML page from a proxy, say), not to hold all of it.
const BODY_EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to [`super::Client::new`] is not an http or https URL.
    #[error("bad server URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The token cannot be sent in a header (it holds control characters).
    #[error("the token cannot be sent in a header: it holds control characters")]
    InvalidToken,

    /// 401: no token, or one the server does not know. `message` is the server's.
    #[error("{message}; {TOKEN_HINT}")]
    Unauthorized { message: String },

    /// The server refused the request with its error body.
    #[error(
        "{code}: {message}{}",
        .field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default()
    )]
    Api {
        status: u16,
        /// The code as sent. A string, not [`Code`], so that a code this build does not know
        /// (a newer server) is kept rather than lost; [`ClientError::code`] gives the typed one.
        code: String,
        message: String,
        field: Option<String>,
        /// Every other member of the body, as sent: a function's error names its `task_id`,
        /// a failed pipeline its `step`, `function`, `error`, `task_id` and `pipeline_id`.
        details: Map<String, Value>,
    },

    /// An error status without the JSON error body (a proxy's page, say).
    #[error("the server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },

    /// A success status whose body is not what the route answers.
    #[error("reading the server's answer (HTTP {status})")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
    },

    /// The request did not get an answer (connection refused, reset, …).
    #[error(transparent)]
    Http(#[from] reqwest::Error),

    /// The WebSocket failed (boxed: tungstenite's error is large and would make every
    /// `Result` of this module as large).
    #[error(transparent)]
    WebSocket(Box<tungstenite::Error>),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// The server's error body (`ApiError` serialised).
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(flatten)]
    details: Map<String, Value>,
}

impl ClientError {
    /// The error for an answer with a non-success `status` and this `body`.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> ClientError {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        if status == 401 {
            return ClientError::Unauthorized {
                message: parsed
                    .map(|b| b.message)
                    .unwrap_or_else(|| "401 Unauthorized".into()),
            };
        }
        match parsed {
            Some(b) => ClientError::Api {
                status,
                code: b.code,
                message: b.message,
                field: b.field,
                details: b.details,
            },
            None => ClientError::Status {
                status,
                body: String::from_utf8_lossy(body)
                    .chars()
                    .take(BODY_EXCERPT_CHARS)
                    .collect(),
            },
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Unauthorized { .. } => Some(401),
            ClientError::Api { status, .. }
            | ClientError::Status { status, .. }
            | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Http(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The server's error code, when it sent one this build knows.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Unauthorized { .. } => Some(Code::Unauthorized),
            ClientError::Api { code, .. } => Code::ALL.iter().copied().find(|c| c.as_str() == code),
            _ => None,
        }
    }

    /// The field the server named as at fault.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// A member of the error body beyond `code`, `message` and `field` (`task_id`, `step`, …).
    pub fn detail(&self, key: &str) -> Option<&Value> {
        match self {
            ClientError::Api { details, .. } => details.get(key),
            _ => None,
        }
    }

    /// The task the failed call was (a function's invocation, a pipeline's step), when the
    /// server named it.
    pub fn task_id(&self) -> Option<TaskId> {
        self.detail("task_id")?.as_str()?.parse().ok()
    }

    /// The error body as the server sent it, for a refusal that had one (what `ufaas run`
    /// prints).
    pub fn body(&self) -> Option<Value> {
        match self {
            ClientError::Unauthorized { message } => {
                Some(json!({"code": Code::Unauthorized.as_str(), "message": message}))
            }
            ClientError::Api {
                code,
                message,
                field,
                details,
                ..
            } => {
                let mut v = details.clone();
                v.insert("code".into(), json!(code));
                v.insert("message".into(), json!(message));
                if let Some(f) = field {
                    v.insert("field".into(), json!(f));
                }
                Some(Value::Object(v))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_a_typed_api_error() {
        let body =
            br#"{"code": "invalid_value", "message": "ttl must be positive", "field": "ttl"}"#;
        let e = ClientError::from_response(400, body);
        assert!(
            matches!(&e, ClientError::Api { status: 400, code, message, field: Some(f), .. }
                if code == "invalid_value" && message == "ttl must be positive" && f == "ttl"),
            "{e:?}"
        );
        assert_eq!(e.code(), Some(Code::InvalidValue));
        assert_eq!((e.status(), e.field()), (Some(400), Some("ttl")));
        assert_eq!(
            e.to_string(),
            "invalid_value: ttl must be positive (field ttl)"
        );
        // The body comes back as the server sent it.
        assert_eq!(
            e.body(),
            serde_json::from_slice::<Value>(body).ok(),
            "round trip of the error body"
        );
    }

    #[test]
    fn a_body_without_field_and_an_unknown_code_are_kept() {
        let e = ClientError::from_response(409, br#"{"code": "already_ended", "message": "m"}"#);
        assert_eq!((e.code(), e.field()), (Some(Code::AlreadyEnded), None));
        assert_eq!(
            e.body(),
            Some(json!({"code": "already_ended", "message": "m"}))
        );
        let e = ClientError::from_response(418, br#"{"code": "from_the_future", "message": "m"}"#);
        assert!(matches!(&e, ClientError::Api { code, .. } if code == "from_the_future"));
        assert_eq!(e.code(), None);
    }

    #[test]
    fn the_other_members_of_an_error_body_are_kept() {
        let id = TaskId::new();
        let body = json!({"code": "step_failed", "message": "step 1 (a/b) failed: boom",
            "field": "steps[1]", "step": 1, "function": "a/b", "error": "boom",
            "task_id": id, "pipeline_id": TaskId::new()});
        let e = ClientError::from_response(422, body.to_string().as_bytes());
        assert_eq!((e.field(), e.task_id()), (Some("steps[1]"), Some(id)));
        assert_eq!(e.detail("step"), Some(&json!(1)));
        assert_eq!(e.body(), Some(body), "the body comes back whole");
        let e = ClientError::from_response(500, br#"{"code": "function_error", "message": "m"}"#);
        assert_eq!((e.task_id(), e.detail("step")), (None, None));
    }

    #[test]
    fn a_401_is_unauthorized_with_the_hint() {
        let e = ClientError::from_response(
            401,
            br#"{"code": "unauthorized", "message": "send Authorization: Bearer <token>"}"#,
        );
        assert!(matches!(&e, ClientError::Unauthorized { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("send Authorization: Bearer <token>; {TOKEN_HINT}")
        );
        assert_eq!(
            (e.status(), e.code()),
            (Some(401), Some(Code::Unauthorized))
        );
        // A proxy's 401 without our body still says what to do.
        let e = ClientError::from_response(401, b"<html>no</html>");
        assert_eq!(e.to_string(), format!("401 Unauthorized; {TOKEN_HINT}"));
    }

    #[test]
    fn a_body_that_is_not_ours_is_a_status_error_cut_short() {
        let page = "x".repeat(1000);
        let e = ClientError::from_response(502, page.as_bytes());
        match &e {
            ClientError::Status { status, body } => {
                assert_eq!((*status, body.len()), (502, BODY_EXCERPT_CHARS))
            }
            other => panic!("expected Status, got {other:?}"),
        }
        assert_eq!((e.code(), e.body()), (None, None));
        // JSON, but not the error body: not mistaken for one.
        let e = ClientError::from_response(500, br#"{"oops": 1}"#);
        assert!(
            matches!(e, ClientError::Status { status: 500, .. }),
            "{e:?}"
        );
    }
}
