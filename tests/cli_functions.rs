//! The `ufaas` binary's function and task commands against a live server (real Docker, real
//! runtimes): `fn init` / `deploy` / `invoke` / `ls` / `describe` / `logs` / `rm`,
//! `pipeline`, `secret set` / `rm`, and `ls` / `get` / `cancel` / `logs` of tasks. Each
//! command runs as its own process with `--server`, as a user would run it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use common::*;
use ufaas::model::TaskId;

/// What one run of the binary gave.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    #[track_caller]
    fn json(&self) -> Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    #[track_caller]
    fn failed_saying(&self, says: &str) {
        assert_eq!(
            self.code,
            Some(1),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(says),
            "stderr should say {says:?}: {}",
            self.stderr
        );
    }
}

fn ufaas() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ufaas"));
    c.env_remove("UFAAS_TOKEN")
        .env_remove("UFAAS_SERVER")
        .kill_on_drop(true);
    c
}

/// Runs `ufaas ARGS` (with `stdin` as its standard input) to its end, within two minutes.
async fn run(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut c = ufaas();
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start ufaas");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ufaas {args:?} did not end"))
        .expect("run ufaas");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ufaas ARGS --server URL`.
async fn at(s: &Server, args: &[&str]) -> Out {
    let mut all = args.to_vec();
    all.extend(["--server", s.base.as_str()]);
    run(&all, None).await
}

/// `ufaas ARGS --server URL` with `stdin`.
async fn at_with_stdin(s: &Server, args: &[&str], stdin: &[u8]) -> Out {
    let mut all = args.to_vec();
    all.extend(["--server", s.base.as_str()]);
    run(&all, Some(stdin)).await
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `ufaas fn init DIR --runtime python --name NAME`, then `fn.py` replaced by `code`.
async fn python_dir(root: &Path, dir: &str, name: &str, code: &str) -> std::path::PathBuf {
    let d = root.join(dir);
    run(
        &[
            "fn",
            "init",
            path(&d),
            "--runtime",
            "python",
            "--name",
            name,
        ],
        None,
    )
    .await
    .ok();
    std::fs::write(d.join("fn.py"), code).expect("write fn.py");
    d
}

#[tokio::test]
async fn functions_from_init_to_rm() {
    let s = Server::start().await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("hello");

    // init writes the starter, which deploys and answers as it is.
    let out = run(
        &[
            "fn",
            "init",
            path(&dir),
            "--runtime",
            "python",
            "--name",
            "cli/hello",
        ],
        None,
    )
    .await;
    assert!(out.ok().contains("fn.py"), "{}", out.stdout);
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ufaas.json")).expect("ufaas.json"))
            .expect("ufaas.json is JSON");
    assert_eq!(config, json!({"name": "cli/hello", "runtime": "python"}));
    run(&["fn", "init", path(&dir)], None)
        .await
        .failed_saying("exists");
    let out = at(&s, &["fn", "deploy", path(&dir)]).await;
    assert!(
        out.ok()
            .starts_with("created cli/hello version 1 (python, fn.py"),
        "{}",
        out.stdout
    );
    let out = at(&s, &["fn", "invoke", "cli/hello"]).await;
    assert_eq!(out.json(), json!({"hello": "world"}));

    // A second file: the directory goes as an archive (the `build` alias), version 2.
    std::fs::write(
        dir.join("fn.py"),
        "import helper\n\ndef main(event):\n    print('saw', event)\n    return helper.answer(event)\n",
    )
    .expect("write fn.py");
    std::fs::write(
        dir.join("helper.py"),
        "def answer(event):\n    return {'event': event}\n",
    )
    .expect("write helper.py");
    std::fs::create_dir_all(dir.join(".git")).expect("mkdir .git");
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write .git/HEAD");
    let out = at(
        &s,
        &["fn", "build", path(&dir), "--json", "--timeout", "20"],
    )
    .await;
    let f = out.json();
    assert_eq!(
        (&f["name"], &f["version"], &f["timeout"]),
        (&json!("hello"), &json!(2), &json!(20)),
        "{f}"
    );

    // -d FILE and -d - (standard input); the body comes out as it came.
    let input = tmp.path().join("in.json");
    std::fs::write(&input, r#"{"n": 1}"#).expect("write input");
    let out = at(&s, &["fn", "invoke", "cli/hello", "-d", path(&input)]).await;
    assert_eq!(out.json(), json!({"event": {"n": 1}}));
    let out = at_with_stdin(&s, &["fn", "invoke", "cli/hello", "-d", "-"], b"plain text").await;
    assert_eq!(out.json(), json!({"event": "plain text"}));

    // --async prints the task id; the result is in its record.
    let out = at_with_stdin(
        &s,
        &["fn", "invoke", "cli/hello", "--async", "-d", "-"],
        b"[\"later\"]",
    )
    .await;
    let id = out.ok().trim().to_string();
    s.wait_ended(&id).await;
    let task = at(&s, &["get", &id, "--json"]).await.json();
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(task["stdout"], "saw ['later']\n", "{task}");

    // A handler that raises: exit 1, the error and its task on stderr, nothing on stdout.
    let boom = python_dir(
        tmp.path(),
        "boom",
        "cli/boom",
        "def main(event):\n    raise ValueError('no thanks')\n",
    )
    .await;
    at(&s, &["fn", "deploy", path(&boom), "--warm", "0"])
        .await
        .ok();
    let out = at(&s, &["fn", "invoke", "cli/boom"]).await;
    out.failed_saying("function_error");
    assert!(out.stderr.contains("(task "), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    at(&s, &["fn", "invoke", "cli/nope"])
        .await
        .failed_saying("not_found");

    // ls and describe, in words and as JSON.
    let out = at(&s, &["fn", "ls"]).await;
    let text = out.ok();
    assert!(text.starts_with("FUNCTION"), "{text}");
    assert!(
        text.contains("cli/hello") && text.contains("cli/boom"),
        "{text}"
    );
    let listed = at(&s, &["fn", "ls", "--json", "--namespace", "cli"])
        .await
        .json();
    assert_eq!(
        listed["functions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let listed = at(&s, &["fn", "ls", "--json", "--namespace", "other"])
        .await
        .json();
    assert_eq!(listed, json!({"functions": []}));
    let out = at(&s, &["fn", "describe", "cli/hello"]).await;
    assert!(
        out.ok().contains("function        cli/hello\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("version         2\n"), "{}", out.stdout);
    let f = at(&s, &["fn", "describe", "cli/hello", "--json"])
        .await
        .json();
    assert_eq!(f["invocations"]["total"], 4, "{f}");

    // logs: every line, one task's, JSON; -f prints a new call's line once.
    let out = at(&s, &["fn", "logs", "cli/hello"]).await;
    let text = out.ok();
    assert!(
        text.contains("| saw {'n': 1}") && text.contains("| saw plain text"),
        "{text}"
    );
    let out = at(&s, &["fn", "logs", "cli/hello", "--task", &id, "--json"]).await;
    let lines: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (&lines[0]["line"], &lines[0]["task_id"], &lines[0]["stream"]),
        (&json!("saw ['later']"), &json!(id), &json!("stdout"))
    );
    follow_function_logs(&s).await;

    // rm: gone, and a second rm says so.
    assert_eq!(
        at(&s, &["fn", "rm", "cli/hello"]).await.ok(),
        "removed cli/hello\n"
    );
    at(&s, &["fn", "describe", "cli/hello"])
        .await
        .failed_saying("not_found");
    at(&s, &["fn", "rm", "cli/hello"])
        .await
        .failed_saying("not_found");
    at(&s, &["fn", "rm", "cli/boom"]).await.ok();
    s.stop().await;
}

/// `ufaas fn logs cli/hello -f`: what is there, then a new call's line, once.
async fn follow_function_logs(s: &Server) {
    let mut child = ufaas()
        .args(["fn", "logs", "cli/hello", "-f", "--server", &s.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ufaas fn logs -f");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a first line")
        .expect("read");
    assert!(first.is_some_and(|l| l.contains("saw")));
    let out = at_with_stdin(s, &["fn", "invoke", "cli/hello", "-d", "-"], b"followed").await;
    out.ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    let mut seen_at: Option<Instant> = None;
    // Past the first sight of it, two more polls must not print it again.
    while Instant::now() < deadline
        && seen_at.is_none_or(|t| t.elapsed() < Duration::from_millis(2500))
    {
        match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            Ok(Ok(Some(l))) if l.contains("saw followed") => {
                seen += 1;
                seen_at.get_or_insert_with(Instant::now);
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    assert_eq!(seen, 1, "the new call's line, once");
    child.kill().await.expect("stop ufaas fn logs -f");
}

#[tokio::test]
async fn pipelines_secrets_and_tasks() {
    let s = Server::start().await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let double = python_dir(
        tmp.path(),
        "double",
        "cli/double",
        "def main(event):\n    return {'n': event['n'] * 2}\n",
    )
    .await;
    let inc = python_dir(
        tmp.path(),
        "inc",
        "cli/inc",
        "def main(event):\n    return {'n': event['n'] + 1}\n",
    )
    .await;
    at(&s, &["fn", "deploy", path(&double)]).await.ok();
    at(&s, &["fn", "deploy", path(&inc)]).await.ok();

    // The input from a file as JSON; the last step's output as it came.
    let input = tmp.path().join("in.json");
    std::fs::write(&input, r#"{"n": 3}"#).expect("write input");
    let out = at(
        &s,
        &["pipeline", "cli/double", "cli/inc", "-d", path(&input)],
    )
    .await;
    assert_eq!(out.json(), json!({"n": 7}));
    // Text that is not JSON goes as text: the first step fails on it, and says so.
    let out = at_with_stdin(
        &s,
        &["pipeline", "cli/double", "cli/inc", "-d", "-"],
        b"oops",
    )
    .await;
    out.failed_saying("step_failed");
    assert!(out.stderr.contains("steps[0]"), "{}", out.stderr);
    assert!(out.stderr.contains("(pipeline "), "{}", out.stderr);

    // A secret from standard input, never echoed, read by the function only.
    let value = "cli-s3cr3t-91";
    let out = at_with_stdin(&s, &["secret", "set", "cli-key"], value.as_bytes()).await;
    assert!(!out.ok().contains(value) && !out.stderr.contains(value));
    let sec = python_dir(
        tmp.path(),
        "sec",
        "cli/sec",
        "def main(event):\n    return len(open('/run/secrets/cli-key').read())\n",
    )
    .await;
    at(&s, &["fn", "deploy", path(&sec), "--secret", "cli-key"])
        .await
        .ok();
    let out = at(&s, &["fn", "invoke", "cli/sec"]).await;
    assert_eq!(out.ok(), value.len().to_string());
    let shown = at(&s, &["fn", "describe", "cli/sec", "--json"]).await;
    assert!(!shown.ok().contains(value));
    at(&s, &["fn", "rm", "cli/sec"]).await.ok();
    assert_eq!(
        at(&s, &["secret", "rm", "cli-key"]).await.ok(),
        "removed secret cli-key\n"
    );
    at(&s, &["secret", "rm", "cli-key"])
        .await
        .failed_saying("not_found");

    // Tasks: ls, get, cancel.
    let id = s.submit(&sh("sleep 60")).await;
    let out = at(&s, &["ls", "--state", "RECEIVED,PENDING,STARTING,RUNNING"]).await;
    assert!(out.ok().contains(&id), "{}", out.stdout);
    let page = at(&s, &["ls", "--json", "--limit", "1"]).await.json();
    assert_eq!(page["tasks"][0]["id"], id.as_str(), "{page}");
    assert!(page.get("next").is_some(), "{page}");
    let out = at(&s, &["get", &id]).await;
    assert!(
        out.ok().contains(&format!("id        {id}\n")),
        "{}",
        out.stdout
    );
    let out = at(&s, &["cancel", &id]).await;
    assert_eq!(out.ok(), format!("{id} CANCELLED\n"));
    let task = at(&s, &["get", &id, "--json"]).await.json();
    assert_eq!(task["state"], "CANCELLED", "{task}");
    at(&s, &["cancel", &id])
        .await
        .failed_saying("already_ended");
    at(&s, &["get", &TaskId::new().to_string()])
        .await
        .failed_saying("not_found");

    // logs of an ended task: its stdout and stderr where they belong.
    let done = s.run(&sh("echo out-line; echo err-line >&2")).await;
    let done_id = done["id"].as_str().unwrap_or_default().to_string();
    let out = at(&s, &["logs", &done_id]).await;
    assert_eq!(
        (out.ok(), out.stderr.as_str()),
        ("out-line\n", "err-line\n")
    );

    // logs -f of a running task: what it printed, then the rest, each once, to its end.
    let id = s
        .submit(&sh("echo first; sleep 2; echo second; echo warn >&2"))
        .await;
    s.wait_until(&id, 60, |t| t["stdout"] == "first\n").await;
    let out = at(&s, &["logs", &id, "-f"]).await;
    assert_eq!(out.ok(), "first\nsecond\n");
    assert!(out.stderr.starts_with("warn\n"), "{}", out.stderr);
    assert!(!out.stderr.contains("differs"), "{}", out.stderr);

    at(&s, &["fn", "rm", "cli/double"]).await.ok();
    at(&s, &["fn", "rm", "cli/inc"]).await.ok();
    s.stop().await;
}

/// Every example of `tasks/functions/` deployed with `ufaas fn deploy DIR` and invoked with
/// `ufaas fn invoke NAME -d INPUT`, as its README says; the answer is the expected one. The
/// pipeline example runs through `ufaas pipeline`.
#[tokio::test]
async fn every_example_deploys_and_answers_through_the_cli() {
    let s = Server::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/functions");
    at_with_stdin(
        &s,
        &["secret", "set", "greeting", "-"],
        b"hello from the vault",
    )
    .await
    .ok();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tasks/functions")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("ufaas.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 9, "examples: {dirs:?}");
    for dir in &dirs {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("ufaas.json")).expect("ufaas.json"))
                .expect("ufaas.json is JSON");
        let name = meta["name"].as_str().expect("a name").to_string();
        at(&s, &["fn", "deploy", path(dir)]).await.ok();
        let (input, expected) = if dir.join("input.json").is_file() {
            (dir.join("input.json"), dir.join("expected.json"))
        } else {
            (dir.join("input.txt"), dir.join("expected.txt"))
        };
        let out = at(&s, &["fn", "invoke", &name, "-d", path(&input)]).await;
        let want = std::fs::read_to_string(&expected).expect("expected answer");
        if expected.extension().is_some_and(|e| e == "json") {
            let got: Value = serde_json::from_str(out.ok()).unwrap_or(Value::Null);
            let want: Value = serde_json::from_str(&want).expect("expected is JSON");
            assert_eq!(got, want, "{name}");
        } else {
            assert_eq!(out.ok(), want, "{name}");
        }
    }
    let pipe: Value = serde_json::from_slice(
        &std::fs::read(root.join("pipeline/pipeline.json")).expect("pipeline.json"),
    )
    .expect("JSON");
    let steps: Vec<String> = pipe["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let input = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(input.path(), pipe["input"].to_string()).expect("write input");
    let mut args = vec!["pipeline"];
    args.extend(steps.iter().map(String::as_str));
    args.extend(["-d", path(input.path())]);
    let got: Value = serde_json::from_str(at(&s, &args).await.ok()).unwrap_or(Value::Null);
    let want: Value = serde_json::from_slice(
        &std::fs::read(root.join("pipeline/expected.json")).expect("expected.json"),
    )
    .expect("JSON");
    assert_eq!(got, want);
    s.stop().await;
}
