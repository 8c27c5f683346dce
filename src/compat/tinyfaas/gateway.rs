//! The HTTP gateway (tinyFaaS's `pkg/http`): `GET|POST /{name}` calls the function
//! `default/{name}` with the request's body and headers, and answers its output as it is
//! (200, the raw body); `X-tinyFaaS-Async` (any non-empty value, as Go's `Header.Get` reads
//! it) makes it 202 once the call is stored. Each call is an invocation of section 5, with
//! its task record, events and logs; the answer carries `X-Ufaas-Task-Id`.
//!
//! Where tinyFaaS answers an error with no body, this gateway sends section 5's error body:
//! 404 `not_found` for an unknown function, 500 `function_error` (with the task id) when the
//! handler fails, 504 `function_timeout`, 429 `queue_full`. With tokens configured it wants
//! `Authorization: Bearer` as the main listener does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::NS;
use crate::error::{ApiError, Code};
use crate::functions::invoke::{Call, Failure, Refusal};
use crate::functions::{spec, Functions};
use crate::http::auth::Tokens;
use crate::http::{body_limited, error_reply, json_reply};
use crate::model::TaskId;

/// Serves calls on `listener` until `stop` is cancelled; connections still open a few
/// seconds after that are dropped (an idle keep-alive would otherwise hold it for ever).
pub async fn serve(
    listener: tokio::net::TcpListener,
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
    stop: CancellationToken,
) {
    let limit = functions.runner().max_body_bytes();
    let with = warp::any().map(move || functions.clone());
    let routes = crate::http::auth::filter(tokens)
        .and(warp::get().or(warp::post()).unify())
        .and(with)
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(body_limited(limit))
        .then(call)
        .recover(crate::http::recover)
        .unify()
        .with(warp::trace::request());
    let graceful = stop.clone();
    let server = warp::serve(routes)
        .incoming(listener)
        .graceful(async move { graceful.cancelled().await })
        .run();
    tokio::select! {
        _ = server => {}
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => {}
    }
}

/// The header that makes a call asynchronous.
const ASYNC_HEADER: &str = "x-tinyfaas-async";

/// One call: the path after its leading slashes is the function's name.
async fn call(
    f: Arc<Functions>,
    method: Method,
    path: warp::path::FullPath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = path.as_str().trim_start_matches('/').to_string();
    if spec::check_name(&name, "name").is_err() || f.get(NS, &name).is_none() {
        return not_found(&name);
    }
    let run_async = headers
        .get(ASYNC_HEADER)
        .is_some_and(|v| !v.as_bytes().is_empty());
    let call = Call {
        method: method.as_str().to_string(),
        path: path.as_str().to_string(),
        query: Vec::new(),
        headers: first_values(&headers),
        // tinyFaaS hands a python `fn` None for an empty body.
        has_body: !body.is_empty(),
        body,
    };
    if run_async {
        let done = tokio::spawn(async move { f.invoke_async(NS, &name, call, None).await }).await;
        return match done {
            Ok(Ok(task)) => with_task(StatusCode::ACCEPTED.into_response(), task.id),
            Ok(Err(r)) => refusal(r),
            Err(e) => error_reply(ApiError::internal(format!("the call failed: {e}"))),
        };
    }
    // On a task of its own: the call is recorded whatever the client does.
    let done = tokio::spawn(async move { f.invoke(NS, &name, call).await }).await;
    let invoked = match done {
        Ok(Ok(i)) => i,
        Ok(Err(r)) => return refusal(r),
        Err(e) => return error_reply(ApiError::internal(format!("the call failed: {e}"))),
    };
    let id = invoked.task.id;
    match invoked.answer {
        Ok(a) => {
            // The output as it is; like tinyFaaS, the status and headers a handler set are
            // not passed on.
            let mut resp = warp::http::Response::new(a.body.into());
            if let Ok(v) = HeaderValue::from_str(&a.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            with_task(resp, id)
        }
        Err(failure) => {
            let code = match failure {
                Failure::Timeout(_) => Code::FunctionTimeout,
                Failure::QueueFull(_) => Code::QueueFull,
                Failure::Unavailable(_) => Code::FunctionUnavailable,
                Failure::Function(_) | Failure::Gone => Code::FunctionError,
            };
            let message = invoked
                .task
                .error
                .clone()
                .unwrap_or_else(|| format!("{failure:?}"));
            let status =
                StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            with_task(
                json_reply(
                    status,
                    &serde_json::json!({"code": code, "message": message, "task_id": id}),
                ),
                id,
            )
        }
    }
}

/// Each header once, its first value, as tinyFaaS passes them (names lower-case here; the
/// python runtime writes them as Go does for a tinyFaaS `fn`).
fn first_values(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .keys()
        .filter_map(|k| {
            let v = headers.get(k)?.to_str().ok()?;
            Some((k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn not_found(name: &str) -> Response {
    error_reply(ApiError::new(Code::NotFound, format!("no function {name}")).with_field("name"))
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::NotFound(what) => not_found(&what),
        Refusal::QueueFull(n) => error_reply(ApiError::new(
            Code::QueueFull,
            format!("the function's queue is full ({n} calls wait); try again later"),
        )),
        Refusal::Store(e) => error_reply(ApiError::from(e)),
    }
}

fn with_task(mut resp: Response, id: TaskId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-ufaas-task-id", v);
    }
    resp
}
