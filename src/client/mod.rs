//! A typed client for a ufaas server's API (`docs/api.rst`): the `ufaas` CLI and the tests
//! both talk to the server through it, so the task record, the error body, the event frames
//! and the token are read in one place instead of by hand wherever JSON comes back.
//!
//! Shaped after tokio-rs/mini-redis's `Client`: one [`Client`] value holds the server's
//! address and credentials and has one method per operation, each giving typed data or a
//! [`ClientError`]. The record reuses the server's own types ([`TaskId`], [`TaskState`],
//! [`ContainerState`], [`Locality`]), so a state the server can send is one the client reads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ufaas::client::ClientError> {
//! use std::time::Duration;
//! let client = ufaas::client::Client::new("http://127.0.0.1:8080", None)?;
//! let spec = serde_json::json!({"task_name": "hi", "image": "busybox", "cmd_list": ["echo", "hi"]});
//! let task = client.submit_and_wait(&spec, Duration::from_secs(60)).await?;
//! println!("{} ended {} with {:?}", task.id, task.state, task.exit_code);
//! # Ok(()) }
//! ```

mod error;
mod events;
mod functions;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use error::{ClientError, TOKEN_HINT};
pub use events::{Event, EventStream, Frame, OutputStream};
pub use functions::{
    valid_part, Containers, Deployed, Function, FunctionName, Invocation, InvokeRequest, LogLine,
    LogQuery, ASYNC_HEADER, DEFAULT_NAMESPACE, TASK_ID_HEADER,
};

use crate::model::{Locality, TaskId, TaskState};
use crate::runner::DeleteOptions;

/// A task record, as `GET /fn/{id}` and every REST answer about a task give it: the model's
/// own record (serialising it gives back the JSON the server sent, which is what `ufaas run`
/// prints; a test checks the round trip).
pub use crate::model::TaskRecord as Task;

/// A task as state events show it: the record without `stdout`, `stderr` and `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: TaskId,
    pub task_name: String,
    pub state: TaskState,
    pub image: String,
    pub priority: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub output_truncated: bool,
    pub container: Option<Container>,
    pub reused_container_of: Option<TaskId>,
    pub locality: Option<Locality>,
}

/// The container a task runs (or ran) in: the model's own.
pub use crate::model::ContainerRef as Container;

/// One page of `GET /fn`, newest first. `next`, when set, is the `before` of the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next: Option<TaskId>,
}

/// What `GET /fn` is asked for; the default is every task, the server's page size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Any of these states (none: any state).
    pub states: Vec<TaskState>,
    /// Exactly this `task_name`.
    pub name: Option<String>,
    /// 1 to 1000 (the server's default is 100).
    pub limit: Option<u32>,
    /// Only tasks submitted before this one: a page's `next`.
    pub before: Option<TaskId>,
}

impl TaskFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
            q.push(("state", states.join(",")));
        }
        if let Some(n) = &self.name {
            q.push(("name", n.clone()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(b) = self.before {
            q.push(("before", b.to_string()));
        }
        q
    }
}

/// `GET /readyz`'s answer when both the database and Docker answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Readiness {
    pub status: String,
    pub docker: String,
    pub database: String,
}

/// A connection to one server. Cheap to clone (the HTTP connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    /// http or https, with no query or fragment; routes are appended to its path, so a
    /// server behind a proxy at `https://host/ufaas/` works.
    base: Url,
    http: reqwest::Client,
    /// Kept for the WebSocket handshake, which does not go through `http`.
    authorization: Option<HeaderValue>,
}

impl Client {
    /// A client for the server at `base_url`, sending `Authorization: Bearer <token>` on
    /// every request when `token` is given. A token that is empty once trimmed counts as
    /// none, so an empty `UFAAS_TOKEN` in the environment means no token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = parse_base(base_url)?;
        let authorization = bearer(token.as_deref())?;
        let mut headers = HeaderMap::new();
        if let Some(v) = &authorization {
            headers.insert(AUTHORIZATION, v.clone());
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        Ok(Client {
            base,
            http,
            authorization,
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /healthz`: the process answers.
    pub async fn health(&self) -> Result<(), ClientError> {
        let url = self.url(&["healthz"], &[])?;
        self.call::<Value>(self.http.get(url)).await.map(|_| ())
    }

    /// `GET /readyz`: the database and Docker answer (else an [`ClientError::Api`] with
    /// `database_unavailable` or `docker_unavailable`).
    pub async fn ready(&self) -> Result<Readiness, ClientError> {
        let url = self.url(&["readyz"], &[])?;
        self.call(self.http.get(url)).await
    }

    /// `POST /fn`: creates a task; the record says `PENDING`.
    pub async fn submit(&self, spec: &Value) -> Result<Task, ClientError> {
        self.create(&["fn"], spec, None).await
    }

    /// `POST /fn?wait=`: creates a task and answers when it has ended or `wait` has passed,
    /// whichever is first (then the record is not terminal: see `state.is_terminal()`).
    pub async fn submit_and_wait(&self, spec: &Value, wait: Duration) -> Result<Task, ClientError> {
        self.create(&["fn"], spec, Some(wait)).await
    }

    /// `POST /fn/{id}`: creates a task that runs in the container of task `id`.
    pub async fn run_in(&self, id: TaskId, spec: &Value) -> Result<Task, ClientError> {
        self.create(&["fn", &id.to_string()], spec, None).await
    }

    /// `POST /fn/{id}?wait=`: [`Client::run_in`], answered as [`Client::submit_and_wait`] is.
    pub async fn run_in_and_wait(
        &self,
        id: TaskId,
        spec: &Value,
        wait: Duration,
    ) -> Result<Task, ClientError> {
        self.create(&["fn", &id.to_string()], spec, Some(wait))
            .await
    }

    async fn create(
        &self,
        path: &[&str],
        spec: &Value,
        wait: Option<Duration>,
    ) -> Result<Task, ClientError> {
        // The server takes fractions of a second; 120 s is sent as `120`.
        let query: Vec<(&str, String)> = wait
            .map(|w| ("wait", w.as_secs_f64().to_string()))
            .into_iter()
            .collect();
        let url = self.url(path, &query)?;
        self.call(self.http.post(url).json(spec)).await
    }

    /// `GET /fn/{id}`.
    pub async fn get(&self, id: TaskId) -> Result<Task, ClientError> {
        let url = self.url(&["fn", &id.to_string()], &[])?;
        self.call(self.http.get(url)).await
    }

    /// `GET /fn`: one page of tasks, newest first.
    pub async fn list(&self, filter: &TaskFilter) -> Result<TaskPage, ClientError> {
        let url = self.url(&["fn"], &filter.query())?;
        self.call(self.http.get(url)).await
    }

    /// `PUT /fn/{id}`: replaces the spec of a task that has not started.
    pub async fn update(&self, id: TaskId, spec: &Value) -> Result<Task, ClientError> {
        let url = self.url(&["fn", &id.to_string()], &[])?;
        self.call(self.http.put(url).json(spec)).await
    }

    /// `PUT /fn/{id}` as a merge-patch (RFC 7386) of the stored spec: `null` removes a field.
    pub async fn merge_patch(&self, id: TaskId, patch: &Value) -> Result<Task, ClientError> {
        let url = self.url(&["fn", &id.to_string()], &[])?;
        let req = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .body(patch.to_string());
        self.call(req).await
    }

    /// `DELETE /fn/{id}`: cancels the task; the record as it ended.
    pub async fn cancel(&self, id: TaskId) -> Result<Task, ClientError> {
        self.delete(id, DeleteOptions::default()).await
    }

    /// `DELETE /fn/{id}` with options: also remove its container, or forget it (`purge`).
    pub async fn delete(&self, id: TaskId, opts: DeleteOptions) -> Result<Task, ClientError> {
        let mut query = Vec::new();
        if opts.remove_container {
            query.push(("remove_container", "true".to_string()));
        }
        if opts.purge {
            query.push(("purge", "true".to_string()));
        }
        let url = self.url(&["fn", &id.to_string()], &query)?;
        self.call(self.http.delete(url)).await
    }

    /// `GET /fn/ws`: replays the stored events after `since` (when given), then streams live
    /// ones; only those of `tasks` when it is not empty, and running tasks' output with
    /// `output`. The token goes on the handshake; a refused handshake is the same
    /// [`ClientError`] a REST refusal is.
    pub async fn events(
        &self,
        since: Option<i64>,
        tasks: &[TaskId],
        output: bool,
    ) -> Result<EventStream, ClientError> {
        let url = self.events_url(since, tasks, output)?;
        let mut request = url.as_str().into_client_request()?;
        if let Some(v) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, v.clone());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(EventStream::new(socket)),
            // Refused before the upgrade: the answer carries the error body.
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                Err(ClientError::from_response(resp.status().as_u16(), body))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The URL [`Client::events`] connects to (for messages that name it).
    pub fn events_url(
        &self,
        since: Option<i64>,
        tasks: &[TaskId],
        output: bool,
    ) -> Result<Url, ClientError> {
        let mut query: Vec<(&str, String)> =
            tasks.iter().map(|t| ("task", t.to_string())).collect();
        if let Some(s) = since {
            query.push(("since", s.to_string()));
        }
        if output {
            query.push(("output", "true".into()));
        }
        let mut url = self.url(&["fn", "ws"], &query)?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| self.bad_base("cannot make a WebSocket URL of it"))?;
        Ok(url)
    }

    /// The base URL with `segments` appended to its path and `query` set.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| self.bad_base("it cannot have a path"))?
            // A trailing `/` on the base would leave an empty segment before ours.
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn bad_base(&self, reason: &str) -> ClientError {
        ClientError::InvalidUrl {
            url: self.base.to_string(),
            reason: reason.into(),
        }
    }

    /// Sends `req` and reads a success answer as `T`, or the error answer as a
    /// [`ClientError`].
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let answer = self.send(req).await?;
        answer.json()
    }

    /// Sends `req` and gives a success answer whole (status, headers, body), or the error
    /// answer as a [`ClientError`]: what [`Client::call`] reads as JSON, and what the
    /// routes whose answer is not a JSON record (an invocation, a 204) read themselves.
    async fn send(&self, req: RequestBuilder) -> Result<Answer, ClientError> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(status, &body));
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// A success answer as it came.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    /// The body read as `T`.
    fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|source| ClientError::Decode {
            status: self.status,
            source,
        })
    }
}

fn parse_base(raw: &str) -> Result<Url, ClientError> {
    let bad = |reason: String| ClientError::InvalidUrl {
        url: raw.to_string(),
        reason,
    };
    let mut url = Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "it must be http or https, not {}",
            url.scheme()
        )));
    }
    // Routes carry their own query; a base's would be sent with every one.
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The `Authorization` value for `token`, marked sensitive so that it is left out of debug
/// output (of the header map, of reqwest's logs). Only what cannot go in a header at all
/// (control characters) is refused here; the server judges the rest, as it did before this
/// client, so such a token gets the server's 401 and its message.
fn bearer(token: Option<&str>) -> Result<Option<HeaderValue>, ClientError> {
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerRef, ContainerState, TaskRecord};

    fn client(base: &str) -> Client {
        Client::new(base, None).unwrap_or_else(|e| panic!("{base}: {e}"))
    }

    fn ok(u: Result<Url, ClientError>) -> String {
        u.map(|u| u.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn routes_are_appended_to_the_base_path() {
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/?x=1#f",
        ] {
            let c = client(base);
            assert_eq!(
                ok(c.url(&["fn"], &[])),
                "http://127.0.0.1:8080/fn",
                "{base}"
            );
        }
        let c = client("https://host/ufaas/");
        let id = TaskId::new();
        assert_eq!(
            ok(c.url(&["fn", &id.to_string()], &[("wait", "0.5".into())])),
            format!("https://host/ufaas/fn/{id}?wait=0.5")
        );
        // A segment is escaped, never read as a path of its own.
        assert_eq!(
            ok(c.url(&["fn", "a/b?c"], &[])),
            "https://host/ufaas/fn/a%2Fb%3Fc"
        );
    }

    #[test]
    fn only_http_and_https_bases() {
        for bad in ["ftp://x", "127.0.0.1:8080", "", "ws://h"] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_urls() {
        let c = client("http://127.0.0.1:8080/");
        let (a, b) = (TaskId::new(), TaskId::new());
        assert_eq!(
            ok(c.events_url(Some(3), &[a, b], true)),
            format!("ws://127.0.0.1:8080/fn/ws?task={a}&task={b}&since=3&output=true")
        );
        assert_eq!(
            ok(c.events_url(None, &[], false)),
            "ws://127.0.0.1:8080/fn/ws"
        );
        assert_eq!(
            ok(client("https://h/p").events_url(Some(0), &[], false)),
            "wss://h/p/fn/ws?since=0"
        );
    }

    #[test]
    fn list_filters_become_the_query() {
        assert!(TaskFilter::default().query().is_empty());
        let before = TaskId::new();
        let f = TaskFilter {
            states: vec![TaskState::Running, TaskState::Pending],
            name: Some("my task".into()),
            limit: Some(5),
            before: Some(before),
        };
        assert_eq!(
            ok(client("http://h").url(&["fn"], &f.query())),
            format!("http://h/fn?state=RUNNING%2CPENDING&name=my+task&limit=5&before={before}")
        );
    }

    #[test]
    fn the_token_is_a_sensitive_bearer_header() {
        assert_eq!(bearer(None).ok(), Some(None));
        assert_eq!(bearer(Some("  ")).ok(), Some(None), "blank is no token");
        let v = bearer(Some(" abc ")).ok().flatten();
        assert_eq!(v.as_ref().and_then(|v| v.to_str().ok()), Some("Bearer abc"));
        assert!(v.is_some_and(|v| v.is_sensitive()));
        for bad in ["a\nb", "a\u{7f}b", "a\0b"] {
            assert!(
                matches!(bearer(Some(bad)), Err(ClientError::InvalidToken)),
                "{bad:?}"
            );
        }
        let c = Client::new("http://h", Some("secret-token".into()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    fn record() -> TaskRecord {
        let id = TaskId::new();
        TaskRecord {
            id,
            task_name: "t".into(),
            state: TaskState::Failed,
            image: "ufaas/busybox:latest".into(),
            priority: -3,
            created_at: "2026-11-21T10:00:00.000Z".into(),
            started_at: Some("2026-11-21T10:00:00.081Z".into()),
            finished_at: None,
            exit_code: Some(3),
            stdout: "out\n".into(),
            stderr: "\u{fffd}err".into(),
            output_truncated: true,
            error: Some("timed out after 1 s".into()),
            container: Some(ContainerRef {
                id: "4f1d".into(),
                state: ContainerState::Ready,
            }),
            reused_container_of: Some(TaskId::new()),
            locality: Some(Locality::Hit),
            spec: serde_json::json!({"task_name": "t", "cmd_list": ["sh"], "limits": {"cpus": 0.1}}),
            function: None,
            result: None,
            steps: None,
            exec_id: Some("not shown".into()),
            output_stored: (4, 4),
        }
    }

    /// What the server serialises, the client reads and serialises back unchanged: the CLI
    /// prints a [`Task`] and the harness hands tests its JSON.
    #[test]
    fn records_and_summaries_round_trip_through_the_server_serialisation() {
        let mut r = record();
        for state in TaskState::ALL {
            for (container, locality) in [
                (Some(ContainerState::Building), None),
                (Some(ContainerState::Removed), Some(Locality::Miss)),
                (None, None),
            ] {
                r.state = state;
                r.container = container.map(|state| ContainerRef {
                    id: "c".into(),
                    state,
                });
                r.locality = locality;
                let sent = serde_json::to_value(&r).unwrap_or_default();
                let task: Task =
                    serde_json::from_value(sent.clone()).unwrap_or_else(|e| panic!("{sent}: {e}"));
                assert_eq!(serde_json::to_value(&task).ok(), Some(sent));
                let summary =
                    serde_json::to_value(crate::events::TaskSummary::from(&r)).unwrap_or_default();
                let back: TaskSummary = serde_json::from_value(summary.clone())
                    .unwrap_or_else(|e| panic!("{summary}: {e}"));
                assert_eq!(serde_json::to_value(&back).ok(), Some(summary));
            }
        }
    }

    #[test]
    fn a_page_reads_its_next() {
        let r = record();
        let page = serde_json::json!({"tasks": [r], "next": r.id});
        let page: TaskPage = serde_json::from_value(page).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((page.tasks.len(), page.next), (1, Some(r.id)));
    }
}
