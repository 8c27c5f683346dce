//! The routes of named functions (API.md section 5): the registry, invocations (sync and
//! async), pipelines, logs and secrets. Each handler parses the request into a call on
//! [`Functions`] and turns what it gives into the answer.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::{
    detached, error_reply, json_reply, parse_json, query_bool, query_get, with_location, Query,
};
use crate::compat::backstage;
use crate::error::{ApiError, Code};
use crate::functions::invoke::{Answer, Call, Failure, Invoked, Refusal};
use crate::functions::{spec, DeployError, Functions};
use crate::model::TaskId;
use crate::runner::RunnerError;

/// Every function route.
pub(super) fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let with = warp::any().map(move || functions.clone());
    let body = super::body_limited(limit);
    let query = warp::query::<Query>();

    let list = warp::path!("functions")
        .and(warp::get())
        .and(with.clone())
        .and(query)
        .then(list_functions);
    let pipeline = warp::path!("functions" / "pipeline")
        .and(warp::post().or(warp::put()).unify())
        .and(with.clone())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .then(run_pipeline);
    let put = warp::path!("functions" / String / String)
        .and(warp::put())
        .and(with.clone())
        .and(body.clone())
        .then(put_function);
    let get = warp::path!("functions" / String / String)
        .and(warp::get())
        .and(with.clone())
        .then(get_function);
    let delete = warp::path!("functions" / String / String)
        .and(warp::delete())
        .and(with.clone())
        .then(delete_function);
    // `/run` is Backstage Functions' name for the same call.
    let invoke = warp::path!("functions" / String / String / "invoke")
        .or(warp::path!("functions" / String / String / "run"))
        .unify()
        .and(warp::post().or(warp::put()).unify().or(warp::get()).unify())
        .and(with.clone())
        .and(incoming())
        .and(body.clone())
        .then(invoke);
    let logs = warp::path!("functions" / String / String / "logs")
        .and(warp::get())
        .and(with.clone())
        .and(query)
        .then(logs);
    let put_secret = warp::path!("secrets" / String)
        .and(warp::put())
        .and(with.clone())
        .and(body)
        .then(put_secret);
    let delete_secret = warp::path!("secrets" / String)
        .and(warp::delete())
        .and(with)
        .then(delete_secret);
    list.or(pipeline)
        .unify()
        .or(put)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(invoke)
        .unify()
        .or(logs)
        .unify()
        .or(put_secret)
        .unify()
        .or(delete_secret)
        .unify()
        .boxed()
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(Code::NotFound, format!("no function {what}")).with_field("name")
}

/// GET /functions[?namespace=]
async fn list_functions(f: Arc<Functions>, q: Query) -> Response {
    let ns = query_get(&q, "namespace").map(str::to_string);
    let mut out = Vec::new();
    for d in f.all() {
        if ns.as_deref().is_none_or(|n| n == d.namespace) {
            out.push(f.view(&d).await);
        }
    }
    json_reply(StatusCode::OK, &json!({"functions": out}))
}

/// PUT /functions/{ns}/{name}
async fn put_function(ns: String, name: String, f: Arc<Functions>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return error_reply(e),
    };
    // On a task of its own: a deploy writes, and a client hanging up must not cut it short.
    let done = tokio::spawn(async move {
        let r = f.deploy(&ns, &name, body).await;
        match r {
            Ok((d, created)) => {
                let mut view = f.view(&d).await;
                let etag = backstage::decorate(&mut view, &d);
                Ok((view, created, etag))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    match done {
        Ok(Ok((view, created, etag))) => with_etag(
            json_reply(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &view,
            ),
            &etag,
        ),
        Ok(Err(DeployError::Refused(e))) => error_reply(e),
        Ok(Err(DeployError::Unavailable(why))) => error_reply(ApiError::new(
            Code::DockerUnavailable,
            format!("the function's containers could not be started: {why}"),
        )),
        Err(e) => error_reply(ApiError::internal(format!("the deploy failed: {e}"))),
    }
}

/// A function's answer carries its `ETag` (Backstage Functions' clients read it).
fn with_etag(mut resp: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// GET /functions/{ns}/{name}
async fn get_function(ns: String, name: String, f: Arc<Functions>) -> Response {
    match f.get(&ns, &name) {
        Some(d) => {
            let mut view = f.view(&d).await;
            let etag = backstage::decorate(&mut view, &d);
            with_etag(json_reply(StatusCode::OK, &view), &etag)
        }
        None => error_reply(not_found(&format!("{ns}/{name}"))),
    }
}

/// DELETE /functions/{ns}/{name}
async fn delete_function(ns: String, name: String, f: Arc<Functions>) -> Response {
    let done = detached(async move {
        f.delete(&ns, &name)
            .await
            .map(|gone| (gone, format!("{ns}/{name}")))
            .map_err(RunnerError::Refused)
    })
    .await;
    match done {
        Ok((true, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((false, what)) => error_reply(not_found(&what)),
        Err(e) => error_reply(e),
    }
}

/// The call a request makes: its method, path, query and headers (lower-case names) reach
/// the handler.
fn call_of(method: &Method, path: &str, q: Query, headers: &HeaderMap, body: Bytes) -> Call {
    let has_body =
        !body.is_empty() || headers.contains_key(header::CONTENT_LENGTH) && method != Method::GET;
    Call {
        method: method.as_str().to_string(),
        path: path.to_string(),
        query: q,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        has_body: has_body && !body.is_empty(),
        body,
    }
}

/// Whether the caller asked for an async call: `?async=true` or `X-Ufaas-Async: true`.
fn wants_async(q: &Query, headers: &HeaderMap) -> Result<bool, ApiError> {
    if query_bool(q, "async")? {
        return Ok(true);
    }
    match headers.get("x-ufaas-async").map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if ["true", "1", "yes"].contains(&v.trim().to_ascii_lowercase().as_str()) => {
            Ok(true)
        }
        Some(Ok(v))
            if ["false", "0", "no", ""].contains(&v.trim().to_ascii_lowercase().as_str()) =>
        {
            Ok(false)
        }
        Some(_) => Err(ApiError::bad_request(
            Code::InvalidHeader,
            "X-Ufaas-Async",
            "`X-Ufaas-Async` must be true or false",
        )),
    }
}

/// `X-Callback-Url`, checked like a `uri` resource.
async fn callback_url(f: &Functions, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("x-callback-url") else {
        return Ok(None);
    };
    let bad = |why: String| ApiError::bad_request(Code::InvalidHeader, "X-Callback-Url", why);
    let url = raw
        .to_str()
        .map_err(|_| bad("`X-Callback-Url` is not text".into()))?
        .trim()
        .to_string();
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| bad(format!("`X-Callback-Url` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("`X-Callback-Url` must be http or https".into()));
    }
    f.runner()
        .check_fetch_url(&parsed)
        .await
        .map_err(|e| e.with_field("X-Callback-Url"))?;
    Ok(Some(url))
}

/// What of a request reaches a handler besides its body.
struct Incoming {
    method: Method,
    path: warp::path::FullPath,
    query: Query,
    headers: HeaderMap,
}

fn incoming() -> impl Filter<Extract = (Incoming,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::<Query>())
        .and(warp::header::headers_cloned())
        .map(|method, path, query, headers| Incoming {
            method,
            path,
            query,
            headers,
        })
}

/// POST|PUT|GET /functions/{ns}/{name}/invoke
async fn invoke(
    ns: String,
    name: String,
    f: Arc<Functions>,
    req: Incoming,
    body: Bytes,
) -> Response {
    let Incoming {
        method,
        path,
        query: q,
        headers,
    } = req;
    let run_async = match wants_async(&q, &headers) {
        Ok(a) => a,
        Err(e) => return error_reply(e),
    };
    let callback = match callback_url(&f, &headers).await {
        Ok(c) => c,
        Err(e) => return error_reply(e),
    };
    let call = call_of(&method, path.as_str(), q, &headers, body);
    if run_async || callback.is_some() {
        let done =
            tokio::spawn(async move { f.invoke_async(&ns, &name, call, callback).await }).await;
        return match done {
            Ok(Ok(task)) => accepted(task.id),
            Ok(Err(r)) => refusal_reply(r),
            Err(e) => error_reply(ApiError::internal(format!("the call failed: {e}"))),
        };
    }
    // On a task of its own: the call is recorded whatever the client does.
    let done = tokio::spawn(async move { f.invoke(&ns, &name, call).await }).await;
    match done {
        Ok(Ok(invoked)) => invoked_reply(invoked),
        Ok(Err(r)) => refusal_reply(r),
        Err(e) => error_reply(ApiError::internal(format!("the call failed: {e}"))),
    }
}

fn accepted(id: TaskId) -> Response {
    let mut resp = with_location(json_reply(StatusCode::ACCEPTED, &json!({"id": id})), id);
    set_task_header(&mut resp, id);
    resp
}

fn set_task_header(resp: &mut Response, id: TaskId) {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-ufaas-task-id", v);
    }
}

fn refusal_reply(r: Refusal) -> Response {
    error_reply(match r {
        Refusal::NotFound(what) => not_found(&what),
        Refusal::QueueFull(n) => ApiError::new(
            Code::QueueFull,
            format!("the function's queue is full ({n} calls wait); try again later"),
        ),
        Refusal::Store(e) => ApiError::from(e),
    })
}

/// A function error's body: the error, with the task it was.
fn failure_reply(f: &Failure, message: String, id: TaskId) -> Response {
    let code = match f {
        Failure::Timeout(_) => Code::FunctionTimeout,
        Failure::QueueFull(_) => Code::QueueFull,
        Failure::Unavailable(_) => Code::FunctionUnavailable,
        Failure::Function(_) | Failure::Gone => Code::FunctionError,
    };
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_reply(
        status,
        &json!({"code": code, "message": message, "task_id": id}),
    );
    set_task_header(&mut resp, id);
    resp
}

fn invoked_reply(inv: Invoked) -> Response {
    let id = inv.task.id;
    match inv.answer {
        Ok(a) => answer_reply(a, id),
        Err(f) => {
            let message = inv.task.error.clone().unwrap_or_else(|| format!("{f:?}"));
            failure_reply(&f, message, id)
        }
    }
}

/// Headers a handler may not set: they belong to the connection, or are ours.
const RESERVED: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "x-ufaas-task-id",
];

fn answer_reply(a: Answer, id: TaskId) -> Response {
    let mut resp = warp::http::Response::new(a.body.into());
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    for (k, v) in &a.headers {
        let lower = k.to_ascii_lowercase();
        if RESERVED.contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    set_task_header(&mut resp, id);
    resp
}

/// POST /functions/pipeline: `{"steps": ["ns/a", …], "input": …}`, or (Backstage Functions)
/// the steps in the query as `steps[N]` and the input as the body.
async fn run_pipeline(f: Arc<Functions>, q: Query, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = (|| {
        let run_async = wants_async(&q, &headers)?;
        let v = match backstage::pipeline_of_query(&q, &body)? {
            Some(v) => v,
            None => parse_json(&body)?,
        };
        let obj = v.as_object().ok_or_else(|| {
            ApiError::new(Code::InvalidType, "the pipeline must be a JSON object")
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !["steps", "input"].contains(&k.as_str()))
        {
            return Err(ApiError::bad_request(
                Code::UnknownField,
                k.clone(),
                format!("unknown field `{k}` (a pipeline has `steps` and `input`)"),
            ));
        }
        let steps = match obj.get("steps") {
            Some(Value::Array(s)) if !s.is_empty() => s,
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request(
                    Code::InvalidValue,
                    "steps",
                    "`steps` must name at least one function",
                ))
            }
            Some(other) => {
                return Err(ApiError::bad_request(
                    Code::InvalidType,
                    "steps",
                    format!("`steps` must be an array of \"ns/name\", not {other}"),
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    Code::MissingField,
                    "steps",
                    "`steps` is required",
                ))
            }
        };
        if steps.len() > 1000 {
            return Err(ApiError::bad_request(
                Code::InvalidValue,
                "steps",
                "a pipeline has at most 1000 steps",
            ));
        }
        let mut names = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            let text = s.as_str().ok_or_else(|| {
                ApiError::bad_request(Code::InvalidType, &field, "a step is a string \"ns/name\"")
            })?;
            let (ns, name) = text.split_once('/').ok_or_else(|| {
                ApiError::bad_request(
                    Code::InvalidValue,
                    &field,
                    format!("`{text}` is not \"ns/name\""),
                )
            })?;
            spec::check_name(ns, &field)?;
            spec::check_name(name, &field)?;
            names.push((ns.to_string(), name.to_string()));
        }
        let input = obj.get("input").cloned();
        Ok((run_async, names, input))
    })();
    let (run_async, names, input) = match parsed {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    let (body, has_body) = match input {
        None | Some(Value::Null) => (Bytes::new(), false),
        // A string input is the text itself, as a body would be; anything else its JSON.
        Some(Value::String(s)) => (Bytes::from(s.into_bytes()), true),
        Some(v) => (Bytes::from(v.to_string().into_bytes()), true),
    };
    let call = Call {
        method: "POST".into(),
        path: "/functions/pipeline".into(),
        query: Vec::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
        has_body,
    };
    let done = tokio::spawn(async move { f.pipeline(names, call, run_async).await }).await;
    let run = match done {
        Ok(Ok(run)) => run,
        Ok(Err(Refusal::NotFound(what))) => {
            return error_reply(not_found(&what).with_field("steps"))
        }
        Ok(Err(r)) => return refusal_reply(r),
        Err(e) => return error_reply(ApiError::internal(format!("the pipeline failed: {e}"))),
    };
    let id = run.task.id;
    match run.outcome {
        None => accepted(id),
        Some(Ok(Some(a))) => answer_reply(a, id),
        Some(Ok(None)) => answer_reply(
            Answer {
                status: 200,
                headers: Vec::new(),
                content_type: "text/plain; charset=utf-8".into(),
                body: Vec::new(),
            },
            id,
        ),
        Some(Err(step)) => {
            let mut resp = json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "code": Code::StepFailed,
                    "message": format!("step {} ({}) failed: {}", step.index, step.function, step.message),
                    "field": format!("steps[{}]", step.index),
                    "step": step.index,
                    "function": step.function,
                    "error": step.message,
                    "task_id": step.task_id,
                    "pipeline_id": id,
                }),
            );
            set_task_header(&mut resp, id);
            resp
        }
    }
}

/// The most of each call's output the logs route reads: the route's answer stays bounded
/// however much its calls printed (each up to `--max-output-bytes` a stream).
const LOG_CHARS: u32 = 4 << 20;

/// GET /functions/{ns}/{name}/logs?tail=&since=&task=
async fn logs(ns: String, name: String, f: Arc<Functions>, q: Query) -> Response {
    let parsed = (|| {
        let tail = match query_get(&q, "tail") {
            None => 100,
            Some(t) => match t.parse::<u32>() {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        Code::InvalidQuery,
                        "tail",
                        "`tail` must be a whole number from 1 to 10000",
                    ))
                }
            },
        };
        let since = match query_get(&q, "since") {
            None => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| {
                        ApiError::bad_request(
                            Code::InvalidQuery,
                            "since",
                            "`since` must be an RFC 3339 time, e.g. 2026-12-02T10:00:00Z",
                        )
                    })?
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
            ),
        };
        let task = match query_get(&q, "task") {
            None => None,
            Some(t) => Some(t.parse::<TaskId>().map_err(|_| {
                ApiError::bad_request(Code::InvalidQuery, "task", "`task` must be a task id")
            })?),
        };
        Ok((tail, since, task))
    })();
    let (tail, since, task) = match parsed {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    if f.get(&ns, &name).is_none() {
        return error_reply(not_found(&format!("{ns}/{name}")));
    }
    let function = format!("{ns}/{name}");
    let tasks = match f
        .store()
        .function_log_tail(&function, task, since.as_deref(), tail, LOG_CHARS)
        .await
    {
        Ok(t) => t,
        Err(e) => return error_reply(ApiError::from(e)),
    };
    // Newest task first from the store; lines are listed oldest first, the last `tail`.
    let mut lines = Vec::new();
    for t in tasks.iter().rev() {
        for (stream, text) in [("stdout", &t.stdout), ("stderr", &t.stderr)] {
            // A stream as long as the cap was cut by it: its first line may be a part.
            let skip = usize::from(text.chars().count() >= LOG_CHARS as usize);
            for line in text.lines().skip(skip) {
                lines.push(
                    json!({"at": t.at, "task_id": t.task_id, "stream": stream, "line": line}),
                );
            }
        }
    }
    let skip = lines.len().saturating_sub(tail as usize);
    json_reply(StatusCode::OK, &json!({"lines": lines.split_off(skip)}))
}

/// PUT /secrets/{name}: the body is the value.
async fn put_secret(name: String, f: Arc<Functions>, body: Bytes) -> Response {
    let done = detached(async move {
        f.set_secret(&name, &body)
            .await
            .map_err(RunnerError::Refused)
    })
    .await;
    match done {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_reply(e),
    }
}

/// DELETE /secrets/{name}
async fn delete_secret(name: String, f: Arc<Functions>) -> Response {
    let shown = name.clone();
    let done =
        detached(async move { f.delete_secret(&name).await.map_err(RunnerError::Refused) }).await;
    match done {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error_reply(
            ApiError::new(Code::NotFound, format!("no secret {shown}")).with_field("name"),
        ),
        Err(e) => error_reply(e),
    }
}
