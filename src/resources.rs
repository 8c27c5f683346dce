//! Turns a task's file resources into one uncompressed tar that Docker unpacks at `/` of the
//! container in a single upload: inline files, fetched URLs (size-capped, time-limited,
//! sha256-checked) and archives unpacked (tar, tar.gz, zip) with every entry path checked.
//! Mount resources (tmpfs, bind) become container options instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::spec::{resolve_dest, Resource, Source, TaskSpec};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("resource_list[{index}]: fetching {uri} failed: {reason}")]
    Fetch {
        index: usize,
        uri: String,
        reason: String,
    },
    #[error("resource_list[{index}]: {uri} is larger than the server's limit of {limit} bytes")]
    FetchTooLarge {
        index: usize,
        uri: String,
        limit: u64,
    },
    #[error("resource_list[{index}]: sha256 of {uri} is {actual}, not the {expected} asked for")]
    Checksum {
        index: usize,
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("resource_list[{index}]: archive: {reason}")]
    Archive { index: usize, reason: String },
    #[error("resource_list[{index}]: `dest` resolves to {path}, which is not allowed")]
    Dest { index: usize, path: String },
    #[error("building the upload failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct FetchLimits {
    pub max_fetch_bytes: u64,
    pub max_extract_bytes: u64,
}

/// The upload and the mounts of one task.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Uncompressed tar to unpack at `/`; `None` when there is nothing to place.
    pub tar: Option<Vec<u8>>,
    pub tmpfs: HashMap<String, String>,
    pub binds: Vec<String>,
}

/// A tar of absolute paths, written to unpack at `/`. Parents are not written as entries:
/// Docker makes missing ones, and an entry for an existing directory (say `/tmp`) would reset
/// its mode and owner.
pub struct TarWriter {
    /// `None`: only check and count (see [`TarWriter::discarding`]).
    builder: Option<tar::Builder<Vec<u8>>>,
    entries: usize,
}

impl Default for TarWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TarWriter {
    pub fn new() -> Self {
        TarWriter {
            builder: Some(tar::Builder::new(Vec::new())),
            entries: 0,
        }
    }

    /// A writer that keeps nothing: for checking an archive (paths, links, size) without
    /// holding what it unpacks to.
    pub fn discarding() -> Self {
        TarWriter {
            builder: None,
            entries: 0,
        }
    }

    pub fn is_discarding(&self) -> bool {
        self.builder.is_none()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h
    }

    pub fn file(&mut self, abs_path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64, mode);
        if let Some(b) = &mut self.builder {
            b.append_data(&mut h, abs_path.trim_start_matches('/'), data)?;
        }
        self.entries += 1;
        Ok(())
    }

    pub fn dir(&mut self, abs_path: &str, mode: u32) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0, mode);
        let path = format!(
            "{}/",
            abs_path.trim_start_matches('/').trim_end_matches('/')
        );
        if let Some(b) = &mut self.builder {
            b.append_data(&mut h, path, std::io::empty())?;
        }
        self.entries += 1;
        Ok(())
    }

    pub fn symlink(&mut self, abs_path: &str, target: &str) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0, 0o777);
        if let Some(b) = &mut self.builder {
            b.append_link(&mut h, abs_path.trim_start_matches('/'), target)?;
        }
        self.entries += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self.builder {
            Some(b) => b.into_inner(),
            None => Ok(Vec::new()),
        }
    }
}

fn forbidden(path: &str) -> bool {
    path == "/"
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|r| path == *r || path.starts_with(&format!("{r}/")))
}

/// Builds the upload for `spec`. `workdir` is where relative `dest`s resolve (the spec's
/// `pwd`, else the image's WORKDIR); `extra` is placed first (the agent, when a new container
/// gets it uploaded).
pub async fn prepare(
    spec: &TaskSpec,
    workdir: &str,
    extra: &[(&str, &[u8], u32)],
    http: &reqwest::Client,
    limits: &FetchLimits,
) -> Result<Prepared, ResourceError> {
    let mut tar = TarWriter::new();
    let mut out = Prepared::default();
    for (path, data, mode) in extra {
        tar.file(path, data, *mode)?;
    }
    for (index, res) in spec.resource_list.iter().enumerate() {
        let resolve = |dest: &str| -> Result<String, ResourceError> {
            match resolve_dest(workdir, dest) {
                Some(p) if !forbidden(&p) || p == "/" => Ok(p),
                other => Err(ResourceError::Dest {
                    index,
                    path: other.unwrap_or_else(|| dest.to_string()),
                }),
            }
        };
        match res {
            Resource::Tmpfs { dest, size, mode } => {
                let mut opts = Vec::new();
                if let Some(s) = size {
                    opts.push(format!("size={s}"));
                }
                if let Some(m) = mode {
                    opts.push(format!("mode={m:o}"));
                }
                out.tmpfs.insert(resolve(dest)?, opts.join(","));
            }
            Resource::Bind {
                dest,
                host,
                readonly,
            } => {
                let path = resolve(dest)?;
                out.binds.push(if *readonly {
                    format!("{host}:{path}:ro")
                } else {
                    format!("{host}:{path}")
                });
            }
            Resource::File {
                dest,
                source,
                mode,
                extract,
            } => {
                let path = resolve(dest)?;
                let bytes: Cow<'_, [u8]> = match source {
                    Source::Inline(b) => Cow::Borrowed(b),
                    Source::Uri { uri, sha256 } => Cow::Owned(
                        fetch(index, uri, sha256.as_deref(), http, limits.max_fetch_bytes).await?,
                    ),
                };
                if *extract {
                    let max = limits.max_extract_bytes;
                    tar = unpack_blocking(index, bytes.into_owned(), path, tar, max).await?;
                } else {
                    if path == "/" {
                        return Err(ResourceError::Dest { index, path });
                    }
                    tar.file(&path, &bytes, mode.unwrap_or(0o644))?;
                }
            }
        }
    }
    if !tar.is_empty() {
        out.tar = Some(tar.finish()?);
    }
    Ok(out)
}

/// [`unpack`] on a blocking thread, into `out`, which it hands back. An archive may unpack to
/// `max_bytes` (512 MiB by default) of inflating and copying: on one of the runtime's threads
/// that would stall every task scheduled there for as long. An inline archive is copied to
/// get there, as the check at submission copies it. A start cancelled meanwhile drops the
/// answer; the unpack itself runs to its end, which `max_bytes` bounds.
async fn unpack_blocking(
    index: usize,
    bytes: Vec<u8>,
    dir: String,
    mut out: TarWriter,
    max_bytes: u64,
) -> Result<TarWriter, ResourceError> {
    tokio::task::spawn_blocking(move || {
        unpack(index, &bytes, &dir, &mut out, max_bytes).map(|()| out)
    })
    .await
    .map_err(|e| ResourceError::Archive {
        index,
        reason: format!("unpacking stopped: {e}"),
    })?
}

/// A client for `uri` resources: a whole-request timeout, at most five redirects, and no
/// address the guard refuses, whether named, resolved or redirected to. It fails closed: if
/// the guarded client cannot be built, there is no client (never one without the guard).
pub fn http_client(
    timeout: Duration,
    guard: std::sync::Arc<crate::netguard::FetchGuard>,
) -> Result<reqwest::Client, String> {
    guarded_client(reqwest::Client::builder(), timeout, guard)
}

/// [`http_client`] on top of `builder` (tests hand in one that cannot be built).
fn guarded_client(
    builder: reqwest::ClientBuilder,
    timeout: Duration,
    guard: std::sync::Arc<crate::netguard::FetchGuard>,
) -> Result<reqwest::Client, String> {
    let redirect_guard = guard.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            return attempt.error("redirect to a scheme other than http or https");
        }
        let host = attempt.url().host_str().unwrap_or_default().to_string();
        match redirect_guard.check_host(&host) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(format!("redirect refused: {why}")),
        }
    });
    builder
        .timeout(timeout)
        .redirect(redirects)
        .dns_resolver(std::sync::Arc::new(crate::netguard::GuardedResolver(guard)))
        .user_agent(concat!("ufaas/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the guarded fetch client: {e}"))
}

async fn fetch(
    index: usize,
    uri: &str,
    sha256: Option<&str>,
    http: &reqwest::Client,
    cap: u64,
) -> Result<Vec<u8>, ResourceError> {
    let fail = |reason: String| ResourceError::Fetch {
        index,
        uri: uri.to_string(),
        reason,
    };
    let mut resp = http
        .get(uri)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(ResourceError::FetchTooLarge {
            index,
            uri: uri.to_string(),
            limit: cap,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(ResourceError::FetchTooLarge {
                index,
                uri: uri.to_string(),
                limit: cap,
            });
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(expected) = sha256 {
        let actual = hex::encode(Sha256::digest(&body));
        if actual != expected {
            return Err(ResourceError::Checksum {
                index,
                uri: uri.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(body)
}

/// Splits an upload (a tar to unpack at `/`) into one tar per writable root, each to unpack
/// at its root: Docker refuses an upload at `/` of a container with a read-only root, but
/// takes one into a volume. An entry under no root is an error naming it.
pub fn split_by_root(tar_bytes: &[u8], roots: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut parts: Vec<(String, tar::Builder<Vec<u8>>)> = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = format!(
            "/{}",
            String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/')
        );
        let root = roots
            .iter()
            .filter(|r| path == **r || path.starts_with(&format!("{}/", r.trim_end_matches('/'))))
            .max_by_key(|r| r.len())
            .ok_or_else(|| {
                format!(
                    "with a read-only root, files may only be placed under {}; `{path}` is not",
                    roots.join(", ")
                )
            })?;
        let rel = path[root.trim_end_matches('/').len()..]
            .trim_start_matches('/')
            .to_string();
        if rel.is_empty() {
            continue; // the root itself exists already
        }
        let idx = match parts.iter().position(|(r, _)| r == root) {
            Some(i) => i,
            None => {
                parts.push((root.clone(), tar::Builder::new(Vec::new())));
                parts.len() - 1
            }
        };
        let mut header = entry.header().clone();
        let builder = &mut parts[idx].1;
        match header.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                builder
                    .append_link(&mut header, &rel, target)
                    .map_err(|e| e.to_string())?;
            }
            tar::EntryType::Directory => {
                builder
                    .append_data(&mut header, format!("{rel}/"), std::io::empty())
                    .map_err(|e| e.to_string())?;
            }
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
                builder
                    .append_data(&mut header, &rel, data.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    parts
        .into_iter()
        .map(|(root, b)| b.into_inner().map(|t| (root, t)).map_err(|e| e.to_string()))
        .collect()
}

/// Normalises an archive entry's path; `None` for an absolute path or one with `..`.
pub(crate) fn entry_path(raw: &str) -> Option<String> {
    if raw.starts_with('/') || raw.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// A link target is kept only when it stays inside the extracted tree. An entry whose path
/// is empty (a name of ``""``, `.` or `./`) would put the link in place of the directory
/// itself, where a relative target resolves beside the directory, not in it: refused.
pub(crate) fn link_target_ok(entry: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() || entry.is_empty() {
        return false;
    }
    let mut depth: i64 = entry.split('/').count() as i64 - 1;
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// A tar stream followed, past its end, by zeros up to the next 512-byte block and two more
/// blocks (the end-of-archive marker). Some tar writers leave out the final padding and the
/// marker (FAAS's example payload ends right after its last file's bytes); the `tar` crate
/// fails such an archive ("unexpected EOF during skip") although every entry is whole. With
/// the zeros it reads to the marker; [`unpack`] refuses any entry whose data reaches past
/// `real` (the bytes that really came), so only the padding is ever made up.
struct PadToBlocks<R> {
    inner: R,
    real: std::rc::Rc<std::cell::Cell<u64>>,
    /// Zeros still to give once `inner` has ended; `None` while it has not.
    pad_left: Option<u64>,
}

impl<R: Read> Read for PadToBlocks<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pad_left.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.real.set(self.real.get() + n as u64);
                return Ok(n);
            }
            let partial = self.real.get() % 512;
            let to_block = if partial == 0 { 0 } else { 512 - partial };
            self.pad_left = Some(to_block + 1024);
        }
        let left = self.pad_left.unwrap_or(0);
        let n = (buf.len() as u64).min(left) as usize;
        buf[..n].fill(0);
        self.pad_left = Some(left - n as u64);
        Ok(n)
    }
}

/// Reads one entry's bytes, at most `max + 1` (enough to tell it is too big); when
/// `discard`, only counts them.
fn read_entry(entry: &mut impl Read, max: u64, discard: bool) -> std::io::Result<(u64, Vec<u8>)> {
    let mut limited = entry.take(max + 1);
    if discard {
        let n = std::io::copy(&mut limited, &mut std::io::sink())?;
        return Ok((n, Vec::new()));
    }
    let mut data = Vec::new();
    limited.read_to_end(&mut data)?;
    Ok((data.len() as u64, data))
}

/// Checks an archive as [`unpack`] would read it, keeping nothing: for refusing a bad inline
/// archive when the task is submitted.
pub fn check_archive(index: usize, bytes: &[u8], max_bytes: u64) -> Result<(), ResourceError> {
    unpack(index, bytes, "/x", &mut TarWriter::discarding(), max_bytes)
}

/// Unpacks `bytes` (tar, tar.gz or zip, told apart by their magic numbers) under `dir`.
pub fn unpack(
    index: usize,
    bytes: &[u8],
    dir: &str,
    out: &mut TarWriter,
    max_bytes: u64,
) -> Result<(), ResourceError> {
    let err = |reason: String| ResourceError::Archive { index, reason };
    let mut total: u64 = 0;
    let mut add = |total_add: u64| -> Result<(), ResourceError> {
        total += total_add;
        if total > max_bytes {
            return Err(ResourceError::Archive {
                index,
                reason: format!("unpacks to more than the server's limit of {max_bytes} bytes"),
            });
        }
        Ok(())
    };
    let join = |rel: &str| {
        if rel.is_empty() {
            dir.to_string()
        } else {
            format!("{}/{}", dir.trim_end_matches('/'), rel)
        }
    };
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| err(format!("not a readable zip: {e}")))?;
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| err(format!("zip entry {i}: {e}")))?;
            let name = entry
                .name()
                .map_err(|e| err(format!("zip entry {i}: {e}")))?
                .to_string();
            let rel = entry_path(&name)
                .ok_or_else(|| err(format!("entry `{name}` escapes the directory")))?;
            let mode = entry
                .unix_mode()
                .unwrap_or(if entry.is_dir() { 0o755 } else { 0o644 });
            if entry.is_dir() {
                out.dir(&join(&rel), mode)?;
                continue;
            }
            if mode & 0o170000 == 0o120000 {
                return Err(err(format!(
                    "entry `{name}` is a symbolic link, which zip resources do not support"
                )));
            }
            let (size, data) = read_entry(&mut entry, max_bytes, out.is_discarding())
                .map_err(|e| err(format!("entry `{name}`: {e}")))?;
            add(size)?;
            out.file(&join(&rel), &data, mode)?;
        }
        return Ok(());
    }
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let real = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut archive = tar::Archive::new(PadToBlocks {
        inner: reader,
        real: real.clone(),
        pad_left: None,
    });
    let entries = archive
        .entries()
        .map_err(|e| err(format!("not a readable tar: {e}")))?;
    let mut seen = 0usize;
    // Links placed so far: an entry whose path goes through one could land wherever the link
    // points (`l -> .` then `l/m -> ..`), so it is refused.
    let mut links: std::collections::HashSet<String> = std::collections::HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| err(format!("not a readable tar: {e}")))?;
        seen += 1;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = entry_path(&name)
            .ok_or_else(|| err(format!("entry `{name}` escapes the directory")))?;
        let mut prefix = String::new();
        for part in rel.split('/') {
            if !prefix.is_empty() && links.contains(&prefix) {
                return Err(err(format!(
                    "entry `{name}` goes through the link `{prefix}`"
                )));
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        match entry.header().entry_type() {
            tar::EntryType::Directory => out.dir(&join(&rel), mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (size, data) = read_entry(&mut entry, max_bytes, out.is_discarding())
                    .map_err(|e| err(format!("entry `{name}`: {e}")))?;
                add(size)?;
                // Bytes past the archive's end are PadToBlocks' zeros: an entry that reached
                // them was cut short, and is refused rather than unpacked zero-filled.
                if entry.raw_file_position() + entry.size() > real.get() {
                    return Err(err(format!(
                        "entry `{name}` is cut short: the archive ends inside it"
                    )));
                }
                out.file(&join(&rel), &data, mode)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !link_target_ok(&rel, &target) {
                    return Err(err(format!(
                        "link `{name}` → `{target}` points outside the directory"
                    )));
                }
                out.symlink(&join(&rel), &target)?;
                links.insert(rel.clone());
            }
            tar::EntryType::Link => {
                return Err(err(format!(
                    "entry `{name}` is a hard link, which is not supported"
                )));
            }
            // Devices, FIFOs and metadata entries (pax, GNU long names are handled by the
            // reader) are skipped: nothing a task needs comes that way.
            _ => {}
        }
    }
    if seen == 0 && !bytes.is_empty() && bytes.iter().take(1024).any(|b| *b != 0) {
        return Err(err("not a tar, tar.gz or zip archive".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guarded client that cannot be built is an error, not a default client without the
    /// address guard (which would reach loopback and the cloud metadata address).
    #[test]
    fn the_fetch_client_fails_closed() {
        let guard = std::sync::Arc::new(crate::netguard::FetchGuard::default());
        let unbuildable = reqwest::Client::builder()
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .max_tls_version(reqwest::tls::Version::TLS_1_2);
        let err = guarded_client(unbuildable, Duration::from_secs(1), guard.clone())
            .expect_err("an unbuildable client must be an error");
        assert!(err.contains("guarded fetch client"), "{err}");
        assert!(http_client(Duration::from_secs(1), guard).is_ok());
    }

    fn read_back(tar: Vec<u8>) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(Cursor::new(tar));
        let mut out = Vec::new();
        if let Ok(entries) = a.entries() {
            for e in entries.flatten() {
                let mut e = e;
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let mut data = Vec::new();
                let _ = e.read_to_end(&mut data);
                out.push((name, data));
            }
        }
        out
    }

    fn make_tar(entries: &[(&str, &[u8])], gz: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the raw name to build hostile archives too.
            let raw = name.as_bytes();
            h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
            h.set_cksum();
            b.append(&h, *data).ok();
        }
        let tar = b.into_inner().unwrap_or_default();
        if gz {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).ok();
            enc.finish().unwrap_or_default()
        } else {
            tar
        }
    }

    #[test]
    fn tar_and_tar_gz_unpack_under_dir() {
        for gz in [false, true] {
            let src = make_tar(&[("a.txt", b"A"), ("sub/b.txt", b"BB")], gz);
            let mut w = TarWriter::new();
            unpack(0, &src, "/work/in", &mut w, 1000).expect("unpacks");
            let got = read_back(w.finish().unwrap_or_default());
            assert_eq!(got[0], ("work/in/a.txt".to_string(), b"A".to_vec()));
            assert_eq!(got[1], ("work/in/sub/b.txt".to_string(), b"BB".to_vec()));
        }
    }

    /// A spec whose one resource is `archive`, extracted at `/w`.
    fn extracting(archive: Vec<u8>) -> TaskSpec {
        TaskSpec {
            task_name: "t".into(),
            image: "i".into(),
            cmd_list: vec!["true".into()],
            pwd: None,
            env: Default::default(),
            resource_list: vec![Resource::File {
                dest: "/w".into(),
                source: Source::Inline(archive),
                mode: None,
                extract: true,
            }],
            stdin: None,
            is_daemon: false,
            ttl: None,
            timeout: None,
            rm: None,
            priority: 0,
            limits: Default::default(),
            network: false,
            raw: serde_json::Value::Null,
        }
    }

    /// A large archive unpacks off the runtime: on a runtime of one thread, a timer still
    /// fires while it unpacks. `prepare` is polled first (`biased`), so an unpack on the
    /// runtime's thread would be done, timer or not, before the timer was looked at.
    #[test]
    fn prepare_unpacks_off_the_runtime() {
        const SIZE: usize = 16 << 20;
        let spec = extracting(make_tar(&[("big.bin", &vec![0u8; SIZE])], true));
        let limits = FetchLimits {
            max_fetch_bytes: 0,
            max_extract_bytes: 2 * SIZE as u64,
        };
        let http = reqwest::Client::new();
        let extra: &[(&str, &[u8], u32)] = &[("/.ufaas/agent", b"A", 0o755)];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let prepared = rt.block_on(async {
            let mut prep = std::pin::pin!(prepare(&spec, "/", extra, &http, &limits));
            let early = tokio::select! {
                biased;
                p = &mut prep => Some(p),
                _ = tokio::time::sleep(Duration::from_millis(1)) => None,
            };
            assert!(
                early.is_none(),
                "the unpack held the runtime's only thread until it was done"
            );
            prep.await.expect("the archive unpacks")
        });
        let got = read_back(prepared.tar.expect("an upload"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (".ufaas/agent".to_string(), b"A".to_vec()));
        assert_eq!(got[1].0, "w/big.bin");
        assert!(got[1].1.len() == SIZE && got[1].1.iter().all(|b| *b == 0));
    }

    /// An archive over the cap is refused through `prepare` as through `unpack`, naming it.
    #[tokio::test]
    async fn prepare_refuses_an_archive_over_the_cap() {
        let spec = extracting(make_tar(&[("big", &[b'x'; 2000])], true));
        let limits = FetchLimits {
            max_fetch_bytes: 0,
            max_extract_bytes: 1000,
        };
        let e = prepare(&spec, "/", &[], &reqwest::Client::new(), &limits)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.starts_with("resource_list[0]: archive: ")
                    && m.contains("limit of 1000 bytes")),
            "{e:?}"
        );
    }

    /// A tar that ends right after its last file's bytes (no padding to 512, no end-of-archive
    /// blocks, as FAAS's example payload) unpacks whole; one cut inside a file's bytes is
    /// refused, not unpacked zero-filled.
    #[test]
    fn a_tar_without_its_end_blocks_unpacks_but_one_cut_inside_a_file_does_not() {
        let full = make_tar(&[("a.txt", b"A"), ("b.txt", &[b'b'; 700])], false);
        // Header of a (512) + its block (512) + header of b (512) + 700 bytes.
        let unpadded = &full[..512 * 3 + 700];
        let mut w = TarWriter::new();
        unpack(0, unpadded, "/w", &mut w, 10_000).expect("every entry is whole");
        let got = read_back(w.finish().unwrap_or_default());
        assert_eq!(got[1], ("w/b.txt".to_string(), vec![b'b'; 700]));
        for cut in [512 * 3 + 699, 512 * 3 + 10, 512 * 2 + 300] {
            let e = unpack(0, &full[..cut], "/w", &mut TarWriter::new(), 10_000)
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some(), "cut at {cut} was accepted");
        }
        let e = check_archive(0, &full[..512 * 3 + 699], 10_000)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("cut short")));
    }

    #[test]
    fn escaping_entries_are_refused() {
        let src = make_tar(&[("../evil", b"x")], false);
        let mut w = TarWriter::new();
        assert!(unpack(0, &src, "/w", &mut w, 1000).is_err());
    }

    #[test]
    fn size_cap_stops_unpacking() {
        let big = vec![b'x'; 2000];
        let src = make_tar(&[("big", &big)], true);
        let mut w = TarWriter::new();
        let e = unpack(0, &src, "/w", &mut w, 1000)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("limit")));
    }

    #[test]
    fn zip_unpacks() {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        z.start_file("run.sh", opts).ok();
        z.write_all(b"echo hi").ok();
        let bytes = z.finish().map(|c| c.into_inner()).unwrap_or_default();
        let mut w = TarWriter::new();
        unpack(0, &bytes, "/x", &mut w, 1000).expect("zip unpacks");
        let got = read_back(w.finish().unwrap_or_default());
        assert_eq!(got, vec![("x/run.sh".to_string(), b"echo hi".to_vec())]);
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let mut w = TarWriter::new();
        assert!(unpack(
            0,
            b"hello, this is not an archive at all",
            "/x",
            &mut w,
            1000
        )
        .is_err());
    }

    #[test]
    fn uploads_split_by_writable_root() {
        let mut w = TarWriter::new();
        w.file("/.ufaas/pause", b"P", 0o755).ok();
        w.file("/work/a/b.txt", b"B", 0o644).ok();
        w.file("/tmp/t", b"T", 0o600).ok();
        let tar = w.finish().unwrap_or_default();
        let roots = vec![
            "/tmp".to_string(),
            "/.ufaas".to_string(),
            "/work".to_string(),
        ];
        let parts = split_by_root(&tar, &roots).unwrap_or_default();
        type Part = (String, Vec<(String, Vec<u8>)>);
        let got: Vec<Part> = parts.into_iter().map(|(r, t)| (r, read_back(t))).collect();
        assert_eq!(
            got[0],
            (
                "/.ufaas".to_string(),
                vec![("pause".to_string(), b"P".to_vec())]
            )
        );
        assert_eq!(
            got[1],
            (
                "/work".to_string(),
                vec![("a/b.txt".to_string(), b"B".to_vec())]
            )
        );
        assert_eq!(
            got[2],
            ("/tmp".to_string(), vec![("t".to_string(), b"T".to_vec())])
        );
        let mut w = TarWriter::new();
        w.file("/etc/evil", b"x", 0o644).ok();
        let e = split_by_root(&w.finish().unwrap_or_default(), &roots).err();
        assert!(e.is_some_and(|m| m.contains("/etc/evil")));
    }

    #[test]
    fn entries_through_earlier_links_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, target) in [("l", "."), ("l/m", "..")] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).ok();
        }
        let bytes = b.into_inner().unwrap_or_default();
        let mut w = TarWriter::new();
        let e = unpack(0, &bytes, "/w", &mut w, 1000)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("goes through the link")));
    }

    #[test]
    fn link_targets_must_stay_inside() {
        assert!(link_target_ok("a/b", "c"));
        assert!(link_target_ok("a/b", "../c"));
        assert!(!link_target_ok("a/b", "../../c"));
        assert!(!link_target_ok("a", "/etc/passwd"));
        assert!(!link_target_ok("", "c"));
    }

    /// Found by `fuzz/fuzz_targets/archive_unpack.rs`: a tar whose second entry is a symbolic
    /// link with an empty name and the target `a.txt`. It was unpacked as a link in place of
    /// the directory itself, pointing beside it (`/w` → `/a.txt`). The input as the fuzzer
    /// made it (1024 bytes), gzipped and in base64.
    #[test]
    fn fuzz_symlink_replacing_the_directory_is_refused() {
        use base64::Engine as _;
        const CRASH_TAR_GZ: &str = "H4sIAAAAAAACAysuTdJnoDEwAAJzU1MwDQToNCbb0NDc1JhBwZS6zuAAEbxAnJJZpF+Qk5iZp1dSUaJ9wvPMrZciQGEhIGZjGAXUACxo8W9oZGFBQvwbGxsB498oERRBNHZpaXFJYpGCwtALYuokZwBOzNweAAQAAA==";
        let gz = base64::engine::general_purpose::STANDARD
            .decode(CRASH_TAR_GZ)
            .unwrap_or_default();
        let mut input = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut input)
            .ok();
        assert_eq!(input.len(), 1024);
        let mut w = TarWriter::new();
        let e = unpack(0, &input, "/w", &mut w, 1 << 20)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("points outside")));
    }
}
