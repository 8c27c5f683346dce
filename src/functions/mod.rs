//! Named functions (API.md section 5): code deployed once under `{namespace}/{name}` and
//! invoked many times, each invocation a task with an id, a record and events.
//!
//! [`Functions`] is the registry (SQLite through the store, the live versions in memory),
//! the warm pools ([`pool`]) and the invocation path ([`invoke`]). It reuses the runner's
//! containers (same hardening, agent, labels, reaper of failed removals), the store's task
//! records and the events; the language runtimes and their wire format are in [`protocol`],
//! the deploy body in [`spec`], sealed secrets in [`secrets`].

pub mod host;
pub mod invoke;
pub mod pool;
pub mod protocol;
pub mod secrets;
pub mod spec;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{ApiError, Code};
use crate::runner::{ContainerPlan, Runner};
use crate::store::{NewFunction, Store, StoredFunction};
use pool::{Pool, Sizes, Todo, WarmContainer, Worker};
use secrets::Secrets;
use spec::{FunctionSpec, Runtime};

/// The label every function container carries: `ns/name@version`.
pub const LABEL_FUNCTION: &str = "ufaas.function";

/// One version of a function, live: its spec, its code and its pool.
pub struct Deployed {
    pub namespace: String,
    pub name: String,
    pub version: i64,
    pub spec: FunctionSpec,
    /// The code directory as a tar, placed in every container.
    pub files: Vec<u8>,
    pub created_at: String,
    pub updated_at: String,
    pub pool: Pool,
}

impl Deployed {
    /// `ns/name`, as task records and the logs name it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn sizes(spec: &FunctionSpec) -> Sizes {
        Sizes {
            warm: spec.warm as usize,
            max_containers: spec.max_containers as usize,
            concurrency: spec.concurrency as usize,
            max_queue: spec.max_queue,
        }
    }
}

/// Why a deploy was refused beyond its body's checks.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("{0}")]
    Unavailable(String),
}

pub struct Functions {
    runner: Arc<Runner>,
    live: RwLock<HashMap<String, Arc<Deployed>>>,
    secrets: Secrets,
    /// One deploy (or delete) at a time: versions are numbered in order.
    deploying: tokio::sync::Mutex<()>,
    next_call: AtomicU64,
    callbacks: reqwest::Client,
}

impl Functions {
    pub fn new(runner: Arc<Runner>) -> anyhow::Result<Arc<Functions>> {
        let cfg = runner.config();
        let secrets = Secrets::open(&cfg.db)?;
        let callbacks = crate::resources::http_client(
            Duration::from_secs(cfg.fetch_timeout),
            cfg.policy().fetch_guard,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Functions {
            runner,
            live: RwLock::new(HashMap::new()),
            secrets,
            deploying: tokio::sync::Mutex::new(()),
            next_call: AtomicU64::new(1),
            callbacks,
        }))
    }

    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    pub fn store(&self) -> &Store {
        self.runner.store()
    }

    fn next_call(&self) -> u64 {
        self.next_call.fetch_add(1, Ordering::Relaxed)
    }

    /// The live version of `ns/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Deployed>> {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Every live function, by name.
    pub fn all(&self) -> Vec<Arc<Deployed>> {
        let mut v: Vec<_> = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// At start: every stored function comes back with its warm containers (started in the
    /// background), and invocations a previous run left are settled: those that waited run
    /// now, those that were running are failed (their container is gone).
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        for stored in self.store().list_functions().await? {
            let label = format!("{}/{}", stored.namespace, stored.name);
            match self.deployed_from(stored) {
                Ok(d) => {
                    let d = Arc::new(d);
                    self.live
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d.full_name(), d.clone());
                    let todo = d.pool.fill();
                    self.act(&d, todo);
                }
                Err(e) => {
                    tracing::error!(function = %label, error = %e, "a stored function cannot be loaded")
                }
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.settle_unended().await {
                tracing::error!(error = %e, "settling the previous run's invocations failed");
            }
        });
        let me = self.clone();
        tokio::spawn(async move { me.reap().await });
        Ok(())
    }

    fn deployed_from(&self, stored: StoredFunction) -> Result<Deployed, String> {
        let files = spec::bundle_from_tar(&stored.code, pool::CODE_DIR)?;
        let spec = spec::from_stored(stored.config, files)?;
        Ok(Deployed {
            files: stored.code,
            pool: Pool::new(Deployed::sizes(&spec)),
            spec,
            namespace: stored.namespace,
            name: stored.name,
            version: stored.version,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        })
    }

    /// `PUT /functions/{ns}/{name}`: checks the body, starts the new version's warm
    /// containers (a runtime that cannot load the code refuses the deploy, and nothing
    /// changes), stores it, makes it live and retires the old version once its calls end.
    /// Returns the function and whether it was created.
    pub async fn deploy(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> Result<(Arc<Deployed>, bool), DeployError> {
        spec::check_name(namespace, "namespace")?;
        spec::check_name(name, "name")?;
        let cfg = self.runner.config();
        let (policy, max_code, max_extract) =
            (cfg.policy(), cfg.max_body_bytes, cfg.max_extract_bytes);
        // Off the async threads: an archive is decoded, unpacked and hashed.
        let parsed =
            tokio::task::spawn_blocking(move || spec::parse(body, &policy, max_code, max_extract))
                .await
                .map_err(|e| ApiError::internal(format!("checking the function: {e}")))??;
        for (i, s) in parsed.secrets.iter().enumerate() {
            let known = self
                .secrets
                .get(self.store(), s)
                .await
                .map_err(|e| DeployError::Unavailable(e.to_string()))?;
            if known.is_none() {
                return Err(ApiError::bad_request(
                    Code::InvalidValue,
                    format!("secrets[{i}]"),
                    format!("secret `{s}` is not set (PUT /secrets/{s} first)"),
                )
                .into());
            }
        }
        self.install(namespace, name, |_| Ok(parsed)).await
    }

    /// Backstage Functions' `PUT|DELETE /functions/{ns}/{name}/env/{VAR}`: a new version of
    /// the function with `var` set to `value` (`None`: removed), deployed as a replace is.
    /// 404 when there is no such function, or (removing) no such variable.
    pub async fn set_env(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        var: &str,
        value: Option<String>,
    ) -> Result<Arc<Deployed>, DeployError> {
        let changed = self
            .install(namespace, name, |old| {
                let old = old.ok_or_else(|| {
                    ApiError::new(Code::NotFound, format!("no function {namespace}/{name}"))
                        .with_field("name")
                })?;
                let mut spec = old.spec.clone();
                let mut env = match spec.raw.get("env") {
                    Some(Value::Object(m)) => m.clone(),
                    _ => serde_json::Map::new(),
                };
                match value {
                    Some(v) => {
                        env.insert(var.to_string(), Value::String(v));
                    }
                    None if env.remove(var).is_none() => {
                        return Err(ApiError::new(
                            Code::NotFound,
                            format!(
                                "function {namespace}/{name} has no environment variable {var}"
                            ),
                        )
                        .with_field(format!("env.{var}"))
                        .into());
                    }
                    None => {}
                }
                // Checked as a body's `env` is: the name's form, no NUL in the value.
                let body = serde_json::Map::from_iter([("env".to_string(), Value::Object(env))]);
                spec.env = crate::spec::parse_env(&body)?;
                if let (Value::Object(raw), Some(env)) = (&mut spec.raw, body.get("env")) {
                    if spec.env.is_empty() {
                        raw.remove("env");
                    } else {
                        raw.insert("env".into(), env.clone());
                    }
                }
                Ok(spec)
            })
            .await?;
        Ok(changed.0)
    }

    /// Makes the spec `make` gives (from the live version, if any) the live version of
    /// `ns/name`: one deploy at a time, so `make` sees the version it replaces.
    async fn install(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        make: impl FnOnce(Option<&Arc<Deployed>>) -> Result<FunctionSpec, DeployError>,
    ) -> Result<(Arc<Deployed>, bool), DeployError> {
        let _one = self.deploying.lock().await;
        let old = self.get(namespace, name);
        let parsed = make(old.as_ref())?;
        let files = spec::bundle_tar(&parsed, pool::CODE_DIR)
            .map_err(|e| DeployError::Unavailable(format!("packing the code: {e}")))?;
        let candidate = Arc::new(Deployed {
            namespace: namespace.to_string(),
            name: name.to_string(),
            version: old.as_ref().map_or(0, |o| o.version) + 1,
            pool: Pool::new(Deployed::sizes(&parsed)),
            files,
            spec: parsed,
            created_at: String::new(),
            updated_at: String::new(),
        });
        // The new version is tried before it is stored: its first warm container must load
        // the code.
        if candidate.spec.warm > 0 {
            let todo = candidate.pool.fill();
            let mut first = Some(());
            for _ in 0..todo.start {
                let result = self.start_container(&candidate).await;
                match result {
                    Ok(()) => {}
                    Err(StartError::Load(why)) if first.is_some() => {
                        for id in candidate.pool.retire() {
                            self.runner.remove_function_container(&id).await;
                        }
                        let field = if candidate.spec.raw.get("archive").is_some() {
                            "archive"
                        } else {
                            "code"
                        };
                        return Err(ApiError::bad_request(
                            Code::InvalidCode,
                            field,
                            format!(
                                "the {} runtime cannot load the code: {why}",
                                candidate.spec.runtime.as_str()
                            ),
                        )
                        .into());
                    }
                    Err(StartError::Load(why) | StartError::Other(why)) => {
                        if first.is_some() {
                            for id in candidate.pool.retire() {
                                self.runner.remove_function_container(&id).await;
                            }
                            return Err(DeployError::Unavailable(why));
                        }
                    }
                }
                first = None;
            }
        }
        let stored = self
            .store()
            .put_function(NewFunction {
                namespace,
                name,
                runtime: candidate.spec.runtime.as_str(),
                config: &candidate.spec.stored_config(),
                code: &candidate.files,
                code_sha256: &candidate.spec.code_sha256,
            })
            .await;
        let (stored, created) = match stored {
            Ok(s) => s,
            Err(e) => {
                for id in candidate.pool.retire() {
                    self.runner.remove_function_container(&id).await;
                }
                return Err(ApiError::from(e).into());
            }
        };
        // The stored version is the one that counts (versions survive a delete's gap).
        let deployed = match Arc::try_unwrap(candidate) {
            Ok(mut d) => {
                d.version = stored.version;
                d.created_at = stored.created_at;
                d.updated_at = stored.updated_at;
                Arc::new(d)
            }
            Err(shared) => shared,
        };
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(deployed.full_name(), deployed.clone());
        if let Some(old) = old {
            self.retire(&old).await;
        }
        Ok((deployed, created))
    }

    /// `DELETE /functions/{ns}/{name}`: calls in flight finish, then its containers go.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<bool, ApiError> {
        let _one = self.deploying.lock().await;
        let stored = self.store().delete_function(namespace, name).await?;
        let live = self
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("{namespace}/{name}"));
        if let Some(d) = &live {
            self.retire(d).await;
        }
        Ok(stored || live.is_some())
    }

    async fn retire(&self, d: &Deployed) {
        for id in d.pool.retire() {
            self.runner.remove_function_container(&id).await;
        }
    }

    /// Carries out what a pool asked for: containers started in the background, removed.
    fn act(self: &Arc<Self>, d: &Arc<Deployed>, todo: Todo) {
        for id in todo.remove {
            let me = self.clone();
            tokio::spawn(async move { me.runner.remove_function_container(&id).await });
        }
        for _ in 0..todo.start {
            let me = self.clone();
            let d = d.clone();
            self.runner.track(async move {
                if let Err(e) = me.start_container(&d).await {
                    tracing::warn!(function = %d.full_name(), error = %e.message(), "a warm container could not be started");
                }
            });
        }
    }

    /// Makes one container for `d` (its files and secrets placed, its runtimes started and
    /// ready) and gives it to the pool.
    async fn start_container(self: &Arc<Self>, d: &Arc<Deployed>) -> Result<(), StartError> {
        let made = self.make_container(d).await;
        match made {
            Ok((container, workers)) => {
                let id = container.id.clone();
                if self.runner.is_stopping() || !d.pool.started(container, workers) {
                    self.runner.remove_function_container(&id).await;
                }
                Ok(())
            }
            Err(e) => {
                d.pool.start_failed(e.message().to_string());
                Err(e)
            }
        }
    }

    async fn make_container(
        &self,
        d: &Deployed,
    ) -> Result<(Arc<WarmContainer>, Vec<Worker>), StartError> {
        let spec = &d.spec;
        let mut files = d.files.clone();
        if !spec.secrets.is_empty() {
            files = self
                .with_secrets(files, &spec.secrets)
                .await
                .map_err(StartError::Other)?;
        }
        let plan = ContainerPlan {
            label: (LABEL_FUNCTION, format!("{}@{}", d.full_name(), d.version)),
            image: &spec.image,
            working_dir: Some(pool::CODE_DIR.to_string()),
            workdir: pool::CODE_DIR,
            limits: &spec.limits,
            network: spec.network,
            tmpfs: HashMap::new(),
            binds: Vec::new(),
            log: false,
        };
        let (cid, agent) = self
            .runner
            .start_function_container(plan, files)
            .await
            .map_err(StartError::Other)?;
        let first_job = spec.concurrency + 1;
        let container = Arc::new(WarmContainer::new(cid.clone(), agent, 1));
        // Before the runtimes start, so code run at import sees them too.
        self.place_faasm_files(d, &container).await;
        let mut workers = Vec::new();
        let lang = match spec.runtime {
            Runtime::Python => Some(protocol::Lang::Python),
            Runtime::Node => Some(protocol::Lang::Node),
            Runtime::Shell => None,
        };
        for _ in 0..spec.concurrency {
            match lang {
                Some(lang) => {
                    let env = self.runtime_env(spec);
                    match pool::start_runtime(&container, lang, env, self.max_output()).await {
                        Ok(w) => workers.push(w),
                        Err(why) => {
                            self.runner.remove_function_container(&cid).await;
                            return Err(StartError::Load(why));
                        }
                    }
                }
                None => workers.push(Worker {
                    container: container.clone(),
                    runtime: None,
                }),
            }
        }
        // Shell calls take job ids after the runtimes'.
        while container.next_job() < first_job {}
        Ok((container, workers))
    }

    /// The environment of a runtime process: the function's `env`, then ours.
    fn runtime_env(&self, spec: &FunctionSpec) -> Vec<String> {
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("UFAAS_CODE_DIR={}", pool::CODE_DIR));
        // Without a `handler` the runtime looks for its default file and shapes itself
        // (node: the code directory as a module, so package.json's `main` counts).
        if spec.raw.get("handler").is_some() {
            env.push(format!("UFAAS_HANDLER={}", spec.handler));
        }
        env.push(format!("UFAAS_MAX_OUTPUT={}", self.max_output()));
        env
    }

    /// The largest answer an invocation may give.
    pub fn max_output(&self) -> usize {
        usize::try_from(self.runner.config().max_body_bytes).unwrap_or(usize::MAX)
    }

    /// `files` with the named secrets added under /run/secrets (a second tar appended to the
    /// code's would end at the first's end marker, so the code's is read and written again).
    async fn with_secrets(&self, files: Vec<u8>, names: &[String]) -> Result<Vec<u8>, String> {
        let mut values = Vec::new();
        for name in names {
            let value = self
                .secrets
                .get(self.store(), name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("secret `{name}` is not set"))?;
            values.push((name.clone(), value));
        }
        let mut tar = crate::resources::TarWriter::new();
        let mut archive = tar::Archive::new(std::io::Cursor::new(files));
        let entries = archive.entries().map_err(|e| e.to_string())?;
        for entry in entries {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let path = format!("/{}", entry.path().map_err(|e| e.to_string())?.display());
            let mode = entry.header().mode().unwrap_or(0o644);
            if entry.header().entry_type().is_dir() {
                tar.dir(&path, mode).map_err(|e| e.to_string())?;
            } else if let Ok(Some(target)) = entry.link_name() {
                tar.symlink(&path, &target.display().to_string())
                    .map_err(|e| e.to_string())?;
            } else {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| e.to_string())?;
                tar.file(&path, &data, mode).map_err(|e| e.to_string())?;
            }
        }
        tar.dir(secrets::DIR, 0o755).map_err(|e| e.to_string())?;
        for (name, value) in values {
            tar.file(&format!("{}/{name}", secrets::DIR), &value, 0o444)
                .map_err(|e| e.to_string())?;
        }
        tar.finish().map_err(|e| e.to_string())
    }

    /// `PUT /secrets/{name}`. Functions that use it get new containers (the old ones finish
    /// their calls), so the next call sees the new value.
    pub async fn set_secret(self: &Arc<Self>, name: &str, value: &[u8]) -> Result<(), ApiError> {
        spec::check_secret_name(name, "name")?;
        self.secrets
            .set(self.store(), name, value)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.refresh_users_of(name).await;
        Ok(())
    }

    pub async fn delete_secret(self: &Arc<Self>, name: &str) -> Result<bool, ApiError> {
        spec::check_secret_name(name, "name")?;
        let gone = self.store().delete_secret(name).await?;
        if gone {
            self.refresh_users_of(name).await;
        }
        Ok(gone)
    }

    /// Functions naming `secret` start over with fresh containers of the same version.
    async fn refresh_users_of(self: &Arc<Self>, secret: &str) {
        let _one = self.deploying.lock().await;
        for d in self.all() {
            if !d.spec.secrets.iter().any(|s| s == secret) {
                continue;
            }
            let fresh = Arc::new(Deployed {
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                version: d.version,
                spec: d.spec.clone(),
                files: d.files.clone(),
                created_at: d.created_at.clone(),
                updated_at: d.updated_at.clone(),
                pool: Pool::new(Deployed::sizes(&d.spec)),
            });
            self.live
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(fresh.full_name(), fresh.clone());
            let todo = fresh.pool.fill();
            self.act(&fresh, todo);
            self.retire(&d).await;
        }
    }

    /// Removes idle containers above `warm` past `--keep-alive`, and broken idle ones.
    async fn reap(self: Arc<Self>) {
        let keep_alive = Duration::from_secs(self.runner.config().keep_alive);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.runner.stopping() => return,
            }
            for d in self.all() {
                for id in d.pool.reap(keep_alive) {
                    self.runner.remove_function_container(&id).await;
                }
            }
        }
    }

    /// The function as `GET /functions/{ns}/{name}` shows it.
    pub async fn view(&self, d: &Deployed) -> Value {
        let counts = self
            .store()
            .invocation_counts(&d.full_name())
            .await
            .unwrap_or_default();
        let total: i64 = counts.values().sum();
        let s = &d.spec;
        json!({
            "namespace": d.namespace,
            "name": d.name,
            "version": d.version,
            "runtime": s.runtime.as_str(),
            "handler": s.handler.to_string(),
            "image": s.image,
            "description": s.description,
            "code_sha256": s.code_sha256,
            "env": s.env,
            "secrets": s.secrets,
            "warm": s.warm,
            "max_containers": s.max_containers,
            "concurrency": s.concurrency,
            "max_queue": s.max_queue,
            "timeout": s.timeout,
            "limits": s.raw.get("limits"),
            "network": s.network,
            "created_at": d.created_at,
            "updated_at": d.updated_at,
            "containers": d.pool.counts(),
            "last_start_error": d.pool.last_error(),
            "invocations": {"total": total, "by_state": counts},
        })
    }
}

/// Why a container could not be made.
#[derive(Debug)]
pub enum StartError {
    /// The runtime could not load the code: the user's to fix.
    Load(String),
    /// Docker, the image, a secret.
    Other(String),
}

impl StartError {
    pub fn message(&self) -> &str {
        match self {
            StartError::Load(m) | StartError::Other(m) => m,
        }
    }
}
