//! The SQL of Faasm's API (API.md section 6): state values per user and key, the numeric
//! call ids Faasm's clients poll (each mapped to its task), and the files of `PUT /file`.

use super::{Store, StoreError};
use crate::model::{now_rfc3339, TaskId};

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

    /// Replaces the whole value of `user`/`key`.
    pub async fn put_faasm_state(
        &self,
        user: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO faasm_state (user, key, value, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user, key) DO UPDATE SET value = excluded.value, \
             updated_at = excluded.updated_at",
        )
        .bind(user)
        .bind(key)
        .bind(value)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
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
        sqlx::query(
            "INSERT INTO faasm_state (user, key, value, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user, key) DO UPDATE SET value = excluded.value, \
             updated_at = excluded.updated_at",
        )
        .bind(user)
        .bind(key)
        .bind(&value)
        .bind(now_rfc3339())
        .execute(&mut *tx)
        .await?;
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

    /// Stores (or replaces) the file at `path`; returns its `seq`, above every earlier one.
    pub async fn put_faasm_file(&self, path: &str, data: &[u8]) -> Result<i64, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
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
    use super::splice;

    #[test]
    fn splice_writes_at_the_offset_and_pads_with_zeros() {
        assert_eq!(splice(b"0123456789".to_vec(), 10, 2, b"999"), b"0199956789");
        assert_eq!(splice(Vec::new(), 5, 1, b"ab"), b"\0ab\0\0");
        assert_eq!(splice(b"abc".to_vec(), 0, 2, b"XY"), b"abXY");
        assert_eq!(splice(b"abcdef".to_vec(), 3, 0, b"Z"), b"Zbcdef");
    }
}
