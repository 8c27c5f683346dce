//! Secrets (`PUT /secrets/{name}`): sealed with XChaCha20-Poly1305 under a key kept in a file
//! beside the database (`<db>.key`, mode 0600, made on first use), so a copy of the database
//! alone reveals nothing. A secret is never shown again: functions that name it get it as
//! the file `/run/secrets/NAME` in their containers, and nowhere else.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use sha2::Digest;

use crate::store::{Store, StoreError};

/// Where secrets appear in a function's containers.
pub const DIR: &str = "/run/secrets";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secrets key file {0}: {1}")]
    Key(PathBuf, String),
    #[error("secret `{0}` cannot be opened with this server's key file (was the key replaced?)")]
    Unsealable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Secrets {
    cipher: XChaCha20Poly1305,
}

/// Random bytes from the system's generator (uuid v4 draws on it), hashed into 32.
fn random32() -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for _ in 0..4 {
        h.update(uuid::Uuid::new_v4().as_bytes());
    }
    h.finalize().into()
}

impl Secrets {
    /// Opens (or makes) the key file for the database at `db`.
    pub fn open(db: &Path) -> Result<Secrets, SecretError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".key");
        let path = PathBuf::from(name);
        let fail = |e: String| SecretError::Key(path.clone(), e);
        let key = match std::fs::read(&path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = random32();
                // create_new: two servers starting at once never overwrite each other's key.
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
                match made {
                    Ok(()) => key.to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read(&path).map_err(|e| fail(e.to_string()))?
                    }
                    Err(e) => return Err(fail(e.to_string())),
                }
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| fail(format!("holds {} bytes, not 32", key.len())))?;
        Ok(Secrets { cipher })
    }

    /// Seals `value`: (nonce, sealed bytes). The name is bound in, so a sealed value moved
    /// to another name does not open.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let nonce_bytes = &random32()[..24];
        let nonce = nonce_bytes
            .try_into()
            .map_err(|_| SecretError::Unsealable(name.to_string()))?;
        let sealed = self
            .cipher
            .encrypt(
                nonce,
                chacha20poly1305::aead::Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unsealable(name.to_string()))?;
        Ok((nonce_bytes.to_vec(), sealed))
    }

    pub fn open_sealed(
        &self,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let nonce = nonce
            .try_into()
            .map_err(|_| SecretError::Unsealable(name.to_string()))?;
        self.cipher
            .decrypt(
                nonce,
                chacha20poly1305::aead::Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unsealable(name.to_string()))
    }

    pub async fn set(&self, store: &Store, name: &str, value: &[u8]) -> Result<(), SecretError> {
        let (nonce, sealed) = self.seal(name, value)?;
        store.put_secret(name, &nonce, &sealed).await?;
        Ok(())
    }

    /// The value of `name`, `None` when it is not set.
    pub async fn get(&self, store: &Store, name: &str) -> Result<Option<Vec<u8>>, SecretError> {
        match store.get_secret(name).await? {
            Some((nonce, sealed)) => Ok(Some(self.open_sealed(name, &nonce, &sealed)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = dir.path().join("u.db");
        let s = Secrets::open(&db).unwrap_or_else(|e| panic!("{e}"));
        let (nonce, sealed) = s.seal("api", b"hunter2").unwrap_or_else(|e| panic!("{e}"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let opened = s
            .open_sealed("api", &nonce, &sealed)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(opened, b"hunter2");
        assert!(s.open_sealed("other", &nonce, &sealed).is_err());
        // The same key file is read back, not made anew.
        let again = Secrets::open(&db).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.open_sealed("api", &nonce, &sealed).is_ok());
        let mode = std::fs::metadata(dir.path().join("u.db.key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        // Another key (another server's, or a new one) does not open it.
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stranger = Secrets::open(&other.path().join("u.db")).unwrap_or_else(|e| panic!("{e}"));
        assert!(stranger.open_sealed("api", &nonce, &sealed).is_err());
    }
}
