//! Named functions (API.md section 5) on this machine, each row against a baseline measured
//! in the same run. Run with `cargo bench --bench functions` (or
//! `tox-like-scripts/bench functions`).
//!
//! The server is the release binary in its own process (`ufaas serve`, temporary SQLite
//! file, `--keep-alive 3600 --event-prune-every 3600` so that no reaping and no pruning
//! write falls in the counts), the client this process on the same cores. Rows:
//!
//! - warm invocation: `POST /functions/bench/echo/invoke` of python `def fn(input): return
//!   input` (body `hi`), one keep-alive client, sequential, after warm-up calls, vs `docker
//!   exec CONTAINER python3 -c 'print(1)'` timed as a whole command, in a container of
//!   ufaas/python:3 started once with `docker run -d --rm --network none ... sleep 600`. The
//!   two are interleaved in blocks (N invocations, then M execs, ...) so that drift hits
//!   both; a sequential `GET /healthz` is sampled in the same blocks (a note: the HTTP
//!   round trip alone). Targets: p50 <= 2 ms and ratio <= 0.05.
//! - throughput: 8 clients (each its own keep-alive connection) invoking `bench/tput` (`warm:
//!   2`, `concurrency: 4` — four runtime processes in each container, so each client has
//!   one; `FUNCTIONS_TPUT_CONCURRENCY` changes it — `max_containers: 2`) in a loop, vs the same 8 against `GET
//!   /healthz` (the HTTP ceiling), alternated in rounds; ratio = invocations/s / requests/s.
//!   Target: >= 1,000 invocations/s.
//! - pipeline: `POST /functions/pipeline` of 40 steps naming `bench/fibo` (python
//!   `main(event)` answering `{"n": 10, "fibo": 55}`, recursively), end to end, vs the client
//!   making the same 40 invocations one after the other, each with the previous answer; in
//!   turn. Target: p50 <= 150 ms.
//! - cold start: each run deploys a fresh `bench/cold-K` with `warm: 0`, times its first
//!   call (a container made, the runtime started, the code loaded, the call answered),
//!   deletes it and waits, untimed, until its container is gone; vs `docker run --rm
//!   --network none ufaas/python:3 python3 -c 'print(1)'`; in turn. No target.
//! - tinyFaaS's gateway: `POST /echo` on `--gateway-listen` (a free port) of the same python
//!   echo deployed as `default/echo`, vs `POST /functions/default/echo/invoke` on the main
//!   listener; in turn. What the seed's door costs over section 5's route. No target.
//! - database writes per warm invocation: `database_writes` on /readyz before and after the
//!   timed invocations of the first row (the execs write nothing on the server). Expected 2.
//!
//! Latency rows: median and p99 (nearest rank); ratio = ufaas median / baseline median.
//! Every answer is checked (status 200 and the expected body); a failed one stops the
//! bench. PASS/MISS is reported, never asserted: the process exits 0 either way.
//!
//! Knobs (environment): FUNCTIONS_SAMPLES (300 invocations), FUNCTIONS_EXEC_SAMPLES (30),
//! FUNCTIONS_BLOCKS (10), FUNCTIONS_WARMUP (50 invocations), FUNCTIONS_CLIENTS (8),
//! FUNCTIONS_TPUT_SECONDS (5, per side and round), FUNCTIONS_TPUT_ROUNDS (2),
//! FUNCTIONS_STEPS (40), FUNCTIONS_PIPELINES (20), FUNCTIONS_COLD (10), FUNCTIONS_LOG_DIR
//! (keep the server's log there; RUST_LOG is passed on to it).

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::time::Instant;

use common::{
    db_writes, docker_text, env_num, latency_row, ms, print_header, print_row, print_summary,
    Baseline, Cli, Row, Samples, Server, Target, REQUEST_TIMEOUT, UFAAS_BIN,
};

const PYTHON: &str = "ufaas/python:3";
const NS: &str = "bench";

const ECHO: &str = "def fn(input):\n    return input\n";

const FIBO: &str = r#"def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main(event):
    n = event["n"] if isinstance(event, dict) else 10
    return {"n": n, "fibo": fib(n)}
"#;

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// PUT a python function and wait until `warm` containers are ready; its version.
async fn deploy(server: &mut Server, name: &str, body: Value) -> Result<i64> {
    deploy_in(server, NS, name, body).await
}

/// [`deploy`] in the namespace `ns`.
async fn deploy_in(server: &mut Server, ns: &str, name: &str, body: Value) -> Result<i64> {
    let http = server.http().clone();
    let url = format!("{}/functions/{ns}/{name}", server.base);
    let resp = http.put(&url).json(&body).send().await?;
    let status = resp.status().as_u16();
    let reply: Value = resp.json().await?;
    if status != 201 && status != 200 {
        bail!("PUT {url} answered {status}: {reply}");
    }
    let version = reply["version"]
        .as_i64()
        .with_context(|| format!("no version in {reply}"))?;
    server
        .kept
        .push(format!("ufaas.function={ns}/{name}@{version}"));
    let warm = body["warm"].as_u64().unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f: Value = http.get(&url).send().await?.json().await?;
        if f["containers"]["ready"].as_u64().unwrap_or(0) >= warm {
            return Ok(version);
        }
        if Instant::now() > deadline {
            bail!("{ns}/{name}: {warm} warm container(s) not ready in 120 s: {f}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One invocation: 200 with `expect` as the body; the time it took and the body.
async fn invoke(
    http: &reqwest::Client,
    url: &str,
    body: &'static [u8],
    expect: Option<&[u8]>,
) -> Result<Duration> {
    let t0 = Instant::now();
    let resp = http.post(url).body(body).send().await?;
    let status = resp.status().as_u16();
    let got = resp.bytes().await?;
    let took = t0.elapsed();
    if status != 200 || expect.is_some_and(|e| e != &got[..]) {
        bail!(
            "POST {url} answered {status}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(took)
}

async fn healthz(http: &reqwest::Client, url: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let resp = http.get(url).send().await?;
    let status = resp.status();
    resp.bytes().await?;
    let took = t0.elapsed();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    Ok(took)
}

/// `clients` clients (each its own connection) sending `req` in a loop for `secs`; the
/// requests answered per second.
async fn load(
    clients: usize,
    secs: f64,
    url: &str,
    invoke_body: Option<&'static [u8]>,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (http, url, stop) = (client()?, url.to_string(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match invoke_body {
                    Some(b) => invoke(&http, &url, b, Some(b)).await?,
                    None => healthz(&http, &url).await?,
                };
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// A pipeline of `steps` x bench/fibo, end to end.
async fn pipeline(http: &reqwest::Client, base: &str, steps: usize) -> Result<Duration> {
    let body = json!({"steps": vec![format!("{NS}/fibo"); steps], "input": {"n": 10}});
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/functions/pipeline"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let got = resp.bytes().await?;
    let took = t0.elapsed();
    let answer: Value = serde_json::from_slice(&got).unwrap_or(Value::Null);
    if status != 200 || answer != json!({"n": 10, "fibo": 55}) {
        bail!(
            "the pipeline answered {status}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(took)
}

/// The same `steps` invocations made by the client, each with the previous answer.
async fn chain(http: &reqwest::Client, base: &str, steps: usize) -> Result<Duration> {
    let url = format!("{base}/functions/{NS}/fibo/invoke");
    let mut input = bytes::Bytes::from_static(br#"{"n": 10}"#);
    let t0 = Instant::now();
    for _ in 0..steps {
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(input.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        input = resp.bytes().await?;
        if status != 200 {
            bail!("POST {url} answered {status}: {input:?}");
        }
    }
    let took = t0.elapsed();
    let answer: Value = serde_json::from_slice(&input).unwrap_or(Value::Null);
    if answer != json!({"n": 10, "fibo": 55}) {
        bail!("the last step answered {input:?}");
    }
    Ok(took)
}

/// Deploy `bench/NAME` with `warm: 0`, time its first call, delete it, wait until its
/// container is gone (untimed).
async fn cold_once(server: &mut Server, name: &str) -> Result<Duration> {
    let http = server.http().clone();
    let base = server.base.clone();
    let version = deploy(
        server,
        name,
        json!({"runtime": "python", "code": ECHO, "warm": 0}),
    )
    .await?;
    let url = format!("{base}/functions/{NS}/{name}");
    let took = invoke(&http, &format!("{url}/invoke"), b"hi", Some(b"hi")).await?;
    let status = http.delete(&url).send().await?.status();
    if status.as_u16() != 204 {
        bail!("DELETE {url} answered {status}");
    }
    let filter = format!("label=ufaas.function={NS}/{name}@{version}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .await?;
        if out.status.success() && out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the container of {NS}/{name} still there 60 s after its DELETE");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(took)
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
    let samples = env_num("FUNCTIONS_SAMPLES", 300).max(1) as usize;
    let exec_samples = env_num("FUNCTIONS_EXEC_SAMPLES", 30).max(1) as usize;
    let blocks = (env_num("FUNCTIONS_BLOCKS", 10) as usize).clamp(1, exec_samples);
    let warmup = env_num("FUNCTIONS_WARMUP", 50) as usize;
    let clients = env_num("FUNCTIONS_CLIENTS", 8).max(1) as usize;
    let tput_secs = env_num("FUNCTIONS_TPUT_SECONDS", 5).max(1) as f64;
    let tput_rounds = env_num("FUNCTIONS_TPUT_ROUNDS", 2).max(1) as usize;
    let steps = env_num("FUNCTIONS_STEPS", 40).max(1) as usize;
    let pipelines = env_num("FUNCTIONS_PIPELINES", 20).max(1) as usize;
    let colds = env_num("FUNCTIONS_COLD", 10).max(1) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let started = Instant::now();

    println!(
        "functions: {cores} cores, Docker {} (API {}, storage {}), server {UFAAS_BIN}",
        docker_text(&["version", "--format", "{{.Server.Version}}"]).await,
        docker_text(&["version", "--format", "{{.Server.APIVersion}}"]).await,
        docker_text(&["info", "--format", "{{.Driver}}"]).await,
    );
    println!();
    print_header();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // tinyFaaS's HTTP gateway on a port free a moment ago (the server prints only its main
    // address).
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let gateway_addr = format!("127.0.0.1:{gateway_port}");
    let mut server = Server::start(
        "functions",
        "FUNCTIONS_LOG_DIR",
        &[
            "--keep-alive",
            "3600",
            "--event-prune-every",
            "3600",
            "--gateway-listen",
            &gateway_addr,
        ],
    )
    .await?;
    let base = server.base.clone();

    // ---- 1. warm invocation, and the writes per invocation -------------------------------------
    deploy(
        &mut server,
        "echo",
        json!({"runtime": "python", "code": ECHO}),
    )
    .await?;
    let live = Baseline::start(PYTHON, 600).await?;
    let exec = Cli::new(
        &["docker", "exec", &live.0, "python3", "-c", "print(1)"],
        "1\n",
    );
    let http = client()?;
    let echo_url = format!("{base}/functions/{NS}/echo/invoke");
    let health_url = format!("{base}/healthz");
    for _ in 0..warmup {
        invoke(&http, &echo_url, b"hi", Some(b"hi")).await?;
        healthz(&http, &health_url).await?;
    }
    exec.once().await.context("docker exec warm-up")?;
    let before = db_writes(&http, &base).await?;
    let (mut inv, mut execs, mut health) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..blocks {
        let share = |total: usize| total * (b + 1) / blocks - total * b / blocks;
        for _ in 0..share(samples) {
            inv.push(invoke(&http, &echo_url, b"hi", Some(b"hi")).await?);
            health.push(healthz(&http, &health_url).await?);
        }
        for _ in 0..share(exec_samples) {
            execs.push(exec.once().await.context("docker exec")?);
        }
    }
    // The end of a call may be written just after its answer: let it land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = db_writes(&http, &base).await? - before;
    drop(live);
    let (inv, execs, health) = (Samples::new(inv), Samples::new(execs), Samples::new(health));
    rows.push(
        latency_row(
            "warm invoke, python fn(input) (vs docker exec python3)",
            &inv,
            &execs,
        )
        .value_target(
            "p50",
            inv.median().as_secs_f64() * 1e3,
            Target::AtMost(2.0),
            "ms",
        )
        .ratio_target(Target::AtMost(0.05)),
    );
    print_row(rows.last().unwrap());
    notes.push(format!(
        "warm invoke: {samples} invocations and {exec_samples} docker execs in {blocks} blocks \
         after {warmup} warm-up calls; GET /healthz in the same blocks, same client: {} \
         (p90 invoke {} ms, healthz {} ms)",
        health.p50_p99(),
        ms(inv.pct(90.0)),
        ms(health.pct(90.0))
    ));
    let per_call = writes as f64 / samples as f64;
    rows.push(
        Row::info(
            "database writes per warm invocation",
            format!("{per_call:.2} writes"),
        )
        .value_target("", per_call, Target::Equal(2.0), ""),
    );
    print_row(rows.last().unwrap());
    notes.push(format!(
        "database writes: {writes} over {samples} warm invocations"
    ));

    // ---- 1b. the same call through tinyFaaS's gateway ------------------------------------------
    deploy_in(
        &mut server,
        "default",
        "echo",
        json!({"runtime": "python", "code": ECHO}),
    )
    .await?;
    let direct_url = format!("{base}/functions/default/echo/invoke");
    let gateway_url = format!("http://{gateway_addr}/echo");
    for _ in 0..warmup {
        invoke(&http, &gateway_url, b"hi", Some(b"hi")).await?;
        invoke(&http, &direct_url, b"hi", Some(b"hi")).await?;
    }
    let (mut via_gateway, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        via_gateway.push(invoke(&http, &gateway_url, b"hi", Some(b"hi")).await?);
        direct.push(invoke(&http, &direct_url, b"hi", Some(b"hi")).await?);
    }
    let (via_gateway, direct) = (Samples::new(via_gateway), Samples::new(direct));
    rows.push(latency_row(
        "tinyFaaS gateway call, python fn(input) (vs section 5 invoke)",
        &via_gateway,
        &direct,
    ));
    print_row(rows.last().unwrap());
    notes.push(format!(
        "gateway: {samples} calls each way, in turn, after {warmup} warm-up pairs; the same \
         function default/echo, one keep-alive client per listener"
    ));

    // ---- 2. throughput ---------------------------------------------------------------------------
    deploy(
        &mut server,
        "tput",
        json!({"runtime": "python", "code": ECHO, "warm": 2, "concurrency": env_num("FUNCTIONS_TPUT_CONCURRENCY", 4),
               "max_containers": 2}),
    )
    .await?;
    let tput_url = format!("{base}/functions/{NS}/tput/invoke");
    load(clients, 1.0, &tput_url, Some(b"hi")).await?;
    let (mut inv_rates, mut health_rates) = (Vec::new(), Vec::new());
    for _ in 0..tput_rounds {
        inv_rates.push(load(clients, tput_secs, &tput_url, Some(b"hi")).await?);
        health_rates.push(load(clients, tput_secs, &health_url, None).await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (inv_rate, health_rate) = (mean(&inv_rates), mean(&health_rates));
    rows.push(
        Row {
            measure: format!("invocations/s, {clients} clients, warm 2 (vs GET /healthz)"),
            ufaas: format!("{inv_rate:.0} calls/s"),
            baseline: format!("{health_rate:.0} req/s"),
            ratio: Some(inv_rate / health_rate),
            checks: Vec::new(),
        }
        .value_target("", inv_rate, Target::AtLeast(1000.0), "/s"),
    );
    print_row(rows.last().unwrap());
    let rates = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    notes.push(format!(
        "throughput: {tput_rounds} round(s) of {tput_secs} s each side, in turn: invoke {} /s, \
         healthz {} /s; the clients run on the same {cores} cores as the server",
        rates(&inv_rates),
        rates(&health_rates)
    ));

    // ---- 3. pipeline -----------------------------------------------------------------------------
    deploy(
        &mut server,
        "fibo",
        json!({"runtime": "python", "code": FIBO}),
    )
    .await?;
    let before = db_writes(&http, &base).await?;
    for _ in 0..3 {
        pipeline(&http, &base, steps).await?;
        chain(&http, &base, steps).await?;
    }
    let (mut pipes, mut chains) = (Vec::new(), Vec::new());
    for _ in 0..pipelines {
        pipes.push(pipeline(&http, &base, steps).await?);
        chains.push(chain(&http, &base, steps).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pipe_writes = db_writes(&http, &base).await? - before;
    let (pipes, chains) = (Samples::new(pipes), Samples::new(chains));
    rows.push(
        latency_row(
            &format!("pipeline, {steps} x python fibo(10) (vs {steps} invokes)"),
            &pipes,
            &chains,
        )
        .value_target(
            "p50",
            pipes.median().as_secs_f64() * 1e3,
            Target::AtMost(150.0),
            "ms",
        ),
    );
    print_row(rows.last().unwrap());
    notes.push(format!(
        "pipeline: 3 warm-up pairs, then {pipelines} pairs in turn; per step {} ms by the \
         pipeline, {} ms by the client; {:.1} database writes per pipeline+chain pair",
        ms(pipes.median() / steps as u32),
        ms(chains.median() / steps as u32),
        pipe_writes as f64 / (pipelines + 3) as f64
    ));

    // ---- 4. cold start ---------------------------------------------------------------------------
    let run_cli = Cli::new(
        &[
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            PYTHON,
            "python3",
            "-c",
            "print(1)",
        ],
        "1\n",
    );
    cold_once(&mut server, "cold-warmup").await?;
    run_cli.once().await.context("docker run warm-up")?;
    let (mut cold, mut runs) = (Vec::new(), Vec::new());
    for k in 0..colds {
        cold.push(cold_once(&mut server, &format!("cold-{k}")).await?);
        runs.push(run_cli.once().await.context("docker run")?);
    }
    let (cold, runs) = (Samples::new(cold), Samples::new(runs));
    rows.push(latency_row(
        "cold start, python, warm 0 (vs docker run --rm python3)",
        &cold,
        &runs,
    ));
    print_row(rows.last().unwrap());
    notes.push(format!(
        "cold start: 1 warm-up pair, then {colds} pairs in turn (deploy, first call timed, \
         delete, its container gone; docker run)"
    ));

    drop(http);
    server.stop().await?;

    println!();
    for n in &notes {
        println!("  {n}");
    }
    println!("  whole bench: {:.0} s", started.elapsed().as_secs_f64());
    println!();
    print_summary("functions", &rows);
    Ok(())
}
