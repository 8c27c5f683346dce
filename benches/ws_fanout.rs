//! WebSocket fan-out latency: N subscribers (1,000 by default) on loopback, time from a state
//! change being committed to every subscriber having it. Run with
//! `cargo bench --bench ws_fanout` (or `tox-like-scripts/bench`).
//!
//! The server runs in-process (`ufaas::serve` on 127.0.0.1:0, temporary SQLite file) and is
//! pointed at a Docker socket that does not exist, so every task goes RECEIVED -> PENDING ->
//! STARTING -> FAILED at once: four committed events per task, no containers involved.
//!
//! What is timed: the RECEIVED and PENDING events of each task. Both are committed inside
//! `POST /fn` before it answers 201, so the instant the reply arrives is a reference at or
//! after the commit; latency = arrival at a subscriber - that reference (clamped at 0 and
//! counted as "early" when delivery beat the HTTP reply). A conservative upper bound uses the
//! instant just before the POST was sent. STARTING and FAILED are delivered and checked for
//! loss but not timed: nothing marks their commit from outside the server.
//!
//! Knobs (environment): WS_FANOUT_SUBSCRIBERS (1000), WS_FANOUT_TASKS (100 per phase),
//! WS_FANOUT_GAP_MS (2, pause between single submissions), WS_FANOUT_TARGET_MS (50).
//! The verdict is printed as PASS/MISS; the process exits 0 either way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const MISSING_DOCKER: &str = "unix:///nonexistent/docker.sock";
/// Connections opened at once while connecting the subscribers.
const CONNECT_PARALLELISM: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
const EMFILE: i32 = 24;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Only the fields the subscribers look at; the rest of the frame is skipped.
#[derive(Deserialize)]
struct Frame {
    event: String,
    seq: Option<i64>,
    task_id: Option<String>,
    state: Option<String>,
}

/// What every subscriber shares with the driver while it runs.
struct Shared {
    /// Subscribers whose WebSocket handshake is done.
    connected: AtomicUsize,
    /// Subscribers that have received at least one state event (so are surely subscribed).
    live: AtomicUsize,
    /// State events with seq above `baseline`, over all subscribers.
    counted: AtomicU64,
    /// Seq of the last warm-up event; `i64::MAX` (count nothing) until it is known.
    baseline: AtomicI64,
    lagged: AtomicUsize,
    stop: CancellationToken,
}

#[derive(Default)]
struct Received {
    /// (seq, arrival) of every state event.
    seen: Vec<(i64, Instant)>,
    lagged: usize,
    /// Closed by the server or broken before we asked.
    dropped: Option<String>,
}

/// One submitted task, as the driver saw it.
struct Submitted {
    id: String,
    phase: usize,
    before: Instant,
    after: Instant,
}

fn fd_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// User + system CPU time of this process, from /proc (USER_HZ is 100 on Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn is_emfile(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Io(io) if io.raw_os_error() == Some(EMFILE))
}

async fn subscriber(url: String, gate: Arc<Semaphore>, shared: Arc<Shared>) -> Result<Received> {
    let permit = gate.acquire_owned().await?;
    let (ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url)).await {
        Err(_) => bail!(
            "connecting to {url} took over {CONNECT_TIMEOUT:?} (the server may be out of file descriptors: raise `ulimit -n`)"
        ),
        Ok(Err(e)) if is_emfile(&e) => bail!(
            "connecting failed with EMFILE (too many open files): raise the limit, e.g. `ulimit -n 65536` (it is {:?})",
            fd_soft_limit()
        ),
        Ok(Err(e)) => return Err(anyhow!(e).context(format!("connecting to {url}"))),
        Ok(Ok(ok)) => ok,
    };
    drop(permit);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = ws.split();
    let mut out = Received::default();
    loop {
        let msg = tokio::select! {
            biased;
            m = rx.next() => m,
            _ = shared.stop.cancelled() => break,
        };
        let at = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                out.dropped = Some(format!("server closed: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                out.dropped = Some(format!("read error: {e}"));
                break;
            }
            None => {
                out.dropped = Some("stream ended".into());
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        match (frame.event.as_str(), frame.seq) {
            ("state", Some(seq)) => {
                if out.seen.is_empty() {
                    shared.live.fetch_add(1, Ordering::Relaxed);
                }
                out.seen.push((seq, at));
                if seq > shared.baseline.load(Ordering::Relaxed) {
                    shared.counted.fetch_add(1, Ordering::Relaxed);
                }
            }
            ("lagged", _) => {
                out.lagged += 1;
                shared.lagged.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    if out.dropped.is_none() {
        // Our close: say so, then read until the server's close (or give up after a while).
        let _ = tx.send(Message::Close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = rx.next().await {}
        })
        .await;
    }
    Ok(out)
}

/// Every stored event after `since`, as (seq, task_id, state), read as a replay: the pong to a
/// ping sent at once comes after the replay, since the server reads messages only once live.
async fn replay(addr: &str, since: i64) -> Result<Vec<(i64, String, String)>> {
    let url = format!("ws://{addr}/fn/ws?since={since}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .context("replay connect")?;
    ws.send(Message::text(json!({"op": "ping"}).to_string()))
        .await?;
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("replay: no pong in 30 s")?;
        let Some(Ok(Message::Text(text))) = msg else {
            match msg {
                Some(Ok(_)) => continue,
                other => bail!("replay ended early: {other:?}"),
            }
        };
        let f: Frame = serde_json::from_str(&text)?;
        match f.event.as_str() {
            "state" => events.push((
                f.seq.unwrap_or_default(),
                f.task_id.unwrap_or_default(),
                f.state.unwrap_or_default(),
            )),
            "pong" => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(events)
}

async fn submit(http: &reqwest::Client, base: &str, phase: usize) -> Result<Submitted> {
    let spec = json!({"task_name": "bench", "image": "ufaas/busybox:latest", "cmd_list": ["true"]});
    let before = Instant::now();
    let resp = http.post(format!("{base}/fn")).json(&spec).send().await?;
    let after = Instant::now();
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status.as_u16() != 201 {
        bail!("POST /fn answered {status}: {body}");
    }
    let id = body["id"].as_str().context("no id in reply")?.to_string();
    Ok(Submitted {
        id,
        phase,
        before,
        after,
    })
}

async fn task_state(http: &reqwest::Client, base: &str, id: &str) -> Result<Value> {
    Ok(http
        .get(format!("{base}/fn/{id}"))
        .send()
        .await?
        .json()
        .await?)
}

async fn wait_ended(http: &reqwest::Client, base: &str, ids: &[String]) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let t = task_state(http, base, id).await?;
            if matches!(
                t["state"].as_str(),
                Some("FINISHED" | "FAILED" | "CANCELLED" | "EXPIRED")
            ) {
                out.push(t);
                break;
            }
            if Instant::now() > deadline {
                bail!("task {id} did not end within 60 s: {t}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(out)
}

/// Arrival - the 201 of the event's POST, clamped at 0; true when it was clamped (the event
/// beat the HTTP reply).
fn since_201(at: Instant, task: &Submitted) -> (Duration, bool) {
    match at.checked_duration_since(task.after) {
        Some(d) => (d, false),
        None => (Duration::ZERO, true),
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

struct Row {
    phase: &'static str,
    reference: &'static str,
    samples: Vec<Duration>,
    early: usize,
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
    let n = env_num("WS_FANOUT_SUBSCRIBERS", 1000) as usize;
    let k = env_num("WS_FANOUT_TASKS", 100) as usize;
    let gap = Duration::from_millis(env_num("WS_FANOUT_GAP_MS", 2));
    let target = Duration::from_millis(env_num("WS_FANOUT_TARGET_MS", 50));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());

    // Each subscriber is one client socket and one server socket, plus the database & co.
    let need = 2 * n as u64 + 200;
    if let Some(limit) = fd_soft_limit() {
        if limit < need {
            bail!(
                "open-files limit is {limit}, this bench needs about {need}: run `ulimit -n 65536` \
                 (tox-like-scripts/bench does) or set WS_FANOUT_SUBSCRIBERS lower"
            );
        }
    }

    // ---- server ---------------------------------------------------------------------------
    let dir = tempfile::tempdir()?;
    let mut cfg = ufaas::config::ServeConfig::defaults();
    cfg.db = dir.path().join("ufaas.db");
    cfg.ws_queue = 4096;
    cfg.max_queue = 1_000_000;
    cfg.docker_host = Some(MISSING_DOCKER.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let base = format!("http://{addr}");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(ufaas::serve(cfg, listener, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let up_by = Instant::now() + Duration::from_secs(20);
    loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() > up_by => bail!("server did not come up in 20 s"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }

    // ---- subscribers ----------------------------------------------------------------------
    let shared = Arc::new(Shared {
        connected: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        counted: AtomicU64::new(0),
        baseline: AtomicI64::new(i64::MAX),
        lagged: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let url = format!("ws://{addr}/fn/ws");
    let connect_start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|_| tokio::spawn(subscriber(url.clone(), gate.clone(), shared.clone())))
        .collect();
    // Wait until every subscriber has its connection, or one of them failed.
    while shared.connected.load(Ordering::Relaxed) < n {
        if clients.iter().any(|c| c.is_finished()) {
            shared.stop.cancel();
            for c in clients {
                if let Ok(Err(e)) = c.await {
                    return Err(e.context("a subscriber failed while connecting"));
                }
            }
            bail!("a subscriber ended while connecting");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_time = connect_start.elapsed();

    // ---- warm-up: every subscriber has seen an event, so is subscribed ------------------------
    let warm_start = Instant::now();
    let mut warm_ids = Vec::new();
    let mut warm_tasks = Vec::new();
    for _ in 0..20 {
        let s = submit(&http, &base, 0).await?;
        warm_ids.push(s.id);
        let until = Instant::now() + Duration::from_secs(3);
        while shared.live.load(Ordering::Relaxed) < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if shared.live.load(Ordering::Relaxed) >= n {
            warm_tasks = wait_ended(&http, &base, &warm_ids).await?;
            break;
        }
    }
    let subscribed = shared.live.load(Ordering::Relaxed);
    if subscribed < n {
        bail!("only {subscribed} of {n} subscribers ever received an event during warm-up");
    }
    let warm_events = replay(&addr, 0).await?;
    let baseline = warm_events.iter().map(|e| e.0).max().unwrap_or(0);
    // Events one task commits (RECEIVED, PENDING, STARTING, FAILED), as the warm-up showed.
    let per_task = warm_ids
        .last()
        .map_or(4, |id| warm_events.iter().filter(|e| &e.1 == id).count())
        as u64;
    // Let the warm-up's STARTING/FAILED reach everyone before timing starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    shared.baseline.store(baseline, Ordering::SeqCst);
    let warm_time = warm_start.elapsed();
    let failure = warm_tasks
        .last()
        .map(|t| format!("{} ({})", t["state"], t["error"]))
        .unwrap_or_default();

    // ---- measurement ------------------------------------------------------------------------
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let mut submitted: Vec<Submitted> = Vec::with_capacity(2 * k);
    // Phase 1, single: one task at a time; its events reach every subscriber before the next
    // POST, so no event waits behind another task's.
    let mut stalled = 0usize;
    for _ in 0..k {
        let before = shared.counted.load(Ordering::Relaxed);
        submitted.push(submit(&http, &base, 1).await?);
        let want = before + per_task * n as u64;
        let until = Instant::now() + Duration::from_secs(10);
        while shared.counted.load(Ordering::Relaxed) < want {
            if Instant::now() > until {
                stalled += 1;
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        tokio::time::sleep(gap).await;
    }
    // Phase 2, burst: k POSTs in flight at once.
    let burst: Vec<_> = (0..k)
        .map(|_| {
            let http = http.clone();
            let base = base.clone();
            tokio::spawn(async move { submit(&http, &base, 2).await })
        })
        .collect();
    for b in burst {
        submitted.push(b.await??);
    }
    let ids: Vec<String> = submitted.iter().map(|s| s.id.clone()).collect();
    wait_ended(&http, &base, &ids).await?;
    let expected = replay(&addr, baseline).await?;
    let want = expected.len() as u64 * n as u64;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    while shared.counted.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = wall0.elapsed();
    let cpu = match (cpu0, cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    // ---- close clients, stop server -----------------------------------------------------------
    shared.stop.cancel();
    let mut results = Vec::with_capacity(n);
    for c in clients {
        results.push(c.await??);
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(60), server).await {
        Ok(Ok(Ok(()))) => {}
        other => bail!("server stopped badly: {other:?}"),
    }

    // ---- analysis -----------------------------------------------------------------------------
    let by_task: HashMap<&str, &Submitted> = submitted.iter().map(|s| (s.id.as_str(), s)).collect();
    // seq -> (task, state), for every event the measured tasks committed.
    let events: HashMap<i64, (&Submitted, &str)> = expected
        .iter()
        .filter_map(|(seq, task, state)| {
            by_task
                .get(task.as_str())
                .map(|s| (*seq, (*s, state.as_str())))
        })
        .collect();
    let mut per_task_states: HashMap<&str, Vec<&str>> = HashMap::new();
    for (_, task, state) in &expected {
        per_task_states
            .entry(task.as_str())
            .or_default()
            .push(state.as_str());
    }
    let shapes: HashSet<String> = per_task_states.values().map(|v| v.join(" -> ")).collect();

    // rows[row(phase, kind)]; phases: single, burst, all.
    const PHASES: [&str; 3] = ["single", "burst", "all"];
    const KINDS: [&str; 4] = ["after 201", "before POST", "last/201", "last/POST"];
    const ALL: usize = 2;
    let row = |phase: usize, kind: usize| phase * KINDS.len() + kind;
    let mut rows: Vec<Row> = PHASES
        .iter()
        .flat_map(|p| KINDS.iter().map(move |k| (p, k)))
        .map(|(phase, reference)| Row {
            phase,
            reference,
            samples: Vec::new(),
            early: 0,
        })
        .collect();
    // Per timed event: its arrival at the slowest subscriber.
    let mut slowest: HashMap<i64, Instant> = HashMap::new();
    let mut missed_subscribers = 0usize;
    let mut missed_events = 0usize;
    let mut dropped = Vec::new();
    for r in &results {
        let mut got: HashSet<i64> = HashSet::new();
        for &(seq, at) in &r.seen {
            let Some(&(task, state)) = events.get(&seq) else {
                continue;
            };
            if !got.insert(seq) || !matches!(state, "RECEIVED" | "PENDING") {
                continue;
            }
            let phase = task.phase - 1;
            let (after, early) = since_201(at, task);
            for p in [phase, ALL] {
                rows[row(p, 0)].samples.push(after);
                rows[row(p, 0)].early += usize::from(early);
                rows[row(p, 1)]
                    .samples
                    .push(at.saturating_duration_since(task.before));
            }
            let last = slowest.entry(seq).or_insert(at);
            *last = (*last).max(at);
        }
        let missing = events.len() - got.len();
        if missing > 0 {
            missed_subscribers += 1;
            missed_events += missing;
        }
        if let Some(d) = &r.dropped {
            dropped.push(d.clone());
        }
    }
    for (seq, &at) in &slowest {
        let task = events[seq].0;
        let (after, early) = since_201(at, task);
        for p in [task.phase - 1, ALL] {
            rows[row(p, 2)].samples.push(after);
            rows[row(p, 2)].early += usize::from(early);
            rows[row(p, 3)]
                .samples
                .push(at.saturating_duration_since(task.before));
        }
    }
    let lagged: usize = results.iter().map(|r| r.lagged).sum();

    // ---- report -------------------------------------------------------------------------------
    for row in &mut rows {
        row.samples.sort_unstable();
    }
    let line = "-".repeat(77);
    println!();
    println!("ws_fanout: WebSocket fan-out latency, commit -> every subscriber");
    println!(
        "  {n} subscribers on loopback ({addr}); server and clients in one process, {cores} cores"
    );
    println!(
        "  docker_host = {MISSING_DOCKER} (does not exist): tasks go {} at once, no containers",
        shapes.into_iter().collect::<Vec<_>>().join(" | ")
    );
    println!("  warm-up task ended {failure}");
    println!(
        "  timed: RECEIVED and PENDING of {} tasks; STARTING/FAILED delivered and checked, not timed",
        submitted.len()
    );
    println!(
        "    single: {k} tasks one at a time (next POST once all {per_task} events of the last reached everyone, +{} ms)",
        gap.as_millis()
    );
    println!("    burst:  {k} POSTs in flight at once");
    println!("  reference (latency = arrival at a subscriber - reference):");
    println!(
        "    after 201    the POST's 201 arrived. Both events were committed before it, so this"
    );
    println!(
        "                 is a lower bound; arrival before the reply counts as 0 and as 'early'"
    );
    println!("    before POST  just before the POST was sent: an upper bound (in a burst it also");
    println!("                 holds the time the request queued behind the others)");
    println!("    last/201     per event: arrival at its slowest subscriber, i.e. when every");
    println!("    last/POST    subscriber has it; from the 201 (lower) or before the POST (upper)");
    println!();
    println!(
        "  {:<6}  {:<11}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}",
        "phase", "reference", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "early"
    );
    println!("  {line}");
    for (i, row) in rows.iter().enumerate() {
        let s = &row.samples;
        let early = if row.reference.ends_with("POST") {
            "-".to_string()
        } else {
            row.early.to_string()
        };
        if i > 0 && i % KINDS.len() == 0 {
            println!();
        }
        println!(
            "  {:<6}  {:<11}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}",
            row.phase,
            row.reference,
            s.len(),
            ms(pct(s, 50.0)),
            ms(pct(s, 90.0)),
            ms(pct(s, 99.0)),
            ms(s.last().copied().unwrap_or_default()),
            early
        );
    }
    println!("  {line}");
    let expected_samples = 2 * submitted.len() * n;
    let complete = missed_subscribers == 0 && rows[row(ALL, 0)].samples.len() == expected_samples;
    println!(
        "  deliveries timed                 {} of {expected_samples} ({} tasks x 2 events x {n})",
        rows[row(ALL, 0)].samples.len(),
        submitted.len()
    );
    println!(
        "  subscribers that missed an event {missed_subscribers} ({missed_events} of {} events x {n} not received)",
        events.len()
    );
    println!("  lagged frames                    {lagged}");
    println!(
        "  closed early by the server       {}{}",
        dropped.len(),
        dropped
            .first()
            .map(|d| format!(" (first: {d})"))
            .unwrap_or_default()
    );
    if stalled > 0 {
        println!("  single tasks not delivered in 10 s: {stalled}");
    }
    println!(
        "  {:<32} {:.2} s ({CONNECT_PARALLELISM} handshakes at a time)",
        format!("connecting {n} subscribers"),
        connect_time.as_secs_f64()
    );
    println!(
        "  warm-up                          {:.2} s",
        warm_time.as_secs_f64()
    );
    match cpu {
        Some(c) => println!(
            "  measurement                      {:.2} s wall, {:.2} s CPU (user+sys, whole process) = {:.0}% of {cores} cores",
            wall.as_secs_f64(),
            c.as_secs_f64(),
            100.0 * c.as_secs_f64() / wall.as_secs_f64() / cores as f64
        ),
        None => println!(
            "  measurement                      {:.2} s wall",
            wall.as_secs_f64()
        ),
    }
    let verdict = |d: Duration| {
        if d < target && complete {
            "PASS"
        } else {
            "MISS"
        }
    };
    let all = &rows[row(ALL, 0)].samples;
    let p99 = pct(all, 99.0);
    let last = &rows[row(ALL, 2)].samples;
    let last_p99 = pct(last, 99.0);
    let missed_note = if complete {
        ""
    } else {
        " (events were missed)"
    };
    println!(
        "  target p99 < {} ms, all deliveries (all, after 201): {} ms -> {}{missed_note}",
        target.as_millis(),
        ms(p99),
        verdict(p99)
    );
    println!(
        "  same, time until every subscriber has it (all, last/201): {} ms -> {}{missed_note}",
        ms(last_p99),
        verdict(last_p99)
    );
    println!();
    // Headline numbers, one line each, gathered by tox-like-scripts/bench into its summary.
    let t = target.as_millis();
    println!(
        "summary\tws_fanout\t{n} subs, commit->subscriber p50 / p99\t{} / {} ms\tp99 < {t} ms\t{}",
        ms(pct(all, 50.0)),
        ms(p99),
        verdict(p99)
    );
    println!(
        "summary\tws_fanout\t{n} subs, commit->all have it p50 / p99\t{} / {} ms\tp99 < {t} ms\t{}",
        ms(pct(last, 50.0)),
        ms(last_p99),
        verdict(last_p99)
    );
    Ok(())
}
