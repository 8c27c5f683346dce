//! Faasm (`seeds/faasm-http-api.txt`): the upload routes (`/p/`, `/s/`, `/file`, and `/f/`
//! refused: no WebAssembly) and the invoke message on `POST /`, all on the main listener
//! (Faasm's upload port 8002 and invoke port 8080 become ufaas's one address).
//!
//! `PUT /p/{user}/{name}` deploys the Python function `{user}/{name}` (handler
//! `fn.py:faasm_main`); `POST /` invokes any function, `{py_user}/{py_func}` for a Python
//! message. Sync calls answer the output followed by what the function printed; async ones a
//! decimal call id (stored, mapped to the task) that `{"id", "status": true}` polls. State
//! (`/s/`) is the store's, the same a function reads and writes through `pyfaasm.core`
//! (`crate::functions::host`); files (`/file`) are placed (mode 0444) in Faasm functions'
//! containers by the same module, which this one asks whether a path can be placed before
//! storing it. Errors are ufaas's `{"code", "message", "field"}` (the seed
//! documents no error shape of its own).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::error::{ApiError, Code};
use crate::functions::host::{check_key, placeable, FAASM_ENTRY};
use crate::functions::invoke::{Call, Failure, Invoked, Refusal};
use crate::functions::pool::CODE_DIR;
use crate::functions::spec::{check_name, Runtime};
use crate::functions::{DeployError, Functions};
use crate::http::{body_limited, error_reply};
use crate::model::{TaskId, TaskRecord, TaskState};

/// The header of `PUT|GET /file` naming the file's path.
const FILE_PATH: &str = "filepath";
/// Paths a file may not be placed under: the kernel's, the agent's, and the secrets'.
const FORBIDDEN: &[&str] = &["/proc", "/sys", "/dev", "/.ufaas", "/run/secrets"];
/// The longest file path.
const PATH_MAX: usize = 1024;

/// Every route of this seed.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let with = warp::any().map(move || functions.clone());
    let body = body_limited(limit);

    let put_python = warp::path!("p" / String / String)
        .and(warp::put())
        .and(with.clone())
        .and(body.clone())
        .then(put_python);
    let get_python = warp::path!("p" / String / String)
        .and(warp::get())
        .and(with.clone())
        .then(get_python);
    // The body is read (and dropped) so that a client still sending it sees the answer.
    let wasm = warp::path!("f" / String / String)
        .and(warp::put().or(warp::get()).unify())
        .and(body.clone())
        .map(|_: String, _: String, _: Bytes| {
            error_reply(ApiError::new(
                Code::UnsupportedRuntime,
                "ufaas runs no WebAssembly: upload the function as Python (PUT /p/{user}/{name}) \
                 or deploy it with PUT /functions/{ns}/{name}",
            ))
        });
    let put_state = warp::path!("s" / String / String)
        .and(warp::put().or(warp::post()).unify())
        .and(with.clone())
        .and(body.clone())
        .then(put_state);
    let get_state = warp::path!("s" / String / String)
        .and(warp::get())
        .and(with.clone())
        .then(get_state);
    // Faasm's CLI says `/file/`, its document `/file`.
    let file =
        warp::path("file")
            .and(warp::path::tail())
            .and_then(|tail: warp::path::Tail| async move {
                if tail.as_str().is_empty() {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            });
    let put_file = file
        .and(warp::put().or(warp::post()).unify())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .then(|(), f, h, b| put_file(f, h, b));
    let get_file = file
        .and(warp::get())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .then(|(), f, h| get_file(f, h));
    let invoke = warp::path::end()
        .and(warp::post())
        .and(with)
        .and(body)
        .then(invoke);
    put_python
        .or(get_python)
        .unify()
        .or(wasm)
        .unify()
        .or(put_state)
        .unify()
        .or(get_state)
        .unify()
        .or(put_file)
        .unify()
        .or(get_file)
        .unify()
        .or(invoke)
        .unify()
        .boxed()
}

fn text_reply(status: StatusCode, body: impl Into<Vec<u8>>) -> Response {
    let mut resp = warp::http::Response::new(body.into().into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn bytes_reply(body: Vec<u8>) -> Response {
    let mut resp = warp::http::Response::new(body.into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

fn with_task(mut resp: Response, id: TaskId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-ufaas-task-id", v);
    }
    resp
}

/// A path segment, percent-decoded.
fn decoded(raw: &str, field: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::bad_request(Code::InvalidValue, field, format!("`{field}` is not UTF-8"))
        })
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::from(e)
}

/// PUT /p/{user}/{name}: the body is the Python file.
async fn put_python(user: String, name: String, f: Arc<Functions>, body: Bytes) -> Response {
    let checked = (|| {
        check_name(&user, "user")?;
        check_name(&name, "name")?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                Code::InvalidBody,
                "the body must be the Python file (curl -T file.py)",
            ));
        }
        std::str::from_utf8(&body)
            .map(str::to_string)
            .map_err(|_| ApiError::new(Code::InvalidCode, "the Python file is not UTF-8 text"))
    })();
    let code = match checked {
        Ok(c) => c,
        Err(e) => return error_reply(e),
    };
    let spec = json!({
        "runtime": "python",
        "code": code,
        "handler": format!("fn.py:{FAASM_ENTRY}"),
    });
    // On a task of its own: a deploy writes, and a client hanging up must not cut it short.
    let done = tokio::spawn(async move { f.deploy(&user, &name, spec).await }).await;
    match done {
        Ok(Ok((d, created))) => text_reply(
            StatusCode::OK,
            format!(
                "{} {} (version {})\n",
                if created { "Uploaded" } else { "Replaced" },
                d.full_name(),
                d.version
            ),
        ),
        Ok(Err(DeployError::Refused(e))) => error_reply(e),
        Ok(Err(DeployError::Unavailable(why))) => error_reply(ApiError::new(
            Code::DockerUnavailable,
            format!("the function's containers could not be started: {why}"),
        )),
        Err(e) => error_reply(ApiError::internal(format!("the upload failed: {e}"))),
    }
}

/// GET /p/{user}/{name}: the function's Python file.
async fn get_python(user: String, name: String, f: Arc<Functions>) -> Response {
    let found = f.get(&user, &name).and_then(|d| {
        if d.spec.runtime != Runtime::Python {
            return None;
        }
        let file = d.spec.handler.file.clone();
        d.spec
            .files
            .iter()
            .find(|(p, _, _)| *p == file || *p == format!("{file}.py"))
            .map(|(_, data, _)| data.clone())
    });
    match found {
        Some(data) => bytes_reply(data),
        None => error_reply(
            ApiError::not_found(format!("no Python function {user}/{name}")).with_field("name"),
        ),
    }
}

/// PUT /s/{user}/{key}: the body is the value.
async fn put_state(user: String, key: String, f: Arc<Functions>, body: Bytes) -> Response {
    let key = match check_state_path(&user, &key) {
        Ok(k) => k,
        Err(e) => return error_reply(e),
    };
    let done = tokio::spawn(async move { f.store().put_faasm_state(&user, &key, &body).await });
    match done.await {
        Ok(Ok(())) => text_reply(StatusCode::OK, ""),
        Ok(Err(e)) => error_reply(store_error(e)),
        Err(e) => error_reply(ApiError::internal(format!("the write failed: {e}"))),
    }
}

/// GET /s/{user}/{key}
async fn get_state(user: String, key: String, f: Arc<Functions>) -> Response {
    let key = match check_state_path(&user, &key) {
        Ok(k) => k,
        Err(e) => return error_reply(e),
    };
    match f.store().faasm_state(&user, &key).await {
        Ok(Some(v)) => bytes_reply(v),
        Ok(None) => error_reply(
            ApiError::not_found(format!("no state {key} for user {user}")).with_field("key"),
        ),
        Err(e) => error_reply(store_error(e)),
    }
}

fn check_state_path(user: &str, key: &str) -> Result<String, ApiError> {
    check_name(user, "user")?;
    let key = decoded(key, "key")?;
    check_key(&key).map_err(|why| ApiError::bad_request(Code::InvalidValue, "key", why))?;
    Ok(key)
}

/// Where a `FilePath` places the file: an absolute path as it is, a relative one (Faasm's
/// shared-file key) under the function's working directory, where `open(path)` finds it.
pub fn file_path(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("`FilePath` must not be empty".into());
    }
    if raw.len() > PATH_MAX {
        return Err(format!("`FilePath` is at most {PATH_MAX} bytes"));
    }
    if raw.contains('\0') || raw.contains('\\') {
        return Err("`FilePath` must not hold NUL or `\\`".into());
    }
    if raw.ends_with('/') {
        return Err("`FilePath` names a file, not a directory".into());
    }
    let raw = raw.strip_prefix("faasm://").unwrap_or(raw);
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`FilePath` must not hold `..`".into()),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("`FilePath` names no file".into());
    }
    let path = if raw.starts_with('/') {
        format!("/{}", parts.join("/"))
    } else {
        format!("{CODE_DIR}/{}", parts.join("/"))
    };
    if let Some(root) = FORBIDDEN
        .iter()
        .find(|r| path == **r || path.starts_with(&format!("{r}/")))
    {
        return Err(format!("files cannot be placed under {root}"));
    }
    Ok(path)
}

fn file_path_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |why: String| ApiError::bad_request(Code::InvalidHeader, "FilePath", why);
    let raw = headers.get(FILE_PATH).ok_or_else(|| {
        bad("the header `FilePath` is required: the path at which functions see the file".into())
    })?;
    let raw = raw
        .to_str()
        .map_err(|_| bad("`FilePath` is not text".into()))?;
    file_path(raw).map_err(bad)
}

/// PUT /file with `FilePath`: the body is the file.
async fn put_file(f: Arc<Functions>, headers: HeaderMap, body: Bytes) -> Response {
    let path = match file_path_of(&headers) {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    // A file the containers could never take is refused now, not stored to fail later.
    if let Err(why) = placeable(&path, f.runner().config().read_only_root) {
        return error_reply(ApiError::bad_request(
            Code::InvalidHeader,
            "FilePath",
            format!("`FilePath` {path} cannot be placed: {why}"),
        ));
    }
    // Stored, then placed in the warm containers, before the answer; on a task of its own.
    let done = tokio::spawn(async move {
        let stored = f.store().put_faasm_file(&path, &body).await;
        if stored.is_ok() {
            f.spread_faasm_files().await;
        }
        stored
    });
    match done.await {
        Ok(Ok(_)) => text_reply(StatusCode::OK, ""),
        Ok(Err(e)) => error_reply(store_error(e)),
        Err(e) => error_reply(ApiError::internal(format!("the write failed: {e}"))),
    }
}

/// GET /file with `FilePath`.
async fn get_file(f: Arc<Functions>, headers: HeaderMap) -> Response {
    let path = match file_path_of(&headers) {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    match f.store().faasm_file(&path).await {
        Ok(Some(v)) => bytes_reply(v),
        Ok(None) => {
            error_reply(ApiError::not_found(format!("no file {path}")).with_field("FilePath"))
        }
        Err(e) => error_reply(store_error(e)),
    }
}

/// What a `POST /` message asks.
#[derive(Debug, PartialEq)]
pub enum Message {
    Status(i64),
    Invoke {
        namespace: String,
        name: String,
        input: Option<String>,
        run_async: bool,
    },
}

fn field_bool(obj: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(
            Code::InvalidType,
            name,
            format!("`{name}` must be true or false"),
        )),
    }
}

fn field_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(
            Code::InvalidType,
            name,
            format!("`{name}` must be a string"),
        )),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, name: &str, why: &str) -> Result<&'a str, ApiError> {
    match field_str(obj, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::bad_request(
            Code::MissingField,
            name,
            format!("`{name}` is required {why}"),
        )),
    }
}

/// Reads Faasm's JSON message. Fields ufaas has no use for (Faasm's message has many) are
/// ignored; `mpi: true` is refused.
pub fn parse_message(body: &[u8]) -> Result<Message, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            Code::InvalidJson,
            "the request body is empty; send Faasm's JSON message",
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            Code::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::new(Code::InvalidType, "the message must be a JSON object"))?;
    if field_bool(obj, "status")? {
        let id = match obj.get("id") {
            Some(Value::Number(n)) => n.as_i64().filter(|n| *n > 0),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok().filter(|n| *n > 0),
            _ => None,
        };
        return id.map(Message::Status).ok_or_else(|| {
            ApiError::bad_request(
                Code::InvalidValue,
                "id",
                "a status message needs `id`: the call id an async call answered",
            )
        });
    }
    if field_bool(obj, "mpi")? {
        return Err(ApiError::bad_request(
            Code::InvalidValue,
            "mpi",
            "MPI calls are not supported by ufaas",
        ));
    }
    let (namespace, name) = if field_bool(obj, "python")? {
        (
            required(obj, "py_user", "when `python` is true")?,
            required(obj, "py_func", "when `python` is true")?,
        )
    } else {
        (
            required(obj, "user", "(the function's user)")?,
            required(obj, "function", "(the function's name)")?,
        )
    };
    let (user_field, func_field) = if field_bool(obj, "python")? {
        ("py_user", "py_func")
    } else {
        ("user", "function")
    };
    check_name(namespace, user_field)?;
    check_name(name, func_field)?;
    Ok(Message::Invoke {
        namespace: namespace.to_string(),
        name: name.to_string(),
        input: field_str(obj, "input_data")?.map(str::to_string),
        run_async: field_bool(obj, "async")?,
    })
}

/// POST /: Faasm's invoke message.
async fn invoke(f: Arc<Functions>, body: Bytes) -> Response {
    let message = match parse_message(&body) {
        Ok(m) => m,
        Err(e) => return error_reply(e),
    };
    match message {
        Message::Status(id) => status(f, id).await,
        Message::Invoke {
            namespace,
            name,
            input,
            run_async,
        } => {
            let call = Call {
                method: "POST".into(),
                path: "/".into(),
                query: Vec::new(),
                headers: Vec::new(),
                has_body: input.is_some(),
                body: Bytes::from(input.unwrap_or_default().into_bytes()),
            };
            // On a task of its own: the call is recorded whatever the client does.
            let done = tokio::spawn(async move {
                if !run_async {
                    return f
                        .invoke(&namespace, &name, call)
                        .await
                        .map(|i| Done::Sync(Box::new(i)));
                }
                let task = f.invoke_async(&namespace, &name, call, None).await?;
                let id = f
                    .store()
                    .new_faasm_call(task.id)
                    .await
                    .map_err(Refusal::Store)?;
                Ok(Done::Async(id, task.id))
            })
            .await;
            match done {
                Ok(Ok(Done::Sync(invoked))) => invoked_reply(*invoked),
                Ok(Ok(Done::Async(id, task))) => {
                    with_task(text_reply(StatusCode::OK, id.to_string()), task)
                }
                Ok(Err(r)) => refusal_reply(r),
                Err(e) => error_reply(ApiError::internal(format!("the call failed: {e}"))),
            }
        }
    }
}

/// How an invocation message was served.
enum Done {
    Sync(Box<Invoked>),
    /// The Faasm call id and the task of an async call.
    Async(i64, TaskId),
}

fn refusal_reply(r: Refusal) -> Response {
    error_reply(match r {
        Refusal::NotFound(what) => {
            ApiError::not_found(format!("no function {what}")).with_field("function")
        }
        Refusal::QueueFull(n) => ApiError::new(
            Code::QueueFull,
            format!("the function's queue is full ({n} calls wait); try again later"),
        ),
        Refusal::Store(e) => ApiError::from(e),
    })
}

/// A sync call's answer: the output, then what the function printed; a failure as section
/// 5 answers it.
fn invoked_reply(inv: Invoked) -> Response {
    let id = inv.task.id;
    match inv.answer {
        Ok(a) => {
            let mut body = a.body;
            let printed = inv.task.stdout.as_bytes();
            if !printed.is_empty() && !body.is_empty() && !body.ends_with(b"\n") {
                body.push(b'\n');
            }
            body.extend_from_slice(printed);
            with_task(text_reply(StatusCode::OK, body), id)
        }
        Err(f) => {
            let code = match f {
                Failure::Timeout(_) => Code::FunctionTimeout,
                Failure::QueueFull(_) => Code::QueueFull,
                Failure::Unavailable(_) => Code::FunctionUnavailable,
                Failure::Function(_) | Failure::Gone => Code::FunctionError,
            };
            let message = inv.task.error.clone().unwrap_or_else(|| format!("{f:?}"));
            let status =
                StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            with_task(
                crate::http::json_reply(
                    status,
                    &json!({"code": code, "message": message, "task_id": id}),
                ),
                id,
            )
        }
    }
}

/// `{"id": N, "status": true}`: `SUCCESS: output`, `FAILED: error`, `RUNNING` or `PENDING`.
async fn status(f: Arc<Functions>, id: i64) -> Response {
    let task = match f.store().faasm_call(id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return error_reply(ApiError::not_found(format!("no call {id}")).with_field("id"))
        }
        Err(e) => return error_reply(store_error(e)),
    };
    match f.store().get(task).await {
        Ok(Some(record)) => with_task(text_reply(StatusCode::OK, status_text(&record)), task),
        Ok(None) => error_reply(
            ApiError::not_found(format!("call {id} was removed (its task {task} is gone)"))
                .with_field("id"),
        ),
        Err(e) => error_reply(store_error(e)),
    }
}

/// What a status message answers for `task`.
pub fn status_text(task: &TaskRecord) -> Vec<u8> {
    match task.state {
        TaskState::Finished => {
            let mut out = b"SUCCESS: ".to_vec();
            let result = task.result.as_ref();
            let body = result.and_then(|r| r.get("body")).and_then(Value::as_str);
            let base64 = result
                .and_then(|r| r.get("encoding"))
                .and_then(Value::as_str)
                == Some("base64");
            match (body, base64) {
                (Some(b), true) => out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_default(),
                ),
                (Some(b), false) => out.extend_from_slice(b.as_bytes()),
                (None, _) => {}
            }
            out
        }
        TaskState::Failed | TaskState::Expired | TaskState::Cancelled => {
            format!("FAILED: {}", task.error.as_deref().unwrap_or("")).into_bytes()
        }
        TaskState::Received | TaskState::Pending => b"PENDING".to_vec(),
        _ => b"RUNNING".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_resolve_under_the_code_dir_or_as_given() {
        assert_eq!(file_path("/data/x.txt").unwrap(), "/data/x.txt");
        assert_eq!(
            file_path("lammps-data/in.controller").unwrap(),
            "/function/lammps-data/in.controller"
        );
        assert_eq!(file_path("faasm://a/b.txt").unwrap(), "/function/a/b.txt");
        assert_eq!(file_path("//a/./b").unwrap(), "/a/b");
        for bad in [
            "",
            "/",
            "a/../b",
            "/proc/x",
            "/dev/null",
            "/x/",
            "a\\b",
            "/run/secrets/s",
        ] {
            assert!(file_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_parse() {
        let m = parse_message(br#"{"user":"demo","function":"echo","input_data":"Hi"}"#);
        assert_eq!(
            m.unwrap(),
            Message::Invoke {
                namespace: "demo".into(),
                name: "echo".into(),
                input: Some("Hi".into()),
                run_async: false
            }
        );
        let m = parse_message(
            br#"{"user":"python","function":"py_func","python":true,"py_user":"u","py_func":"f","async":true}"#,
        );
        assert!(
            matches!(m, Ok(Message::Invoke { ref namespace, run_async: true, .. }) if namespace == "u")
        );
        assert_eq!(
            parse_message(br#"{"id": 7, "status": true}"#).unwrap(),
            Message::Status(7)
        );
        let bad: &[(&[u8], &str)] = &[
            (b"", "invalid_json"),
            (b"not json", "invalid_json"),
            (b"[1]", "invalid_type"),
            (br#"{"status": true}"#, "invalid_value"),
            (br#"{"user": "u"}"#, "missing_field"),
            (br#"{"user": "u", "function": "F!"}"#, "invalid_value"),
            (br#"{"python": true, "py_user": "u"}"#, "missing_field"),
            (
                br#"{"user": "u", "function": "f", "async": "yes"}"#,
                "invalid_type",
            ),
            (
                br#"{"user": "u", "function": "f", "input_data": 3}"#,
                "invalid_type",
            ),
            (
                br#"{"user": "u", "function": "f", "mpi": true}"#,
                "invalid_value",
            ),
        ];
        for (body, code) in bad {
            let e = parse_message(body).unwrap_err();
            assert_eq!(e.code.as_str(), *code, "{}", String::from_utf8_lossy(body));
        }
    }
}
