//! Bearer tokens: with `--token-file` or `UFAAS_TOKEN`, every route (the WebSocket upgrade,
//! `/healthz` and `/readyz` included) wants `Authorization: Bearer <token>`.
//!
//! Only the SHA-256 digests of the tokens are kept. A presented token is hashed and compared
//! with every configured digest in constant time, without stopping at a match, so the answer
//! time says nothing about how much of a token was right or which token matched.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use warp::filters::BoxedFilter;
use warp::http::header::{HeaderMap, AUTHORIZATION};
use warp::Filter;

use crate::config::ServeConfig;
use crate::error::{ApiError, Code};

/// The value of `WWW-Authenticate` on every 401.
pub const CHALLENGE: &str = "Bearer";

/// The digests of the accepted tokens; never empty.
#[derive(Clone)]
pub struct Tokens {
    digests: Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} digests)", self.digests.len())
    }
}

impl Tokens {
    /// Reads the tokens of `--token-file` and `UFAAS_TOKEN`, and takes the latter out of
    /// `cfg` so that no plain token outlives start-up. `None` when no token is configured.
    pub fn from_config(cfg: &mut ServeConfig) -> anyhow::Result<Option<Tokens>> {
        let mut digests = Vec::new();
        if let Some(path) = &cfg.token_file {
            digests.extend(read_token_file(path)?);
        }
        if let Some(token) = cfg.token.take() {
            let digest = token_digest(token.trim());
            wipe(token);
            digests.push(digest.context("UFAAS_TOKEN")?);
        }
        digests.sort_unstable();
        digests.dedup();
        if digests.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tokens {
            digests: digests.into(),
        }))
    }

    /// Tokens from plain strings (tests and embedders).
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> anyhow::Result<Tokens> {
        let digests = tokens
            .iter()
            .map(|t| token_digest(t.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if digests.is_empty() {
            bail!("no token given");
        }
        Ok(Tokens {
            digests: digests.into(),
        })
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is one of the configured tokens. Every digest is compared, in
    /// constant time, whatever the outcome.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = Choice::from(0);
        for digest in self.digests.iter() {
            found |= digest[..].ct_eq(&presented[..]);
        }
        found.into()
    }

    /// Checks the `Authorization` header(s) of a request.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(unauthorized("send Authorization: Bearer <token>"));
        };
        if values.next().is_some() {
            return Err(malformed("send it once, not several times"));
        }
        let token = bearer_token(value.as_bytes())?;
        if self.accepts(token) {
            Ok(())
        } else {
            Err(unauthorized("the bearer token is not valid"))
        }
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::Unauthorized, message)
}

fn malformed(why: &str) -> ApiError {
    unauthorized(format!(
        "the Authorization header is malformed ({why}): send Authorization: Bearer <token>"
    ))
}

/// The token of `Bearer <token>` (the scheme in any case, as RFC 7235 says).
fn bearer_token(raw: &[u8]) -> Result<&[u8], ApiError> {
    if !raw.is_ascii() {
        return Err(malformed("it is not ASCII"));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| malformed("it is not ASCII"))?
        .trim();
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Err(if text.eq_ignore_ascii_case("bearer") {
            malformed("the token is empty")
        } else {
            malformed("it is not `Bearer <token>`")
        });
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("only the Bearer scheme is accepted"));
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(malformed("the token is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed("the token holds spaces or control characters"));
    }
    Ok(token.as_bytes())
}

/// The digest of a configured token, which must be sendable in a header: visible ASCII,
/// no spaces.
fn token_digest(token: &str) -> anyhow::Result<[u8; 32]> {
    if token.is_empty() {
        bail!("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("a token may only hold visible ASCII characters (no spaces)");
    }
    if token.len() < 16 {
        tracing::warn!("an API token is shorter than 16 characters; it is easy to guess");
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// One token per line; blank lines and lines starting with `#` are skipped. An unreadable
/// file, a bad token or a file with none is an error (naming the line, never the token).
fn read_token_file(path: &Path) -> anyhow::Result<Vec<[u8; 32]>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    warn_if_readable_by_others(path);
    let parsed = parse_token_file(&text);
    wipe(text);
    let digests = parsed.with_context(|| format!("token file {}", path.display()))?;
    if digests.is_empty() {
        bail!(
            "the token file {} holds no token (blank lines and lines starting with # do not \
             count)",
            path.display()
        );
    }
    Ok(digests)
}

fn parse_token_file(text: &str) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut digests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        digests.push(token_digest(line).with_context(|| format!("line {}", n + 1))?);
    }
    Ok(digests)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the token file is readable by every user; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Overwrites a secret before its memory is freed (best effort: the allocator may have
/// copied it before).
fn wipe(secret: String) {
    let mut bytes = secret.into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

/// Refuses to serve without authentication on an address other machines may reach, unless
/// told to (`--insecure-no-auth`).
pub fn check_exposure(addr: SocketAddr, authenticated: bool, insecure: bool) -> anyhow::Result<()> {
    if authenticated || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            %addr,
            "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth): \
             anyone who reaches it can run containers on this machine"
        );
        return Ok(());
    }
    bail!(
        "refusing to listen on {addr} without authentication: anyone who reaches it could run \
         containers on this machine. Give tokens with --token-file (UFAAS_TOKEN_FILE) or \
         UFAAS_TOKEN, listen on a loopback address (127.0.0.1 or ::1), or pass \
         --insecure-no-auth (UFAAS_INSECURE_NO_AUTH) to serve without authentication anyway"
    )
}

/// The filter in front of every route: passes when no token is configured, else when the
/// request carries one of the tokens; otherwise rejects with a 401 (`Refused`).
pub fn filter(tokens: Option<Tokens>) -> BoxedFilter<()> {
    let Some(tokens) = tokens else {
        return warp::any().boxed();
    };
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let checked = tokens
                .check(&headers)
                .map_err(|e| warp::reject::custom(super::Refused(e)));
            std::future::ready(checked)
        })
        .untuple_one()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn tokens() -> Tokens {
        Tokens::new(&["first-token-0123456789", "second-token-abcdef"]).unwrap()
    }

    #[test]
    fn accepts_every_configured_token_and_nothing_else() {
        let t = tokens();
        assert!(t.accepts(b"first-token-0123456789"));
        assert!(t.accepts(b"second-token-abcdef"));
        assert!(!t.accepts(b"first-token-012345678"));
        assert!(!t.accepts(b"first-token-0123456789x"));
        assert!(!t.accepts(b""));
    }

    #[test]
    fn headers_are_checked() {
        let t = tokens();
        assert!(t
            .check(&headers(&[b"Bearer first-token-0123456789"]))
            .is_ok());
        assert!(t
            .check(&headers(&[b"bearer  second-token-abcdef "]))
            .is_ok());
        let msg = |h: &[&[u8]]| {
            let e = t.check(&headers(h)).unwrap_err();
            assert_eq!((e.status(), e.code.as_str()), (401, "unauthorized"));
            e.message
        };
        assert!(msg(&[]).contains("send Authorization: Bearer <token>"));
        assert!(!msg(&[b"Bearer nope"]).contains("malformed"));
        for bad in [
            &b"Bearer"[..],
            b"Bearer   ",
            b"Basic dXNlcjpwYXNz",
            b"first-token-0123456789",
            b"Bearer a b",
            b"Bearer \xe9t\xe9",
        ] {
            assert!(msg(&[bad]).contains("malformed"), "{bad:?}");
        }
        assert!(msg(&[
            b"Bearer first-token-0123456789",
            b"Bearer first-token-0123456789"
        ])
        .contains("malformed"));
    }

    #[test]
    fn token_files_skip_blanks_and_comments() {
        let d = parse_token_file("# ops\n\n  alpha-token-1234567  \r\n#beta\nbeta-token-7654321\n")
            .unwrap();
        assert_eq!(d.len(), 2);
        assert!(parse_token_file("# nothing\n\n").unwrap().is_empty());
        let e = parse_token_file("ok-token\nhas space\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }

    #[test]
    fn plain_tokens_leave_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "file-token-123456789\n").unwrap();
        let mut cfg = ServeConfig::defaults();
        cfg.token_file = Some(file);
        cfg.token = Some("env-token-123456789".into());
        let t = Tokens::from_config(&mut cfg).unwrap().unwrap();
        assert_eq!(t.len(), 2);
        assert!(cfg.token.is_none());
        assert!(t.accepts(b"env-token-123456789") && t.accepts(b"file-token-123456789"));

        let mut cfg = ServeConfig::defaults();
        cfg.token = None;
        assert!(Tokens::from_config(&mut cfg).unwrap().is_none());
        cfg.token = Some("  ".into());
        assert!(Tokens::from_config(&mut cfg).is_err());
        cfg.token_file = Some(dir.path().join("missing"));
        assert!(Tokens::from_config(&mut cfg).is_err());
        std::fs::write(dir.path().join("empty"), "# none\n\n").unwrap();
        cfg.token_file = Some(dir.path().join("empty"));
        assert!(Tokens::from_config(&mut cfg).is_err());
    }

    #[test]
    fn flags_parse() {
        use crate::config::{Cli, Command};
        use clap::Parser;
        let cli = Cli::parse_from([
            "ufaas",
            "serve",
            "--token-file",
            "/etc/ufaas/tokens",
            "--insecure-no-auth",
        ]);
        let Command::Serve(c) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(
            c.token_file.as_deref(),
            Some(Path::new("/etc/ufaas/tokens"))
        );
        assert!(c.insecure_no_auth);
        assert!(!ServeConfig::defaults().insecure_no_auth);
        // The single token is never a flag.
        assert!(Cli::try_parse_from(["ufaas", "serve", "--token", "x"]).is_err());
    }

    #[test]
    fn exposure_needs_auth_or_loopback_or_insecure() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_exposure(a("127.0.0.1:1"), false, false).is_ok());
        assert!(check_exposure(a("[::1]:1"), false, false).is_ok());
        assert!(check_exposure(a("[::ffff:127.0.0.1]:1"), false, false).is_ok());
        assert!(check_exposure(a("0.0.0.0:1"), false, false).is_err());
        assert!(check_exposure(a("[::]:1"), false, false).is_err());
        assert!(check_exposure(a("10.1.2.3:1"), true, false).is_ok());
        assert!(check_exposure(a("0.0.0.0:1"), false, true).is_ok());
    }
}
