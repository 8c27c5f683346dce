//! tinyFaaS (`seeds/tinyfaas.md`): its management routes on the main listener (`/upload`,
//! `/uploadURL`, `/list`, `/delete`, `/wipe`, `/logs`, as its `cmd/manager` answers them),
//! and its three doors for calls, each on a listener of its own: the HTTP [`gateway`],
//! [`grpc`] and [`coap`].
//!
//! An upload becomes a deploy of section 5 in the namespace `default`: `env` picks the
//! runtime (`python3` python, `nodejs` node, `binary` shell), `threads` the warm containers,
//! `envs` the environment, and the zip is the archive. tinyFaaS builds an image per function
//! and installs its `requirements.txt` or `package.json` there; ufaas installs nothing, so a
//! zip whose dependencies are not vendored in it is refused at once (`missing_dependency`)
//! rather than failing at its first call. Where tinyFaaS answers a bare 400 or 500, ufaas
//! answers its `{"code", "message", "field"}` body with the fitting status, the fields named
//! as tinyFaaS's body names them (`zip`, `threads`, `envs`, …).

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::config::Listen;
use crate::error::{ApiError, Code};
use crate::functions::spec::{self, Runtime};
use crate::functions::{DeployError, Functions};
use crate::http::{body_limited, error_reply, parse_json, query_get, Query};
use crate::store::LoggedTask;

pub mod coap;
pub mod gateway;
pub mod grpc;

/// tinyFaaS has no namespaces: its functions are those of `default`.
const NS: &str = super::DEFAULT_NAMESPACE;

/// The management routes.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let with = warp::any().map(move || functions.clone());
    let body = body_limited(limit);
    let host = warp::header::optional::<String>("host");
    let upload = warp::path!("upload")
        .and(warp::post())
        .and(with.clone())
        .and(host)
        .and(body.clone())
        .then(upload);
    let upload_url = warp::path!("uploadURL")
        .and(warp::post())
        .and(with.clone())
        .and(host)
        .and(body.clone())
        .then(upload_url);
    let list = warp::path!("list")
        .and(warp::get())
        .and(with.clone())
        .then(list);
    let delete = warp::path!("delete")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .then(delete);
    let wipe = warp::path!("wipe")
        .and(warp::post())
        .and(with.clone())
        .then(wipe);
    let logs = warp::path!("logs")
        .and(warp::get())
        .and(with)
        .and(warp::query::<Query>())
        .then(logs);
    upload
        .or(upload_url)
        .unify()
        .or(list)
        .unify()
        .or(delete)
        .unify()
        .or(wipe)
        .unify()
        .or(logs)
        .unify()
        .boxed()
}

fn text_reply(text: String) -> Response {
    let mut resp = warp::http::Response::new(text.into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The fields of an upload besides its code, checked.
#[derive(Debug, PartialEq)]
struct Upload {
    name: String,
    runtime: Runtime,
    threads: Option<u64>,
    env: BTreeMap<String, String>,
}

const UPLOAD_FIELDS: &[&str] = &["name", "env", "threads", "zip", "envs"];
const UPLOAD_URL_FIELDS: &[&str] = &["name", "env", "threads", "url", "subfolder_path", "envs"];

/// The body as a JSON object whose keys are all in `allowed` (`null` counts as absent, as
/// Go's decoder reads it).
fn body_object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut obj) = parse_json(body)? else {
        return Err(ApiError::new(
            Code::InvalidType,
            "the body must be a JSON object",
        ));
    };
    obj.retain(|_, v| !v.is_null());
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            Code::UnknownField,
            k.clone(),
            format!(
                "unknown field `{k}` (this route takes {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(obj)
}

/// A required string field.
fn required_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        None => Err(ApiError::bad_request(
            Code::MissingField,
            key,
            format!("`{key}` is required"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::bad_request(
            Code::InvalidType,
            key,
            format!("`{key}` must be a string, not {other}"),
        )),
    }
}

/// `name`, `env`, `threads` and `envs`.
fn parse_upload(obj: &Map<String, Value>) -> Result<Upload, ApiError> {
    let name = required_str(obj, "name")?;
    spec::check_name(name, "name")?;
    let runtime =
        match required_str(obj, "env")? {
            "python3" => Runtime::Python,
            "nodejs" => Runtime::Node,
            "binary" => Runtime::Shell,
            "go" => return Err(ApiError::bad_request(
                Code::UnsupportedRuntime,
                "env",
                "ufaas runs no Go functions; use python3, nodejs or binary (a compiled program \
                 run by fn.sh)",
            )),
            other => {
                return Err(ApiError::bad_request(
                    Code::InvalidValue,
                    "env",
                    format!("`env` must be python3, nodejs or binary, not \"{other}\""),
                ))
            }
        };
    let threads = match obj.get("threads") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(t) => Some(t),
            None => {
                return Err(ApiError::bad_request(
                    Code::InvalidValue,
                    "threads",
                    format!("`threads` must be a whole number from 0, not {n}"),
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(
                Code::InvalidType,
                "threads",
                format!("`threads` must be a whole number, not {other}"),
            ))
        }
    };
    let mut env = BTreeMap::new();
    match obj.get("envs") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("envs[{i}]");
                let bad = |why: String| ApiError::bad_request(Code::InvalidValue, &field, why);
                let Value::String(s) = item else {
                    return Err(bad(format!("each of `envs` is \"NAME=VALUE\", not {item}")));
                };
                let Some((k, v)) = s.split_once('=') else {
                    return Err(bad(format!("\"{s}\" is not \"NAME=VALUE\"")));
                };
                let mut chars = k.chars();
                let key_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !key_ok {
                    return Err(ApiError::bad_request(
                        Code::InvalidEnvName,
                        &field,
                        format!("environment name `{k}` must match [A-Za-z_][A-Za-z0-9_]*"),
                    ));
                }
                if v.contains('\0') {
                    return Err(bad("an environment value may not hold NUL".into()));
                }
                env.insert(k.to_string(), v.to_string());
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                Code::InvalidType,
                "envs",
                format!("`envs` must be an array of \"NAME=VALUE\", not {other}"),
            ))
        }
    }
    Ok(Upload {
        name: name.to_string(),
        runtime,
        threads,
        env,
    })
}

/// POST /upload: `{"name", "env", "threads", "zip", "envs"}`.
async fn upload(f: Arc<Functions>, host: Option<String>, body: Bytes) -> Response {
    let parsed = body_object(&body, UPLOAD_FIELDS).and_then(|obj| {
        let up = parse_upload(&obj)?;
        let zip = required_str(&obj, "zip")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(zip.trim())
            .map_err(|e| {
                ApiError::bad_request(
                    Code::InvalidBase64,
                    "zip",
                    format!("`zip` is not base64: {e}"),
                )
            })?;
        Ok((up, bytes))
    });
    match parsed {
        Ok((up, bytes)) => deploy(f, host, up, bytes, None, "zip").await,
        Err(e) => error_reply(e),
    }
}

/// POST /uploadURL: `{"name", "env", "threads", "url", "subfolder_path", "envs"}`: the zip is
/// fetched (checked like a `uri` resource) and the function is the folder `subfolder_path`
/// of it.
async fn upload_url(f: Arc<Functions>, host: Option<String>, body: Bytes) -> Response {
    let parsed = body_object(&body, UPLOAD_URL_FIELDS).and_then(|obj| {
        let up = parse_upload(&obj)?;
        let url = required_str(&obj, "url")?.trim().to_string();
        let sub = match obj.get("subfolder_path") {
            None => String::new(),
            Some(Value::String(s)) => subfolder(s)?,
            Some(other) => {
                return Err(ApiError::bad_request(
                    Code::InvalidType,
                    "subfolder_path",
                    format!("`subfolder_path` must be a string, not {other}"),
                ))
            }
        };
        Ok((up, url, sub))
    });
    let (up, url, sub) = match parsed {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    let bytes = match fetch_zip(&f, &url).await {
        Ok(b) => b,
        Err(e) => return error_reply(e),
    };
    deploy(f, host, up, bytes, Some(sub), "url").await
}

/// `subfolder_path` as a zip's entries name it (`a/b/`, or empty for the whole zip): no
/// `..`, no NUL; leading and trailing slashes do not count (tinyFaaS's example gives `/`).
fn subfolder(raw: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            Code::InvalidValue,
            "subfolder_path",
            format!("`subfolder_path` {why}"),
        )
    };
    if raw.contains('\0') {
        return Err(bad("must not hold NUL"));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad("must not contain `..`"));
    }
    Ok(parts.iter().map(|p| format!("{p}/")).collect())
}

/// The zip at `url`, through the guarded client, at most the server's body limit.
async fn fetch_zip(f: &Functions, url: &str) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| ApiError::bad_request(Code::InvalidUri, "url", why);
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("`url` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("`url` must be http or https".into()));
    }
    f.runner()
        .check_fetch_url(&parsed)
        .await
        .map_err(|e| e.with_field("url"))?;
    let cfg = f.runner().config();
    let cap = cfg.max_body_bytes;
    let client = crate::resources::http_client(
        std::time::Duration::from_secs(cfg.fetch_timeout),
        cfg.policy().fetch_guard,
    )
    .map_err(ApiError::internal)?;
    let failed = |why: String| bad(format!("fetching `{url}` failed: {why}"));
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(failed(format!("HTTP {}", resp.status())));
    }
    let too_large = || {
        ApiError::bad_request(
            Code::PayloadTooLarge,
            "url",
            format!("the zip at `url` is larger than the server's limit of {cap} bytes"),
        )
    };
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks the zip (its folder `sub` when given), then deploys it as `default/NAME` and
/// answers with one URL per door, as tinyFaaS does.
async fn deploy(
    f: Arc<Functions>,
    host: Option<String>,
    up: Upload,
    zip: Vec<u8>,
    sub: Option<String>,
    zip_field: &'static str,
) -> Response {
    let runtime = up.runtime;
    let prepared =
        tokio::task::spawn_blocking(move || prepare(zip, sub.as_deref(), runtime, zip_field))
            .await
            .map_err(|e| ApiError::internal(format!("reading the zip: {e}")))
            .and_then(|r| r);
    let (zip, handler) = match prepared {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    let mut body = json!({
        "runtime": runtime.as_str(),
        "archive": base64::engine::general_purpose::STANDARD.encode(&zip),
        "env": up.env,
    });
    if let Some(t) = up.threads {
        body["warm"] = json!(t);
        // Room for every thread asked for, and for the default's scale-up beyond.
        body["max_containers"] = json!(t.clamp(DEFAULT_MAX_CONTAINERS, spec::MAX_CONTAINERS));
    }
    if let Some(h) = handler {
        body["handler"] = json!(h);
    }
    let name = up.name;
    // On a task of its own, as PUT /functions does: a client hanging up must not cut a
    // deploy short.
    let done = tokio::spawn(async move {
        let r = f.deploy(NS, &name, body).await;
        (r.map(|_| ()), f, name)
    })
    .await;
    match done {
        Ok((Ok(()), f, name)) => text_reply(door_urls(&f, host.as_deref(), &name)),
        Ok((Err(DeployError::Refused(e)), ..)) => error_reply(renamed(e, zip_field)),
        Ok((Err(DeployError::Unavailable(why)), ..)) => error_reply(ApiError::new(
            Code::DockerUnavailable,
            format!("the function's containers could not be started: {why}"),
        )),
        Err(e) => error_reply(ApiError::internal(format!("the deploy failed: {e}"))),
    }
}

/// Section 5's default `max_containers`.
const DEFAULT_MAX_CONTAINERS: u64 = 4;

/// A deploy's refusal with its field named as tinyFaaS's body names it.
fn renamed(mut e: ApiError, zip_field: &str) -> ApiError {
    e.field = e.field.map(|f| match f.as_str() {
        "archive" | "handler" => zip_field.to_string(),
        "warm" | "max_containers" => "threads".to_string(),
        "runtime" => "env".to_string(),
        f if f == "env" || f.starts_with("env.") => "envs".to_string(),
        _ => f,
    });
    e
}

/// `PROTOCOL://HOST:PORT/NAME` for each door served, one a line, as tinyFaaS's upload
/// answers. A door on every address (0.0.0.0) is named by the host the client asked for.
fn door_urls(f: &Functions, host: Option<&str>, name: &str) -> String {
    let cfg = f.runner().config();
    let doors = [
        ("coap", cfg.coap_listen),
        ("grpc", cfg.grpc_listen),
        ("http", cfg.gateway_listen),
    ];
    urls_of(&doors, host, name)
}

/// [`door_urls`] of the doors given.
fn urls_of(doors: &[(&str, Listen)], host: Option<&str>, name: &str) -> String {
    let asked = host
        .and_then(|h| reqwest::Url::parse(&format!("http://{h}/")).ok())
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    let mut out = String::new();
    for (proto, listen) in doors {
        let Some(addr) = listen.0 else { continue };
        let host = if addr.ip().is_unspecified() {
            asked.clone()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        out.push_str(&format!("{proto}://{host}:{}/{name}\n", addr.port()));
    }
    out
}

/// The file a runtime's code is found by, to tell the function's folder in a zip: the
/// folder holding it at the top, or the one top-level folder that holds it.
fn markers(runtime: Runtime) -> &'static [&'static str] {
    match runtime {
        Runtime::Python => &["fn.py"],
        Runtime::Node => &["package.json", "index.js"],
        Runtime::Shell => &["fn.sh"],
    }
}

/// The largest `requirements.txt` or `package.json` read.
const MAX_MANIFEST: u64 = 1 << 20;

/// Reads the zip (refusing what is not one), keeps only the folder `sub` of it when given,
/// and checks that the dependencies its `requirements.txt` or `package.json` names are in
/// it. Returns the zip to deploy and, for node, the handler file package.json's `main` names.
fn prepare(
    zip: Vec<u8>,
    sub: Option<&str>,
    runtime: Runtime,
    field: &str,
) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let not_zip = |e: zip::result::ZipError| {
        ApiError::bad_request(
            Code::InvalidArchive,
            field,
            format!("the {field} is not a zip: {e}"),
        )
    };
    let zip = match sub.filter(|s| !s.is_empty()) {
        Some(sub) => subfolder_zip(&zip, sub).map_err(|e| match e {
            SubError::Zip(e) => not_zip(e),
            SubError::Missing(held) => ApiError::bad_request(
                Code::InvalidValue,
                "subfolder_path",
                format!("the zip has no folder `{sub}`; its top level holds: {held}"),
            ),
        })?,
        None => zip,
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(&zip)).map_err(not_zip)?;
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| normal_name(&n)))
        .collect::<Result<_, _>>()
        .map_err(not_zip)?;
    let root = root_of(&names, markers(runtime));
    let mut read = |path: &str| -> Result<Option<String>, ApiError> {
        let Some(i) = names.iter().position(|n| n == path) else {
            return Ok(None);
        };
        let mut text = String::new();
        archive
            .by_index(i)
            .map_err(not_zip)?
            .take(MAX_MANIFEST)
            .read_to_string(&mut text)
            .map_err(|e| {
                ApiError::bad_request(
                    Code::InvalidValue,
                    field,
                    format!("`{path}` cannot be read as text: {e}"),
                )
            })?;
        Ok(Some(text))
    };
    let missing = |file: &str, dep: &str, how: &str| {
        ApiError::bad_request(
            Code::MissingDependency,
            field,
            format!(
                "{file} names `{dep}`, which is not in the zip: ufaas installs nothing at \
                 deploy; {how}"
            ),
        )
    };
    let mut handler = None;
    match runtime {
        Runtime::Python => {
            if let Some(text) = read(&format!("{root}requirements.txt"))? {
                for dep in requirements(&text) {
                    let vendored = match &dep {
                        Requirement::Name(n) => python_vendored(&names, &root, n),
                        Requirement::Unresolvable(_) => false,
                    };
                    if !vendored {
                        let shown = match &dep {
                            Requirement::Name(n) | Requirement::Unresolvable(n) => n,
                        };
                        return Err(missing(
                            "requirements.txt",
                            shown,
                            "vendor it beside fn.py (`pip install --target vendor -r \
                             requirements.txt` in the function's folder)",
                        ));
                    }
                }
            }
        }
        Runtime::Node => {
            if let Some(text) = read(&format!("{root}package.json"))? {
                let pkg: Value = serde_json::from_str(&text).map_err(|e| {
                    ApiError::bad_request(
                        Code::InvalidValue,
                        field,
                        format!("package.json is not valid JSON: {e}"),
                    )
                })?;
                let (main, deps) = package_json(&pkg).map_err(|why| {
                    ApiError::bad_request(Code::InvalidValue, field, format!("package.json: {why}"))
                })?;
                for dep in deps {
                    let dir = format!("{root}node_modules/{dep}/");
                    if !names.iter().any(|n| n.starts_with(&dir)) {
                        return Err(missing(
                            "package.json",
                            &dep,
                            "run `npm install` in the function's folder before zipping it, \
                             so node_modules/ holds it",
                        ));
                    }
                }
                handler = main.map(|m| {
                    // Node resolves `main` without its extension; the deploy wants the file.
                    let with_js = format!("{m}.js");
                    if !names.contains(&format!("{root}{m}"))
                        && names.contains(&format!("{root}{with_js}"))
                    {
                        with_js
                    } else {
                        m
                    }
                });
            }
        }
        Runtime::Shell => {}
    }
    Ok((zip, handler))
}

/// A zip entry's name without a leading `./` or `/` (zip tools differ).
fn normal_name(raw: &str) -> String {
    let mut s = raw;
    loop {
        if let Some(r) = s.strip_prefix("./") {
            s = r;
        } else if let Some(r) = s.strip_prefix('/') {
            s = r;
        } else {
            return s.to_string();
        }
    }
}

/// Where the function's files are in the zip: `""` when a marker file is at the top, else
/// `top/` when every entry is under one folder `top` that holds a marker (the deploy strips
/// that folder the same way), else `""`.
fn root_of(names: &[String], markers: &[&str]) -> String {
    if markers.iter().any(|m| names.iter().any(|n| n == m)) {
        return String::new();
    }
    let mut tops = names
        .iter()
        .filter(|n| !n.starts_with("__MACOSX"))
        .map(|n| n.split('/').next().unwrap_or(n));
    let Some(first) = tops.next() else {
        return String::new();
    };
    if !tops.all(|t| t == first) {
        return String::new();
    }
    let root = format!("{first}/");
    if markers
        .iter()
        .any(|m| names.iter().any(|n| *n == format!("{root}{m}")))
    {
        root
    } else {
        String::new()
    }
}

enum SubError {
    Zip(zip::result::ZipError),
    /// The top-level names the zip holds instead.
    Missing(String),
}

/// A zip of the entries under `sub` (`a/b/`), renamed to be relative to it. Entries are
/// copied compressed as they are: nothing is inflated here (the deploy's unpack bounds that).
fn subfolder_zip(zip: &[u8], sub: &str) -> Result<Vec<u8>, SubError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(SubError::Zip)?;
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut found = false;
    let mut tops = std::collections::BTreeSet::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(SubError::Zip)?;
        let name = normal_name(&entry.name().map_err(SubError::Zip)?);
        if let Some(top) = name.split('/').next().filter(|t| !t.is_empty()) {
            tops.insert(top.to_string());
        }
        let Some(rel) = name.strip_prefix(sub) else {
            continue;
        };
        found = true;
        if rel.is_empty() {
            continue; // the folder's own entry
        }
        let rel = rel.to_string();
        out.raw_copy_file_rename(entry, rel)
            .map_err(SubError::Zip)?;
    }
    if !found {
        let shown: Vec<String> = tops.into_iter().take(10).collect();
        return Err(SubError::Missing(if shown.is_empty() {
            "nothing".into()
        } else {
            shown.join(", ")
        }));
    }
    out.finish().map(Cursor::into_inner).map_err(SubError::Zip)
}

/// One dependency line of a requirements.txt.
#[derive(Debug, PartialEq)]
enum Requirement {
    /// A distribution name, as written.
    Name(String),
    /// A line naming code elsewhere (`-r other.txt`, `-e …`, a URL or path): nothing in the
    /// zip can be matched to it.
    Unresolvable(String),
}

/// The dependencies of a requirements.txt: blank lines, comments and pip's options
/// (`--index-url`, …) name none.
fn requirements(text: &str) -> Vec<Requirement> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = match raw.find('#') {
            // A `#` starts a comment at the line's start or after a space (PEP 508 / pip).
            Some(0) => "",
            Some(i) if raw[..i].ends_with([' ', '\t']) => &raw[..i],
            _ => raw,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('-') {
            let opt = line.split([' ', '=']).next().unwrap_or(line);
            if matches!(
                opt,
                "-r" | "--requirement" | "-c" | "--constraint" | "-e" | "--editable"
            ) || opt.starts_with("-r")
                || opt.starts_with("-e")
            {
                out.push(Requirement::Unresolvable(line.to_string()));
            }
            continue;
        }
        let end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(line.len());
        let name = &line[..end];
        let rest = &line[end..];
        if name.is_empty() || rest.starts_with(['+', ':', '/']) || name.starts_with('.') {
            out.push(Requirement::Unresolvable(line.to_string()));
        } else {
            out.push(Requirement::Name(name.to_string()));
        }
    }
    out
}

/// A distribution name as PEP 503 compares them: lower case, runs of `-_.` as one `-`.
fn normalise_dist(name: &str) -> String {
    let mut out = String::new();
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether distribution `name` is in the zip where the python runtime imports from (the
/// function's folder, its `vendor/` and `lib/`): as a package folder or module of its name,
/// or as the `.dist-info`/`.egg-info` pip writes for it (which covers names that differ
/// from their module, such as PyYAML's `yaml`).
fn python_vendored(names: &[String], root: &str, name: &str) -> bool {
    let dist = normalise_dist(name);
    let module = dist.replace('-', "_");
    ["", "vendor/", "lib/"].iter().any(|dir| {
        let base = format!("{root}{dir}");
        names.iter().any(|n| {
            let Some(rel) = n.strip_prefix(&base) else {
                return false;
            };
            let first = rel.split('/').next().unwrap_or(rel);
            let lower = first.to_ascii_lowercase();
            let is_dir = rel.len() > first.len();
            if is_dir && lower == module {
                return true;
            }
            if !is_dir
                && (lower == format!("{module}.py")
                    || (lower.starts_with(&format!("{module}.")) && lower.ends_with(".so")))
            {
                return true;
            }
            if let Some(stem) = lower
                .strip_suffix(".dist-info")
                .or_else(|| lower.strip_suffix(".egg-info"))
            {
                let dist_part = stem.split('-').next().unwrap_or(stem);
                return normalise_dist(dist_part) == dist;
            }
            false
        })
    })
}

/// package.json's `main` (without a leading `./`) and the names of its `dependencies`.
fn package_json(pkg: &Value) -> Result<(Option<String>, Vec<String>), String> {
    let Value::Object(obj) = pkg else {
        return Err("it must be a JSON object".into());
    };
    let main = match obj.get("main") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            let m = normal_name(m);
            (!m.is_empty()).then_some(m)
        }
        Some(other) => return Err(format!("`main` must be a string, not {other}")),
    };
    let deps = match obj.get("dependencies") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(d)) => d.keys().cloned().collect(),
        Some(other) => return Err(format!("`dependencies` must be an object, not {other}")),
    };
    Ok((main, deps))
}

/// GET /list: the functions of `default`, one name a line.
async fn list(f: Arc<Functions>) -> Response {
    let mut out = String::new();
    for d in f.all().iter().filter(|d| d.namespace == NS) {
        out.push_str(&d.name);
        out.push('\n');
    }
    text_reply(out)
}

/// POST /delete `{"name"}`.
async fn delete(f: Arc<Functions>, body: Bytes) -> Response {
    let name = match body_object(&body, &["name"]).and_then(|obj| {
        let name = required_str(&obj, "name")?.to_string();
        spec::check_name(&name, "name")?;
        Ok(name)
    }) {
        Ok(n) => n,
        Err(e) => return error_reply(e),
    };
    let shown = name.clone();
    let done = tokio::spawn(async move { f.delete(NS, &name).await }).await;
    match done {
        Ok(Ok(true)) => StatusCode::OK.into_response(),
        Ok(Ok(false)) => error_reply(
            ApiError::new(Code::NotFound, format!("no function {shown}")).with_field("name"),
        ),
        Ok(Err(e)) => error_reply(e),
        Err(e) => error_reply(ApiError::internal(format!("the delete failed: {e}"))),
    }
}

/// POST /wipe: deletes every function of `default`, whichever door deployed it (tinyFaaS's
/// wipe deletes all its functions, and its functions are those of `default`).
async fn wipe(f: Arc<Functions>) -> Response {
    let done = tokio::spawn(async move {
        for d in f.all().into_iter().filter(|d| d.namespace == NS) {
            f.delete(NS, &d.name).await?;
        }
        Ok::<_, ApiError>(())
    })
    .await;
    match done {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => error_reply(e),
        Err(e) => error_reply(ApiError::internal(format!("the wipe failed: {e}"))),
    }
}

/// Lines `/logs` shows per function, its last ones, unless `?tail=` asks for others.
const LOG_LINES: u32 = 1000;

/// The most `/logs` answers, in bytes: past it the first lines (the first functions', the
/// oldest) go, so a function that printed much never costs more memory than this.
const LOG_BYTES: usize = 4 << 20;

/// GET /logs[?name=][&tail=]: what the function (else every function of `default`, one after
/// the other) printed, as text lines, oldest first: the last `tail` lines of each (default
/// [`LOG_LINES`]), at most [`LOG_BYTES`] in all.
async fn logs(f: Arc<Functions>, q: Query) -> Response {
    let tail = match query_get(&q, "tail") {
        None => LOG_LINES,
        Some(t) => match t.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return error_reply(ApiError::bad_request(
                    Code::InvalidQuery,
                    "tail",
                    "`tail` must be a whole number from 1 to 10000",
                ))
            }
        },
    };
    let names: Vec<String> = match query_get(&q, "name").filter(|n| !n.is_empty()) {
        Some(n) => {
            if f.get(NS, n).is_none() {
                return error_reply(
                    ApiError::new(Code::NotFound, format!("no function {n}")).with_field("name"),
                );
            }
            vec![n.to_string()]
        }
        None => f
            .all()
            .iter()
            .filter(|d| d.namespace == NS)
            .map(|d| d.name.clone())
            .collect(),
    };
    // The last functions first, so that what the budget leaves out is the answer's start.
    let mut parts = Vec::new();
    let mut left = LOG_BYTES;
    for name in names.iter().rev() {
        if left == 0 {
            break;
        }
        // One character more than fits: a stream cut there can never show its cut first line.
        let chars = u32::try_from(left + 1).unwrap_or(u32::MAX);
        let tasks = match f
            .store()
            .function_log_tail(&format!("{NS}/{name}"), None, None, tail, chars)
            .await
        {
            Ok(t) => t,
            Err(e) => return error_reply(ApiError::from(e)),
        };
        let part = log_tail(&tasks, tail as usize, left);
        left -= part.len();
        parts.push(part);
    }
    parts.reverse();
    text_reply(parts.concat())
}

/// The last `lines` lines of what `tasks` (newest first) printed, each task's stdout then
/// its stderr, oldest first, each ending in a newline: whole lines only, at most `bytes` in
/// all (a longer line ends the tail).
fn log_tail(tasks: &[LoggedTask], lines: usize, bytes: usize) -> String {
    let mut kept = Vec::new();
    let mut size = 0;
    'tasks: for t in tasks {
        for text in [&t.stderr, &t.stdout] {
            for line in text.lines().rev() {
                if kept.len() == lines || size + line.len() + 1 > bytes {
                    break 'tasks;
                }
                size += line.len() + 1;
                kept.push(line);
            }
        }
    }
    let mut out = String::with_capacity(size);
    for line in kept.iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn logged(stdout: &str, stderr: &str) -> LoggedTask {
        LoggedTask {
            task_id: crate::model::TaskId::new(),
            at: String::new(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn the_logs_tail_keeps_the_last_lines_within_the_bytes() {
        // Newest first: the newest task printed "e" and "f" (stderr).
        let tasks = [logged("d\ne\n", "f\n"), logged("a\nb", "c")];
        assert_eq!(log_tail(&tasks, 100, 1000), "a\nb\nc\nd\ne\nf\n");
        assert_eq!(log_tail(&tasks, 4, 1000), "c\nd\ne\nf\n");
        assert_eq!(log_tail(&tasks, 1, 1000), "f\n");
        // Bytes: each line counts its newline; the newest are kept, whole.
        assert_eq!(log_tail(&tasks, 100, 6), "d\ne\nf\n");
        assert_eq!(log_tail(&tasks, 100, 7), "d\ne\nf\n");
        assert_eq!(log_tail(&tasks, 100, 0), "");
        // A line longer than what is left ends the tail, never cut.
        let long = [logged("old\n", "0123456789\nnew\n")];
        assert_eq!(log_tail(&long, 100, 10), "new\n");
        assert_eq!(log_tail(&[], 100, 10), "");
    }

    #[test]
    fn requirements_lines() {
        let text = "# a comment\n\nrequests==2.31 # pinned\nPyYAML>=6\n--index-url https://x/simple\n\
                    numpy ; python_version > '3'\nname[extra]\n-r other.txt\ngit+https://x/y.git\n./local\n";
        assert_eq!(
            requirements(text),
            vec![
                Requirement::Name("requests".into()),
                Requirement::Name("PyYAML".into()),
                Requirement::Name("numpy".into()),
                Requirement::Name("name".into()),
                Requirement::Unresolvable("-r other.txt".into()),
                Requirement::Unresolvable("git+https://x/y.git".into()),
                Requirement::Unresolvable("./local".into()),
            ]
        );
        assert!(requirements("").is_empty());
        assert!(requirements("\n  \n# only comments\n").is_empty());
    }

    #[test]
    fn python_dependencies_are_found_as_packages_modules_or_dist_info() {
        let zip = names(&[
            "fn.py",
            "requirements.txt",
            "vendor/requests/__init__.py",
            "vendor/PyYAML-6.0.1.dist-info/METADATA",
            "vendor/yaml/__init__.py",
            "six.py",
            "lib/typing_extensions.py",
        ]);
        for (dep, found) in [
            ("requests", true),
            ("Requests", true),
            ("PyYAML", true),
            ("pyyaml", true),
            ("six", true),
            ("typing-extensions", true),
            ("typing_extensions", true),
            ("numpy", false),
            ("yam", false),
        ] {
            assert_eq!(python_vendored(&zip, "", dep), found, "{dep}");
        }
        // A folder holding the function: its root is the prefix.
        let nested = names(&["f/fn.py", "f/vendor/requests/api.py"]);
        assert!(python_vendored(&nested, "f/", "requests"));
        assert!(!python_vendored(&nested, "", "requests"));
    }

    #[test]
    fn dist_names_normalise_as_pep_503() {
        assert_eq!(normalise_dist("Foo.Bar__baz-Q"), "foo-bar-baz-q");
        assert_eq!(normalise_dist("typing_extensions"), "typing-extensions");
    }

    #[test]
    fn package_json_main_and_dependencies() {
        let (main, deps) = package_json(
            &json!({"name": "fn", "main": "./lib/h.js", "dependencies": {"left-pad": "1", "@a/b": "2"}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(main.as_deref(), Some("lib/h.js"));
        assert_eq!(deps, vec!["@a/b".to_string(), "left-pad".to_string()]);
        assert_eq!(
            package_json(&json!({"name": "fn"})).ok(),
            Some((None, Vec::new()))
        );
        assert!(package_json(&json!([])).is_err());
        assert!(package_json(&json!({"main": 3})).is_err());
        assert!(package_json(&json!({"dependencies": ["x"]})).is_err());
    }

    #[test]
    fn the_root_is_the_top_or_the_one_folder_holding_the_code() {
        let m = markers(Runtime::Python);
        assert_eq!(root_of(&names(&["fn.py", "a/b.py"]), m), "");
        assert_eq!(root_of(&names(&["d/", "d/fn.py", "d/x"]), m), "d/");
        assert_eq!(root_of(&names(&["d/fn.py", "__MACOSX/d/._fn.py"]), m), "d/");
        assert_eq!(root_of(&names(&["d/fn.py", "e/x"]), m), "");
        assert_eq!(root_of(&names(&["d/x.py"]), m), "");
        assert_eq!(root_of(&[], m), "");
    }

    #[test]
    fn subfolder_paths() {
        assert_eq!(subfolder("/").ok().as_deref(), Some(""));
        assert_eq!(subfolder("").ok().as_deref(), Some(""));
        assert_eq!(subfolder("a/b").ok().as_deref(), Some("a/b/"));
        assert_eq!(subfolder("/a//./b/").ok().as_deref(), Some("a/b/"));
        assert!(subfolder("a/../b").is_err());
        assert!(subfolder("a\0").is_err());
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            if name.ends_with('/') {
                z.add_directory(*name, opts)
                    .unwrap_or_else(|e| panic!("{e}"));
            } else {
                z.start_file(*name, opts).unwrap_or_else(|e| panic!("{e}"));
                std::io::Write::write_all(&mut z, data).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        z.finish().unwrap_or_else(|e| panic!("{e}")).into_inner()
    }

    fn entries(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = zip::ZipArchive::new(Cursor::new(zip)).unwrap_or_else(|e| panic!("{e}"));
        (0..a.len())
            .map(|i| {
                let mut f = a.by_index(i).unwrap_or_else(|e| panic!("{e}"));
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap_or_else(|e| panic!("{e}"));
                (f.name().unwrap_or_else(|e| panic!("{e}")).to_string(), data)
            })
            .collect()
    }

    #[test]
    fn a_subfolder_is_cut_out_of_the_zip() {
        let zip = zip_of(&[
            ("repo-main/", b""),
            ("repo-main/README", b"r"),
            ("repo-main/fns/echo/", b""),
            ("repo-main/fns/echo/fn.py", b"def fn(i): return i\n"),
            ("repo-main/fns/echo/sub/x.txt", b"x"),
            ("repo-main/fns/echoes/fn.py", b"no"),
        ]);
        let cut = subfolder_zip(&zip, "repo-main/fns/echo/").unwrap_or_else(|_| panic!("cut"));
        assert_eq!(
            entries(&cut),
            vec![
                ("fn.py".to_string(), b"def fn(i): return i\n".to_vec()),
                ("sub/x.txt".to_string(), b"x".to_vec()),
            ]
        );
        match subfolder_zip(&zip, "nope/") {
            Err(SubError::Missing(held)) => assert_eq!(held, "repo-main"),
            _ => panic!("expected a missing folder"),
        }
        assert!(matches!(
            subfolder_zip(b"not a zip", "a/"),
            Err(SubError::Zip(_))
        ));
    }

    #[test]
    fn prepare_checks_dependencies_and_finds_node_main() {
        let py = |req: &[u8], extra: &[(&str, &[u8])]| {
            let mut files: Vec<(&str, &[u8])> = vec![
                ("fn.py", b"def fn(i): return i\n"),
                ("requirements.txt", req),
            ];
            files.extend_from_slice(extra);
            prepare(zip_of(&files), None, Runtime::Python, "zip")
        };
        assert!(py(b"", &[]).is_ok());
        let e = py(b"requests==2\n", &[])
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (Code::MissingDependency, Some("zip"))
        );
        assert!(e.message.contains("requests") && e.message.contains("requirements.txt"));
        assert!(py(b"requests==2\n", &[("vendor/requests/__init__.py", b"")]).is_ok());

        let node = |pkg: &[u8], extra: &[(&str, &[u8])]| {
            let mut files: Vec<(&str, &[u8])> = vec![("package.json", pkg)];
            files.extend_from_slice(extra);
            prepare(zip_of(&files), None, Runtime::Node, "url")
        };
        let ok = node(
            br#"{"name": "fn", "main": "handler"}"#,
            &[("handler.js", b"")],
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.1.as_deref(), Some("handler.js"));
        let e = node(
            br#"{"main": "index.js", "dependencies": {"left-pad": "^1"}}"#,
            &[],
        )
        .err()
        .unwrap_or_else(|| panic!("refused"));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (Code::MissingDependency, Some("url"))
        );
        assert!(e.message.contains("left-pad") && e.message.contains("package.json"));
        assert!(node(
            br#"{"dependencies": {"left-pad": "^1"}}"#,
            &[("index.js", b""), ("node_modules/left-pad/index.js", b"")]
        )
        .is_ok());
        let e = node(b"{not json", &[])
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(e.code, Code::InvalidValue);

        let e = prepare(b"PK nope".to_vec(), None, Runtime::Shell, "zip")
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (Code::InvalidArchive, Some("zip"))
        );
    }

    #[test]
    fn upload_fields() {
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            _ => panic!("object"),
        };
        let up = parse_upload(&obj(
            json!({"name": "sieve", "env": "nodejs", "threads": 2, "envs": ["A=1", "B=x=y"]}),
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(up.runtime, Runtime::Node);
        assert_eq!(up.threads, Some(2));
        assert_eq!(up.env.get("B").map(String::as_str), Some("x=y"));
        for (body, code, field) in [
            (json!({"env": "python3"}), Code::MissingField, "name"),
            (
                json!({"name": "Bad Name", "env": "python3"}),
                Code::InvalidValue,
                "name",
            ),
            (json!({"name": "f"}), Code::MissingField, "env"),
            (
                json!({"name": "f", "env": "ruby"}),
                Code::InvalidValue,
                "env",
            ),
            (
                json!({"name": "f", "env": "go"}),
                Code::UnsupportedRuntime,
                "env",
            ),
            (json!({"name": "f", "env": 3}), Code::InvalidType, "env"),
            (
                json!({"name": "f", "env": "binary", "threads": -1}),
                Code::InvalidValue,
                "threads",
            ),
            (
                json!({"name": "f", "env": "binary", "threads": "2"}),
                Code::InvalidType,
                "threads",
            ),
            (
                json!({"name": "f", "env": "binary", "envs": "A=1"}),
                Code::InvalidType,
                "envs",
            ),
            (
                json!({"name": "f", "env": "binary", "envs": ["A"]}),
                Code::InvalidValue,
                "envs[0]",
            ),
            (
                json!({"name": "f", "env": "binary", "envs": ["A=1", "1A=2"]}),
                Code::InvalidEnvName,
                "envs[1]",
            ),
            (
                json!({"name": "f", "env": "binary", "envs": [1]}),
                Code::InvalidValue,
                "envs[0]",
            ),
        ] {
            let e = parse_upload(&obj(body.clone()))
                .err()
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!((e.code, e.field.as_deref()), (code, Some(field)), "{body}");
        }
    }

    #[test]
    fn one_url_a_door_served() {
        let at = |a: &str| Listen(Some(a.parse().unwrap_or_else(|e| panic!("{a}: {e}"))));
        let doors = [
            ("coap", at("127.0.0.1:5683")),
            ("grpc", Listen(None)),
            ("http", at("0.0.0.0:8000")),
        ];
        assert_eq!(
            urls_of(&doors, Some("edge.example:8080"), "sieve"),
            "coap://127.0.0.1:5683/sieve\nhttp://edge.example:8000/sieve\n"
        );
        assert_eq!(
            urls_of(&doors, None, "sieve"),
            "coap://127.0.0.1:5683/sieve\nhttp://localhost:8000/sieve\n"
        );
        assert_eq!(
            urls_of(&[("http", at("[::1]:8000"))], None, "f"),
            "http://[::1]:8000/f\n"
        );
        assert_eq!(urls_of(&[("http", Listen(None))], None, "f"), "");
    }

    #[test]
    fn refusals_name_tinyfaas_fields() {
        let e = |f: &str| ApiError::bad_request(Code::InvalidValue, f, "x");
        assert_eq!(renamed(e("archive"), "zip").field.as_deref(), Some("zip"));
        assert_eq!(renamed(e("handler"), "url").field.as_deref(), Some("url"));
        assert_eq!(renamed(e("warm"), "zip").field.as_deref(), Some("threads"));
        assert_eq!(renamed(e("env.X"), "zip").field.as_deref(), Some("envs"));
        assert_eq!(renamed(e("name"), "zip").field.as_deref(), Some("name"));
    }
}
