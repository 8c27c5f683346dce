//! Bearer tokens (`--token-file`, `UFAAS_TOKEN`): every route and the WebSocket upgrade
//! answer 401 without a valid token; `serve` refuses an exposed address without one; the CLI
//! sends `--token`.

mod common;

use std::time::Duration;

use common::{sh, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "test-token-0123456789abcdef";
const OTHER: &str = "second-token-zyxwvutsrq";
const NOBODY: &str = "00000000-0000-0000-0000-000000000000";

/// A server whose tasks fail at once (no Docker engine there), for tests that only need the
/// HTTP layer.
async fn dockerless_authed() -> Server {
    Server::start_authed(TOKEN, |c| {
        c.docker_host = Some("unix:///nonexistent/docker.sock".into());
    })
    .await
}

/// The `Authorization` values that must be refused, and whether the answer should call the
/// header malformed.
fn bad_headers() -> Vec<(Option<HeaderValue>, bool)> {
    let v = |b: &[u8]| Some(HeaderValue::from_bytes(b).expect("header value"));
    vec![
        (None, false),
        (v(b"Bearer wrong-token-0123456789abc"), false),
        // Same length as the right one, one character off.
        (v(b"Bearer test-token-0123456789abcdeF"), false),
        // A prefix of the right one (another length).
        (v(b"Bearer test-token-0123"), false),
        (v(b"Bearer"), true),
        (v(b"Bearer  "), true),
        (v(b"Basic dGVzdDp0ZXN0"), true),
        (v(TOKEN.as_bytes()), true),
        (v(b"Bearer t\xe9st-token"), true),
    ]
}

/// Sends `method path` with `auth` and returns (status, WWW-Authenticate, body).
async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    auth: Option<&HeaderValue>,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().request(method, server.url(path));
    if let Some(a) = auth {
        req = req.header(reqwest::header::AUTHORIZATION, a.clone());
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn every_route_answers_401_without_a_valid_token() {
    let server = dockerless_authed().await;
    let get = reqwest::Method::GET;
    let spec = sh("echo hi");
    let routes: Vec<(reqwest::Method, String, Option<&Value>)> = vec![
        (get.clone(), "/fn".into(), None),
        (reqwest::Method::POST, "/fn".into(), Some(&spec)),
        (get.clone(), format!("/fn/{NOBODY}"), None),
        (reqwest::Method::POST, format!("/fn/{NOBODY}"), Some(&spec)),
        (reqwest::Method::PUT, format!("/fn/{NOBODY}"), Some(&spec)),
        (reqwest::Method::DELETE, format!("/fn/{NOBODY}"), None),
        (get.clone(), "/fn/ws".into(), None),
        (get.clone(), "/healthz".into(), None),
        (get.clone(), "/readyz".into(), None),
        // 401 wins over the 404 and 405 a valid token would get.
        (get.clone(), "/no/such/route".into(), None),
        (reqwest::Method::PATCH, "/fn".into(), None),
    ];
    for (method, path, body) in &routes {
        for (auth, is_malformed) in bad_headers() {
            let (status, challenge, body) =
                call(&server, method.clone(), path, auth.as_ref(), *body).await;
            let what = format!("{method} {path} with {auth:?}: {body}");
            assert_eq!(status, 401, "{what}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
            assert_eq!(body["code"], "unauthorized", "{what}");
            let message = body["message"].as_str().unwrap_or_default();
            assert_eq!(message.contains("malformed"), is_malformed, "{what}");
            if auth.is_none() {
                assert!(
                    message.contains("send Authorization: Bearer <token>"),
                    "{what}"
                );
            }
        }
    }
    // Nothing refused was created.
    let r = server.get("/fn").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tasks"], json!([]));
    // The right token still reaches the 404 and 405 of routes that do not exist.
    server
        .get("/no/such/route")
        .await
        .assert_error(404, "not_found", None);
    let r = server.send(server.http.patch(server.url("/fn"))).await;
    r.assert_error(405, "method_not_allowed", None);
    server.stop().await;
}

#[tokio::test]
async fn both_tokens_of_a_token_file_are_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!("# ops team\n\n  {TOKEN}  \n# {NOBODY}\n{OTHER}\n"),
    )
    .expect("write tokens");
    let server = Server::start_authed(TOKEN, |c| {
        c.token = None;
        c.token_file = Some(file.clone());
    })
    .await;
    let spec = sh("echo authed");
    for token in [TOKEN, OTHER] {
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        let (status, _, body) = call(&server, reqwest::Method::GET, "/fn", Some(&auth), None).await;
        assert_eq!(status, 200, "{body}");
        let (status, _, body) =
            call(&server, reqwest::Method::GET, "/healthz", Some(&auth), None).await;
        assert_eq!((status, &body["status"]), (200, &json!("alive")));
        let (status, _, body) = call(
            &server,
            reqwest::Method::GET,
            &format!("/fn/{NOBODY}"),
            Some(&auth),
            None,
        )
        .await;
        assert_eq!((status, &body["code"]), (404, &json!("not_found")));
        // A spec that fails validation: the request got past the token check.
        let (status, _, body) = call(
            &server,
            reqwest::Method::POST,
            "/fn",
            Some(&auth),
            Some(&json!({"task_name": "x"})),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        // The scheme is case-insensitive.
        let lower = HeaderValue::from_str(&format!("bearer {token}")).expect("header");
        let (status, _, body) = call(
            &server,
            reqwest::Method::POST,
            "/fn",
            Some(&lower),
            Some(&spec),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().expect("id").to_string();
        let done = server.wait_ended(&id).await;
        assert_eq!(done["state"], "FINISHED", "{done}");
        assert_eq!(done["stdout"], "authed\n");
    }
    server.stop().await;
}

async fn ws_connect(
    server: &Server,
    auth: Option<HeaderValue>,
) -> Result<common::Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/fn/ws", server.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().expect("request");
    if let Some(a) = auth {
        req.headers_mut().insert("authorization", a);
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn the_websocket_upgrade_needs_the_token() {
    let server = dockerless_authed().await;
    // tungstenite will not send a non-ASCII header (the plain GET of /fn/ws in
    // `every_route_answers_401_without_a_valid_token` covers that one).
    let sendable = bad_headers()
        .into_iter()
        .filter(|(a, _)| a.as_ref().is_none_or(|v| v.as_bytes().is_ascii()));
    for (auth, is_malformed) in sendable {
        let what = format!("{auth:?}");
        match ws_connect(&server, auth).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{what}");
                assert_eq!(
                    resp.headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok()),
                    Some("Bearer"),
                    "{what}"
                );
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .expect("JSON body");
                assert_eq!(body["code"], "unauthorized", "{what}");
                assert_eq!(
                    body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("malformed"),
                    is_malformed,
                    "{what}: {body}"
                );
            }
            Err(e) => panic!("{what}: expected HTTP 401, got {e}"),
            Ok(_) => panic!("{what}: the upgrade succeeded without a valid token"),
        }
    }
    let auth = HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header");
    let mut ws = ws_connect(&server, Some(auth))
        .await
        .expect("upgrade with the token");
    ws.send(Message::text(json!({"op": "ping"}).to_string()))
        .await
        .expect("send");
    let reply = common::next_json(&mut ws, 10).await.expect("a reply");
    assert_eq!(reply["event"], "pong");
    drop(ws);
    server.stop().await;
}

/// Runs `serve` on `listener` with `cfg`; returns its result if it ends within 10 s, else
/// `None` (it is serving) along with a way to stop it.
async fn try_serve(
    cfg: ufaas::config::ServeConfig,
    listener: tokio::net::TcpListener,
) -> (
    Option<anyhow::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut handle = tokio::spawn(ufaas::serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    match tokio::time::timeout(Duration::from_secs(10), &mut handle).await {
        Ok(r) => (Some(r.expect("serve panicked")), tx, handle),
        Err(_) => (None, tx, handle),
    }
}

fn plain_config(dir: &tempfile::TempDir) -> ufaas::config::ServeConfig {
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    cfg.docker_host = Some("unix:///nonexistent/docker.sock".into());
    cfg.token = None;
    cfg.token_file = None;
    cfg.insecure_no_auth = false;
    cfg
}

async fn healthz(port: u16, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("healthz").status().as_u16()
}

#[tokio::test]
async fn serve_refuses_an_exposed_address_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");

    // No token, 0.0.0.0: refused before anything is opened.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let (result, _tx, _h) = try_serve(plain_config(&dir), listener).await;
    let err = result
        .expect("serve should have refused at once")
        .expect_err("serve must refuse 0.0.0.0 without a token");
    let msg = format!("{err:#}");
    assert!(msg.contains("refusing to listen on 0.0.0.0"), "{msg}");
    assert!(msg.contains("--insecure-no-auth"), "{msg}");
    assert!(msg.contains("--token-file"), "{msg}");
    assert!(
        !cfg_db_exists(&dir),
        "the database was opened before refusing"
    );

    // --insecure-no-auth: it serves, openly.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut cfg = plain_config(&dir);
    cfg.insecure_no_auth = true;
    let (result, tx, handle) = try_serve(cfg, listener).await;
    assert!(result.is_none(), "serve ended: {result:?}");
    assert_eq!(healthz(port, None).await, 200);
    let _ = tx.send(());
    handle.await.expect("join").expect("serve");

    // A token: it serves, and wants the token.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut cfg = plain_config(&dir);
    cfg.token = Some(TOKEN.into());
    let (result, tx, handle) = try_serve(cfg, listener).await;
    assert!(result.is_none(), "serve ended: {result:?}");
    assert_eq!(healthz(port, None).await, 401);
    assert_eq!(healthz(port, Some(TOKEN)).await, 200);
    let _ = tx.send(());
    handle.await.expect("join").expect("serve");
}

fn cfg_db_exists(dir: &tempfile::TempDir) -> bool {
    dir.path().join("ufaas.db").exists()
}

#[tokio::test]
async fn a_bad_token_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no tokens yet\n\n   \n").expect("write");
    let spaced = dir.path().join("spaced");
    std::fs::write(&spaced, "a token with spaces\n").expect("write");
    for (file, expect) in [
        (dir.path().join("missing"), "cannot read the token file"),
        (empty, "holds no token"),
        (spaced, "line 1"),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut cfg = plain_config(&dir);
        cfg.token_file = Some(file.clone());
        let (result, _tx, _h) = try_serve(cfg, listener).await;
        let err = result
            .expect("serve should have refused at once")
            .expect_err("a bad token file must stop the start");
        let msg = format!("{err:#}");
        assert!(msg.contains(expect), "{}: {msg}", file.display());
        assert!(!msg.contains("spaces\n"), "the token leaked: {msg}");
    }
    assert!(!cfg_db_exists(&dir));
}

#[tokio::test]
async fn ufaas_serve_exits_non_zero_on_an_exposed_address_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"))
        .args(["serve", "--listen", "0.0.0.0:0", "--db"])
        .arg(dir.path().join("ufaas.db"))
        .args([
            "--gateway-listen",
            "off",
            "--grpc-listen",
            "off",
            "--coap-listen",
            "off",
        ])
        .env_remove("UFAAS_TOKEN")
        .env_remove("UFAAS_TOKEN_FILE")
        .env_remove("UFAAS_INSECURE_NO_AUTH")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("ufaas serve should exit at once")
        .expect("run ufaas");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

fn ufaas() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"));
    c.env_remove("UFAAS_TOKEN").kill_on_drop(true);
    c
}

#[tokio::test]
async fn ufaas_run_and_watch_send_the_token() {
    let server = Server::start_authed(TOKEN, |_| {}).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, sh("echo out-line; exit 3").to_string()).expect("write spec");

    // Without a token: refused, with a hint.
    let out = ufaas()
        .args(["run", "--server", &server.base])
        .arg(&spec)
        .output()
        .await
        .expect("run ufaas");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unauthorized"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    let out = ufaas()
        .args(["run", "--follow", "--server", &server.base])
        .arg(&spec)
        .output()
        .await
        .expect("run ufaas");
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Bearer") && stderr.contains("--token"),
        "{stderr}"
    );

    // With --token over HTTP, and with UFAAS_TOKEN over the WebSocket.
    let out = ufaas()
        .args(["run", "--server", &server.base, "--token", TOKEN])
        .arg(&spec)
        .output()
        .await
        .expect("run ufaas");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("out-line"), "{stdout}");
    let out = ufaas()
        .args(["run", "--follow", "--server", &server.base])
        .arg(&spec)
        .env("UFAAS_TOKEN", TOKEN)
        .output()
        .await
        .expect("run ufaas");
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-line\n");

    // watch: refused without the token, replays with it.
    let out = ufaas()
        .args(["watch", "--since", "0", "--server", &server.base])
        .output()
        .await
        .expect("watch");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    let mut child = ufaas()
        .args(["watch", "--json", "--since", "0", "--server", &server.base])
        .args(["--token", TOKEN])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line");
    let ev: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(ev["event"], "state", "{line}");
    child.kill().await.expect("kill watch");
    server.stop().await;
}

#[tokio::test]
async fn ws_sessions_still_work_behind_the_token() {
    // A full session: subscribe, submit over the socket, follow it to the end.
    let server = dockerless_authed().await;
    let auth = HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header");
    let mut ws = ws_connect(&server, Some(auth)).await.expect("upgrade");
    common::send_json(
        &mut ws,
        &json!({"op": "submit", "ref": "a", "spec": sh("true")}),
    )
    .await;
    let mut submitted = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg {
            let ev: Value = serde_json::from_str(&t).expect("JSON");
            if ev["event"] == "submitted" {
                submitted = ev["task_id"].as_str().map(str::to_string);
                break;
            }
        }
    }
    let id = submitted.expect("submitted");
    let done = server.wait_ended(&id).await;
    assert_eq!(done["state"], "FAILED", "no Docker there: {done}");
    drop(ws);
    server.stop().await;
}
