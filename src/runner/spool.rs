//! A running task's output, stored as it comes: what a command printed is in its record
//! (`GET /fn/{id}` of a RUNNING task shows it) and, past a restart of the server, the
//! container's agent is asked only for what was not stored yet.
//!
//! Writes are batched (one small transaction per task every [`EVERY`] at most, none for a
//! task that ends sooner): the agent keeps each job's output until the job is acknowledged,
//! so what a crash catches between two writes is replayed, not lost.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::model::{Stream, TaskId};
use crate::store::Store;

/// How often a running task's new output is written.
pub const EVERY: Duration = Duration::from_millis(250);

/// Output not stored yet, for one task.
pub struct Spool {
    cap: usize,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Bytes taken of each stream so far (stored or pending), at most `cap`.
    taken: [usize; 2],
    /// Raw bytes of each stream stored so far.
    stored: [u64; 2],
    bufs: [Vec<u8>; 2],
    truncated: bool,
    /// `truncated` as last stored.
    stored_truncated: bool,
}

/// One write's worth: the text to append to each stream, the raw counts it brings them to.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub stdout: String,
    pub stderr: String,
    pub stored: (u64, u64),
    pub truncated: bool,
}

impl Spool {
    /// A spool keeping the first `cap` bytes of each stream, `stored` of which (raw bytes of
    /// stdout, of stderr) are in the record already.
    pub fn new(cap: usize, stored: (u64, u64)) -> Spool {
        let as_len = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(cap);
        Spool {
            cap,
            pending: Mutex::new(Pending {
                taken: [as_len(stored.0), as_len(stored.1)],
                stored: [stored.0, stored.1],
                ..Pending::default()
            }),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a chunk as it comes.
    pub fn push(&self, stream: Stream, data: &[u8]) {
        let s = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut p = self.pending();
        let room = self.cap.saturating_sub(p.taken[s]);
        let n = data.len().min(room);
        p.bufs[s].extend_from_slice(&data[..n]);
        p.taken[s] += n;
        if data.len() > room {
            p.truncated = true;
        }
    }

    /// What to write now, if anything: each stream up to its last whole UTF-8 character
    /// (a character cut by a chunk's end waits for its rest).
    pub fn take(&self) -> Option<Batch> {
        let mut p = self.pending();
        let cuts = [utf8_cut(&p.bufs[0]), utf8_cut(&p.bufs[1])];
        if cuts == [0, 0] && p.truncated == p.stored_truncated {
            return None;
        }
        let mut texts = [String::new(), String::new()];
        for s in 0..2 {
            let rest = p.bufs[s].split_off(cuts[s]);
            let done = std::mem::replace(&mut p.bufs[s], rest);
            texts[s] = String::from_utf8_lossy(&done).into_owned();
            p.stored[s] += done.len() as u64;
        }
        p.stored_truncated = p.truncated;
        let [stdout, stderr] = texts;
        Some(Batch {
            stdout,
            stderr,
            stored: (p.stored[0], p.stored[1]),
            truncated: p.truncated,
        })
    }
}

/// Writes `spool`'s new output to the record of `id` every [`EVERY`] until `stop`. The end
/// of the task writes its whole output itself, so nothing is flushed at the stop.
pub async fn run(store: Store, id: TaskId, spool: std::sync::Arc<Spool>, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(b) = spool.take() else { continue };
        if let Err(e) = store
            .append_output(id, &b.stdout, &b.stderr, b.stored, b.truncated)
            .await
        {
            tracing::warn!(task = %id, error = %e, "could not store output as it came");
        }
    }
}

/// The length of `b` less an incomplete UTF-8 sequence at its end.
fn utf8_cut(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(4) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let need = match c {
            0xF0..=0xFF => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_by_a_chunk_waits_for_its_rest() {
        let euro = "€".as_bytes(); // 3 bytes
        let spool = Spool::new(100, (0, 0));
        spool.push(Stream::Stdout, b"a");
        spool.push(Stream::Stdout, &euro[..2]);
        let first = spool.take().unwrap_or_else(|| panic!("a batch"));
        assert_eq!(first.stdout, "a");
        assert_eq!(first.stored, (1, 0));
        spool.push(Stream::Stdout, &euro[2..]);
        spool.push(Stream::Stderr, b"err");
        let second = spool.take().unwrap_or_else(|| panic!("a batch"));
        assert_eq!(second.stdout, "€");
        assert_eq!(second.stderr, "err");
        assert_eq!(second.stored, (4, 3));
        assert_eq!(spool.take(), None, "nothing new, nothing to write");
    }

    #[test]
    fn the_cap_counts_what_was_stored_before() {
        let spool = Spool::new(5, (3, 0));
        spool.push(Stream::Stdout, b"abcdef");
        let b = spool.take().unwrap_or_else(|| panic!("a batch"));
        assert_eq!(b.stdout, "ab");
        assert_eq!(b.stored, (5, 0));
        assert!(b.truncated);
        spool.push(Stream::Stdout, b"more");
        assert_eq!(spool.take(), None, "truncation already stored");
    }

    #[test]
    fn cut_points() {
        assert_eq!(utf8_cut(b""), 0);
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("é".as_bytes()), 2);
        assert_eq!(utf8_cut(&"é".as_bytes()[..1]), 0);
        assert_eq!(utf8_cut(&"𝄞".as_bytes()[..3]), 0);
        assert_eq!(utf8_cut("x𝄞".as_bytes()), 5);
        // Invalid bytes are not held back for ever.
        assert_eq!(utf8_cut(b"\x80\x80\x80\x80\x80"), 5);
        assert_eq!(utf8_cut(b"ab\xff"), 2);
    }
}
