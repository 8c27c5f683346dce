//! The named-function routes of the API (API.md section 5) on [`Client`]: deploy, list,
//! describe and remove functions, invoke them (the answer as it came: status, headers and
//! bytes), run pipelines, read their logs, and set secrets.
//!
//! A function comes back as [`Function`], the server's JSON object kept whole (so that
//! `ufaas fn describe --json` prints what the server sent) with typed accessors for what the
//! CLI reads. Refusals are the same [`ClientError`] as for tasks; a function's own error
//! (`function_error`, `function_timeout`, …) keeps the `task_id` the server names
//! ([`ClientError::task_id`]), a failed pipeline its `step` and `pipeline_id`
//! ([`ClientError::detail`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{Client, ClientError};
use crate::model::TaskId;

/// The header every invocation's answer names its task in.
pub const TASK_ID_HEADER: &str = "x-ufaas-task-id";
/// The header that asks for an asynchronous call (as `?async=true` does).
pub const ASYNC_HEADER: &str = "x-ufaas-async";

/// The namespace of a function named without one (as the seeds' APIs do, API.md section 6).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A function's `namespace/name`; each part is `[a-z0-9][a-z0-9_.-]{0,62}`. Parsed from
/// `ns/name`, or from a bare `name`, which lives in the namespace `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName {
    pub namespace: String,
    pub name: String,
}

impl FunctionName {
    /// `namespace/name`, each part checked.
    pub fn new(namespace: &str, name: &str) -> Result<FunctionName, String> {
        check_part(namespace, "namespace")?;
        check_part(name, "name")?;
        Ok(FunctionName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

/// Whether `part` is a valid namespace or name: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn valid_part(part: &str) -> bool {
    let b = part.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

fn check_part(part: &str, what: &str) -> Result<(), String> {
    if valid_part(part) {
        Ok(())
    } else {
        Err(format!(
            "the {what} `{part}` must be 1 to 63 of a-z, 0-9, `_`, `.` and `-`, starting with a letter or digit"
        ))
    }
}

impl FromStr for FunctionName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) => FunctionName::new(ns, name),
            None => FunctionName::new(DEFAULT_NAMESPACE, s),
        }
        .map_err(|e| format!("`{s}` is not a function name (ns/name): {e}"))
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A function as the server shows it (`GET /functions/{ns}/{name}`): the JSON object as it
/// came, with accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Function(pub Map<String, Value>);

/// A function's containers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Containers {
    pub ready: u64,
    pub busy: u64,
    pub starting: u64,
    pub waiting: u64,
}

impl Function {
    /// A member of the object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn text(&self, key: &str) -> &str {
        self.get(key).and_then(Value::as_str).unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.text("namespace")
    }

    pub fn name(&self) -> &str {
        self.text("name")
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    /// Bumped by each replace.
    pub fn version(&self) -> Option<u64> {
        self.get("version").and_then(Value::as_u64)
    }

    pub fn runtime(&self) -> &str {
        self.text("runtime")
    }

    pub fn code_sha256(&self) -> &str {
        self.text("code_sha256")
    }

    /// Its containers by state (zeros when the server sent none).
    pub fn containers(&self) -> Containers {
        self.get("containers")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    }

    /// Invocations ever made.
    pub fn invocations(&self) -> u64 {
        self.get("invocations")
            .and_then(|i| i.get("total"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The object as JSON.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone())
    }
}

/// What `PUT /functions/{ns}/{name}` answered: the function, and whether it is new (201)
/// rather than a replace (200).
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub function: Function,
    pub created: bool,
}

/// An invocation's request: its body (the input), extra headers, and whether to answer at
/// once with the task id (`?async=true`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvokeRequest {
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub run_async: bool,
}

/// A successful (2xx) answer of an invocation or a pipeline, as it came.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Invocation {
    /// The task the call is: its `X-Ufaas-Task-Id`, else (a 202) the body's `id`.
    pub fn task_id(&self) -> Option<TaskId> {
        let header = self
            .headers
            .get(TASK_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        header.or_else(|| {
            serde_json::from_slice::<Value>(&self.body)
                .ok()?
                .get("id")?
                .as_str()?
                .parse()
                .ok()
        })
    }

    /// Stored but not run yet: `?async=true` answers 202.
    pub fn accepted(&self) -> bool {
        self.status == 202
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What `GET /functions/{ns}/{name}/logs` is asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    /// The last this many lines (the server's default is 100, its maximum 10000).
    pub tail: Option<u32>,
    /// Only invocations at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only this invocation.
    pub task: Option<TaskId>,
}

impl LogQuery {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(t) = self.tail {
            q.push(("tail", t.to_string()));
        }
        if let Some(s) = &self.since {
            q.push(("since", s.clone()));
        }
        if let Some(t) = self.task {
            q.push(("task", t.to_string()));
        }
        q
    }
}

/// One line a function's handler printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When its invocation ran (RFC 3339).
    pub at: String,
    pub task_id: TaskId,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

#[derive(Deserialize)]
struct FunctionList {
    functions: Vec<Function>,
}

#[derive(Deserialize)]
struct LogLines {
    lines: Vec<LogLine>,
}

impl Client {
    fn function_url(
        &self,
        f: &FunctionName,
        tail: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::Url, ClientError> {
        let mut segments = vec!["functions", f.namespace.as_str(), f.name.as_str()];
        segments.extend_from_slice(tail);
        self.url(&segments, query)
    }

    /// `PUT /functions/{ns}/{name}`: creates or replaces the function (`body` as in API.md
    /// section 5: `runtime`, `code` or `archive`, and the optional settings).
    pub async fn deploy(&self, f: &FunctionName, body: &Value) -> Result<Deployed, ClientError> {
        let url = self.function_url(f, &[], &[])?;
        let answer = self.send(self.http.put(url).json(body)).await?;
        Ok(Deployed {
            function: answer.json()?,
            created: answer.status == 201,
        })
    }

    /// `GET /functions[?namespace=]`.
    pub async fn functions(&self, namespace: Option<&str>) -> Result<Vec<Function>, ClientError> {
        let query: Vec<(&str, String)> = namespace
            .map(|n| ("namespace", n.to_string()))
            .into_iter()
            .collect();
        let url = self.url(&["functions"], &query)?;
        let list: FunctionList = self.call(self.http.get(url)).await?;
        Ok(list.functions)
    }

    /// `GET /functions/{ns}/{name}`.
    pub async fn function(&self, f: &FunctionName) -> Result<Function, ClientError> {
        let url = self.function_url(f, &[], &[])?;
        self.call(self.http.get(url)).await
    }

    /// `DELETE /functions/{ns}/{name}`: calls in flight finish, then its containers go.
    pub async fn delete_function(&self, f: &FunctionName) -> Result<(), ClientError> {
        let url = self.function_url(f, &[], &[])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    /// `POST /functions/{ns}/{name}/invoke`: the answer as it came when it is a success
    /// (2xx; 202 for `run_async`); an error answer (the server's, or a status the handler
    /// set) is a [`ClientError`], with the invocation's task in [`ClientError::task_id`].
    pub async fn invoke(
        &self,
        f: &FunctionName,
        req: &InvokeRequest,
    ) -> Result<Invocation, ClientError> {
        let query: Vec<(&str, String)> = if req.run_async {
            vec![("async", "true".into())]
        } else {
            Vec::new()
        };
        let url = self.function_url(f, &["invoke"], &query)?;
        let mut builder = self.http.post(url);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let a = self.send(builder).await?;
        Ok(Invocation {
            status: a.status,
            headers: a.headers,
            body: a.body,
        })
    }

    /// `POST /functions/pipeline`: each step's output is the next one's input; the answer is
    /// the last step's. A failed step is a [`ClientError`] with code `step_failed`, its
    /// `field` `steps[N]` and the details `step`, `function`, `error`, `task_id` and
    /// `pipeline_id`.
    pub async fn pipeline(
        &self,
        steps: &[FunctionName],
        input: Option<&Value>,
        run_async: bool,
    ) -> Result<Invocation, ClientError> {
        let query: Vec<(&str, String)> = if run_async {
            vec![("async", "true".into())]
        } else {
            Vec::new()
        };
        let url = self.url(&["functions", "pipeline"], &query)?;
        let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let mut body = json!({ "steps": steps });
        if let Some(input) = input {
            body["input"] = input.clone();
        }
        let a = self.send(self.http.post(url).json(&body)).await?;
        Ok(Invocation {
            status: a.status,
            headers: a.headers,
            body: a.body,
        })
    }

    /// `GET /functions/{ns}/{name}/logs`: what its handler printed, oldest first.
    pub async fn function_logs(
        &self,
        f: &FunctionName,
        q: &LogQuery,
    ) -> Result<Vec<LogLine>, ClientError> {
        let url = self.function_url(f, &["logs"], &q.query())?;
        let lines: LogLines = self.call(self.http.get(url)).await?;
        Ok(lines.lines)
    }

    /// `PUT /secrets/{name}`: sets the secret; no route ever shows it again.
    pub async fn set_secret(&self, name: &str, value: &[u8]) -> Result<(), ClientError> {
        let url = self.url(&["secrets", name], &[])?;
        self.send(self.http.put(url).body(value.to_vec()))
            .await
            .map(|_| ())
    }

    /// `DELETE /secrets/{name}`.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["secrets", name], &[])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_and_without_a_namespace() {
        let f: FunctionName = "ns-1/hello.world_2"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (f.namespace.as_str(), f.name.as_str()),
            ("ns-1", "hello.world_2")
        );
        assert_eq!(f.to_string(), "ns-1/hello.world_2");
        let f: FunctionName = "hello".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.to_string(), "default/hello");
        let long = "a".repeat(63);
        assert!(format!("{long}/{long}").parse::<FunctionName>().is_ok());
        for bad in [
            "",
            "/",
            "ns/",
            "/name",
            "a/b/c",
            "Ns/name",
            "ns/-x",
            "ns/_x",
            "ns/.x",
            "ns/a b",
            "ns/é",
            &format!("ns/{}", "a".repeat(64)),
        ] {
            let e = bad.parse::<FunctionName>();
            assert!(e.is_err(), "{bad:?} parsed");
            assert!(e.err().unwrap_or_default().contains("ns/name"), "{bad:?}");
        }
    }

    #[test]
    fn a_function_reads_its_members() {
        let f: Function = serde_json::from_value(json!({
            "namespace": "ns", "name": "hi", "version": 3, "runtime": "python",
            "code_sha256": "ab", "containers": {"ready": 1, "busy": 2, "starting": 0, "waiting": 4},
            "invocations": {"total": 7, "by_state": {"FINISHED": 7}}, "extra": [1]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (f.full_name(), f.version(), f.runtime()),
            ("ns/hi".into(), Some(3), "python")
        );
        assert_eq!(
            f.containers(),
            Containers {
                ready: 1,
                busy: 2,
                starting: 0,
                waiting: 4
            }
        );
        assert_eq!((f.invocations(), f.code_sha256()), (7, "ab"));
        assert_eq!(f.get("extra"), Some(&json!([1])));
        assert!(serde_json::from_value::<Function>(json!([1])).is_err());
    }

    #[test]
    fn an_invocation_names_its_task() {
        let id = TaskId::new();
        let mut headers = HeaderMap::new();
        headers.insert(
            TASK_ID_HEADER,
            id.to_string().parse().unwrap_or_else(|e| panic!("{e}")),
        );
        let inv = Invocation {
            status: 200,
            headers,
            body: Bytes::from_static(b"[1]"),
        };
        assert_eq!((inv.task_id(), inv.json()), (Some(id), Some(json!([1]))));
        let inv = Invocation {
            status: 202,
            headers: HeaderMap::new(),
            body: Bytes::from(json!({"id": id}).to_string()),
        };
        assert!(inv.accepted());
        assert_eq!(inv.task_id(), Some(id));
    }

    #[test]
    fn routes_and_log_queries() {
        let c = Client::new("http://h/p/", None).unwrap_or_else(|e| panic!("{e}"));
        let f = FunctionName::new("ns", "a.b").unwrap_or_else(|e| panic!("{e}"));
        let task = TaskId::new();
        let q = LogQuery {
            tail: Some(5),
            since: Some("2026-12-02T10:00:00.000Z".into()),
            task: Some(task),
        };
        let url = c
            .function_url(&f, &["logs"], &q.query())
            .map(|u| u.to_string());
        assert_eq!(
            url.ok(),
            Some(format!(
                "http://h/p/functions/ns/a.b/logs?tail=5&since=2026-12-02T10%3A00%3A00.000Z&task={task}"
            ))
        );
        assert!(LogQuery::default().query().is_empty());
    }
}
