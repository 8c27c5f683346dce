//! FAAS (`seeds/faas.txt`): `POST /functions/` deploys `{"name", "file"}` (a base64 tar of
//! the function's folder) as the node function `default/{name}`; `POST /functions/{name}`
//! invokes it and answers `{"response": output}`. Every error on these two routes is FAAS's
//! 400 `{"message"}`.
//!
//! The tar goes to [`Functions::deploy`] as a node `archive`: the runtime loads `index.js` in
//! the `(context, cb)` shape, or what `package.json` names, with anything vendored in
//! `node_modules/`. The files FAAS needed to build its own image (`server.js`, `Dockerfile`,
//! `package.json`'s `express`) are kept but not used, and `fn.yaml` is not read: FAAS runs
//! only node. `POST /functions/pipeline` stays section 5's pipeline, so a FAAS function named
//! `pipeline` is called through `/functions/default/pipeline/invoke` instead.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::DEFAULT_NAMESPACE;
use crate::error::ApiError;
use crate::functions::invoke::{Call, Failure, Refusal};
use crate::functions::{DeployError, Functions};
use crate::http::{body_limited, json_reply, Query};
use crate::model::TaskId;

/// Every route of this seed.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let with = warp::any().map(move || functions.clone());
    // `POST /functions/` as FAAS documents it, and `POST /functions`.
    let add = warp::path("functions")
        .and(warp::path::end())
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(body_limited(limit))
        .then(add);
    let call = warp::path!("functions" / String)
        .and(warp::post())
        .and(with)
        .and(warp::query::<Query>())
        .and(warp::header::headers_cloned())
        .and(body_limited(limit))
        .then(call);
    add.or(call).unify().boxed()
}

/// FAAS's error: 400 `{"message"}`.
fn refused(message: impl Into<String>) -> Response {
    json_reply(StatusCode::BAD_REQUEST, &json!({"message": message.into()}))
}

/// An error of the deploy, in FAAS's words: its `file` is our `archive`.
fn deploy_message(e: &ApiError) -> String {
    let message = e.message.replace("`archive`", "`file`");
    match e.field.as_deref() {
        Some("archive" | "code") => format!("file: {message}"),
        Some("name") | None => message,
        Some(f) => format!("{f}: {message}"),
    }
}

/// The body `{"name": "...", "file": "<base64 tar>"}`, both required, nothing else.
fn parse_add(body: &Bytes) -> Result<(String, String), String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be JSON {{\"name\", \"file\"}}: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("the body must be a JSON object {\"name\", \"file\"}")?;
    if let Some(k) = obj.keys().find(|k| !["name", "file"].contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{k}` (a function has `name` and `file`)"
        ));
    }
    let text = |key: &str| match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Err(format!("`{key}` is required")),
    };
    Ok((text("name")?, text("file")?))
}

/// The address FAAS's clients call the function at: the `Host` they reached us by.
fn invoke_url(f: &Functions, headers: &HeaderMap, name: &str) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| f.runner().config().listen.to_string());
    format!("http://{host}/functions/{name}")
}

/// POST /functions/
async fn add(f: Arc<Functions>, headers: HeaderMap, body: Bytes) -> Response {
    let (name, file) = match parse_add(&body) {
        Ok(p) => p,
        Err(m) => return refused(m),
    };
    let url = invoke_url(&f, &headers, &name);
    // On a task of its own: a deploy writes, and a client hanging up must not cut it short.
    let done = tokio::spawn(async move {
        f.deploy(
            DEFAULT_NAMESPACE,
            &name,
            json!({"runtime": "node", "archive": file}),
        )
        .await
        .map(|_| ())
    })
    .await;
    match done {
        Ok(Ok(())) => json_reply(StatusCode::OK, &json!({"invoke": url})),
        Ok(Err(DeployError::Refused(e))) => refused(deploy_message(&e)),
        Ok(Err(DeployError::Unavailable(why))) => refused(format!(
            "the function's containers could not be started: {why}"
        )),
        Err(e) => refused(format!("the deploy failed: {e}")),
    }
}

fn with_task(mut resp: Response, id: TaskId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-ufaas-task-id", v);
    }
    resp
}

/// What a function answered, as FAAS's `response`: always the output's text, a JSON answer
/// included (`"{\"sum\":23}"`), as FAAS's server sent it: FAAS's CLI reads `response` as a
/// string and prints it (`Response: {"sum":23}`), and stops at any other JSON type.
fn output(body: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(body).into_owned())
}

/// POST /functions/{name}
async fn call(
    name: String,
    f: Arc<Functions>,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        method: "POST".into(),
        path: format!("/functions/{name}"),
        query,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        has_body: !body.is_empty(),
        body,
    };
    // On a task of its own: the call is recorded whatever the client does.
    let done = tokio::spawn(async move { f.invoke(DEFAULT_NAMESPACE, &name, call).await }).await;
    let invoked = match done {
        Ok(Ok(invoked)) => invoked,
        Ok(Err(Refusal::NotFound(what))) => return refused(format!("no function {what}")),
        Ok(Err(Refusal::QueueFull(n))) => {
            return refused(format!(
                "the function's queue is full ({n} calls wait); try again later"
            ))
        }
        Ok(Err(Refusal::Store(e))) => return refused(ApiError::from(e).message),
        Err(e) => return refused(format!("the call failed: {e}")),
    };
    let id = invoked.task.id;
    let resp = match invoked.answer {
        Ok(a) => json_reply(StatusCode::OK, &json!({"response": output(&a.body)})),
        Err(failure) => refused(invoked.task.error.clone().unwrap_or_else(|| match failure {
            Failure::Function(m) | Failure::Unavailable(m) => m,
            Failure::Timeout(s) => format!("the function ran past its timeout of {s} s"),
            Failure::QueueFull(n) => format!("the function's queue is full ({n} calls wait)"),
            Failure::Gone => "the function was removed while the call waited".into(),
        })),
    };
    with_task(resp, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_needs_name_and_file_and_nothing_else() {
        let p = |s: &str| parse_add(&Bytes::from(s.to_string()));
        assert_eq!(
            p(r#"{"name": "add", "file": "Zm4="}"#),
            Ok(("add".into(), "Zm4=".into()))
        );
        assert!(p("not json").is_err_and(|m| m.contains("JSON")));
        assert!(p("[1]").is_err_and(|m| m.contains("object")));
        assert!(p(r#"{"file": "x"}"#).is_err_and(|m| m.contains("`name` is required")));
        assert!(p(r#"{"name": "x"}"#).is_err_and(|m| m.contains("`file` is required")));
        assert!(p(r#"{"name": 1, "file": "x"}"#).is_err_and(|m| m.contains("`name` must")));
        assert!(
            p(r#"{"name": "a", "file": "x", "lang": "go"}"#).is_err_and(|m| m.contains("`lang`"))
        );
    }

    #[test]
    fn outputs_are_the_text_faas_sent() {
        assert_eq!(output(br#"{"sum":23}"#), json!(r#"{"sum":23}"#));
        assert_eq!(output(b"23"), json!("23"));
        assert_eq!(output(b"{cut"), json!("{cut"));
    }

    #[test]
    fn deploy_errors_speak_of_file() {
        let e = ApiError::bad_request(
            crate::error::Code::InvalidBase64,
            "archive",
            "`archive` is not valid base64",
        );
        assert_eq!(deploy_message(&e), "file: `file` is not valid base64");
    }
}
