//! Everything the server knows of the containers it made, in one place, by container id:
//! the connection to each one's agent, whether it is kept alive for more work (and under
//! which [`Key`]), and whether its removal failed and is to be retried.
//!
//! A kept container is found by its key: today a task's kept container (daemon tasks,
//! `rm: false`, locality reuse) under the task that made it; a function's warm container is
//! another kind of key beside it. The reaper removes kept containers idle past
//! `--keep-alive` or past their `ttl`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::agent::Agent;
use crate::model::TaskId;

/// What a kept container is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The container a task made and kept (`POST /fn/{id}` asks for it).
    Task(TaskId),
}

#[derive(Debug, Clone)]
pub struct Kept {
    pub key: Key,
    pub workdir: String,
    /// The container's maximum life (its creator's `ttl`).
    pub expires_at: Instant,
    pub last_used: Instant,
    /// Tasks running in it now: a busy container is never reaped for idleness.
    pub busy: usize,
}

#[derive(Default)]
struct Entry {
    agent: Option<Arc<Agent>>,
    kept: Option<Kept>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    kept: HashMap<Key, String>,
    /// Containers whose removal failed, retried by the reaper.
    unremoved: HashSet<String>,
}

#[derive(Default)]
pub struct Containers {
    inner: Mutex<Inner>,
}

impl Containers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the maps themselves are consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to the container's agent, if there is one.
    pub fn agent(&self, id: &str) -> Option<Arc<Agent>> {
        self.lock().by_id.get(id).and_then(|e| e.agent.clone())
    }

    pub fn set_agent(&self, id: &str, agent: Arc<Agent>) {
        self.lock().by_id.entry(id.to_string()).or_default().agent = Some(agent);
    }

    /// Keeps the container for more work under `kept.key`.
    pub fn keep(&self, id: &str, kept: Kept) {
        let mut inner = self.lock();
        inner.kept.insert(kept.key.clone(), id.to_string());
        inner.by_id.entry(id.to_string()).or_default().kept = Some(kept);
    }

    /// Takes the container for one more task if it is kept; returns a copy of its entry.
    pub fn acquire(&self, id: &str) -> Option<Kept> {
        let mut inner = self.lock();
        let k = inner.by_id.get_mut(id)?.kept.as_mut()?;
        k.busy += 1;
        Some(k.clone())
    }

    /// The container kept under `key`, taken for one more task.
    pub fn acquire_key(&self, key: &Key) -> Option<(String, Kept)> {
        let id = self.lock().kept.get(key)?.clone();
        let kept = self.acquire(&id)?;
        Some((id, kept))
    }

    /// A task in the container ended.
    pub fn release(&self, id: &str) {
        if let Some(k) = self.lock().by_id.get_mut(id).and_then(|e| e.kept.as_mut()) {
            k.busy = k.busy.saturating_sub(1);
            k.last_used = Instant::now();
        }
    }

    pub fn is_kept(&self, id: &str) -> bool {
        self.lock().by_id.get(id).is_some_and(|e| e.kept.is_some())
    }

    /// Containers kept right now.
    pub fn kept_count(&self) -> usize {
        self.lock().kept.len()
    }

    /// No longer kept (it stays known, and its agent talked to).
    pub fn unkeep(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(k) = inner.by_id.get_mut(id).and_then(|e| e.kept.take()) {
            inner.kept.remove(&k.key);
        }
    }

    /// Forgets a container no task will use again: not kept, its agent no longer talked to.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(k) = inner.by_id.remove(id).and_then(|e| e.kept) {
            inner.kept.remove(&k.key);
        }
    }

    /// Takes out every kept container that is idle past `keep_alive` or past its life.
    pub fn take_expired(&self, now: Instant, keep_alive: std::time::Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .lock()
            .by_id
            .iter()
            .filter_map(|(id, e)| e.kept.as_ref().map(|k| (id, k)))
            .filter(|(_, k)| {
                k.busy == 0
                    && (now >= k.expires_at || now.duration_since(k.last_used) >= keep_alive)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.unkeep(id);
        }
        expired
    }

    /// Every kept container, no longer kept.
    pub fn drain_kept(&self) -> Vec<String> {
        let ids: Vec<String> = self.lock().kept.values().cloned().collect();
        for id in &ids {
            self.unkeep(id);
        }
        ids
    }

    /// Its removal failed: the reaper retries it.
    pub fn removal_failed(&self, id: &str) {
        self.lock().unremoved.insert(id.to_string());
    }

    /// The removals to retry now.
    pub fn take_unremoved(&self) -> Vec<String> {
        self.lock().unremoved.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(now: Instant, life: u64) -> Kept {
        Kept {
            key: Key::Task(TaskId::new()),
            workdir: "/".into(),
            expires_at: now + Duration::from_secs(life),
            last_used: now,
            busy: 0,
        }
    }

    #[test]
    fn idle_and_old_containers_expire_busy_ones_do_not() {
        let set = Containers::default();
        let t0 = Instant::now();
        set.keep("idle", kept(t0, 1000));
        set.keep("old", kept(t0, 5));
        set.keep("busy", kept(t0, 5));
        assert!(set.acquire("busy").is_some());
        let gone = set.take_expired(t0 + Duration::from_secs(6), Duration::from_secs(10));
        assert_eq!(gone, vec!["old".to_string()]);
        let mut gone = set.take_expired(t0 + Duration::from_secs(11), Duration::from_secs(10));
        gone.sort();
        assert_eq!(gone, vec!["idle".to_string()]);
        set.release("busy");
        assert!(set.is_kept("busy"));
        assert_eq!(
            set.take_expired(
                Instant::now() + Duration::from_secs(20),
                Duration::from_secs(10)
            )
            .len(),
            1
        );
        assert_eq!(set.kept_count(), 0);
    }

    #[test]
    fn a_kept_container_is_found_by_its_key_until_it_is_forgotten() {
        let set = Containers::default();
        let t0 = Instant::now();
        let k = kept(t0, 100);
        let key = k.key.clone();
        set.keep("c1", k);
        let (id, entry) = set
            .acquire_key(&key)
            .unwrap_or_else(|| panic!("kept under its key"));
        assert_eq!((id.as_str(), entry.busy), ("c1", 1));
        set.release("c1");
        set.forget("c1");
        assert!(set.acquire_key(&key).is_none());
        assert!(!set.is_kept("c1"));
        set.removal_failed("c2");
        assert_eq!(set.take_unremoved(), vec!["c2".to_string()]);
        assert!(set.take_unremoved().is_empty());
    }
}
