//! The SQL of Faasm's API (API.md section 6): state values per user and key, the numeric
//! call ids Faasm's clients poll (each mapped to its task), and the files of `PUT /file`.
//!
//! State is written by untrusted code, so each user's has a quota ([`STATE_KEYS_MAX`] keys,
//! [`STATE_BYTES_MAX`] bytes); the files of `PUT /file` are all read at each Faasm
//! container's start, so their total is capped too ([`FILES_BYTES_MAX`]). A write past a
//! limit is refused whole ([`StoreError::Quota`]).

use super::{Store, StoreError};
use crate::model::{now_rfc3339, TaskId};

/// The most state keys one user (namespace) may have.
pub const STATE_KEYS_MAX: u64 = 10_000;
/// The most bytes of state values one user may have, all keys together.
pub const STATE_BYTES_MAX: u64 = 1 << 30;
/// The most bytes of `PUT /file` files, all paths together.
pub const FILES_BYTES_MAX: u64 = 256 << 20;

/// Limits of what is stored, as counted by [`over_quota`].
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub keys: u64,
    pub bytes: u64,
}

/// Each user's state.
pub const STATE_QUOTA: Quota = Quota {
    keys: STATE_KEYS_MAX,
    bytes: STATE_BYTES_MAX,
};
/// The files of `PUT /file` (any number of paths).
pub const FILES_QUOTA: Quota = Quota {
    keys: u64::MAX,
    bytes: FILES_BYTES_MAX,
};

/// Why a write of `len` bytes is refused when the other entries (all but the one written)
/// are `others` in number and `others_bytes` in size; `what` names them in the message.
pub fn over_quota(
    quota: Quota,
    others: u64,
    others_bytes: u64,
    len: u64,
    what: &str,
) -> Option<String> {
    if others.saturating_add(1) > quota.keys {
        return Some(format!(
            "{what} holds {others} keys, the most it may: write to one of them, or delete some"
        ));
    }
    if others_bytes.saturating_add(len) > quota.bytes {
        return Some(format!(
            "{what} would hold {} bytes, past its limit of {}",
            others_bytes.saturating_add(len),
            quota.bytes
        ));
    }
    None
}

/// A file uploaded with `PUT /file`.
#[derive(Debug, Clone)]
pub struct FaasmFile {
    pub path: String,
    pub data: Vec<u8>,
    pub seq: i64,
}

impl Store {
    /// The state value of `user`/`key`, if it was ever written.
    pub async fn faasm_state(&self, user: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT value FROM faasm_state WHERE user = ? AND key = ?")
                .bind(user)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Replaces the whole value of `user`/`key` (within the user's quota).
    pub async fn put_faasm_state(
        &self,
        user: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.put_faasm_state_within(user, key, value, STATE_QUOTA)
            .await
    }

    async fn put_faasm_state_within(
        &self,
        user: &str,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        state_quota(&mut tx, user, key, value.len(), quota).await?;
        upsert_state(&mut tx, user, key, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes `data` at `offset` of the value of `user`/`key`, which is first made at least
    /// `total` bytes long (zeros added; an absent value is all zeros). One write: no other
    /// write of the store comes between the read and the update.
    pub async fn write_faasm_state_at(
        &self,
        user: &str,
        key: &str,
        total: usize,
        offset: usize,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT value FROM faasm_state WHERE user = ? AND key = ?")
                .bind(user)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        let value = splice(row.map(|r| r.0).unwrap_or_default(), total, offset, data);
        state_quota(&mut tx, user, key, value.len(), STATE_QUOTA).await?;
        upsert_state(&mut tx, user, key, &value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new call id for `task`.
    pub async fn new_faasm_call(&self, task: TaskId) -> Result<i64, StoreError> {
        let _w = self.writer().await;
        let done = sqlx::query("INSERT INTO faasm_calls (task_id, created_at) VALUES (?, ?)")
            .bind(task.to_string())
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(done.last_insert_rowid())
    }

    /// The task of call id `id`.
    pub async fn faasm_call(&self, id: i64) -> Result<Option<TaskId>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT task_id FROM faasm_calls WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some((t,)) => t
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("task id of Faasm call {id}"))),
        }
    }

    /// Stores (or replaces) the file at `path` (within [`FILES_BYTES_MAX`] in all); returns
    /// its `seq`, above every earlier one.
    pub async fn put_faasm_file(&self, path: &str, data: &[u8]) -> Result<i64, StoreError> {
        self.put_faasm_file_within(path, data, FILES_QUOTA).await
    }

    async fn put_faasm_file_within(
        &self,
        path: &str,
        data: &[u8],
        quota: Quota,
    ) -> Result<i64, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let (others, others_bytes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM faasm_files WHERE path != ?",
        )
        .bind(path)
        .fetch_one(&mut *tx)
        .await?;
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let counted = |n: i64| u64::try_from(n).unwrap_or(0);
        if let Some(why) = over_quota(
            quota,
            counted(others),
            counted(others_bytes),
            len,
            "the files of PUT /file",
        ) {
            return Err(StoreError::Quota(why));
        }
        let (seq,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) + 1 FROM faasm_files")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO faasm_files (path, data, seq, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (path) DO UPDATE SET data = excluded.data, seq = excluded.seq, \
             updated_at = excluded.updated_at",
        )
        .bind(path)
        .bind(data)
        .bind(seq)
        .bind(now_rfc3339())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The file at `path`.
    pub async fn faasm_file(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT data FROM faasm_files WHERE path = ?")
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// The newest `seq` (0 when no file was uploaded).
    pub async fn faasm_files_seq(&self) -> Result<i64, StoreError> {
        let (seq,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM faasm_files")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq)
    }

    /// The files uploaded or replaced after `seq`, oldest first.
    pub async fn faasm_files_after(&self, seq: i64) -> Result<Vec<FaasmFile>, StoreError> {
        let rows: Vec<(String, Vec<u8>, i64)> =
            sqlx::query_as("SELECT path, data, seq FROM faasm_files WHERE seq > ? ORDER BY seq")
                .bind(seq)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(path, data, seq)| FaasmFile { path, data, seq })
            .collect())
    }
}

/// Refuses (inside `tx`) a value of `len` bytes for `user`/`key` past the user's quota.
async fn state_quota(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    user: &str,
    key: &str,
    len: usize,
    quota: Quota,
) -> Result<(), StoreError> {
    // LENGTH of a blob is read from its header, not its bytes.
    let (others, others_bytes): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM faasm_state \
         WHERE user = ? AND key != ?",
    )
    .bind(user)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    let counted = |n: i64| u64::try_from(n).unwrap_or(0);
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    match over_quota(
        quota,
        counted(others),
        counted(others_bytes),
        len,
        &format!("the state of user {user}"),
    ) {
        Some(why) => Err(StoreError::Quota(why)),
        None => Ok(()),
    }
}

async fn upsert_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    user: &str,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO faasm_state (user, key, value, updated_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (user, key) DO UPDATE SET value = excluded.value, \
         updated_at = excluded.updated_at",
    )
    .bind(user)
    .bind(key)
    .bind(value)
    .bind(now_rfc3339())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `value` made at least `total` bytes long (zeros added), with `data` written at `offset`
/// (the value grows when `data` ends past it).
pub fn splice(mut value: Vec<u8>, total: usize, offset: usize, data: &[u8]) -> Vec<u8> {
    let end = offset.saturating_add(data.len());
    let len = value.len().max(total).max(end);
    value.resize(len, 0);
    value[offset..end].copy_from_slice(data);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;

    #[test]
    fn a_write_past_the_quota_is_refused() {
        let q = Quota {
            keys: 3,
            bytes: 100,
        };
        assert_eq!(over_quota(q, 2, 50, 50, "s"), None);
        assert!(over_quota(q, 3, 0, 1, "s").is_some_and(|m| m.contains("3 keys")));
        assert!(over_quota(q, 0, 60, 41, "s").is_some_and(|m| m.contains("101 bytes")));
        assert_eq!(over_quota(STATE_QUOTA, 9_999, 0, 1 << 20, "s"), None);
        assert!(over_quota(STATE_QUOTA, 10_000, 0, 0, "s").is_some());
        assert!(over_quota(STATE_QUOTA, 0, 1 << 30, 1, "s").is_some());
        assert!(over_quota(FILES_QUOTA, 1 << 40, (256 << 20) - 1, 2, "f").is_some());
    }

    #[tokio::test]
    async fn the_store_keeps_each_users_state_and_the_files_within_their_quota() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("q.db"), Events::new(16))
            .await
            .expect("store");
        let q = Quota { keys: 2, bytes: 10 };
        store
            .put_faasm_state_within("u", "a", b"12345", q)
            .await
            .expect("a");
        store
            .put_faasm_state_within("u", "b", b"123", q)
            .await
            .expect("b");
        // A third key, or more bytes in all, is refused; replacing within them is not.
        let third = store.put_faasm_state_within("u", "c", b"", q).await;
        assert!(matches!(third, Err(StoreError::Quota(_))), "{third:?}");
        let big = store.put_faasm_state_within("u", "b", b"123456", q).await;
        assert!(matches!(big, Err(StoreError::Quota(_))), "{big:?}");
        store
            .put_faasm_state_within("u", "b", b"12345", q)
            .await
            .expect("b again");
        // Another user's state is counted apart.
        store
            .put_faasm_state_within("v", "c", b"1234567890", q)
            .await
            .expect("v");
        assert_eq!(store.faasm_state("u", "c").await.expect("read"), None);
        assert_eq!(
            store.faasm_state("u", "b").await.expect("read"),
            Some(b"12345".to_vec())
        );

        let fq = Quota {
            keys: u64::MAX,
            bytes: 8,
        };
        store
            .put_faasm_file_within("/a", b"1234", fq)
            .await
            .expect("a");
        let over = store.put_faasm_file_within("/b", b"12345", fq).await;
        assert!(matches!(over, Err(StoreError::Quota(_))), "{over:?}");
        store
            .put_faasm_file_within("/a", b"12345678", fq)
            .await
            .expect("replace");
        assert_eq!(store.faasm_files_seq().await.expect("seq"), 2);
    }

    #[test]
    fn splice_writes_at_the_offset_and_pads_with_zeros() {
        assert_eq!(splice(b"0123456789".to_vec(), 10, 2, b"999"), b"0199956789");
        assert_eq!(splice(Vec::new(), 5, 1, b"ab"), b"\0ab\0\0");
        assert_eq!(splice(b"abc".to_vec(), 0, 2, b"XY"), b"abXY");
        assert_eq!(splice(b"abcdef".to_vec(), 3, 0, b"Z"), b"Zbcdef");
    }
}
