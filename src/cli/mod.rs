//! Client subcommands: `ufaas watch` prints events as they come, `ufaas run` submits a spec
//! (and with `--follow` streams its events and output until it ends).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// The server's base URL.
    #[arg(long, env = "UFAAS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token, sent as `Authorization: Bearer <token>` (prefer the environment variable:
    /// a flag shows in the process list).
    #[arg(long, env = "UFAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Hint printed when the server answers 401.
const TOKEN_HINT: &str = "the server wants a valid API token: pass --token or set UFAAS_TOKEN";

impl ServerArg {
    /// The `Authorization` header value, when a token is given.
    fn authorization(&self) -> anyhow::Result<Option<HeaderValue>> {
        let token = self.token.as_deref().map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("--token may only hold visible ASCII characters"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Opens the WebSocket at `url`, with the token on the handshake.
    async fn connect(
        &self,
        url: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("bad WebSocket URL {url}"))?;
        if let Some(value) = self.authorization()? {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp))
                if resp.status() == StatusCode::UNAUTHORIZED =>
            {
                let message = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "401 Unauthorized".into());
                bail!("connecting to {url}: {message}; {TOKEN_HINT}")
            }
            Err(e) => Err(e).with_context(|| format!("connecting to {url}")),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Replay stored events after this seq before going live.
    #[arg(long)]
    pub since: Option<i64>,
    /// Only these tasks (repeatable).
    #[arg(long = "task")]
    pub tasks: Vec<String>,
    /// One JSON object per line, as the server sends them.
    #[arg(long)]
    pub json: bool,
    /// Also print running tasks' output.
    #[arg(long)]
    pub output: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The task spec (a JSON file; `-` for standard input).
    pub spec: PathBuf,
    /// Stream the task's events and output until it ends.
    #[arg(long)]
    pub follow: bool,
    /// With --follow, print events as JSON lines on stderr.
    #[arg(long)]
    pub json: bool,
}

fn ws_url(server: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
    let mut url =
        reqwest::Url::parse(server).with_context(|| format!("bad server URL `{server}`"))?;
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => bail!("server URL must be http or https, not {other}"),
    };
    url.set_scheme(scheme)
        .map_err(|_| anyhow!("cannot make a WebSocket URL of {server}"))?;
    url.set_path("/fn/ws");
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url.to_string())
}

/// One readable line for an event.
pub fn describe(ev: &Value) -> String {
    match ev["event"].as_str() {
        Some("state") => {
            let t = &ev["task"];
            let mut line = format!(
                "{} #{} {} {:<9} {}",
                ev["at"].as_str().unwrap_or("?"),
                ev["seq"],
                ev["task_id"].as_str().unwrap_or("?"),
                ev["state"].as_str().unwrap_or("?"),
                t["task_name"].as_str().unwrap_or(""),
            );
            if let Some(code) = t["exit_code"].as_i64() {
                line.push_str(&format!(" exit={code}"));
            }
            if let Some(err) = t["error"].as_str() {
                line.push_str(&format!(" error={err:?}"));
            }
            line
        }
        Some("output") => format!(
            "{} {}| {}",
            ev["task_id"].as_str().unwrap_or("?"),
            ev["stream"].as_str().unwrap_or("?"),
            ev["data"].as_str().unwrap_or("").trim_end_matches('\n')
        ),
        _ => ev.to_string(),
    }
}

/// `ufaas watch`: prints events until the server closes the connection. A `lagged` close is
/// resumed at once from the last seq seen, so nothing is missed.
pub async fn watch(args: WatchArgs) -> anyhow::Result<i32> {
    for t in &args.tasks {
        uuid::Uuid::parse_str(t).with_context(|| format!("--task {t} is not a task id"))?;
    }
    let mut since = args.since;
    loop {
        let mut query: Vec<(&str, String)> =
            args.tasks.iter().map(|t| ("task", t.clone())).collect();
        if let Some(s) = since {
            query.push(("since", s.to_string()));
        }
        if args.output {
            query.push(("output", "true".into()));
        }
        let url = ws_url(&args.server.server, &query)?;
        let mut socket = args.server.connect(&url).await?;
        let mut resume = false;
        while let Some(msg) = socket.next().await {
            let text = match msg.context("reading from the server")? {
                Message::Text(t) => t.to_string(),
                Message::Close(_) => break,
                _ => continue,
            };
            let ev: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
            match ev["event"].as_str() {
                Some("lagged") => {
                    eprintln!(
                        "ufaas: fell behind; resuming from seq {}",
                        since.unwrap_or(0)
                    );
                    resume = true;
                    break;
                }
                Some("resync_required") => {
                    eprintln!("ufaas: seq {} is older than the stored events; start again without --since", since.unwrap_or(0));
                    return Ok(2);
                }
                _ => {}
            }
            if let Some(seq) = ev["seq"].as_i64() {
                since = Some(seq);
            }
            let line = if args.json { text } else { describe(&ev) };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return Ok(0);
            }
        }
        if !resume {
            eprintln!("ufaas: the server closed the connection");
            return Ok(1);
        }
        since = since.or(Some(0));
    }
}

/// The exit code `ufaas run` ends with for a task record or summary.
pub fn exit_code_for(task: &Value) -> i32 {
    match task["state"].as_str() {
        Some("FINISHED") => 0,
        Some("EXPIRED") => 124,
        Some("CANCELLED") => 130,
        _ => task["exit_code"]
            .as_i64()
            .map(|c| c.clamp(1, 255) as i32)
            .unwrap_or(1),
    }
}

fn read_spec(path: &PathBuf) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the spec from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// `ufaas run SPEC.json [--follow]`: exits with the task's exit code (124 expired, 130
/// cancelled, 1 failed without one).
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let spec = read_spec(&args.spec)?;
    if !args.follow {
        let url = format!("{}/fn?wait=3600", args.server.server.trim_end_matches('/'));
        let mut request = reqwest::Client::new().post(&url).json(&spec);
        if let Some(value) = args.server.authorization()? {
            request = request.header(header::AUTHORIZATION, value);
        }
        let resp = request.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await.context("reading the server's answer")?;
        println!("{}", serde_json::to_string_pretty(&body)?);
        if status.as_u16() == 401 {
            eprintln!("ufaas: {TOKEN_HINT}");
        }
        if !status.is_success() {
            return Ok(2);
        }
        return Ok(exit_code_for(&body));
    }
    // Start filtered to no real task (the nil id): the submitted task joins the filter, so
    // only its own events and output come, however busy the server is.
    let nil = uuid::Uuid::nil().to_string();
    let url = ws_url(
        &args.server.server,
        &[("task", nil), ("output", "true".into())],
    )?;
    let mut socket = args.server.connect(&url).await?;
    socket
        .send(Message::text(
            json!({"op": "submit", "ref": "run", "spec": spec}).to_string(),
        ))
        .await?;
    let mut task_id: Option<String> = None;
    while let Some(msg) = socket.next().await {
        let text = match msg.context("reading from the server")? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let ev: Value = serde_json::from_str(&text)?;
        match ev["event"].as_str() {
            Some("submitted") => {
                let id = ev["task_id"].as_str().unwrap_or_default().to_string();
                eprintln!("ufaas: submitted {id}");
                task_id = Some(id);
            }
            Some("error") => {
                eprintln!(
                    "ufaas: refused: {} ({}{})",
                    ev["message"].as_str().unwrap_or("?"),
                    ev["code"].as_str().unwrap_or("?"),
                    ev["field"]
                        .as_str()
                        .map(|f| format!(", field {f}"))
                        .unwrap_or_default()
                );
                return Ok(2);
            }
            Some("output") if ev["task_id"].as_str() == task_id.as_deref() => {
                let data = ev["data"].as_str().unwrap_or_default();
                if ev["stream"] == "stderr" {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(data.as_bytes()).and_then(|_| e.flush());
                } else {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(data.as_bytes()).and_then(|_| o.flush());
                }
            }
            Some("state") if ev["task_id"].as_str() == task_id.as_deref() => {
                if args.json {
                    eprintln!("{text}");
                } else {
                    eprintln!("ufaas: {}", describe(&ev));
                }
                let state = ev["state"].as_str().unwrap_or_default();
                if matches!(state, "FINISHED" | "FAILED" | "CANCELLED" | "EXPIRED") {
                    let _ = socket.close(None).await;
                    return Ok(exit_code_for(&ev["task"]));
                }
            }
            Some("lagged") => bail!(
                "the connection fell behind; see the task with GET /fn/{}",
                task_id.unwrap_or_default()
            ),
            _ => {}
        }
    }
    bail!("the server closed the connection before the task ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_state() {
        assert_eq!(
            exit_code_for(&json!({"state": "FINISHED", "exit_code": 0})),
            0
        );
        assert_eq!(
            exit_code_for(&json!({"state": "FAILED", "exit_code": 3})),
            3
        );
        assert_eq!(
            exit_code_for(&json!({"state": "FAILED", "exit_code": null})),
            1
        );
        assert_eq!(exit_code_for(&json!({"state": "EXPIRED"})), 124);
        assert_eq!(exit_code_for(&json!({"state": "CANCELLED"})), 130);
    }

    #[test]
    fn ws_urls() {
        let u = ws_url(
            "http://127.0.0.1:8080/",
            &[("since", "3".into()), ("task", "a".into())],
        )
        .ok();
        assert_eq!(
            u.as_deref(),
            Some("ws://127.0.0.1:8080/fn/ws?since=3&task=a")
        );
        assert!(ws_url("ftp://x", &[]).is_err());
    }
}
