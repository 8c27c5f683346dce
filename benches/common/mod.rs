//! What the benches that run the release server in its own process share (`vs_docker`,
//! `functions`): the server as a child process, the baseline container, timed samples, the
//! table of rows and its `summary` lines. Each bench includes it with
//! `#[path = "common/mod.rs"] mod common;` (a directory, so that cargo does not take it for
//! a bench of its own); not every bench uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command as StdCommand, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

/// The release build of the server, built by cargo alongside the bench.
pub const UFAAS_BIN: &str = env!("CARGO_BIN_EXE_ufaas");
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- the server as a process ------------------------------------------------------------------

pub struct Server {
    child: Child,
    pub base: String,
    /// This server's own client, dropped before SIGTERM: the server's graceful shutdown
    /// waits for every open connection, and a pooled one the client opened but never sent a
    /// request on holds it until the client's idle timeout (90 s).
    http: Option<reqwest::Client>,
    /// Held so the server's stdout stays open.
    _stdout: BufReader<ChildStdout>,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// Docker label filters (`ufaas.task=ID`, `ufaas.function=NS/NAME@VERSION`) of containers
    /// that outlive their tasks (daemons, slot holders, warm function containers): removed
    /// by label if the server has to be killed.
    pub kept: Vec<String>,
}

impl Server {
    /// `ufaas serve --listen 127.0.0.1:0` on a temporary database, with `args`; its log goes
    /// to `$log_dir_var/NAME.log` when that variable is set (RUST_LOG is passed on).
    pub async fn start(name: &str, log_dir_var: &str, args: &[&str]) -> Result<Server> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let dir = tempfile::tempdir()?;
        let log = match std::env::var_os(log_dir_var) {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                PathBuf::from(d).join(format!("{name}.log"))
            }
            None => dir.path().join("server.log"),
        };
        let mut child = StdCommand::new(UFAAS_BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("ufaas.db"))
            // tinyFaaS's doors have fixed default ports: none for a benchmark's servers
            // unless the bench asks for one (clap refuses a flag given twice).
            .args(
                ["--gateway-listen", "--grpc-listen", "--coap-listen"]
                    .into_iter()
                    .filter(|door| !args.contains(door))
                    .flat_map(|door| [door, "off"]),
            )
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

    pub fn http(&self) -> &reqwest::Client {
        self.http.as_ref().expect("the client lives until stop")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS")
    }

    pub fn db_bytes(&self) -> u64 {
        ["ufaas.db", "ufaas.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// SIGTERM, then wait for a clean exit (the server removes its containers first).
    pub async fn stop(mut self) -> Result<()> {
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
            for label in &self.kept {
                let filter = format!("label={label}");
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

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A container of the baselines (`docker run -d --rm --network none IMAGE sleep SECS`),
/// removed when dropped.
pub struct Baseline(pub String);

impl Baseline {
    pub async fn start(image: &str, secs: u64) -> Result<Baseline> {
        let secs = secs.to_string();
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--network",
                "none",
                image,
                "sleep",
                &secs,
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

// ---- timed samples ----------------------------------------------------------------------------

/// A command line, timed as a whole; it must exit 0 with this stdout.
pub struct Cli {
    pub argv: Vec<String>,
    pub stdout: &'static str,
}

impl Cli {
    pub fn new(argv: &[&str], stdout: &'static str) -> Cli {
        Cli {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdout,
        }
    }

    pub async fn once(&self) -> Result<Duration> {
        let argv = &self.argv;
        let t0 = Instant::now();
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .await?;
        let took = t0.elapsed();
        if !out.status.success() || out.stdout != self.stdout.as_bytes() {
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

/// Sorted samples.
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples(v)
    }

    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.pct(50.0)
    }

    pub fn p50_p99(&self) -> String {
        format!("{} / {} ms", ms(self.median()), ms(self.pct(99.0)))
    }
}

pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---- the table --------------------------------------------------------------------------------

#[derive(Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Within 0.01.
    Equal(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
            Target::Equal(t) => (v - t).abs() < 0.01,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t}"),
            Target::AtLeast(t) => format!(">= {t}"),
            Target::Equal(t) => format!("= {t}"),
        }
    }
}

/// A target on one number of a row: its ratio (`what` = `ratio`), or a measured value named
/// by `what` (`p50`; empty for the row's one value) in `unit`.
pub struct Check {
    pub what: &'static str,
    pub value: f64,
    pub target: Target,
    pub unit: &'static str,
}

pub struct Row {
    pub measure: String,
    pub ufaas: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    /// Every one must be met for PASS; none: no verdict.
    pub checks: Vec<Check>,
}

impl Row {
    pub fn info(measure: impl Into<String>, ufaas: impl Into<String>) -> Row {
        Row {
            measure: measure.into(),
            ufaas: ufaas.into(),
            baseline: "-".into(),
            ratio: None,
            checks: Vec::new(),
        }
    }

    /// A target on the ratio (which must be set).
    pub fn ratio_target(mut self, target: Target) -> Row {
        let value = self.ratio.unwrap_or(f64::NAN);
        self.checks.push(Check {
            what: "ratio",
            value,
            target,
            unit: "",
        });
        self
    }

    /// A target on a measured value.
    pub fn value_target(
        mut self,
        what: &'static str,
        value: f64,
        target: Target,
        unit: &'static str,
    ) -> Row {
        self.checks.push(Check {
            what,
            value,
            target,
            unit,
        });
        self
    }

    /// Two decimals; three significant digits below 0.1.
    pub fn ratio(&self) -> String {
        match self.ratio {
            None => "-".into(),
            Some(r) if r < 0.1 => format!("{r:.3}"),
            Some(r) => format!("{r:.2}"),
        }
    }

    pub fn target(&self) -> String {
        if self.checks.is_empty() {
            return "-".into();
        }
        // A lone target on the ratio is in the ratio's own terms: `<= 0.8`.
        let alone = self.checks.len() == 1;
        self.checks
            .iter()
            .map(|c| {
                match (
                    if alone && c.what == "ratio" {
                        ""
                    } else {
                        c.what
                    },
                    c.unit,
                ) {
                    ("", "") => c.target.text(),
                    ("", unit) => format!("{} {unit}", c.target.text()),
                    (what, "") => format!("{what} {}", c.target.text()),
                    (what, unit) => format!("{what} {} {unit}", c.target.text()),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn verdict(&self) -> &'static str {
        if self.checks.is_empty() {
            "-"
        } else if self.checks.iter().all(|c| c.target.met(c.value)) {
            "PASS"
        } else {
            "MISS"
        }
    }
}

/// Medians and p99s of both sides; ratio = ufaas median / baseline median.
pub fn latency_row(measure: &str, a: &Samples, b: &Samples) -> Row {
    Row {
        measure: measure.into(),
        ufaas: a.p50_p99(),
        baseline: b.p50_p99(),
        ratio: Some(a.median().as_secs_f64() / b.median().as_secs_f64()),
        checks: Vec::new(),
    }
}

pub fn print_header() {
    println!(
        "  {:<56}  {:>22}  {:>22}  {:>5}  {:>6}  verdict",
        "measure", "ufaas (median / p99)", "baseline (median / p99)", "ratio", "target"
    );
}

pub fn print_row(row: &Row) {
    println!(
        "  {:<56}  {:>22}  {:>22}  {:>5}  {:>6}  {}",
        row.measure,
        row.ufaas,
        row.baseline,
        row.ratio(),
        row.target(),
        row.verdict()
    );
}

/// The headline rows, gathered by tox-like-scripts/bench into its summary (the long form:
/// ufaas, baseline and ratio in their own columns).
pub fn print_summary(bench: &str, rows: &[Row]) {
    for r in rows {
        println!(
            "summary\t{bench}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.measure,
            r.ufaas,
            r.baseline,
            r.ratio(),
            r.target(),
            r.verdict()
        );
    }
}

// ---- the server's API -------------------------------------------------------------------------

pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = http.post(url).json(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// The server's database writes since it started (`database_writes` on /readyz).
pub async fn db_writes(http: &reqwest::Client, base: &str) -> Result<u64> {
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

/// Waits until Docker knows none of `ids` any more (60 s at most).
pub async fn wait_gone(ids: &[String]) -> Result<()> {
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

pub async fn docker_text(args: &[&str]) -> String {
    match Command::new("docker").args(args).output().await {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "?".into(),
    }
}
