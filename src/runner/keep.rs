//! Containers kept alive after their task (daemon tasks, `rm: false`, locality reuse), and the
//! reaper that removes them when idle past `--keep-alive` or past their `ttl`.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::model::TaskId;

#[derive(Debug, Clone)]
pub struct Kept {
    pub image: String,
    pub owner: TaskId,
    pub workdir: String,
    /// The container's maximum life (its creator's `ttl`).
    pub expires_at: Instant,
    pub last_used: Instant,
    /// Tasks running in it now: a busy container is never reaped for idleness.
    pub busy: usize,
}

#[derive(Default)]
pub struct KeptSet {
    inner: Mutex<HashMap<String, Kept>>,
}

impl KeptSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: String, kept: Kept) {
        self.lock().insert(id, kept);
    }

    /// Takes the container for one more task if it is kept; returns a copy of its entry.
    pub fn acquire(&self, id: &str) -> Option<Kept> {
        let mut map = self.lock();
        let k = map.get_mut(id)?;
        k.busy += 1;
        Some(k.clone())
    }

    /// A task in the container ended.
    pub fn release(&self, id: &str) {
        if let Some(k) = self.lock().get_mut(id) {
            k.busy = k.busy.saturating_sub(1);
            k.last_used = Instant::now();
        }
    }

    pub fn remove(&self, id: &str) -> Option<Kept> {
        self.lock().remove(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes out every container that is idle past `keep_alive` or past its life.
    pub fn take_expired(&self, now: Instant, keep_alive: std::time::Duration) -> Vec<String> {
        let mut map = self.lock();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, k)| {
                k.busy == 0
                    && (now >= k.expires_at || now.duration_since(k.last_used) >= keep_alive)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            map.remove(id);
        }
        expired
    }

    pub fn drain(&self) -> Vec<String> {
        self.lock().drain().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(now: Instant, life: u64) -> Kept {
        Kept {
            image: "i".into(),
            owner: TaskId::new(),
            workdir: "/".into(),
            expires_at: now + Duration::from_secs(life),
            last_used: now,
            busy: 0,
        }
    }

    #[test]
    fn idle_and_old_containers_expire_busy_ones_do_not() {
        let set = KeptSet::default();
        let t0 = Instant::now();
        set.insert("idle".into(), kept(t0, 1000));
        set.insert("old".into(), kept(t0, 5));
        set.insert("busy".into(), kept(t0, 5));
        assert!(set.acquire("busy").is_some());
        let gone = set.take_expired(t0 + Duration::from_secs(6), Duration::from_secs(10));
        assert_eq!(gone, vec!["old".to_string()]);
        let mut gone = set.take_expired(t0 + Duration::from_secs(11), Duration::from_secs(10));
        gone.sort();
        assert_eq!(gone, vec!["idle".to_string()]);
        set.release("busy");
        assert!(set.contains("busy"));
        assert_eq!(
            set.take_expired(
                Instant::now() + Duration::from_secs(20),
                Duration::from_secs(10)
            )
            .len(),
            1
        );
        assert!(set.is_empty());
    }
}
