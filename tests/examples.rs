mod common;

// The example task specs in `tasks/` run against a real server and print exactly what
// `tasks/README.rst` says they print. Every `tasks/*.json` file must be covered here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use common::{container_exists, Server};

fn tasks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks")
}

/// Reads and parses `tasks/{name}`.
fn load(name: &str) -> Value {
    let path = tasks_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Asserts that an ended task record finished with exit code 0 and exactly `stdout`.
#[track_caller]
fn assert_finished(name: &str, record: &Value, stdout: &str) {
    assert_eq!(record["state"], "FINISHED", "{name}: state of {record}");
    assert_eq!(record["exit_code"], 0, "{name}: exit_code of {record}");
    assert_eq!(
        record["stdout"].as_str(),
        Some(stdout),
        "{name}: stdout (stderr: {})",
        record["stderr"]
    );
}

/// Runs `tasks/{name}` on a fresh server and checks its output.
async fn check_example(name: &str, stdout: &str) {
    let spec = load(name);
    let server = Server::start().await;
    let record = server.run(&spec).await;
    assert_finished(name, &record, stdout);
    server.stop().await;
}

/// One test per standalone example, plus `STANDALONE`, the list of the files they cover.
macro_rules! examples {
    ($($test:ident: $file:literal => $stdout:expr;)*) => {
        const STANDALONE: &[&str] = &[$($file),*];
        $(
            #[tokio::test]
            async fn $test() {
                check_example($file, $stdout).await;
            }
        )*
    };
}

examples! {
    example_hello_python: "hello-python.json" => "hello world\n";
    example_base64_binary: "base64-binary.json" => concat!(
        "run.sh mode: 755\n",
        "blob.bin mode: 644\n",
        "blob.bin bytes: 00 01 02 03 7f 80 fe ff\n",
        "46d7c9e30f06774ee03af126b95c971f6fe6cc8b70ed27377bd4495b72b9b20a  blob.bin\n",
    );
    example_shell_pipeline: "shell-pipeline.json" => concat!(
        "HELLO PIPELINE 3\n",
        "HELLO PIPELINE 2\n",
        "HELLO PIPELINE 1\n",
        "lines=3 words=9 loud=true pwd=/work/pipeline\n",
    );
    example_archive: "archive.json" => concat!(
        "hello from the archive\n",
        "9 words, 8 distinct\n",
        "longest: quick\n",
    );
    example_stdin: "stdin.json" => "count=4 sum=10\n";
    example_node_hello: "node-hello.json" => "hello from node 18\n{\"sum\":10}\n";
    example_tmpfs: "tmpfs.json" => "scratch data\nmode=1777\nfs=tmpfs size_kb=16384\n";
}

/// The files exercised by `example_daemon_and_followup`.
const DAEMON_PAIR: &[&str] = &["daemon.json", "daemon-followup.json"];

#[tokio::test]
async fn example_daemon_and_followup() {
    let daemon = load("daemon.json");
    let followup = load("daemon-followup.json");
    assert!(
        followup.get("image").is_none(),
        "the follow-up should leave out `image`"
    );

    let server = Server::start().await;
    let first = server.run(&daemon).await;
    assert_finished("daemon.json", &first, "state saved to /work/state.txt\n");
    let id = first["id"].as_str().expect("daemon id").to_string();
    let container = first["container"]["id"]
        .as_str()
        .expect("daemon container id")
        .to_string();
    assert_ne!(
        first["container"]["state"], "removed",
        "daemon container: {first}"
    );
    assert!(
        container_exists(&container),
        "the daemon's container {container} is gone"
    );

    let r = server.post(&format!("/fn/{id}?wait=120"), &followup).await;
    assert_eq!(r.status, 200, "follow-up answered {}", r.body);
    let second = r.body;
    assert_finished(
        "daemon-followup.json",
        &second,
        "found counter=1\nsame container: True\n",
    );
    assert_eq!(second["locality"], "hit", "locality of {second}");
    assert_eq!(
        second["reused_container_of"],
        id.as_str(),
        "reused_container_of of {second}"
    );
    assert_eq!(
        second["container"]["id"],
        container.as_str(),
        "container of {second}"
    );
    server.stop().await;
}

#[test]
fn every_example_parses_and_is_tested() {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(tasks_dir()).expect("tasks/ exists") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        if name.ends_with(".json") {
            on_disk.insert(name);
        }
    }
    let covered: BTreeSet<String> = STANDALONE
        .iter()
        .chain(DAEMON_PAIR)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        covered.len(),
        STANDALONE.len() + DAEMON_PAIR.len(),
        "a file is listed twice"
    );
    assert_eq!(
        on_disk, covered,
        "tasks/*.json and the files these tests run differ"
    );

    let readme = std::fs::read_to_string(tasks_dir().join("README.rst")).expect("tasks/README.rst");
    for name in &on_disk {
        let spec = load(name);
        let obj = spec
            .as_object()
            .unwrap_or_else(|| panic!("{name} is not a JSON object"));
        assert!(
            obj["task_name"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: task_name"
        );
        assert!(
            obj["cmd_list"].as_array().is_some_and(|a| !a.is_empty()),
            "{name}: cmd_list"
        );
        assert!(
            readme.contains(name.as_str()),
            "tasks/README.rst does not mention {name}"
        );
    }
}
