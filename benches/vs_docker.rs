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

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::time::Instant;

use common::{
    db_writes, docker_text, env_num, latency_row, mib, ms, post_json, print_header, print_row,
    print_summary, wait_gone, Baseline, Cli, Row, Samples, Server, Target, UFAAS_BIN,
};

const BUSYBOX: &str = "ufaas/busybox:latest";
const PYTHON: &str = "ufaas/python:3";

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
    Cli(Cli),
}

impl Probe {
    fn cli(argv: &[&str], stdout: &'static str) -> Probe {
        Probe::Cli(Cli::new(argv, stdout))
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
            Probe::Cli(cli) => cli.once().await,
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

// ---- phases -----------------------------------------------------------------------------------

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
        checks: Vec::new(),
    }
    .ratio_target(Target::AtMost(target))
}

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
    print_header();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // ---- server 1: the task paths ---------------------------------------------------------------
    // No pruning of the event log while it runs, and no kept container reaped as idle: each
    // is a write, not a task's, and would blur the writes per task.
    let par = parallel.to_string();
    let mut server = Server::start(
        "tasks",
        "VS_DOCKER_LOG_DIR",
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
    rows.push(
        latency_row("cold task, busybox echo (vs docker run --rm)", &a, &b)
            .ratio_target(Target::AtMost(0.8)),
    );
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
        server.kept.push(format!("ufaas.task={owner}"));
        let live = Baseline::start(image, 3600).await?;
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
        rows.push(latency_row(label, &a, &b).ratio_target(Target::AtMost(target)));
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
    rows.push(
        Row {
            measure: format!(
                "throughput, {tasks} tasks, {parallel} at once (vs xargs -P{parallel})"
            ),
            ufaas: format!("{ufaas_tps:.1} tasks/s"),
            baseline: format!("{docker_tps:.1} tasks/s"),
            ratio: Some(ufaas_tps / docker_tps),
            checks: Vec::new(),
        }
        .ratio_target(Target::AtLeast(1.5)),
    );
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
        "VS_DOCKER_LOG_DIR",
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
    server.kept.push(format!("ufaas.task={holder}"));
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
    print_summary("vs_docker", &rows);
    Ok(())
}
