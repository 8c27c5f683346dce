//! Backstage Functions (`seeds/backstage-functions.txt`) on named functions. Most of its API
//! is section 5's own routes: `PUT|GET|DELETE /functions/{ns}/{name}` (a body without
//! `runtime` is node, see `functions::spec`), `/run` beside `/invoke`, and the pipeline,
//! which also reads its steps from the query (`?steps[0]=ns/a&steps[1]=ns/b`, the body being
//! the input). This module adds what only Backstage has: the env routes, and the fields its
//! clients read from a function (`id`, `code`, `hash`) with the `ETag` header.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::error::{ApiError, Code};
use crate::functions::spec::{entry_kind, EntryKind};
use crate::functions::{DeployError, Deployed, Functions};
use crate::http::{body_limited, error_reply, parse_json, Query};

/// Every route of this seed that section 5 does not have.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let with = warp::any().map(move || functions.clone());
    let set = warp::path!("functions" / String / String / "env" / String)
        .and(warp::put())
        .and(with.clone())
        .and(body_limited(limit))
        .then(set_env);
    let unset = warp::path!("functions" / String / String / "env" / String)
        .and(warp::delete())
        .and(with)
        .then(unset_env);
    set.or(unset).unify().boxed()
}

/// The code's text when the function's bundle is the one file the runtime loads, in UTF-8
/// (deployed as `code`, or as an archive of that file alone); `None` for anything more.
pub fn code_text(d: &Deployed) -> Option<&str> {
    match d.spec.files.as_slice() {
        [(path, bytes, mode)]
            if *path == d.spec.handler.file && entry_kind(*mode) == EntryKind::File =>
        {
            std::str::from_utf8(bytes).ok()
        }
        _ => None,
    }
}

/// Hex SHA-1 of `text`: Backstage's `hash` of a function's code.
pub fn sha1_hex(text: &str) -> String {
    hex::encode(Sha1::digest(text.as_bytes()))
}

/// Adds Backstage's fields to `view` (a function as section 5 shows it): `id` (`ns/name`),
/// `code` and `hash` (the SHA-1 of the code; both `null` when the bundle is more than one
/// file, see [`code_text`]). Returns the function's `ETag`: the code's hash (SHA-1, else
/// the bundle's SHA-256) and the version, so it changes with every replace, an env change
/// included.
pub fn decorate(view: &mut Value, d: &Deployed) -> String {
    let code = code_text(d);
    let hash = code.map(sha1_hex);
    let etag = format!(
        "\"{}-{}\"",
        hash.as_deref().unwrap_or(&d.spec.code_sha256),
        d.version
    );
    if let Value::Object(m) = view {
        m.insert("id".into(), json!(d.full_name()));
        m.insert("code".into(), json!(code));
        m.insert("hash".into(), json!(hash));
    }
    etag
}

/// The most steps a pipeline has (as for its JSON body).
const MAX_STEPS: usize = 1000;

/// Backstage's pipeline, `?steps[0]=ns/a&steps[1]=ns/b` with the input as the body, as the
/// JSON body `{"steps", "input"}` section 5's pipeline takes; `None` when the query names no
/// steps (the body is then that JSON). The indices must be 0, 1, 2… in that order, each once:
/// anything else is refused naming the first parameter out of place, since a pipeline run
/// in another order than meant would give a wrong answer rather than an error. The input is
/// the body parsed as JSON, else its text; no body, no input.
pub fn pipeline_of_query(q: &Query, body: &Bytes) -> Result<Option<Value>, ApiError> {
    let given: Vec<&(String, String)> = q
        .iter()
        .filter(|(k, _)| k == "steps" || k.starts_with("steps["))
        .collect();
    if given.is_empty() {
        return Ok(None);
    }
    if given.len() > MAX_STEPS {
        return Err(ApiError::bad_request(
            Code::InvalidQuery,
            "steps",
            format!("a pipeline has at most {MAX_STEPS} steps"),
        ));
    }
    let mut steps = Vec::new();
    for (i, (key, value)) in given.into_iter().enumerate() {
        let want = format!("steps[{i}]");
        if *key != want {
            return Err(ApiError::bad_request(
                Code::InvalidQuery,
                key.clone(),
                format!(
                    "the steps are named steps[0], steps[1], … in order, each once; `{key}` \
                     stands where `{want}` should"
                ),
            ));
        }
        steps.push(Value::String(value.clone()));
    }
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
        v
    } else {
        match std::str::from_utf8(body) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => {
                return Err(ApiError::bad_request(
                    Code::InvalidValue,
                    "input",
                    "a pipeline's input (the body) must be JSON or UTF-8 text",
                ))
            }
        }
    };
    Ok(Some(json!({"steps": steps, "input": input})))
}

/// An environment variable's name from the path, checked as a body's `env` names are.
fn check_var(var: &str) -> Result<(), ApiError> {
    let probe = Map::from_iter([("env".to_string(), json!({var: ""}))]);
    crate::spec::parse_env(&probe).map(|_| ())
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::Refused(e) => e,
        DeployError::Unavailable(why) => ApiError::new(
            Code::DockerUnavailable,
            format!("the function's containers could not be started: {why}"),
        ),
    }
}

/// Runs an env change on a task of its own (it deploys: a client hanging up must not cut it
/// short) and answers 204.
async fn change_env(
    f: Arc<Functions>,
    ns: String,
    name: String,
    var: String,
    value: Option<String>,
) -> Response {
    let done =
        tokio::spawn(async move { f.set_env(&ns, &name, &var, value).await.map(|_| ()) }).await;
    match done {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error_reply(deploy_error(e)),
        Err(e) => error_reply(ApiError::internal(format!("the env change failed: {e}"))),
    }
}

/// PUT /functions/{ns}/{name}/env/{VAR}: the body is the value, a JSON string.
async fn set_env(
    ns: String,
    name: String,
    var: String,
    f: Arc<Functions>,
    body: Bytes,
) -> Response {
    if let Err(e) = check_var(&var) {
        return error_reply(e);
    }
    let value = match parse_json(&body) {
        Ok(Value::String(s)) => s,
        Ok(other) => {
            return error_reply(ApiError::bad_request(
                Code::InvalidType,
                format!("env.{var}"),
                format!(
                    "the body is the variable's value, a JSON string (such as \"\\\"on\\\"\"), \
                     not {}",
                    crate::spec::type_name(&other)
                ),
            ))
        }
        Err(e) => return error_reply(e),
    };
    change_env(f, ns, name, var, Some(value)).await
}

/// DELETE /functions/{ns}/{name}/env/{VAR}
async fn unset_env(ns: String, name: String, var: String, f: Arc<Functions>) -> Response {
    if let Err(e) = check_var(&var) {
        return error_reply(e);
    }
    change_env(f, ns, name, var, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn steps_come_from_the_query_in_order_and_the_body_is_the_input() {
        let got = pipeline_of_query(
            &q(&[
                ("steps[0]", "ns/a"),
                ("async", "false"),
                ("steps[1]", "ns/b"),
            ]),
            &Bytes::from_static(b"{\"x\": 1}"),
        );
        assert_eq!(
            got.ok(),
            Some(Some(json!({"steps": ["ns/a", "ns/b"], "input": {"x": 1}})))
        );
        let text = pipeline_of_query(&q(&[("steps[0]", "a/b")]), &Bytes::from_static(b"hi"));
        assert_eq!(
            text.ok(),
            Some(Some(json!({"steps": ["a/b"], "input": "hi"})))
        );
        let none = pipeline_of_query(&q(&[("steps[0]", "a/b")]), &Bytes::new());
        assert_eq!(
            none.ok(),
            Some(Some(json!({"steps": ["a/b"], "input": null})))
        );
        assert_eq!(
            pipeline_of_query(&q(&[("async", "true")]), &Bytes::new()).ok(),
            Some(None)
        );
    }

    #[test]
    fn steps_out_of_place_are_refused_naming_the_parameter() {
        let field = |pairs: &[(&str, &str)]| match pipeline_of_query(&q(pairs), &Bytes::new()) {
            Err(e) => {
                assert_eq!(e.code, Code::InvalidQuery);
                e.field
            }
            Ok(v) => panic!("accepted: {v:?}"),
        };
        assert_eq!(field(&[("steps[1]", "a/b")]).as_deref(), Some("steps[1]"));
        assert_eq!(
            field(&[("steps[0]", "a/b"), ("steps[2]", "a/c")]).as_deref(),
            Some("steps[2]")
        );
        assert_eq!(
            field(&[("steps[1]", "a/b"), ("steps[0]", "a/c")]).as_deref(),
            Some("steps[1]")
        );
        assert_eq!(
            field(&[("steps[0]", "a/b"), ("steps[0]", "a/c")]).as_deref(),
            Some("steps[0]")
        );
        assert_eq!(field(&[("steps", "a/b")]).as_deref(), Some("steps"));
        assert_eq!(field(&[("steps[x]", "a/b")]).as_deref(), Some("steps[x]"));
        assert_eq!(field(&[("steps[00]", "a/b")]).as_deref(), Some("steps[00]"));
        let bad_utf8 = pipeline_of_query(&q(&[("steps[0]", "a/b")]), &Bytes::from_static(b"\xff"));
        assert_eq!(
            bad_utf8.err().and_then(|e| e.field).as_deref(),
            Some("input")
        );
    }

    #[test]
    fn var_names_are_checked_as_env_names() {
        assert!(check_var("GREETING").is_ok());
        assert!(check_var("_x1").is_ok());
        for bad in ["1X", "A-B", "", "A B"] {
            assert_eq!(
                check_var(bad).err().map(|e| e.code),
                Some(Code::InvalidEnvName)
            );
        }
    }

    fn deployed(body: Value) -> Deployed {
        let spec =
            crate::functions::spec::parse(body, &crate::spec::Policy::default(), 1 << 20, 1 << 20)
                .unwrap_or_else(|e| panic!("refused: {e:?}"));
        Deployed {
            namespace: "ns".into(),
            name: "f".into(),
            version: 3,
            pool: crate::functions::pool::Pool::new(crate::functions::pool::Sizes {
                warm: 0,
                max_containers: 1,
                concurrency: 1,
                max_queue: 1,
            }),
            files: Vec::new(),
            spec,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_function_shows_its_code_hash_and_etag() {
        let code = "function main(req, res) { res.send(1) }";
        let d = deployed(json!({"code": code}));
        let mut view = json!({"name": "f"});
        let etag = decorate(&mut view, &d);
        let hash = sha1_hex(code);
        assert_eq!(
            view,
            json!({"name": "f", "id": "ns/f", "code": code, "hash": hash})
        );
        assert_eq!(etag, format!("\"{hash}-3\""));

        // An archive has no one code text: no `code`, no `hash`; the ETag is the bundle's.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(code.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "index.js", code.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let tar = tar.into_inner().unwrap_or_else(|e| panic!("{e}"));
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(tar);
        let mut d = deployed(json!({"archive": b64}));
        // One file, the handler's: as good as code text.
        let mut view = json!({});
        decorate(&mut view, &d);
        assert_eq!(view["code"], code);
        d.spec.files.push(("lib.js".into(), b"x".to_vec(), 0o644));
        let mut view = json!({});
        let etag = decorate(&mut view, &d);
        assert_eq!(
            (view["code"].clone(), view["hash"].clone()),
            (Value::Null, Value::Null)
        );
        assert_eq!(etag, format!("\"{}-3\"", d.spec.code_sha256));
    }

    #[test]
    fn sha1_is_hex_of_the_text() {
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
