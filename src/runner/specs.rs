//! Task specs as parsed at submit, kept typed until the task runs: the dispatcher does not
//! parse a spec again (nor decode its inline data again). Bounded by a byte budget, since a
//! queue may hold thousands of specs with megabytes of inline data each: a spec that does not
//! fit, or one stored before a restart, is parsed again from its record when it runs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::TaskId;
use crate::spec::{Resource, Source, TaskSpec};

pub struct Specs {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    specs: HashMap<TaskId, (TaskSpec, usize)>,
    used: usize,
}

impl Specs {
    /// Keeps at most about `budget` bytes of specs.
    pub fn new(budget: usize) -> Specs {
        Specs {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the spec of task `id` (replacing one kept before), if it fits.
    pub fn put(&self, id: TaskId, spec: TaskSpec) {
        let size = weight(&spec);
        let mut inner = self.lock();
        if let Some((_, old)) = inner.specs.remove(&id) {
            inner.used -= old;
        }
        if inner.used + size <= self.budget {
            inner.used += size;
            inner.specs.insert(id, (spec, size));
        }
    }

    /// The spec of task `id`, if kept; it is kept no longer.
    pub fn take(&self, id: TaskId) -> Option<TaskSpec> {
        let mut inner = self.lock();
        let (spec, size) = inner.specs.remove(&id)?;
        inner.used -= size;
        Some(spec)
    }
}

/// About what a spec holds in memory: its inline data twice (decoded, and as base64 in the
/// raw JSON it keeps), plus a little for the rest.
fn weight(spec: &TaskSpec) -> usize {
    let inline: usize = spec
        .resource_list
        .iter()
        .map(|r| match r {
            Resource::File {
                source: Source::Inline(bytes),
                ..
            } => bytes.len(),
            _ => 0,
        })
        .sum();
    let stdin = spec.stdin.as_ref().map_or(0, String::len);
    4096 + inline.saturating_mul(7) / 3 + stdin.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse, ParseContext, Policy};

    fn spec(data_len: usize) -> TaskSpec {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(vec![7u8; data_len]);
        let raw = serde_json::json!({"task_name": "t", "image": "busybox", "cmd_list": ["true"],
            "resource_list": [{"dest": "f", "data": data, "encoding": "base64"}]});
        parse(raw, &Policy::default(), ParseContext::default())
            .unwrap_or_else(|e| panic!("a valid spec: {e}"))
    }

    #[test]
    fn specs_are_kept_within_the_budget_and_taken_once() {
        let specs = Specs::new(100_000);
        let (a, b, big) = (TaskId::new(), TaskId::new(), TaskId::new());
        specs.put(a, spec(10));
        specs.put(b, spec(10));
        specs.put(big, spec(1 << 20));
        assert!(
            specs.take(big).is_none(),
            "past the budget: parsed again when it runs"
        );
        assert_eq!(specs.take(a).map(|s| s.task_name), Some("t".to_string()));
        assert!(specs.take(a).is_none(), "taken once");
        // Replacing (an update) does not count the old one.
        for _ in 0..100 {
            specs.put(b, spec(10));
        }
        assert!(specs.take(b).is_some());
        assert_eq!(specs.lock().used, 0);
    }
}
