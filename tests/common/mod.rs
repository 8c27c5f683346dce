//! Test harness: a real server started in-process on port 0 with a temporary SQLite file,
//! driving the real Docker engine. Waits poll the API with a deadline; nothing sleeps to
//! synchronise.
//!
//! Records are read through [`ufaas::client::Client`], the client the CLI uses
//! ([`Server::client`]); the helpers that hand tests a `Value` give that client's record as
//! JSON. `http` stays for tests that send what no well-behaved client would.
#![allow(dead_code)]

pub mod coap;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use ufaas::client::{Client, Task};
use ufaas::config::ServeConfig;
use ufaas::model::TaskId;

pub const BUSYBOX: &str = "ufaas/busybox:latest";
pub const PYTHON: &str = "ufaas/python:3";
pub const NODE: &str = "ufaas/node:18";

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    client: Client,
    pub db: std::path::PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The label of this server's containers, for the clean-up of a test that failed
    /// before `stop`.
    instance: String,
    _dir: tempfile::TempDir,
    /// tinyFaaS's doors this server serves ([`Server::start_with_doors`]), where they listen.
    pub gateway: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
    pub coap: Option<std::net::SocketAddr>,
}

/// Which listeners a server has besides its main one ([`Server::start_with_doors`]): each
/// door asked for is bound on 127.0.0.1, port 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Doors {
    /// The main listener's address; 127.0.0.1:0 when `None`. A fixed one that is taken
    /// fails the test, naming it.
    pub http: Option<std::net::SocketAddr>,
    pub gateway: bool,
    pub grpc: bool,
    pub coap: bool,
}

impl Doors {
    /// Every door: the gateway, gRPC and CoAP.
    pub fn all() -> Doors {
        Doors {
            http: None,
            gateway: true,
            grpc: true,
            coap: true,
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

impl Reply {
    /// The body's `id`.
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts an error reply: status, `code` and (when given) `field`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "status of {}", self.body);
        assert_eq!(self.body["code"], code, "code of {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message of {}",
            self.body
        );
        if let Some(f) = field {
            assert_eq!(self.body["field"], f, "field of {}", self.body);
        }
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = ServeConfig::defaults();
        cfg.db = dir.path().join("ufaas.db");
        tweak(&mut cfg);
        Self::start_on(cfg, dir).await
    }

    pub async fn start_on(cfg: ServeConfig, dir: tempfile::TempDir) -> Server {
        let listeners = ufaas::Listeners::http(bind_local().await);
        Self::start_client(cfg, dir, reqwest::Client::new(), None, listeners).await
    }

    /// Starts a server that also serves the `doors` asked for (`ufaas::serve_all`); their
    /// addresses are in [`Server::gateway`], [`Server::grpc`] and [`Server::coap`].
    pub async fn start_with_doors(doors: Doors, tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = ServeConfig::defaults();
        cfg.db = dir.path().join("ufaas.db");
        tweak(&mut cfg);
        let http = match doors.http {
            None => bind_local().await,
            Some(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("cannot listen on {addr}, which this test needs: {e}")),
        };
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut listeners = ufaas::Listeners::http(http);
        if doors.gateway {
            listeners.gateway = Some(bind_local().await);
        }
        if doors.grpc {
            listeners.grpc = Some(bind_local().await);
        }
        if doors.coap {
            listeners.coap = Some(tokio::net::UdpSocket::bind(local).await.expect("bind udp"));
        }
        // A token set by `tweak` is sent by `http` and the client, as start_authed does.
        let token = cfg.token.clone();
        let http = match &token {
            None => reqwest::Client::new(),
            Some(t) => authed_client(t),
        };
        Self::start_client(cfg, dir, http, token, listeners).await
    }

    /// `http://GATEWAY{path}`.
    pub fn gateway_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.gateway.expect("a server with a gateway")
        )
    }

    /// Starts a server that wants `Authorization: Bearer {token}` (`tweak` may add more
    /// tokens); `http` and the client, and so every helper, send that token.
    pub async fn start_authed(token: &str, tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = ServeConfig::defaults();
        cfg.db = dir.path().join("ufaas.db");
        cfg.token = Some(token.to_string());
        tweak(&mut cfg);
        let http = authed_client(token);
        let listeners = ufaas::Listeners::http(bind_local().await);
        Self::start_client(cfg, dir, http, Some(token.to_string()), listeners).await
    }

    async fn start_client(
        cfg: ServeConfig,
        dir: tempfile::TempDir,
        http: reqwest::Client,
        token: Option<String>,
        listeners: ufaas::Listeners,
    ) -> Server {
        let addr = listeners.http.local_addr().expect("addr");
        let gateway = listeners
            .gateway
            .as_ref()
            .map(|l| l.local_addr().expect("addr"));
        let grpc = listeners
            .grpc
            .as_ref()
            .map(|l| l.local_addr().expect("addr"));
        let coap = listeners
            .coap
            .as_ref()
            .map(|l| l.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let db = cfg.db.clone();
        let handle = tokio::spawn(ufaas::serve_all(cfg, listeners, async move {
            let _ = rx.await;
        }));
        let base = format!("http://{addr}");
        let client = Client::new(&base, token).expect("client");
        let mut server = Server {
            base,
            db,
            http,
            client,
            shutdown: Some(tx),
            handle: Some(handle),
            instance: String::new(),
            _dir: dir,
            gateway,
            grpc,
            coap,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.client.health().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.instance = instance_of(&server.db).await;
        server
    }

    /// Stops the server gracefully (its containers are removed) and keeps the temp dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let r = tokio::time::timeout(Duration::from_secs(60), h).await;
            assert!(matches!(r, Ok(Ok(Ok(())))), "server stopped badly: {r:?}");
        }
        let leaked = containers_of(&self.db).await;
        assert!(
            leaked.is_empty(),
            "containers left after a normal stop: {leaked:?}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self._dir, dir)
    }

    /// The typed client, talking to this server with its token.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            location,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Self::reply(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn merge(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.http
                .put(self.url(path))
                .header("content-type", "application/merge-patch+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(self.url(path))).await
    }

    /// Submits a spec and returns the new task's id, failing the test on a refusal.
    pub async fn submit(&self, spec: &Value) -> String {
        match self.client.submit(spec).await {
            Ok(t) => t.id.to_string(),
            Err(e) => panic!("submit answered {e}"),
        }
    }

    /// Submits with `?wait=` long enough for any test task and returns the ended record.
    pub async fn run_task(&self, spec: &Value) -> Task {
        match self
            .client
            .submit_and_wait(spec, Duration::from_secs(120))
            .await
        {
            Ok(t) if t.state.is_terminal() => t,
            Ok(t) => panic!("the task did not end within the wait: {}", json_of(&t)),
            Err(e) => panic!("run answered {e}"),
        }
    }

    /// [`Server::run_task`], as JSON.
    pub async fn run(&self, spec: &Value) -> Value {
        json_of(&self.run_task(spec).await)
    }

    /// Polls `GET /fn/{id}` until `pred` holds, failing after `secs` seconds.
    pub async fn wait_for(&self, id: TaskId, secs: u64, pred: impl Fn(&Task) -> bool) -> Task {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let last = match self.client.get(id).await {
                Ok(t) if pred(&t) => return t,
                Ok(t) => json_of(&t).to_string(),
                // Not there (yet, or any more): keep asking until the deadline.
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "task {id} never got there; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`Server::wait_for`] with the record as JSON.
    pub async fn wait_until(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        json_of(
            &self
                .wait_for(task_id(id), secs, |t| pred(&json_of(t)))
                .await,
        )
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        json_of(
            &self
                .wait_for(task_id(id), 120, |t| t.state.as_str() == state)
                .await,
        )
    }

    pub async fn wait_ended(&self, id: &str) -> Value {
        json_of(
            &self
                .wait_for(task_id(id), 120, |t| t.state.is_terminal())
                .await,
        )
    }
}

/// A record as the JSON the server sent (the client's record round-trips it).
/// A client that sends `Authorization: Bearer {token}`.
fn authed_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A listener on 127.0.0.1, port 0.
async fn bind_local() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

pub fn json_of(t: &Task) -> Value {
    serde_json::to_value(t).expect("a record is JSON")
}

/// `id` as a task id, failing the test when it is not one.
#[track_caller]
pub fn task_id(id: &str) -> TaskId {
    id.parse()
        .unwrap_or_else(|_| panic!("`{id}` is not a task id"))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A test that panicked never reached `stop`, and its runtime goes down with it: the
        // server's containers are removed here, so a failing test leaves the engine as it
        // found it too. (A test that drops a server on purpose keeps them: a restart test
        // needs them.)
        if std::thread::panicking() && !self.instance.is_empty() {
            let listed = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=ufaas.instance={}", self.instance))
                .output();
            if let Ok(out) = listed {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
    }
}

/// A busybox task running `sh -c script`.
pub fn sh(script: &str) -> Value {
    json!({"task_name": "t", "image": BUSYBOX, "cmd_list": ["sh", "-c", script]})
}

/// Whether a container exists (running or not), asked of the Docker CLI directly.
pub fn container_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "--type", "container", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Waits (up to 20 s) until Docker no longer knows container `id`: a task's own container is
/// removed in the background once the task has ended. False if it is still there.
pub async fn wait_container_gone(id: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if !container_exists(id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !container_exists(id)
}

/// Containers (running or not) labelled with the instance id of the database at `db`.
/// The instance id of the database at `db` (the label its server's containers carry).
pub async fn instance_of(db: &std::path::Path) -> String {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let instance: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
        .fetch_one(&pool)
        .await
        .expect("instance id");
    pool.close().await;
    instance
}

pub async fn containers_of(db: &std::path::Path) -> Vec<String> {
    let instance = instance_of(db).await;
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=ufaas.instance={instance}"))
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Server {
    /// Opens `GET /fn/ws?{query}`.
    pub async fn ws(&self, query: &str) -> Ws {
        let url = format!("{}/fn/ws?{query}", self.base.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("ws connect");
        ws
    }
}

/// The next JSON text frame, or `None` when the socket closes; fails after `secs`.
pub async fn next_json(ws: &mut Ws, secs: u64) -> Option<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no WebSocket frame before the deadline");
        match msg {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(&t).expect("JSON frame"))
            }
            Some(Ok(Message::Close(_))) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Sends one JSON text frame.
pub async fn send_json(ws: &mut Ws, v: &Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .await
        .expect("ws send");
}

/// Seqs and states of every stored event of `task`, in order.
pub async fn stored_events(db: &std::path::Path, task: Option<&str>) -> Vec<(i64, String, String)> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, task_id, state FROM events ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("events");
    pool.close().await;
    rows.into_iter()
        .filter(|r| task.is_none_or(|t| r.1 == t))
        .collect()
}

/// Asserts a task record ended in `state` with an `error` that mentions `says`.
#[track_caller]
pub fn assert_ended(t: &Value, state: &str, says: &str) {
    assert_eq!(t["state"], state, "{t}");
    assert!(
        t["error"].as_str().is_some_and(|e| e.contains(says)),
        "error should mention {says:?}: {t}"
    );
}

/// A raw answer: status, headers, body text.
pub struct Raw {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        let body = self.json();
        assert_eq!(self.status, status, "status of {}", self.text);
        assert_eq!(body["code"], code, "code of {}", self.text);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message of {}",
            self.text
        );
        if let Some(f) = field {
            assert_eq!(body["field"], f, "field of {}", self.text);
        }
    }
}

/// Sends `req` and keeps its answer as it came.
pub async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let resp = req.send().await.expect("request");
    Raw {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap_or_default(),
    }
}
