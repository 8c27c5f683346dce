//! ufaas against plain Docker by CLI, on this machine, in one run. Run with
//! `cargo bench --bench vs_docker` (or `tox-like-scripts/bench vs_docker`).
//!
//! The server is the release binary (`ufaas serve --listen 127.0.0.1:0`, temporary SQLite
//! file) in its own process, so its resident set can be read from /proc. Each ratio is
//! measured against its baseline in the same run, sample by sample in turn (ufaas, baseline,
//! ufaas, baseline, ...), so that drift hits both:
//!
//! - cold task: `POST /fn?wait=` of busybox `echo hi` until its terminal record arrives, vs
//!   `docker run --rm --network none ufaas/busybox:latest echo hi` (ufaas tasks have no
//!   network by default; this machine's engine may have no bridge at all). The answer comes
//!   before Docker has finished removing the task's container; the bench waits, untimed,
//!   until it is gone before the baseline's next sample, so that the removal never slows it.
//! - warm reuse: `POST /fn/{id}?wait=` of `echo hi` into the kept container of a daemon task,
//!   vs `docker exec` of the same in a container started once with `docker run -d`.
//! - warm reuse, python: the same with `python3 -c 'print(1)'` in `ufaas/python:3`.
//! - throughput: N tasks (200) through `--max-concurrent 4`, all submitted at once with
//!   `?wait=`, until the last one has ended and every container they used is gone (as
//!   `docker run --rm` waits for its removal), vs `seq N | xargs -P 4 docker run --rm ...`.
//! - `GET /fn/{id}` requests/s with wrk (2 threads, 64 connections, 10 s) when it is
//!   installed, else with an in-process client of the same shape.
//! - `POST /fn` accept rate with the queue paused: a second server with `--max-concurrent 1`
//!   whose one slot holds a `sleep 600` task, 2,000 POSTs, 16 in flight.
//! - resident set of that server idle, and once 10,000 tasks are stored.
//! - database writes per task, cold and warm: the server counts its writes (`database_writes`
//!   on /readyz), read before and after each phase of the task server. Cold is every task of
//!   the cold phase and of the throughput runs, warm every task of the two warm phases; each
//!   is set beside the count of commit cc5b4a1 (the last before a task's writes were cut to
//!   four): 7 cold, 6 warm. That server neither prunes its event log nor reaps an idle kept
//!   container during the bench (`--event-prune-every 3600 --keep-alive 3600`): either is a
//!   write of its own.
//!
//! Latency rows report the median and p99 (nearest rank: of 30 samples, the largest) after
//! warm-up pairs; ratio = ufaas median / baseline median (throughput: ufaas tasks/s / baseline
//! tasks/s). Every sample is checked (FINISHED with the expected stdout, exit 0); a failed one
//! stops the bench. PASS/MISS is reported, never asserted: the process exits 0 either way.
//!
//! Knobs (environment): VS_DOCKER_SAMPLES (30), VS_DOCKER_WARMUP (3), VS_DOCKER_TASKS (200),
//! VS_DOCKER_PARALLEL (4), VS_DOCKER_ROUNDS (2, throughput runs of each side, alternated),
//! VS_DOCKER_GET_SECONDS (10), VS_DOCKER_POSTS (2000), VS_DOCKER_STORED (10000),
//! VS_DOCKER_WRK (path of wrk, or `none` for the in-process client), VS_DOCKER_LOG_DIR (keep
//! the servers' logs there; RUST_LOG is passed on to them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::time::Instant;

const BUSYBOX: &str = "ufaas/busybox:latest";
const PYTHON: &str = "ufaas/python:3";
/// The release build of the server, built by cargo alongside this bench.
const UFAAS_BIN: &str = env!("CARGO_BIN_EXE_ufaas");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- the server as a process ------------------------------------------------------------------

struct Server {
    child: Child,
    base: String,
    /// This server's own client, dropped before SIGTERM: the server's graceful shutdown
    /// waits for every open connection, and a pooled one the client opened but never sent a
    /// request on holds it until the client's idle timeout (90 s).
    http: Option<reqwest::Client>,
    /// Held so the server's stdout stays open.
    _stdout: BufReader<ChildStdout>,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// Tasks whose containers outlive them (daemons, the slot holder): removed by label if
    /// the server has to be killed.
    kept: Vec<String>,
}

impl Server {
    async fn start(name: &str, args: &[&str]) -> Result<Server> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let dir = tempfile::tempdir()?;
        let log = match std::env::var_os("VS_DOCKER_LOG_DIR") {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                PathBuf::from(d).join(format!("{name}.log"))
            }
            None => dir.path().join("server.log"),
        };
        let mut child = StdCommand::new(UFAAS_BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("ufaas.db"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {UFAAS_BIN}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The first stdout line names the address; EOF means it died (its log says why).
        let first = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                reader.read_line(&mut line).map(|_| (reader, line))
            }),
        )
        .await;
        let (reader, line) = match first {
            Ok(Ok(Ok(ok))) => ok,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "server {name} did not print its address ({other:?}); log:\n{}",
                    tail(&log)
                );
            }
        };
        let Some(addr) = line.trim().strip_prefix("ufaas listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "server {name} printed {line:?}, not its address; log:\n{}",
                tail(&log)
            );
        };
        let server = Server {
            base: format!("http://{addr}"),
            http: Some(http.clone()),
            child,
            _stdout: reader,
            log,
            dir,
            kept: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http.get(format!("{}/readyz", server.base)).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() > deadline => {
                    bail!(
                        "server {name} not ready in 20 s; log:\n{}",
                        tail(&server.log)
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(server)
    }

    fn http(&self) -> &reqwest::Client {
        self.http.as_ref().expect("the client lives until stop")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS")
    }

    fn db_bytes(&self) -> u64 {
        ["ufaas.db", "ufaas.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// SIGTERM, then wait for a clean exit (the server removes its containers first).
    async fn stop(mut self) -> Result<()> {
        self.http = None;
        tokio::time::sleep(Duration::from_millis(100)).await;
        sigterm(self.pid());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("server exited with {status}; log:\n{}", tail(&self.log));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    /// On an early return: stop it the same way, so that its containers go too.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sigterm(self.pid());
            for _ in 0..600 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for task in &self.kept {
                let filter = format!("label=ufaas.task={task}");
                if let Ok(out) = StdCommand::new("docker")
                    .args(["ps", "-aq", "--filter", &filter])
                    .output()
                {
                    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = StdCommand::new("docker")
                            .args(["rm", "-f", id])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
    }
}

fn sigterm(pid: u32) {
    let _ = StdCommand::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A container of the baselines, removed when dropped.
struct Baseline(String);

impl Baseline {
    async fn start(image: &str) -> Result<Baseline> {
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--network",
                "none",
                image,
                "sleep",
                "3600",
            ])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "docker run -d {image}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Baseline(String::from_utf8(out.stdout)?.trim().to_string()))
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = StdCommand::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---- one timed sample -------------------------------------------------------------------------

enum Probe {
    /// POST a spec with `?wait=`; the reply must be 200, FINISHED, with this stdout (and,
    /// with `hit`, have run in the container it asked for).
    Task {
        url: String,
        spec: Value,
        stdout: &'static str,
        hit: bool,
    },
    /// A command line; it must exit 0 with this stdout.
    Cli {
        argv: Vec<String>,
        stdout: &'static str,
    },
}

impl Probe {
    fn cli(argv: &[&str], stdout: &'static str) -> Probe {
        Probe::Cli {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdout,
        }
    }

    async fn once(&self, http: &reqwest::Client) -> Result<Duration> {
        match self {
            Probe::Task {
                url,
                spec,
                stdout,
                hit,
            } => {
                let t0 = Instant::now();
                let resp = http.post(url).json(spec).send().await?;
                let status = resp.status().as_u16();
                let body: Value = resp.json().await?;
                let took = t0.elapsed();
                check_finished(status, &body, stdout)?;
                if *hit && body["locality"] != "hit" {
                    bail!("the task did not run in the kept container: {body}");
                }
                // The answer comes before Docker has finished removing the task's container;
                // that removal must not overlap the baseline's next sample, so it is waited
                // for here, untimed.
                if !*hit {
                    if let Some(cid) = body["container"]["id"].as_str() {
                        wait_gone(&[cid.to_string()]).await?;
                    }
                }
                Ok(took)
            }
            Probe::Cli { argv, stdout } => {
                let t0 = Instant::now();
                let out = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .output()
                    .await?;
                let took = t0.elapsed();
                if !out.status.success() || out.stdout != stdout.as_bytes() {
                    bail!(
                        "`{}` ended {} with stdout {:?}, stderr {:?}",
                        argv.join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(took)
            }
        }
    }
}

fn check_finished(status: u16, body: &Value, stdout: &str) -> Result<()> {
    if status != 200 || body["state"] != "FINISHED" || body["stdout"] != stdout {
        bail!("task did not finish as expected ({status}): {body}");
    }
    Ok(())
}

/// Sorted samples.
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples(v)
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn median(&self) -> Duration {
        self.pct(50.0)
    }

    fn p50_p99(&self) -> String {
        format!("{} / {} ms", ms(self.median()), ms(self.pct(99.0)))
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `warm` untimed pairs, then `n` timed ones: a, b, a, b, ...
async fn paired(
    http: &reqwest::Client,
    a: &Probe,
    b: &Probe,
    warm: usize,
    n: usize,
) -> Result<(Samples, Samples)> {
    for _ in 0..warm {
        a.once(http).await.context("ufaas warm-up")?;
        b.once(http).await.context("baseline warm-up")?;
    }
    let (mut va, mut vb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        va.push(a.once(http).await.context("ufaas sample")?);
        vb.push(b.once(http).await.context("baseline sample")?);
    }
    Ok((Samples::new(va), Samples::new(vb)))
}

// ---- the table --------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

struct Row {
    measure: String,
    ufaas: String,
    baseline: String,
    ratio: Option<f64>,
    target: Option<Target>,
}

impl Row {
    fn info(measure: impl Into<String>, ufaas: impl Into<String>) -> Row {
        Row {
            measure: measure.into(),
            ufaas: ufaas.into(),
            baseline: "-".into(),
            ratio: None,
            target: None,
        }
    }

    fn ratio(&self) -> String {
        self.ratio.map_or("-".into(), |r| format!("{r:.2}"))
    }

    fn target(&self) -> String {
        match self.target {
            Some(Target::AtMost(t)) => format!("<= {t}"),
            Some(Target::AtLeast(t)) => format!(">= {t}"),
            None => "-".into(),
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.target, self.ratio) {
            (Some(Target::AtMost(t)), Some(r)) if r <= t => "PASS",
            (Some(Target::AtLeast(t)), Some(r)) if r >= t => "PASS",
            (Some(_), _) => "MISS",
            (None, _) => "-",
        }
    }
}

fn latency_row(measure: &str, a: &Samples, b: &Samples, target: f64) -> Row {
    Row {
        measure: measure.into(),
        ufaas: a.p50_p99(),
        baseline: b.p50_p99(),
        ratio: Some(a.median().as_secs_f64() / b.median().as_secs_f64()),
        target: Some(Target::AtMost(target)),
    }
}

fn print_row(row: &Row) {
    println!(
        "  {:<44}  {:>22}  {:>22}  {:>5}  {:>6}  {}",
        row.measure,
        row.ufaas,
        row.baseline,
        row.ratio(),
        row.target(),
        row.verdict()
    );
}

// ---- phases -----------------------------------------------------------------------------------

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = http.post(url).json(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// A daemon task (its container is kept) that has ended; its id.
async fn daemon(http: &reqwest::Client, base: &str, image: &str) -> Result<String> {
    let spec =
        json!({"task_name": "daemon", "image": image, "cmd_list": ["true"], "is_daemon": true});
    let (status, body) = post_json(http, &format!("{base}/fn?wait=120"), &spec).await?;
    check_finished(status, &body, "")?;
    body["id"]
        .as_str()
        .map(str::to_string)
        .context("no id in the reply")
}

/// The server's database writes since it started (`database_writes` on /readyz).
async fn db_writes(http: &reqwest::Client, base: &str) -> Result<u64> {
    let body: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    body["database_writes"]
        .as_u64()
        .with_context(|| format!("no database_writes in /readyz: {body}"))
}

/// Database writes counted over some tasks.
#[derive(Default)]
struct Writes {
    writes: u64,
    tasks: u64,
}

impl Writes {
    /// Adds the writes between `before` and now, made by `tasks` tasks.
    async fn add(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        before: u64,
        tasks: usize,
    ) -> Result<()> {
        self.writes += db_writes(http, base).await? - before;
        self.tasks += tasks as u64;
        Ok(())
    }

    fn per_task(&self) -> f64 {
        self.writes as f64 / self.tasks.max(1) as f64
    }

    fn text(&self) -> String {
        format!("{} writes / {} tasks", self.writes, self.tasks)
    }
}

/// Writes per task against the count of a commit before (not measured in this run: that
/// commit's server did not count them); the target is on the ratio.
fn writes_row(measure: &str, now: &Writes, before: u64, target: f64) -> Row {
    Row {
        measure: measure.into(),
        ufaas: format!("{:.2} writes", now.per_task()),
        baseline: format!("{before} writes"),
        ratio: Some(now.per_task() / before as f64),
        target: Some(Target::AtMost(target)),
    }
}

/// Waits until Docker knows none of `ids` any more (60 s at most).
async fn wait_gone(ids: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--no-trunc"])
            .output()
            .await?;
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !ids.iter().any(|id| listed.contains(id.as_str())) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("containers still there 60 s after their tasks ended");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` tasks submitted at once with `?wait=`; the time until the last reply and the removal
/// of every container they used (`docker run --rm` waits for its removal too).
async fn ufaas_burst(http: &reqwest::Client, base: &str, n: usize) -> Result<Duration> {
    let url = format!("{base}/fn?wait=600");
    let spec = json!({"task_name": "tput", "image": BUSYBOX, "cmd_list": ["echo", "hi"]});
    let t0 = Instant::now();
    let all: Vec<_> = (0..n)
        .map(|_| {
            let (http, url, spec) = (http.clone(), url.clone(), spec.clone());
            tokio::spawn(async move {
                let (status, body) = post_json(&http, &url, &spec).await?;
                check_finished(status, &body, "hi\n")?;
                Ok::<String, anyhow::Error>(
                    body["container"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for one in all {
        ids.push(one.await??);
    }
    wait_gone(&ids).await?;
    Ok(t0.elapsed())
}

/// `seq n | xargs -P parallel docker run --rm ...`; the time until xargs ends.
async fn docker_burst(n: usize, parallel: usize) -> Result<Duration> {
    let script = format!(
        "seq 1 {n} | xargs -P {parallel} -I{{}} docker run --rm --network none {BUSYBOX} echo {{}}"
    );
    let t0 = Instant::now();
    let out = Command::new("sh").args(["-c", &script]).output().await?;
    let took = t0.elapsed();
    let lines = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    if !out.status.success() || lines.count() != n {
        bail!(
            "`{script}` ended {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn find_wrk() -> Option<PathBuf> {
    match std::env::var("VS_DOCKER_WRK") {
        Ok(v) if v == "none" => return None,
        Ok(v) if !v.is_empty() => return Some(PathBuf::from(v)),
        _ => {}
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("wrk"))
        .find(|p| p.is_file())
}

/// wrk's duration text (`812.00us`, `1.20ms`, `2.00s`).
fn wrk_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
    how: String,
}

async fn get_load(http: &reqwest::Client, url: &str, secs: u64) -> Result<Load> {
    const THREADS: usize = 2;
    const CONNECTIONS: usize = 64;
    if let Some(wrk) = find_wrk() {
        let out = Command::new(&wrk)
            .args([
                format!("-t{THREADS}"),
                format!("-c{CONNECTIONS}"),
                format!("-d{secs}s"),
                "--latency".into(),
                url.into(),
            ])
            .output()
            .await
            .with_context(|| format!("running {}", wrk.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("wrk ended {}: {text}", out.status);
        }
        if text.contains("Non-2xx") || text.contains("Socket errors") {
            bail!("wrk saw failed requests:\n{text}");
        }
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().to_string())
                .with_context(|| format!("no `{key}` in wrk's output:\n{text}"))
        };
        let rps: f64 = field("Requests/sec:")?.parse()?;
        let p50 = wrk_duration(&field("50%")?).context("wrk's 50%")?;
        let p99 = wrk_duration(&field("99%")?).context("wrk's 99%")?;
        return Ok(Load {
            rps,
            p50,
            p99,
            how: format!("wrk, {THREADS} threads, {CONNECTIONS} connections, {secs} s"),
        });
    }
    // The same shape in-process: CONNECTIONS clients in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (http, url, stop) = (http.clone(), url.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let resp = http.get(&url).send().await?;
                    if !resp.status().is_success() {
                        bail!("GET answered {}", resp.status());
                    }
                    resp.bytes().await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let wall = t0.elapsed();
    let rps = all.len() as f64 / wall.as_secs_f64();
    let s = Samples::new(all);
    Ok(Load {
        rps,
        p50: s.median(),
        p99: s.pct(99.0),
        how: format!("in-process client (no wrk), {CONNECTIONS} connections, {secs} s"),
    })
}

/// `n` POST /fn with `in_flight` at once, each answered 201; wall time and latencies.
async fn post_many(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    in_flight: usize,
) -> Result<(Duration, Samples)> {
    let url = format!("{base}/fn");
    let spec = json!({"task_name": "queued", "image": BUSYBOX, "cmd_list": ["echo", "hi"]});
    let t0 = Instant::now();
    let lat: Vec<Result<Duration>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let t = Instant::now();
            let resp = http.post(&url).json(&spec).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            if status.as_u16() != 201 {
                bail!("POST /fn answered {status}");
            }
            Ok(t.elapsed())
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let wall = t0.elapsed();
    Ok((wall, Samples::new(lat.into_iter().collect::<Result<_>>()?)))
}

async fn wait_state(http: &reqwest::Client, base: &str, id: &str, state: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t: Value = http
            .get(format!("{base}/fn/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if t["state"] == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("task {id} not {state} within 60 s: {t}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn docker_text(args: &[&str]) -> String {
    match Command::new("docker").args(args).output().await {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "?".into(),
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<()> {
    let samples = env_num("VS_DOCKER_SAMPLES", 30) as usize;
    let warm = env_num("VS_DOCKER_WARMUP", 3) as usize;
    let tasks = env_num("VS_DOCKER_TASKS", 200) as usize;
    let parallel = env_num("VS_DOCKER_PARALLEL", 4) as usize;
    let rounds = env_num("VS_DOCKER_ROUNDS", 2).max(1) as usize;
    let get_secs = env_num("VS_DOCKER_GET_SECONDS", 10);
    let posts = env_num("VS_DOCKER_POSTS", 2000) as usize;
    let stored = (env_num("VS_DOCKER_STORED", 10_000) as usize).max(posts + 1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let started = Instant::now();

    println!(
        "vs_docker: {cores} cores, Docker {} (API {}, storage {}), server {UFAAS_BIN}",
        docker_text(&["version", "--format", "{{.Server.Version}}"]).await,
        docker_text(&["version", "--format", "{{.Server.APIVersion}}"]).await,
        docker_text(&["info", "--format", "{{.Driver}}"]).await,
    );
    println!(
        "  latency rows: {warm} warm-up pairs, then {samples} pairs, ufaas and baseline in turn"
    );
    println!();
    println!(
        "  {:<44}  {:>22}  {:>22}  {:>5}  {:>6}  verdict",
        "measure", "ufaas (median / p99)", "baseline (median / p99)", "ratio", "target"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // ---- server 1: the task paths ---------------------------------------------------------------
    // No pruning of the event log while it runs, and no kept container reaped as idle: each
    // is a write, not a task's, and would blur the writes per task.
    let par = parallel.to_string();
    let mut server = Server::start(
        "tasks",
        &[
            "--max-concurrent",
            &par,
            "--event-prune-every",
            "3600",
            "--keep-alive",
            "3600",
        ],
    )
    .await?;
    let base = server.base.clone();
    let http = server.http().clone();
    let idle_tasks_server = server.rss_kib()?;
    let (mut cold_writes, mut warm_writes) = (Writes::default(), Writes::default());

    // Cold task.
    let cold = Probe::Task {
        url: format!("{base}/fn?wait=60"),
        spec: json!({"task_name": "cold", "image": BUSYBOX, "cmd_list": ["echo", "hi"]}),
        stdout: "hi\n",
        hit: false,
    };
    let docker_run = Probe::cli(
        &[
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            BUSYBOX,
            "echo",
            "hi",
        ],
        "hi\n",
    );
    let before = db_writes(&http, &base).await?;
    let (a, b) = paired(&http, &cold, &docker_run, warm, samples).await?;
    cold_writes
        .add(&http, &base, before, warm + samples)
        .await?;
    let cold_sequential = cold_writes.text();
    rows.push(latency_row(
        "cold task, busybox echo (vs docker run --rm)",
        &a,
        &b,
        0.8,
    ));
    print_row(rows.last().unwrap());

    // Warm reuse, busybox and python.
    for (image, cmd, stdout, label, target) in [
        (
            BUSYBOX,
            vec!["echo", "hi"],
            "hi\n",
            "warm reuse, busybox echo (vs docker exec)",
            0.3,
        ),
        (
            PYTHON,
            vec!["python3", "-c", "print(1)"],
            "1\n",
            "warm reuse, python3 print(1) (vs docker exec)",
            0.5,
        ),
    ] {
        let owner = daemon(&http, &base, image).await?;
        server.kept.push(owner.clone());
        let live = Baseline::start(image).await?;
        let reuse = Probe::Task {
            url: format!("{base}/fn/{owner}?wait=60"),
            spec: json!({"task_name": "warm", "cmd_list": cmd}),
            stdout,
            hit: true,
        };
        let mut argv = vec!["docker", "exec", live.0.as_str()];
        argv.extend(&cmd);
        let exec = Probe::cli(&argv, stdout);
        let before = db_writes(&http, &base).await?;
        let (a, b) = paired(&http, &reuse, &exec, warm, samples).await?;
        warm_writes
            .add(&http, &base, before, warm + samples)
            .await?;
        rows.push(latency_row(label, &a, &b, target));
        print_row(rows.last().unwrap());
        drop(live);
    }

    // Throughput.
    let (mut ufaas_runs, mut docker_runs) = (Vec::new(), Vec::new());
    let before = db_writes(&http, &base).await?;
    for _ in 0..rounds {
        ufaas_runs.push(ufaas_burst(&http, &base, tasks).await?);
        docker_runs.push(docker_burst(tasks, parallel).await?);
    }
    let mut burst_writes = Writes::default();
    burst_writes
        .add(&http, &base, before, tasks * rounds)
        .await?;
    cold_writes.writes += burst_writes.writes;
    cold_writes.tasks += burst_writes.tasks;
    let secs = |runs: &[Duration]| {
        runs.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    notes.push(format!(
        "throughput: {rounds} run(s) of {tasks} tasks each side, in turn: ufaas {} s, docker {} s",
        secs(&ufaas_runs),
        secs(&docker_runs)
    ));
    let ufaas_time: Duration = ufaas_runs.iter().sum();
    let docker_time: Duration = docker_runs.iter().sum();
    let total = (tasks * rounds) as f64;
    let (ufaas_tps, docker_tps) = (
        total / ufaas_time.as_secs_f64(),
        total / docker_time.as_secs_f64(),
    );
    rows.push(Row {
        measure: format!("throughput, {tasks} tasks, {parallel} at once (vs xargs -P{parallel})"),
        ufaas: format!("{ufaas_tps:.1} tasks/s"),
        baseline: format!("{docker_tps:.1} tasks/s"),
        ratio: Some(ufaas_tps / docker_tps),
        target: Some(Target::AtLeast(1.5)),
    });
    print_row(rows.last().unwrap());

    // Database writes per task (counted above), against cc5b4a1's 7 cold and 6 warm. The
    // targets allow 4.2 writes a task: the four the store now makes, and a little.
    rows.push(writes_row(
        "database writes per task, cold (vs cc5b4a1)",
        &cold_writes,
        7,
        0.6,
    ));
    print_row(rows.last().unwrap());
    rows.push(writes_row(
        "database writes per task, warm (vs cc5b4a1)",
        &warm_writes,
        6,
        0.7,
    ));
    print_row(rows.last().unwrap());
    notes.push(format!(
        "database writes: cold {} (sequential {cold_sequential}, throughput {}), warm {}; \
         before = the count of cc5b4a1, not measured in this run",
        cold_writes.text(),
        burst_writes.text(),
        warm_writes.text()
    ));

    // GET /fn/{id} under load, on a stored task.
    let some_task: Value = http
        .get(format!("{base}/fn?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let id = some_task["tasks"][0]["id"]
        .as_str()
        .context("no task to GET")?
        .to_string();
    let load = get_load(&http, &format!("{base}/fn/{id}"), get_secs).await?;
    rows.push(Row::info(
        "GET /fn/{id}, 64 connections",
        format!("{:.0} req/s", load.rps),
    ));
    print_row(rows.last().unwrap());
    notes.push(format!(
        "GET /fn/{{id}}: {} (latency {} / {} ms median / p99)",
        load.how,
        ms(load.p50),
        ms(load.p99)
    ));
    let tasks_server_rss = server.rss_kib()?;
    let tasks_server_hwm = server.status_kib("VmHWM")?;
    drop(http);
    server.stop().await?;
    notes.push(format!(
        "task server (--max-concurrent {parallel}): resident {} at start, {} after its {} tasks, peak {}",
        mib(idle_tasks_server),
        mib(tasks_server_rss),
        (warm + samples) * 3 + tasks * rounds + 2,
        mib(tasks_server_hwm)
    ));

    // ---- server 2: the queue paused -------------------------------------------------------------
    let max_queue = (2 * stored).to_string();
    let mut server = Server::start(
        "paused",
        &["--max-concurrent", "1", "--max-queue", &max_queue],
    )
    .await?;
    let base = server.base.clone();
    let http = server.http().clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss_kib()?;
    let spec = json!({"task_name": "hold", "image": BUSYBOX, "cmd_list": ["sleep", "600"]});
    let (status, body) = post_json(&http, &format!("{base}/fn"), &spec).await?;
    if status != 201 {
        bail!("POST of the slot holder answered {status}: {body}");
    }
    let holder = body["id"].as_str().context("no id")?.to_string();
    server.kept.push(holder.clone());
    wait_state(&http, &base, &holder, "RUNNING").await?;
    let warm_posts = 100.min(stored - posts);
    post_many(&http, &base, warm_posts, 16).await?;
    let (wall, lat) = post_many(&http, &base, posts, 16).await?;
    let accept = posts as f64 / wall.as_secs_f64();
    rows.push(Row::info(
        "POST /fn accepted, queue paused, 16 in flight",
        format!("{accept:.0} POSTs/s"),
    ));
    print_row(rows.last().unwrap());
    notes.push(format!(
        "POST /fn: {posts} in {:.2} s with {warm_posts}..{} already queued, latency {} ms median / p99",
        wall.as_secs_f64(),
        warm_posts + posts,
        lat.p50_p99().trim_end_matches(" ms")
    ));
    post_many(&http, &base, stored - posts - warm_posts, 32).await?;
    let full = server.rss_kib()?;
    rows.push(Row::info("server resident set, idle", mib(idle)));
    print_row(rows.last().unwrap());
    rows.push(Row::info(
        format!("server resident set, {stored} tasks stored"),
        mib(full),
    ));
    print_row(rows.last().unwrap());
    for _ in 0..5 {
        let r = http.get(format!("{base}/fn?limit=1000")).send().await?;
        if !r.status().is_success() {
            bail!("GET /fn?limit=1000 answered {}", r.status());
        }
        r.bytes().await?;
    }
    notes.push(format!(
        "paused server: resident {} after 5 x GET /fn?limit=1000, peak {}; database {:.1} MiB with {stored} tasks",
        mib(server.rss_kib()?),
        mib(server.status_kib("VmHWM")?),
        server.db_bytes() as f64 / (1 << 20) as f64
    ));
    drop(http);
    server.stop().await?;

    println!();
    for n in &notes {
        println!("  {n}");
    }
    println!("  whole bench: {:.0} s", started.elapsed().as_secs_f64());
    println!();
    // Headline numbers, gathered by tox-like-scripts/bench into its summary (the long form:
    // ufaas, baseline and ratio in their own columns).
    for r in &rows {
        println!(
            "summary\tvs_docker\t{}\t{}\t{}\t{}\t{}\t{}",
            r.measure,
            r.ufaas,
            r.baseline,
            r.ratio(),
            r.target(),
            r.verdict()
        );
    }
    Ok(())
}
