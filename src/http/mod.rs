//! The HTTP layer: one small function per route, state injected with `with_runner`, and one
//! `recover` that turns every rejection into the JSON error body. Handlers only parse and hand
//! a command to the runner; they answer their own errors (so warp never has to pick between
//! rejections of routes that did not match).

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use serde_json::{json, Value};
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::error::{ApiError, Code};
use crate::model::{TaskId, TaskState};
use crate::runner::{DeleteOptions, Runner, RunnerError};
use crate::store::ListFilter;

pub mod auth;
mod errors;
mod functions;
pub mod ws;

/// Longest `?wait=` honoured, in seconds.
pub const MAX_WAIT_SECONDS: f64 = 3600.0;

pub(crate) type Query = Vec<(String, String)>;

/// Every route, behind the token check when `tokens` is set: the check runs once in front of
/// the whole chain, so no route can skip it and its 401 wins over any other rejection.
pub fn routes(
    runner: Arc<Runner>,
    functions: Arc<crate::functions::Functions>,
    tokens: Option<auth::Tokens>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let limit = runner.max_body_bytes();
    let functions_for_compat = functions.clone();
    let functions = functions::routes(functions, limit);
    let with_runner = warp::any().map(move || runner.clone());
    let query = warp::query::<Query>();
    let body = body_limited(limit);

    let websocket = warp::path!("fn" / "ws")
        .and(warp::get())
        .and(warp::ws())
        .and(with_runner.clone())
        .and(query)
        .map(
            |upgrade: warp::ws::Ws, runner: Arc<Runner>, q: Query| match ws::parse_params(&q) {
                Ok(params) => upgrade
                    .on_upgrade(move |socket| ws::session(socket, runner, params))
                    .into_response(),
                Err(e) => error_reply(e),
            },
        )
        .boxed();
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "alive"})))
        .boxed();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_runner.clone())
        .then(readyz)
        .boxed();
    let list = warp::path!("fn")
        .and(warp::get())
        .and(with_runner.clone())
        .and(query)
        .then(list_tasks)
        .boxed();
    let create = warp::path!("fn")
        .and(warp::post())
        .and(with_runner.clone())
        .and(query)
        .and(body.clone())
        .then(create_task)
        .boxed();
    let get = warp::path!("fn" / String)
        .and(warp::get())
        .and(with_runner.clone())
        .then(get_task)
        .boxed();
    let reuse = warp::path!("fn" / String)
        .and(warp::post())
        .and(with_runner.clone())
        .and(query)
        .and(body.clone())
        .then(reuse_task)
        .boxed();
    let update = warp::path!("fn" / String)
        .and(warp::put())
        .and(with_runner.clone())
        .and(warp::header::optional::<String>("content-type"))
        .and(body)
        .then(update_task)
        .boxed();
    let delete = warp::path!("fn" / String)
        .and(warp::delete())
        .and(with_runner)
        .and(query)
        .then(delete_task)
        .boxed();

    let routes = websocket
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(list)
        .unify()
        .or(create)
        .unify()
        .or(get)
        .unify()
        .or(reuse)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(functions)
        .unify()
        .or(crate::compat::routes(functions_for_compat, limit))
        .unify();
    auth::filter(tokens)
        .and(routes)
        .recover(recover)
        .unify()
        .with(warp::trace::request())
}

/// A rejection carrying our own error, for filters that refuse before a handler runs.
#[derive(Debug)]
struct Refused(ApiError);

impl warp::reject::Reject for Refused {}

/// An oversize body's 413. It goes out with `Connection: close`: the body is not read to its
/// end, so the connection cannot carry another request.
#[derive(Debug)]
struct TooLarge(ApiError);

impl warp::reject::Reject for TooLarge {}

/// How far past the limit an oversize body is read (and thrown away) before its 413 goes
/// out, and for how long at most. A client that sends its whole body before it reads the
/// answer (Python's `urllib`, curl without `Expect`) otherwise meets a socket closed with
/// bytes unread, which the kernel answers with a reset: the client sees a broken pipe, never
/// the 413. Bounded in bytes and in time, as nginx's lingering close is, so a client that
/// never stops sending cannot hold the task.
const DRAIN_BYTES: u64 = 8 << 20;
/// See [`DRAIN_BYTES`].
const DRAIN_TIME: Duration = Duration::from_secs(3);

/// The request body, up to `limit` bytes: 413 as soon as `Content-Length` or the bytes read
/// pass it, so an oversize body is never kept (see [`DRAIN_BYTES`] for what is read of it).
/// A request with no body (no `Content-Length`, no chunks) is an empty body, as HTTP/1.1
/// says.
pub(crate) fn body_limited(
    limit: u64,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::header::headers_cloned().map(|h: header::HeaderMap| {
            h.get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        }))
        .and(warp::body::stream())
        .and_then(move |len, expects_continue, stream| {
            read_body(limit, len, expects_continue, stream)
        })
}

async fn read_body<S, B>(
    limit: u64,
    len: Option<u64>,
    expects_continue: bool,
    stream: S,
) -> Result<Bytes, Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        warp::reject::custom(TooLarge(ApiError::new(
            Code::PayloadTooLarge,
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )))
    };
    let mut stream = Box::pin(stream);
    if let Some(n) = len.filter(|&n| n > limit) {
        // Refused on its header, nothing read. A client that asked `Expect: 100-continue`
        // sends nothing until told to (hyper says 100 only once the body is polled), and a
        // body past the drain's bound would end in a reset anyway: either is answered at once.
        if !expects_continue && n <= limit.saturating_add(DRAIN_BYTES) {
            drain(stream, 0, limit).await;
        }
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(Refused(ApiError::new(
                Code::InvalidBody,
                format!("reading the body failed: {e}"),
            )))
        })?;
        let seen = (buf.len() + chunk.remaining()) as u64;
        if seen > limit {
            drop(buf);
            drain(stream, seen, limit).await;
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Reads and throws away the rest of an oversize body of which `seen` bytes were read: up to
/// [`DRAIN_BYTES`] past `limit` in all, for [`DRAIN_TIME`] at most, or to its end or first
/// error, whichever comes first.
async fn drain<S, B>(mut stream: std::pin::Pin<Box<S>>, mut seen: u64, limit: u64)
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bound = limit.saturating_add(DRAIN_BYTES);
    let read = async {
        while seen <= bound {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.remaining() as u64,
                Some(Err(_)) | None => return,
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIME, read).await.is_err() {
        tracing::debug!(
            seen,
            "gave up reading an oversize body after {DRAIN_TIME:?}"
        );
    }
}

/// Runs a command that writes on a task of its own. A client that hangs up drops its
/// request's future; dropped inside a write transaction, sqlx can hand the connection back
/// with the transaction still open, and every later write then fails on a locked database.
/// A spawned task runs to its end whatever the client does.
pub(crate) async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, RunnerError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(fut).await {
        Ok(done) => done.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("the command failed: {e}"))),
    }
}

pub(crate) fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

pub(crate) fn error_reply(e: ApiError) -> Response {
    json_reply(e.status_code(), &e)
}

pub(crate) fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(error_reply)
}

pub(crate) fn with_location(mut resp: Response, id: TaskId) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(&format!("/fn/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(crate) fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::from_str(raw).map_err(|_| {
        ApiError::bad_request(
            Code::InvalidId,
            "id",
            format!("`{raw}` is not a task id (a UUID)"),
        )
    })
}

pub(crate) fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            Code::InvalidJson,
            "the request body is empty; send a JSON task spec",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            Code::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

pub(crate) fn query_get<'a>(q: &'a Query, key: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn query_bool(q: &Query, key: &str) -> Result<bool, ApiError> {
    match query_get(q, key) {
        None => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            Code::InvalidQuery,
            key,
            format!("`{key}` must be true or false, not `{other}`"),
        )),
    }
}

pub(crate) fn query_wait(q: &Query) -> Result<Option<Duration>, ApiError> {
    match query_get(q, "wait") {
        None => Ok(None),
        Some(raw) => match raw.parse::<f64>() {
            Ok(s) if (0.0..=MAX_WAIT_SECONDS).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(ApiError::bad_request(
                Code::InvalidQuery,
                "wait",
                format!("`wait` must be a number of seconds from 0 to {MAX_WAIT_SECONDS}"),
            )),
        },
    }
}

/// GET /readyz: 200 when Docker and the database both answer, else 503 naming the one that
/// does not.
async fn readyz(runner: Arc<Runner>) -> Response {
    if let Err(e) = runner.store().ping().await {
        return error_reply(ApiError::new(
            Code::DatabaseUnavailable,
            format!("the database does not answer: {e}"),
        ));
    }
    if let Err(e) = runner.engine().ping().await {
        return error_reply(ApiError::new(Code::DockerUnavailable, e.to_string()));
    }
    json_reply(
        StatusCode::OK,
        &json!({"status": "ready", "docker": "ok", "database": "ok",
                "database_writes": runner.store().writes()}),
    )
}

/// GET /fn?state=&name=&limit=&before=
async fn list_tasks(runner: Arc<Runner>, q: Query) -> Response {
    respond(
        async {
            let mut filter = ListFilter {
                limit: 100,
                ..ListFilter::default()
            };
            for (key, value) in &q {
                match key.as_str() {
                    "state" => {
                        for part in value.split(',').filter(|p| !p.trim().is_empty()) {
                            let st = TaskState::from_str(part).map_err(|e| {
                                ApiError::bad_request(Code::InvalidQuery, "state", e)
                            })?;
                            filter.states.push(st);
                        }
                    }
                    "name" => filter.name = Some(value.replace(' ', "_")),
                    "limit" => {
                        filter.limit = match value.parse::<u32>() {
                            Ok(n) if (1..=1000).contains(&n) => n,
                            _ => {
                                return Err(ApiError::bad_request(
                                    Code::InvalidQuery,
                                    "limit",
                                    "`limit` must be a whole number from 1 to 1000",
                                ))
                            }
                        }
                    }
                    "before" => {
                        let id = TaskId::from_str(value).map_err(|_| {
                            ApiError::bad_request(
                                Code::InvalidQuery,
                                "before",
                                "`before` must be a task id",
                            )
                        })?;
                        if !runner.store().exists(id).await? {
                            return Err(ApiError::bad_request(
                                Code::InvalidQuery,
                                "before",
                                format!("no task {id} to page from"),
                            ));
                        }
                        filter.before = Some(id);
                    }
                    _ => {}
                }
            }
            let (tasks, next) = runner.store().list(&filter).await?;
            Ok(json_reply(
                StatusCode::OK,
                &json!({"tasks": tasks, "next": next}),
            ))
        }
        .await,
    )
}

/// POST /fn[?wait=SECONDS]
async fn create_task(runner: Arc<Runner>, q: Query, body: Bytes) -> Response {
    respond(submit(runner, q, body, None).await)
}

/// POST /fn/{id}: a task that runs in the container of task `id`.
async fn reuse_task(raw_id: String, runner: Arc<Runner>, q: Query, body: Bytes) -> Response {
    respond(
        async {
            let id = parse_id(&raw_id)?;
            submit(runner, q, body, Some(id)).await
        }
        .await,
    )
}

async fn submit(
    runner: Arc<Runner>,
    q: Query,
    body: Bytes,
    reuse_of: Option<TaskId>,
) -> Result<Response, ApiError> {
    let wait = query_wait(&q)?;
    let spec = parse_json(&body)?;
    let events = runner.store().events().subscribe();
    let record = detached({
        let runner = runner.clone();
        async move { runner.submit(spec, reuse_of).await }
    })
    .await?;
    let id = record.id;
    let Some(wait) = wait else {
        return Ok(with_location(json_reply(StatusCode::CREATED, &record), id));
    };
    match runner.wait_ended(events, id, wait).await? {
        Some(done) => Ok(with_location(json_reply(StatusCode::OK, &done), id)),
        None => {
            let now = runner.store().get(id).await?.unwrap_or(record);
            Ok(with_location(json_reply(StatusCode::ACCEPTED, &now), id))
        }
    }
}

/// GET /fn/{id}
async fn get_task(raw_id: String, runner: Arc<Runner>) -> Response {
    respond(
        async {
            if raw_id == "ws" {
                return Err(ApiError::new(
                    Code::UpgradeRequired,
                    "GET /fn/ws is a WebSocket: send the Upgrade headers",
                ));
            }
            let id = parse_id(&raw_id)?;
            match runner.store().get(id).await? {
                Some(r) => Ok(json_reply(StatusCode::OK, &r)),
                None => Err(ApiError::no_task(id)),
            }
        }
        .await,
    )
}

/// PUT /fn/{id}: replace the spec of a task that has not started, or merge into it with
/// `Content-Type: application/merge-patch+json`.
async fn update_task(
    raw_id: String,
    runner: Arc<Runner>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let id = parse_id(&raw_id)?;
            let ct = content_type.unwrap_or_default().trim().to_ascii_lowercase();
            if ct.starts_with("application/json-patch+json") {
                return Err(ApiError::new(
                    Code::UnsupportedMediaType,
                    "JSON Patch is not supported: send a whole spec, or a merge-patch with \
                     Content-Type: application/merge-patch+json",
                ));
            }
            let merge = ct.starts_with("application/merge-patch+json");
            let patch = parse_json(&body)?;
            if merge && !patch.is_object() {
                return Err(ApiError::new(
                    Code::InvalidType,
                    "a merge-patch must be a JSON object",
                ));
            }
            let record = detached({
                let runner = runner.clone();
                async move { runner.update(id, patch, merge).await }
            })
            .await?;
            Ok(json_reply(StatusCode::OK, &record))
        }
        .await,
    )
}

/// DELETE /fn/{id}[?remove_container=true][&purge=true]
async fn delete_task(raw_id: String, runner: Arc<Runner>, q: Query) -> Response {
    respond(
        async {
            let id = parse_id(&raw_id)?;
            let opts = DeleteOptions {
                remove_container: query_bool(&q, "remove_container")?,
                purge: query_bool(&q, "purge")?,
            };
            let record = detached({
                let runner = runner.clone();
                async move { runner.delete(id, opts).await }
            })
            .await?;
            Ok(json_reply(StatusCode::OK, &record))
        }
        .await,
    )
}

/// Turns warp's own rejections (no route, wrong method, body too large …) into the JSON
/// error body.
pub(crate) async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    let too_large = rej.find::<TooLarge>();
    let e = if let Some(Refused(e)) = rej.find::<Refused>() {
        e.clone()
    } else if let Some(TooLarge(e)) = too_large {
        e.clone()
    } else if rej.is_not_found() {
        ApiError::new(Code::NotFound, "no such route")
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            Code::PayloadTooLarge,
            "the request body is larger than the server accepts",
        )
    } else if rej.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            Code::LengthRequired,
            "send a Content-Length header with the body",
        )
    } else if let Some(q) = rej.find::<warp::reject::InvalidQuery>() {
        ApiError::new(
            Code::InvalidQuery,
            format!("the query string is malformed: {q}"),
        )
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            Code::MethodNotAllowed,
            "this route does not take that method",
        )
    } else if let Some(h) = rej.find::<warp::reject::InvalidHeader>() {
        ApiError::new(Code::InvalidHeader, h.to_string())
    } else if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(Code::UnsupportedMediaType, "unsupported content type")
    } else {
        tracing::warn!(rejection = ?rej, "unhandled rejection");
        ApiError::internal(format!("unhandled: {rej:?}"))
    };
    let mut resp = error_reply(e);
    if too_large.is_some() {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(auth::CHALLENGE),
        );
    }
    Ok(resp)
}
