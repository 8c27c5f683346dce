//! gRPC with tinyFaaS's `tinyfaas.proto` (`proto/`, compiled by `build.rs`):
//! `TinyFaaS/Request(Data)` invokes the function `Data.functionIdentifier` with `Data.data` as
//! its input and answers its output as `Response.response`, as tinyFaaS's own gRPC door does.
//! The call's metadata reaches the handler as its headers (every ASCII key, `user-agent` and
//! `content-type` included, but not the transport's `te` and `grpc-*`; `authorization` is
//! checked and never passed on).
//!
//! A failure is a gRPC status (tinyFaaS answers every one as UNKNOWN; these say which):
//! NOT_FOUND for an unknown function, INVALID_ARGUMENT for an identifier that cannot name one,
//! INTERNAL when the handler fails (or its output is not UTF-8, which a proto3 `string` cannot
//! carry), DEADLINE_EXCEEDED past the function's timeout, RESOURCE_EXHAUSTED when its queue is
//! full, UNAVAILABLE when no container can be started, UNAUTHENTICATED without a valid token.
//! Every answer of an invocation carries the metadata `x-ufaas-task-id`.
//!
//! The call runs through [`Functions::invoke`], so it is an ordinary invocation: a task
//! record, events and logs. The CoAP door shares [`target`] and [`run`].

use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{KeyAndValueRef, MetadataValue};
use tonic::{Request, Response, Status};

use crate::compat::DEFAULT_NAMESPACE;
use crate::functions::invoke::{Answer, Call, Failure, Refusal};
use crate::functions::spec::check_name;
use crate::functions::Functions;
use crate::http::auth::Tokens;
use crate::model::TaskId;

/// The code tonic-prost-build generates from `proto/tinyfaas.proto`: the messages, the
/// server and the client (which the tests use).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("openfogstack.tinyfaas.tinyfaas");
}

use proto::tiny_faa_s_server::{TinyFaaS, TinyFaaSServer};

/// Serves calls on `listener` until `stop` is cancelled; calls in flight are answered first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
    stop: CancellationToken,
) {
    let door = Door { functions, tokens };
    let served = tonic::transport::Server::builder()
        .add_service(TinyFaaSServer::new(door))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the tinyFaaS gRPC door stopped");
    }
}

struct Door {
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
}

#[tonic::async_trait]
impl TinyFaaS for Door {
    async fn request(
        &self,
        request: Request<proto::Data>,
    ) -> Result<Response<proto::Response>, Status> {
        if let Some(tokens) = &self.tokens {
            let headers = request.metadata().clone().into_headers();
            tokens
                .check(&headers)
                .map_err(|e| Status::unauthenticated(e.message))?;
        }
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                KeyAndValueRef::Ascii(k, v) if !transport_header(k.as_str()) => {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                }
                KeyAndValueRef::Ascii(..) => None,
                // `-bin` keys hold bytes, which a header cannot.
                KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let data = request.into_inner();
        let (namespace, name) =
            target(&data.function_identifier).map_err(Status::invalid_argument)?;
        let call = Call {
            method: "POST".into(),
            path: format!("/{}", data.function_identifier),
            query: Vec::new(),
            headers,
            has_body: !data.data.is_empty(),
            body: Bytes::from(data.data.into_bytes()),
        };
        match run(&self.functions, namespace, name, call).await {
            Ran::Answered(answer, id) => match String::from_utf8(answer.body) {
                Ok(text) => Ok(with_task(
                    Response::new(proto::Response { response: text }),
                    id,
                )),
                Err(_) => Err(with_task_status(
                    Status::internal(
                        "the output is not UTF-8 text, which a proto3 string cannot carry; \
                         call the function over HTTP for bytes",
                    ),
                    id,
                )),
            },
            Ran::Failed(failure, message, id) => {
                let status = match failure {
                    Failure::Timeout(_) => Status::deadline_exceeded(message),
                    Failure::QueueFull(_) => Status::resource_exhausted(message),
                    Failure::Unavailable(_) => Status::unavailable(message),
                    Failure::Function(_) | Failure::Gone => Status::internal(message),
                };
                Err(with_task_status(status, id))
            }
            Ran::Refused(Refusal::NotFound(what)) => {
                Err(Status::not_found(format!("no function {what}")))
            }
            Ran::Refused(Refusal::QueueFull(n)) => Err(Status::resource_exhausted(format!(
                "the function's queue is full ({n} calls wait); try again later"
            ))),
            Ran::Refused(Refusal::Store(e)) => Err(Status::internal(e.to_string())),
            Ran::Lost(why) => Err(Status::internal(why)),
        }
    }
}

/// HTTP/2 and gRPC's own headers (`te`, `grpc-timeout`, `grpc-accept-encoding`, …): how the
/// call travelled, not what the caller sent, so not the handler's (grpc-go keeps them out of
/// a call's metadata too).
fn transport_header(key: &str) -> bool {
    key == "te" || key.starts_with("grpc-")
}

fn with_task<T>(mut r: Response<T>, id: TaskId) -> Response<T> {
    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
        r.metadata_mut().insert("x-ufaas-task-id", v);
    }
    r
}

fn with_task_status(mut s: Status, id: TaskId) -> Status {
    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
        s.metadata_mut().insert("x-ufaas-task-id", v);
    }
    s
}

/// The function a tinyFaaS identifier names: `name` in the namespace `default`, as tinyFaaS
/// has no namespaces, or `ns/name` for any other function. Leading slashes are dropped, as
/// tinyFaaS drops them from a CoAP path.
pub(super) fn target(identifier: &str) -> Result<(&str, &str), String> {
    let id = identifier.trim_start_matches('/');
    if id.is_empty() {
        return Err("name a function: `name`, or `namespace/name`".into());
    }
    let (namespace, name) = match id.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (DEFAULT_NAMESPACE, id),
    };
    check_name(namespace, "namespace").map_err(|e| e.message)?;
    check_name(name, "name").map_err(|e| e.message)?;
    Ok((namespace, name))
}

/// How a call through a door ended.
pub(super) enum Ran {
    /// The handler answered (whatever status it set: tinyFaaS passes the body on as it is).
    Answered(Answer, TaskId),
    /// It failed: why, the task record's message, and the task.
    Failed(Failure, String, TaskId),
    /// Nothing was run.
    Refused(Refusal),
    /// The invocation's own task panicked or was cancelled.
    Lost(String),
}

/// Invokes `namespace/name` with `call` on a task of its own, so the call runs to its end and
/// is recorded whatever the caller does meanwhile.
pub(super) async fn run(
    functions: &Arc<Functions>,
    namespace: &str,
    name: &str,
    call: Call,
) -> Ran {
    let f = functions.clone();
    let (ns, n) = (namespace.to_string(), name.to_string());
    match tokio::spawn(async move { f.invoke(&ns, &n, call).await }).await {
        Ok(Ok(invoked)) => {
            let id = invoked.task.id;
            match invoked.answer {
                Ok(answer) => Ran::Answered(answer, id),
                Err(failure) => {
                    let message = invoked
                        .task
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("{failure:?}"));
                    Ran::Failed(failure, message, id)
                }
            }
        }
        Ok(Err(refusal)) => Ran::Refused(refusal),
        Err(e) => Ran::Lost(format!("the call failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn transport_headers_are_not_the_handlers() {
        for k in [
            "te",
            "grpc-timeout",
            "grpc-accept-encoding",
            "grpc-encoding",
        ] {
            assert!(super::transport_header(k), "{k}");
        }
        for k in ["user-agent", "content-type", "lab", "tee", "x-grpc-id"] {
            assert!(!super::transport_header(k), "{k}");
        }
    }

    #[test]
    fn identifiers_name_default_or_a_namespace() {
        assert_eq!(target("echo"), Ok(("default", "echo")));
        assert_eq!(target("/echo"), Ok(("default", "echo")));
        assert_eq!(target("team/echo"), Ok(("team", "echo")));
        assert!(target("").is_err());
        assert!(target("/").is_err());
        assert!(target("Echo").is_err());
        assert!(target("a/b/c").is_err());
        assert!(target("../x").is_err());
        assert!(target("team/").is_err());
    }
}
