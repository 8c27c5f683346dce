//! The Docker engine stopped while tasks run, then started again. No task stays non-terminal,
//! no container is left behind, the event log has no gap; `/readyz` says 503 while the engine
//! is away and the API keeps answering.
//!
//! Other tests share the machine's engine, so this one starts a private `dockerd` of its own
//! (own socket, data root, exec root, managed containerd, no bridge, no iptables, its own
//! network namespace) under a short temporary directory, and stops and restarts that one. A guard kills it and removes
//! its directory however the test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{sh, stored_events, Server, BUSYBOX};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A `dockerd` of this test's own, with everything it keeps under `dir`.
struct PrivateEngine {
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl PrivateEngine {
    fn new() -> PrivateEngine {
        // Short: the daemon's and containerd's unix sockets live below it (~100 bytes max).
        let dir = tempfile::Builder::new()
            .prefix("ufaas-ed-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        std::fs::write(dir.join("daemon.json"), "{}").expect("daemon.json");
        PrivateEngine { dir, child: None }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The engine's address, as `docker -H` and `--docker-host` take it.
    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the daemon (same directories every time) and waits until it answers `/_ping`.
    async fn start(&mut self) {
        assert!(self.child.is_none(), "the private engine already runs");
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .expect("dockerd log");
        // In a network namespace of its own: a dockerd with `--bridge none` deletes the
        // host's `docker0` at start, which would break every networked container of the
        // shared engine. Its socket is a file, so it answers from there all the same.
        let child = tokio::process::Command::new("unshare")
            .args(["--net", "--", "dockerd"])
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            // Not /etc/docker/daemon.json: nothing of the main daemon's set-up applies here.
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--shutdown-timeout",
                "5",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            // Its own process group, so the guard can kill it whatever it left running.
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the private dockerd exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
            if ping(&self.socket()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private dockerd did not answer within 60 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the daemon (and the containerd it manages) to be gone.
    async fn stop(&mut self) {
        let mut child = self.child.take().expect("the private engine runs");
        let pid = child.id().expect("dockerd pid");
        let containerd = self.containerd_pid();
        signal("-TERM", &pid.to_string());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the private dockerd did not stop within 60 s:\n{}",
                    self.log_tail()
                )
            })
            .expect("wait for dockerd");
        assert!(status.success(), "dockerd stopped with {status}");
        if let Some(c) = containerd {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{c}")).exists() {
                assert!(
                    Instant::now() < deadline,
                    "the private containerd ({c}) outlived its dockerd"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn containerd_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs the docker CLI against this engine.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker CLI")
    }

    /// Copies `image` from the machine's engine into this one.
    async fn load(&self, image: &str) {
        let mut save = tokio::process::Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let pipe: Stdio = save
            .stdout
            .take()
            .expect("save's stdout")
            .try_into()
            .expect("pipe");
        let load = tokio::process::Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .arg("load")
            .stdin(pipe)
            .output()
            .await
            .expect("docker load");
        let saved = save.wait().await.expect("docker save");
        assert!(saved.success(), "docker save {image} failed");
        assert!(
            load.status.success(),
            "docker load failed: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        let out = self.cli(&["image", "inspect", image]).await;
        assert!(out.status.success(), "{image} is not in the private engine");
    }

    /// Containers of any ufaas server (running or not), as the private engine lists them.
    async fn ufaas_containers(&self) -> Vec<String> {
        let out = self
            .cli(&[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                "label=ufaas.instance",
                "--format",
                "{{.ID}} {{.State}} {{.Label \"ufaas.task\"}}",
            ])
            .await;
        assert!(
            out.status.success(),
            "docker ps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for PrivateEngine {
    /// Whatever happened: the daemon is asked to stop (it stops its containers and unmounts),
    /// then everything of it still alive is SIGKILLed, what is still mounted below the
    /// directory is unmounted, and the directory removed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                if matches!(child.try_wait(), Ok(None)) {
                    signal("-TERM", &pid.to_string());
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    while matches!(child.try_wait(), Ok(None))
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                // The whole group: dockerd and anything it started there.
                signal("-KILL", &format!("-{pid}"));
                let _ = child.try_wait();
            }
        }
        let dir = self.dir.to_string_lossy().into_owned();
        // containerd and its shims run in sessions of their own; each names our directory
        // on its command line.
        for pid in pids_where(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                .unwrap_or(false)
        }) {
            signal("-KILL", &pid.to_string());
        }
        // Processes of our containers (whose shim is gone, if it came to that).
        let ids: Vec<String> = std::fs::read_dir(self.dir.join("data/containers"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 64)
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            for pid in pids_where(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|c| ids.iter().any(|id| c.contains(id.as_str())))
                    .unwrap_or(false)
            }) {
                signal("-KILL", &pid.to_string());
            }
            if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
                for c in controllers.filter_map(|e| e.ok()) {
                    for id in &ids {
                        let _ = std::fs::remove_dir(c.path().join("docker").join(id));
                    }
                }
            }
        }
        // Deepest mounts first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {dir}: {e}");
        }
    }
}

/// `kill SIG TARGET` (a pid, or `-pgid` for a group); errors (already gone) are ignored.
fn signal(sig: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Pids of live processes (other than this one) for which `pred` holds.
fn pids_where(pred: impl Fn(u32) -> bool) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&pid| pid != me && pred(pid))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the engine at `socket` answers `GET /_ping` with 200.
async fn ping(socket: &Path) -> bool {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.ok()?;
        let reply = String::from_utf8_lossy(&reply);
        Some(reply.split_whitespace().nth(1) == Some("200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(true))
    )
}

fn is_terminal(t: &Value) -> bool {
    matches!(
        t["state"].as_str(),
        Some("FINISHED" | "FAILED" | "CANCELLED" | "EXPIRED")
    )
}

/// `state`, `exit_code` and `error` of a task record, for messages.
fn summary(t: &Value) -> String {
    format!(
        "{} exit_code={} error={}",
        t["state"], t["exit_code"], t["error"]
    )
}

#[track_caller]
fn assert_failed_clearly(what: &str, t: &Value) {
    assert!(is_terminal(t), "{what}: {t}");
    assert_ne!(t["state"], "FINISHED", "{what}: {t}");
    assert!(
        t["error"].as_str().is_some_and(|e| !e.trim().is_empty()),
        "{what} ended without an error: {t}"
    );
}

#[tokio::test]
async fn engine_stopped_and_started_while_tasks_run() {
    let began = Instant::now();
    let mut engine = PrivateEngine::new();
    engine.start().await;
    engine.load(BUSYBOX).await;
    let host = engine.host();
    let server = Server::start_with(|c| {
        c.docker_host = Some(host);
        c.max_concurrent = 1;
    })
    .await;
    let db = server.db.clone();
    let r = server.get("/readyz").await;
    assert_eq!(r.status, 200, "/readyz with the engine up: {}", r.body);

    // 1. One task runs, one waits behind it.
    let long = server.submit(&sh("sleep 60")).await;
    let t = server.wait_state(&long, "RUNNING").await;
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        engine
            .ufaas_containers()
            .await
            .iter()
            .any(|c| c.starts_with(&cid)),
        "the running task's container {cid} is in the private engine"
    );
    let r = server.get("/readyz").await;
    assert_eq!(r.status, 200, "/readyz while a task runs: {}", r.body);
    let queued = server.submit(&sh("echo queued")).await;
    let q = server.get(&format!("/fn/{queued}")).await;
    assert_eq!(q.body["state"], "PENDING", "{}", q.body);

    // 2. The engine goes away.
    engine.stop().await;
    let stopped_at = Instant::now();

    // 3. The API answers; readiness says why not; every task ends with an error.
    let r = server.get("/readyz").await;
    r.assert_error(503, "docker_unavailable", None);
    let r = server.get("/fn").await;
    assert_eq!(r.status, 200, "GET /fn: {}", r.body);
    assert!(
        r.body["tasks"].as_array().is_some_and(|a| a.len() == 2),
        "GET /fn: {}",
        r.body
    );
    for id in [&long, &queued] {
        let r = server.get(&format!("/fn/{id}")).await;
        assert_eq!(r.status, 200, "GET /fn/{id}: {}", r.body);
    }
    let long_t = server.wait_until(&long, 60, is_terminal).await;
    let queued_t = server.wait_until(&queued, 60, is_terminal).await;
    eprintln!(
        "after {:?} without the engine:\n  running task: {}\n  queued task:  {}",
        stopped_at.elapsed(),
        summary(&long_t),
        summary(&queued_t)
    );
    assert_failed_clearly("the running task", &long_t);
    assert_failed_clearly("the queued task", &queued_t);

    // Submitted while the engine is away: accepted, then fails saying why.
    let during = server.submit(&sh("echo during")).await;
    let during_t = server.wait_until(&during, 60, is_terminal).await;
    eprintln!("  submitted while away: {}", summary(&during_t));
    assert_failed_clearly("the task submitted while the engine was away", &during_t);
    let r = server.get("/readyz").await;
    r.assert_error(503, "docker_unavailable", None);

    // 4. The engine comes back, and with it readiness and work.
    engine.start().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get("/readyz").await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still not ready 30 s after the engine came back: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = server.run(&sh("echo after")).await;
    assert_eq!(
        (after["state"].as_str(), after["stdout"].as_str()),
        (Some("FINISHED"), Some("after\n")),
        "{after}"
    );
    let r = server
        .get("/fn?state=RECEIVED,PENDING,STARTING,RUNNING")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tasks"], serde_json::json!([]), "tasks not ended");
    // The container of the task that ran when the engine stopped could not be removed then;
    // the server retries, so it goes once the engine is back, while the server runs.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lingering = engine.ufaas_containers().await;
        if lingering.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers still in the engine while the server runs: {lingering:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // 5. A normal stop leaves nothing in either engine.
    let _dir = server.stop().await;
    let left = engine.ufaas_containers().await;
    assert!(
        left.is_empty(),
        "containers left in the private engine: {left:?}"
    );

    // 6. The event log has no gap, and every task's last event is terminal.
    let events = stored_events(&db, None).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "no gap in the event log"
    );
    for id in [&long, &queued, &during] {
        let last = events.iter().rev().find(|e| &e.1 == id);
        assert!(
            last.is_some_and(|e| matches!(e.2.as_str(), "FAILED" | "CANCELLED" | "EXPIRED")),
            "last event of {id}: {last:?}"
        );
    }

    engine.stop().await;
    eprintln!("engine restart test took {:?}", began.elapsed());
}
