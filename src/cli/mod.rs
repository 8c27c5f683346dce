//! Client subcommands: `ufaas watch` prints events as they come, `ufaas run` submits a spec
//! (and with `--follow` streams its events and output until it ends); [`tasks`] has `ls`,
//! `get`, `cancel` and `logs`, [`functions`] `fn …`, `pipeline` and `secret …`. All talk to
//! the server through [`crate::client`]; what is here decides what to print and the exit code.

pub mod functions;
pub mod tasks;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::client::{Client, ClientError, Event, EventStream, Frame, OutputStream, TOKEN_HINT};
use crate::model::{TaskId, TaskState};

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

impl ServerArg {
    /// A client for the server, with the token.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token.clone()).map_err(|e| match e {
            // Name the flag the user can fix.
            ClientError::InvalidToken => anyhow!("--token may only hold visible ASCII characters"),
            e => e.into(),
        })
    }
}

/// A subcommand's exit code, or 1 after its error on stderr as one line (`ufaas: …`).
pub fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ufaas: {e:#}");
            1
        }
    }
}

/// Prints `value` as indented JSON (keys in the order the server's JSON has them: sorted).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    out.flush()?;
    Ok(())
}

/// Writes a task's output chunk to our stdout or stderr, as it came.
pub fn print_chunk(stream: OutputStream, data: &str) {
    if data.is_empty() {
        return;
    }
    if stream == OutputStream::Stderr {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(data.as_bytes()).and_then(|_| e.flush());
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(data.as_bytes()).and_then(|_| o.flush());
    }
}

/// Opens the event stream, with the URL in the message when it fails.
async fn open_events(
    client: &Client,
    since: Option<i64>,
    tasks: &[TaskId],
    output: bool,
) -> anyhow::Result<EventStream> {
    let url = client.events_url(since, tasks, output)?;
    match client.events(since, tasks, output).await {
        Ok(events) => Ok(events),
        // One line: the server's reason and what to do about it.
        Err(e @ ClientError::Unauthorized { .. }) => bail!("connecting to {url}: {e}"),
        Err(e) => Err(e).with_context(|| format!("connecting to {url}")),
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

/// One readable line for an event: state changes and output chunks in words, any other
/// frame as its JSON.
pub fn describe(frame: &Frame) -> String {
    match &frame.event {
        Event::State {
            seq,
            task_id,
            state,
            at,
            task,
        } => {
            // `as_str`: the width pads it, which TaskState's Display would not.
            let mut line = format!(
                "{at} #{seq} {task_id} {:<9} {}",
                state.as_str(),
                task.task_name
            );
            if let Some(code) = task.exit_code {
                line.push_str(&format!(" exit={code}"));
            }
            if let Some(err) = &task.error {
                line.push_str(&format!(" error={err:?}"));
            }
            line
        }
        Event::Output {
            task_id,
            stream,
            data,
        } => format!(
            "{task_id} {}| {}",
            stream_name(*stream),
            data.trim_end_matches('\n')
        ),
        Event::Other(v) => v.to_string(),
        // Known but not worth words: shown as JSON, as unknown ones are.
        _ => serde_json::from_str::<Value>(&frame.text)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| frame.text.clone()),
    }
}

fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

/// `ufaas watch`: prints events until the server closes the connection. A `lagged` close is
/// resumed at once from the last seq seen, so nothing is missed.
pub async fn watch(args: WatchArgs) -> anyhow::Result<i32> {
    let tasks = args
        .tasks
        .iter()
        .map(|t| {
            t.parse::<TaskId>()
                .with_context(|| format!("--task {t} is not a task id"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = args.server.client()?;
    let mut since = args.since;
    loop {
        let mut events = open_events(&client, since, &tasks, args.output).await?;
        let mut resume = false;
        while let Some(frame) = events.next().await {
            let frame = frame.context("reading from the server")?;
            match frame.event {
                Event::Lagged => {
                    eprintln!(
                        "ufaas: fell behind; resuming from seq {}",
                        since.unwrap_or(0)
                    );
                    resume = true;
                    break;
                }
                Event::ResyncRequired => {
                    eprintln!("ufaas: seq {} is older than the stored events; start again without --since", since.unwrap_or(0));
                    return Ok(2);
                }
                _ => {}
            }
            if let Some(seq) = frame.seq() {
                since = Some(seq);
            }
            let line = if args.json {
                frame.text
            } else {
                describe(&frame)
            };
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

/// The exit code `ufaas run` ends with for a task in `state` with `exit_code`.
pub fn exit_code_for(state: TaskState, exit_code: Option<i64>) -> i32 {
    match state {
        TaskState::Finished => 0,
        TaskState::Expired => 124,
        TaskState::Cancelled => 130,
        _ => exit_code.map(|c| c.clamp(1, 255) as i32).unwrap_or(1),
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

/// How long `ufaas run` without `--follow` has the server hold the answer: the longest it
/// allows.
const RUN_WAIT: Duration = Duration::from_secs(crate::http::MAX_WAIT_SECONDS as u64);

/// `ufaas run SPEC.json [--follow]`: exits with the task's exit code (124 expired, 130
/// cancelled, 1 failed without one, 2 refused).
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let spec = read_spec(&args.spec)?;
    let client = args.server.client()?;
    if !args.follow {
        return match client.submit_and_wait(&spec, RUN_WAIT).await {
            Ok(task) => {
                // Through a Value, so that the keys come out in the order the server's JSON
                // prints in (sorted), not in the struct's.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::to_value(&task)?)?
                );
                Ok(exit_code_for(task.state, task.exit_code))
            }
            Err(e) => {
                // A refusal prints the server's error body; anything else is an error.
                let Some(body) = e.body() else {
                    return Err(e.into());
                };
                println!("{}", serde_json::to_string_pretty(&body)?);
                if matches!(e, ClientError::Unauthorized { .. }) {
                    eprintln!("ufaas: {TOKEN_HINT}");
                }
                Ok(2)
            }
        };
    }
    // Start filtered to no real task (the nil id): the submitted task joins the filter, so
    // only its own events and output come, however busy the server is.
    let nil = TaskId(uuid::Uuid::nil());
    let mut events = open_events(&client, None, &[nil], true).await?;
    events.submit(&spec, Some(json!("run"))).await?;
    let mut task_id: Option<TaskId> = None;
    while let Some(frame) = events.next().await {
        let frame = frame.context("reading from the server")?;
        match &frame.event {
            Event::Submitted { task_id: id, .. } => {
                eprintln!("ufaas: submitted {id}");
                task_id = Some(*id);
            }
            Event::Error {
                code,
                message,
                field,
                ..
            } => {
                eprintln!(
                    "ufaas: refused: {message} ({code}{})",
                    field
                        .as_deref()
                        .map(|f| format!(", field {f}"))
                        .unwrap_or_default()
                );
                return Ok(2);
            }
            Event::Output {
                task_id: id,
                stream,
                data,
            } if Some(*id) == task_id => print_chunk(*stream, data),
            Event::State {
                task_id: id,
                state,
                task,
                ..
            } if Some(*id) == task_id => {
                if args.json {
                    eprintln!("{}", frame.text);
                } else {
                    eprintln!("ufaas: {}", describe(&frame));
                }
                if state.is_terminal() {
                    let _ = events.close().await;
                    return Ok(exit_code_for(task.state, task.exit_code));
                }
            }
            Event::Lagged => bail!(
                "the connection fell behind; see the task with GET /fn/{}",
                task_id.map(|id| id.to_string()).unwrap_or_default()
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
        assert_eq!(exit_code_for(TaskState::Finished, Some(0)), 0);
        assert_eq!(exit_code_for(TaskState::Failed, Some(3)), 3);
        assert_eq!(exit_code_for(TaskState::Failed, Some(300)), 255);
        assert_eq!(exit_code_for(TaskState::Failed, None), 1);
        assert_eq!(exit_code_for(TaskState::Running, None), 1);
        assert_eq!(exit_code_for(TaskState::Expired, None), 124);
        assert_eq!(exit_code_for(TaskState::Cancelled, None), 130);
    }

    #[test]
    fn events_are_described_in_one_line() {
        let id = TaskId::new();
        let frame = |v: Value| Frame::parse(v.to_string());
        let state = frame(json!({
            "seq": 9, "event": "state", "task_id": id, "state": "FAILED", "at": "T",
            "task": {"id": id, "task_name": "job", "state": "FAILED", "image": "i",
                     "priority": 0, "created_at": "a", "started_at": null, "finished_at": null,
                     "exit_code": 3, "error": "boom", "output_truncated": false,
                     "container": null, "reused_container_of": null, "locality": null}
        }));
        assert_eq!(
            describe(&state),
            format!("T #9 {id} FAILED    job exit=3 error=\"boom\"")
        );
        let out =
            frame(json!({"event": "output", "task_id": id, "stream": "stdout", "data": "hi\n"}));
        assert_eq!(describe(&out), format!("{id} stdout| hi"));
        let other = frame(json!({"event": "output_lagged", "dropped": 2}));
        assert_eq!(describe(&other), r#"{"dropped":2,"event":"output_lagged"}"#);
        let unknown = frame(json!({"event": "new", "b": 1, "a": 2}));
        assert_eq!(describe(&unknown), r#"{"a":2,"b":1,"event":"new"}"#);
    }
}
