//! `ufaas ls`, `ufaas get`, `ufaas cancel` and `ufaas logs`: tasks (API.md sections 2 to 4)
//! from the command line, through [`crate::client`]. A function's invocation is a task too,
//! so `ufaas get ID` shows the result of `ufaas fn invoke --async`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;

use super::{open_events, print_chunk, print_json, ServerArg};
use crate::client::{Event, EventStream, OutputStream, Task, TaskFilter};
use crate::model::{TaskId, TaskState};

#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Only tasks in these states (repeatable, or comma-separated).
    #[arg(long = "state", value_delimiter = ',')]
    pub states: Vec<TaskState>,
    /// Only tasks of this `task_name`.
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many (1 to 1000; the server's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Only tasks submitted before this one (the next page).
    #[arg(long)]
    pub before: Option<TaskId>,
    /// Print `{"tasks": [...], "next": …}` as the server answered it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub id: TaskId,
    /// Print the record as the server answered it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub id: TaskId,
    /// Keep printing what it prints until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// A task as a line of `ufaas ls`.
fn task_row(t: &Task) -> [String; 5] {
    [
        t.id.to_string(),
        t.state.as_str().to_string(),
        t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        t.created_at.clone(),
        t.task_name.clone(),
    ]
}

/// `ufaas get` in words: `key  value` lines, then what it printed.
pub fn describe_task(t: &Task) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push_str(&format!("{k:<10}{v}\n"));
        }
    };
    row("id", Some(t.id.to_string()));
    row("name", Some(t.task_name.clone()));
    let mut state = t.state.as_str().to_string();
    if let Some(c) = t.exit_code {
        state.push_str(&format!(" (exit {c})"));
    }
    row("state", Some(state));
    row("error", t.error.clone());
    row("image", Some(t.image.clone()));
    row("created", Some(t.created_at.clone()));
    row("started", t.started_at.clone());
    row("finished", t.finished_at.clone());
    row(
        "container",
        t.container
            .as_ref()
            .map(|c| format!("{} ({})", c.id, c.state.as_str())),
    );
    row("reused", t.reused_container_of.map(|id| id.to_string()));
    for (name, text) in [("stdout", &t.stdout), ("stderr", &t.stderr)] {
        if !text.is_empty() {
            out.push_str(&format!("--- {name}\n{text}"));
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    if t.output_truncated {
        out.push_str("--- (output truncated)\n");
    }
    out
}

/// `ufaas ls`.
pub async fn list(a: LsArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    let page = client
        .list(&TaskFilter {
            states: a.states,
            name: a.name,
            limit: a.limit,
            before: a.before,
        })
        .await?;
    if a.json {
        print_json(&serde_json::to_value(&page)?)?;
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = page.tasks.iter().map(task_row).collect();
    print!(
        "{}",
        super::functions::table(["ID", "STATE", "EXIT", "CREATED", "NAME"], &rows)
    );
    if let Some(next) = page.next {
        eprintln!("ufaas: more with --before {next}");
    }
    Ok(0)
}

/// `ufaas get ID`.
pub async fn get(a: TaskArgs) -> anyhow::Result<i32> {
    let task = a.server.client()?.get(a.id).await?;
    if a.json {
        print_json(&serde_json::to_value(&task)?)?;
    } else {
        print!("{}", describe_task(&task));
    }
    Ok(0)
}

/// `ufaas cancel ID`: the record as it ended.
pub async fn cancel(a: TaskArgs) -> anyhow::Result<i32> {
    let task = a.server.client()?.cancel(a.id).await?;
    if a.json {
        print_json(&serde_json::to_value(&task)?)?;
    } else {
        println!("{} {}", task.id, task.state.as_str());
    }
    Ok(0)
}

/// How many of the first `chunks` of a stream the stored output `stored` already ends with:
/// the largest `n` such that the first `n` chunks, joined, are a suffix of it. The server
/// stores a running task's output in whole chunks, the same ones it streams, so what the
/// record and the stream both hold is a run of whole chunks at the record's end.
pub fn overlap(stored: &str, chunks: &[String]) -> usize {
    let mut joined = String::new();
    let mut best = 0;
    for (i, c) in chunks.iter().enumerate() {
        joined.push_str(c);
        if joined.len() > stored.len() {
            break;
        }
        if stored.ends_with(&joined) {
            best = i + 1;
        }
    }
    best
}

/// Bytes printed of each stream.
#[derive(Debug, Default)]
struct Printed {
    stdout: usize,
    stderr: usize,
}

impl Printed {
    fn print(&mut self, stream: OutputStream, data: &str) {
        print_chunk(stream, data);
        match stream {
            OutputStream::Stdout => self.stdout += data.len(),
            OutputStream::Stderr => self.stderr += data.len(),
        }
    }
}

/// How long `ufaas logs -f` gives the server to store what the task printed before it
/// subscribed: a little more than its storing interval.
const STORED_WITHIN: Duration = Duration::from_millis(300);
/// How long frames already on their way are read before the live stream is trusted to be new.
const IN_FLIGHT: Duration = Duration::from_millis(50);

/// `ufaas logs ID [-f]`: what the task printed (stdout to stdout, stderr to stderr); with
/// `-f`, then what it prints as the server streams it (the WebSocket output of
/// `ufaas run --follow`) until it ends.
pub async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    let task = client.get(a.id).await?;
    if !a.follow || task.state.is_terminal() {
        print_chunk(OutputStream::Stdout, &task.stdout);
        print_chunk(OutputStream::Stderr, &task.stderr);
        return Ok(0);
    }
    // Subscribe first, then read the record once everything printed before the subscription
    // has been stored: nothing falls between the two. What both hold is dropped from the
    // stream's first chunks.
    let mut events = open_events(&client, None, &[a.id], true).await?;
    tokio::time::sleep(STORED_WITHIN).await;
    let task = client.get(a.id).await?;
    let mut printed = Printed::default();
    printed.print(OutputStream::Stdout, &task.stdout);
    printed.print(OutputStream::Stderr, &task.stderr);
    if task.state.is_terminal() {
        let _ = events.close().await;
        return Ok(0);
    }
    let (mut early_out, mut early_err) = (Vec::new(), Vec::new());
    let mut ended = false;
    while let Ok(Some(frame)) = tokio::time::timeout(IN_FLIGHT, events.next()).await {
        let frame = frame.context("reading from the server")?;
        match frame.event {
            Event::Output {
                task_id,
                stream,
                data,
            } if task_id == a.id => match stream {
                OutputStream::Stdout => early_out.push(data),
                OutputStream::Stderr => early_err.push(data),
            },
            Event::State { task_id, state, .. } if task_id == a.id && state.is_terminal() => {
                ended = true;
                break;
            }
            Event::Lagged => bail!("the connection fell behind; `ufaas get {}`", a.id),
            _ => {}
        }
    }
    for (stream, stored, early) in [
        (OutputStream::Stdout, &task.stdout, &early_out),
        (OutputStream::Stderr, &task.stderr, &early_err),
    ] {
        for c in &early[overlap(stored, early)..] {
            printed.print(stream, c);
        }
    }
    if !ended {
        follow(&mut events, a.id, &mut printed).await?;
    }
    let _ = events.close().await;
    // The record has it all: say so if the stream gave something else.
    let last = client.get(a.id).await?;
    if !last.output_truncated
        && (last.stdout.len() != printed.stdout || last.stderr.len() != printed.stderr)
    {
        eprintln!(
            "ufaas: the live output differs from what the task's record holds; `ufaas get {}` shows the record",
            a.id
        );
    }
    Ok(0)
}

/// Prints `id`'s output chunks until it ends.
async fn follow(events: &mut EventStream, id: TaskId, printed: &mut Printed) -> anyhow::Result<()> {
    while let Some(frame) = events.next().await {
        let frame = frame.context("reading from the server")?;
        match frame.event {
            Event::Output {
                task_id,
                stream,
                data,
            } if task_id == id => printed.print(stream, &data),
            Event::State { task_id, state, .. } if task_id == id && state.is_terminal() => {
                return Ok(())
            }
            Event::OutputLagged { dropped } => {
                eprintln!(
                    "ufaas: {dropped} output chunks were dropped (the connection fell behind)"
                )
            }
            Event::Lagged => bail!("the connection fell behind; `ufaas get {id}` has the record"),
            _ => {}
        }
    }
    bail!("the server closed the connection before the task ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlap_is_a_run_of_whole_chunks_at_the_end() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(overlap("a\nb\nc\n", &c(&["b\n", "c\n", "d\n"])), 2);
        assert_eq!(overlap("a\nb\nc\n", &c(&["c\n", "d\n"])), 1);
        assert_eq!(overlap("a\nb\n", &c(&["c\n", "d\n"])), 0);
        assert_eq!(overlap("", &c(&["x"])), 0);
        assert_eq!(overlap("abc", &c(&[])), 0);
        assert_eq!(overlap("ab", &c(&["ab", "c"])), 1);
        assert_eq!(overlap("b", &c(&["ab"])), 0, "longer than what is stored");
    }

    #[test]
    fn a_task_is_described_in_lines() {
        let id = TaskId::new();
        let t: Task = serde_json::from_value(serde_json::json!({
            "id": id, "task_name": "job", "state": "FAILED", "image": "i", "priority": 0,
            "created_at": "c", "started_at": "s", "finished_at": null, "exit_code": 3,
            "stdout": "out", "stderr": "", "output_truncated": false, "error": null,
            "container": {"id": "abc", "state": "removed"}, "reused_container_of": null,
            "locality": null, "spec": {}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let d = describe_task(&t);
        assert_eq!(
            d,
            format!(
                "id        {id}\nname      job\nstate     FAILED (exit 3)\nimage     i\n\
                 created   c\nstarted   s\ncontainer abc (removed)\n--- stdout\nout\n"
            )
        );
        assert_eq!(
            task_row(&t),
            [
                id.to_string(),
                "FAILED".into(),
                "3".into(),
                "c".into(),
                "job".into()
            ]
        );
    }
}
