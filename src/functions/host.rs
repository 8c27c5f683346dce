//! What a running handler may ask the server for over its protocol channel (the runtime's
//! `host` messages, see [`super::protocol`]): Faasm's state, chained calls and their awaiting
//! (`pyfaasm.core` in the Python runtime), and the files of Faasm's `PUT /file` placed in
//! the containers of Faasm functions. The container keeps no network: all of it travels on
//! the channel the invocation came on.
//!
//! State belongs to the function's namespace (Faasm's user): every function and call of that
//! namespace, and `PUT|GET /s/{user}/{key}`, share it. Writes go straight to the database,
//! so `push_state` and `pull_state` have nothing left to do.
//!
//! Ops (`{"op": …}`), binary data as base64:
//! - `state_size` `{key}` → `{"size"}` (0 for a key never written);
//! - `read_state` `{key, offset?, len?}` → `{"data"}`: bytes `offset..offset+len` of the
//!   value, zeros where it has none (the whole value without `len`);
//! - `write_state` `{key, data}`; `write_state_offset` `{key, total, offset, data}`;
//! - `chain` `{entry | idx, input}` → `{"id"}`: a new invocation of the same function (its
//!   own task), running the file's function `entry` (or `faasm_main` with `idx`), and its
//!   Faasm call id; at most [`MAX_CHAIN_DEPTH`] calls deep;
//! - `await` `{id}` → `{"code"}`: waits for call `id` (of the same user) to end; 0 when it
//!   succeeded, else the code it returned (1 when it failed otherwise). While it waits, the
//!   awaited function may run one container past `max_containers` (`Pool::enter_await`).
//!
//! State writes are refused past the user's quota (`crate::store::faasm`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::invoke::{Call, Refusal};
use super::pool::{WarmContainer, CODE_DIR};
use super::spec::{entry_kind, BundleFile, EntryKind, Runtime};
use super::{Deployed, Functions};
use crate::model::{TaskRecord, TaskState};
use crate::runner::{writable_roots, PlaceError};
use crate::store::FaasmFile;

/// The entry point that makes a Python function a Faasm function.
pub const FAASM_ENTRY: &str = "faasm_main";
/// The header of a chained call naming the file's function it runs.
pub const CHAIN_HEADER: &str = "x-faasm-chain";
/// The header of a chained call giving `get_function_idx()` (Faasm's older chaining).
pub const IDX_HEADER: &str = "x-faasm-idx";
/// The header of a chained call saying how deep in a chain it is (1 for a call chained by
/// a call made from outside). Set by the server; a handler cannot choose it.
pub const DEPTH_HEADER: &str = "x-faasm-depth";
/// How deep chains go: a call this deep may not chain.
pub const MAX_CHAIN_DEPTH: u32 = 16;
/// The longest state key.
pub const KEY_MAX: usize = 1024;

impl Deployed {
    /// A Python function whose entry point is `faasm_main` (deployed by `PUT /p/…`, or any
    /// way with that handler): it sees Faasm's uploaded files.
    pub fn is_faasm(&self) -> bool {
        self.spec.runtime == Runtime::Python
            && self.spec.handler.entry.as_deref() == Some(FAASM_ENTRY)
    }
}

/// Checks a state key.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a state key must not be empty".into());
    }
    if key.len() > KEY_MAX {
        return Err(format!("a state key is at most {KEY_MAX} bytes"));
    }
    if key.contains('\0') {
        return Err("a state key must not hold NUL".into());
    }
    Ok(())
}

/// How deep in a chain the call with `headers` is: 0 for one made from outside (whatever
/// it sent that is not a number).
pub fn chain_depth(headers: &[(String, String)]) -> u32 {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(DEPTH_HEADER))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes `offset..offset+len` of `value`, zeros past its end.
pub fn window(value: &[u8], offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if offset < value.len() {
        let have = (value.len() - offset).min(len);
        out[..have].copy_from_slice(&value[offset..offset + have]);
    }
    out
}

/// The code an ended call gives `await_call`: 0 when it succeeded; the code its Faasm entry
/// returned (the runtime's error says "… returned N"); else 1.
pub fn return_code(task: &TaskRecord) -> i64 {
    if task.state == TaskState::Finished {
        return 0;
    }
    task.error
        .as_deref()
        .and_then(|e| e.split_once(" returned "))
        .and_then(|(_, n)| n.split(':').next()?.trim().parse::<i64>().ok())
        .filter(|c| *c != 0)
        .unwrap_or(1)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn str_arg<'a>(op: &'a Value, name: &str) -> Result<&'a str, String> {
    op.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` must be a string"))
}

fn num_arg(op: &Value, name: &str) -> Result<Option<u64>, String> {
    match op.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a whole number")),
    }
}

fn size_arg(op: &Value, name: &str, max: usize) -> Result<Option<usize>, String> {
    match num_arg(op, name)? {
        None => Ok(None),
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| format!("`{name}` is over the limit of {max} bytes")),
    }
}

fn data_arg(op: &Value, name: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(str_arg(op, name)?)
        .map_err(|e| format!("`{name}` is not base64: {e}"))
}

impl Functions {
    /// Answers a handler's request (`op`) during a call of `d`.
    pub(super) async fn host_op(
        self: &Arc<Self>,
        d: &Deployed,
        call: &Call,
        op: Value,
    ) -> Result<Value, String> {
        let user = d.namespace.as_str();
        let max = self.max_output();
        let db = |e: crate::store::StoreError| match e {
            crate::store::StoreError::Quota(why) => why,
            other => format!("the database failed: {other}"),
        };
        match op.get("op").and_then(Value::as_str).unwrap_or("") {
            "state_size" => {
                let key = str_arg(&op, "key")?;
                check_key(key)?;
                let v = self.store().faasm_state(user, key).await.map_err(db)?;
                Ok(json!({"size": v.map_or(0, |v| v.len())}))
            }
            "read_state" => {
                let key = str_arg(&op, "key")?;
                check_key(key)?;
                let offset = size_arg(&op, "offset", usize::MAX)?.unwrap_or(0);
                let len = size_arg(&op, "len", max)?;
                let v = self
                    .store()
                    .faasm_state(user, key)
                    .await
                    .map_err(db)?
                    .unwrap_or_default();
                let out = match len {
                    Some(len) => window(&v, offset, len),
                    None => v,
                };
                Ok(json!({"data": b64(&out)}))
            }
            "write_state" => {
                let key = str_arg(&op, "key")?;
                check_key(key)?;
                let data = data_arg(&op, "data")?;
                self.store()
                    .put_faasm_state(user, key, &data)
                    .await
                    .map_err(db)?;
                Ok(Value::Null)
            }
            "write_state_offset" => {
                let key = str_arg(&op, "key")?;
                check_key(key)?;
                let total = size_arg(&op, "total", max)?.unwrap_or(0);
                let offset = size_arg(&op, "offset", max)?.unwrap_or(0);
                let data = data_arg(&op, "data")?;
                if offset.saturating_add(data.len()) > total {
                    return Err(format!(
                        "writing {} bytes at offset {offset} goes past the value's length of {total}",
                        data.len()
                    ));
                }
                self.store()
                    .write_faasm_state_at(user, key, total, offset, &data)
                    .await
                    .map_err(db)?;
                Ok(Value::Null)
            }
            "chain" => self.chain(d, call, &op).await,
            "await" => {
                let id = num_arg(&op, "id")?.ok_or("`id` must be a call id")?;
                let id = i64::try_from(id).map_err(|_| format!("no call {id}"))?;
                let task = self
                    .store()
                    .faasm_call(id)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| format!("no call {id}"))?;
                // Subscribed before the record is read, so its end cannot be missed.
                let events = self.store().events().subscribe();
                // A user awaits only its own calls.
                let record = self.store().get(task).await.map_err(db)?;
                let mine = record
                    .as_ref()
                    .and_then(|r| r.function.as_ref())
                    .is_some_and(|f| f.namespace == user);
                if !mine {
                    return Err(format!("no call {id} of user {user}"));
                }
                // This call holds its worker while it waits: the awaited call's function may
                // start one container more (see `Pool::enter_await`) for as long as it does.
                let _blocked = record
                    .as_ref()
                    .and_then(|r| r.function.as_ref())
                    .and_then(|f| self.get(&f.namespace, &f.name))
                    .map(|awaited| AwaitGuard::enter(self, awaited));
                let ended = self
                    .runner()
                    .wait_ended(events, task, Duration::from_secs(u64::from(u32::MAX)))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the server is stopping")?;
                Ok(json!({"code": return_code(&ended)}))
            }
            other => Err(format!("unknown request `{other}`")),
        }
    }

    /// `chain`: a new invocation of `d`'s function running another function of its file,
    /// one level deeper than `caller` (at most [`MAX_CHAIN_DEPTH`]).
    async fn chain(
        self: &Arc<Self>,
        d: &Deployed,
        caller: &Call,
        op: &Value,
    ) -> Result<Value, String> {
        if !d.is_faasm() {
            return Err(format!(
                "chained calls need a Faasm function (handler entry {FAASM_ENTRY})"
            ));
        }
        let depth = chain_depth(&caller.headers);
        if depth >= MAX_CHAIN_DEPTH {
            return Err(format!(
                "chains go at most {MAX_CHAIN_DEPTH} calls deep: this call is {depth} deep and may not chain"
            ));
        }
        let header = match (op.get("entry").and_then(Value::as_str), num_arg(op, "idx")?) {
            (Some(entry), _) if !entry.is_empty() && entry.len() <= 256 => {
                (CHAIN_HEADER.to_string(), entry.to_string())
            }
            (None, Some(idx)) => (IDX_HEADER.to_string(), idx.to_string()),
            _ => return Err("`entry` must name a function of the file (or `idx` be given)".into()),
        };
        let input = data_arg(op, "input")?;
        let call = Call {
            method: "POST".into(),
            path: "/".into(),
            query: Vec::new(),
            headers: vec![header, (DEPTH_HEADER.to_string(), (depth + 1).to_string())],
            has_body: true,
            body: Bytes::from(input),
        };
        let live = self
            .get(&d.namespace, &d.name)
            .ok_or_else(|| format!("{} no longer exists", d.full_name()))?;
        let task = self.invoke_nested(live, call).await.map_err(|r| match r {
            Refusal::NotFound(n) => format!("{n} no longer exists"),
            Refusal::QueueFull(n) => format!("the function's queue is full ({n} calls wait)"),
            Refusal::Store(e) => format!("the database failed: {e}"),
        })?;
        let id = self
            .store()
            .new_faasm_call(task.id)
            .await
            .map_err(|e| format!("the database failed: {e}"))?;
        Ok(json!({"id": id, "task_id": task.id}))
    }

    /// After `PUT /file`: every live container of the Faasm functions gets the new files now,
    /// so a call already running sees them too (the check before each call is the backstop).
    pub async fn spread_faasm_files(&self) {
        for d in self.all().into_iter().filter(|d| d.is_faasm()) {
            for c in d.pool.live_containers() {
                self.place_faasm_files(&d, &c).await;
            }
        }
    }

    /// Places the Faasm files (`PUT /file`) that `container` of `d` lacks: at its start,
    /// and before each call, so a call sees every file uploaded before it began. A file
    /// that cannot be placed there (outside the writable roots under `--read-only-root`,
    /// one that would replace a file of `d`'s own bundle, one Docker refuses) is logged and
    /// passed over, once: it never holds back the files after it. When Docker does not
    /// answer, the call runs without the new files, and the next call tries again.
    pub(super) async fn place_faasm_files(&self, d: &Deployed, container: &WarmContainer) {
        if !d.is_faasm() {
            return;
        }
        let have = container.files_seq.load(Ordering::Relaxed);
        let newest = match self.store().faasm_files_seq().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the Faasm files failed");
                return;
            }
        };
        if newest <= have {
            return;
        }
        let files = match self.store().faasm_files_after(have).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading the Faasm files failed");
                return;
            }
        };
        let read_only_root = self.runner().config().read_only_root;
        let skip = |f: &FaasmFile, why: &str| tracing::warn!(function = %d.full_name(), container = %container.id, path = %f.path, "a Faasm file is not placed: {why}");
        let mut batch = Vec::new();
        for f in &files {
            if let Err(why) = placeable(&f.path, read_only_root) {
                skip(f, &why);
            } else if let Some(own) = bundle_collision(&f.path, &d.spec.files) {
                skip(
                    f,
                    &format!("it would replace `{own}` of the function's own code"),
                );
            } else {
                batch.push(f);
            }
        }
        // Every file is placed or passed over up to `done`.
        let mut done = files.iter().map(|f| f.seq).max().unwrap_or(have);
        match self.place_files(container, &batch).await {
            Ok(()) => {}
            Err(PlaceError::Unavailable(e)) => {
                tracing::warn!(function = %d.full_name(), container = %container.id, error = %e, "placing the Faasm files failed");
                done = have;
            }
            // One of them is refused: each on its own, so the others still arrive.
            Err(PlaceError::Refused(e)) if batch.len() == 1 => skip(batch[0], &e),
            Err(PlaceError::Refused(_)) => {
                for f in &batch {
                    match self.place_files(container, std::slice::from_ref(f)).await {
                        Ok(()) => {}
                        Err(PlaceError::Refused(e)) => skip(f, &e),
                        Err(PlaceError::Unavailable(e)) => {
                            tracing::warn!(function = %d.full_name(), container = %container.id, error = %e, "placing the Faasm files failed");
                            done = files
                                .iter()
                                .map(|g| g.seq)
                                .filter(|s| *s < f.seq)
                                .max()
                                .unwrap_or(have);
                            break;
                        }
                    }
                }
            }
        }
        container.files_seq.fetch_max(done, Ordering::Relaxed);
    }

    /// Places `files` in `container` in one archive.
    async fn place_files(
        &self,
        container: &WarmContainer,
        files: &[&FaasmFile],
    ) -> Result<(), PlaceError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut tar = crate::resources::TarWriter::new();
        for f in files {
            // Owned by root, mode 0444 (what that keeps from whom: README, "Coming from Faasm").
            tar.file(&f.path, &f.data, 0o444)
                .map_err(|e| PlaceError::Refused(e.to_string()))?;
        }
        let tar = tar
            .finish()
            .map_err(|e| PlaceError::Refused(e.to_string()))?;
        self.runner()
            .place_function_files(&container.id, tar, CODE_DIR)
            .await
    }
}

/// Whether the server can place a file at `path` (absolute): under `--read-only-root`
/// only `/tmp` and the function directory take files.
pub fn placeable(path: &str, read_only_root: bool) -> Result<(), String> {
    if !read_only_root {
        return Ok(());
    }
    let roots: Vec<String> = writable_roots(CODE_DIR)
        .into_iter()
        .filter(|r| !r.starts_with("/.ufaas"))
        .collect();
    if roots.iter().any(|r| path.starts_with(&format!("{r}/"))) {
        return Ok(());
    }
    Err(format!(
        "the server runs containers with a read-only root: files can only be placed under {}",
        roots.join(" and ")
    ))
}

/// The entry of `bundle` (paths relative to [`CODE_DIR`]) that a file at `path` would
/// replace or reach through: the same path, a file or link above it, or a directory it
/// would turn into a file.
pub fn bundle_collision<'a>(path: &str, bundle: &'a [BundleFile]) -> Option<&'a str> {
    let rel = path.strip_prefix(CODE_DIR)?.strip_prefix('/')?;
    bundle
        .iter()
        .map(|(p, _, mode)| (p.as_str(), *mode))
        .find_map(|(p, mode)| {
            let p_trim = p.trim_end_matches('/');
            let same = rel == p_trim;
            let below =
                rel.starts_with(&format!("{p_trim}/")) && entry_kind(mode) != EntryKind::Dir;
            let above = p_trim.starts_with(&format!("{rel}/"));
            (same || below || above).then_some(p)
        })
}

/// A caller blocked in `await_call` on a call of `awaited`, for as long as it lives (a
/// call cut short by its timeout drops it too).
struct AwaitGuard {
    awaited: Arc<Deployed>,
}

impl AwaitGuard {
    fn enter(functions: &Arc<Functions>, awaited: Arc<Deployed>) -> AwaitGuard {
        let todo = awaited.pool.enter_await();
        functions.act(&awaited, todo);
        AwaitGuard { awaited }
    }
}

impl Drop for AwaitGuard {
    fn drop(&mut self) {
        self.awaited.pool.leave_await();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_zero_padded() {
        assert_eq!(window(b"0123456789", 2, 3), b"234");
        assert_eq!(window(b"abc", 1, 4), b"bc\0\0");
        assert_eq!(window(b"abc", 5, 2), b"\0\0");
        assert_eq!(window(b"", 0, 0), b"");
    }

    #[test]
    fn the_chain_depth_is_read_from_the_headers() {
        let h = |v: &str| vec![("x-faasm-depth".to_string(), v.to_string())];
        assert_eq!(chain_depth(&[]), 0);
        assert_eq!(chain_depth(&h("3")), 3);
        assert_eq!(chain_depth(&h("-1")), 0);
        assert_eq!(chain_depth(&h("many")), 0);
    }

    #[test]
    fn under_a_read_only_root_only_tmp_and_the_function_directory_take_files() {
        for ok in ["/tmp/x", "/function/a/b.txt"] {
            assert!(placeable(ok, true).is_ok(), "{ok}");
        }
        for bad in [
            "/data/x",
            "/tmp",
            "/functionx/y",
            "/.ufaas/x",
            "/etc/passwd",
        ] {
            assert!(placeable(bad, true).is_err(), "{bad}");
            assert!(placeable(bad, false).is_ok(), "{bad}");
        }
    }

    #[test]
    fn a_file_never_replaces_the_functions_own_code() {
        let bundle: Vec<BundleFile> = vec![
            ("fn.py".into(), b"code".to_vec(), 0o100644),
            ("lib".into(), Vec::new(), 0o040755),
            ("lib/util.py".into(), b"code".to_vec(), 0o100644),
            ("data".into(), b"/etc".to_vec(), 0o120777),
        ];
        let hit = |p: &str| bundle_collision(p, &bundle);
        assert_eq!(hit("/function/fn.py"), Some("fn.py"));
        assert_eq!(hit("/function/lib/util.py"), Some("lib/util.py"));
        assert_eq!(hit("/function/lib"), Some("lib"));
        assert_eq!(hit("/function/fn.py/x"), Some("fn.py"));
        assert_eq!(hit("/function/data/passwd"), Some("data"));
        for free in [
            "/function/lib/new.txt",
            "/function/other.txt",
            "/data/fn.py",
            "/functionx/fn.py",
        ] {
            assert_eq!(hit(free), None, "{free}");
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("k").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a\0b").is_err());
        assert!(check_key(&"x".repeat(KEY_MAX + 1)).is_err());
    }
}
