//! `spec::parse` on any JSON: it must never panic, refuse only with a client error, and
//! accept again what it accepted once. The runner stores `spec.raw` as text in SQLite and
//! parses it again when the task starts, so the text round-trip must give the same spec.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ufaas::spec::{self, ParseContext, Policy};

/// The image of the container a `POST /fn/{id}` asks for.
const REUSE_IMAGE: &str = "ufaas/busybox:latest";

fn check(value: &Value, policy: &Policy, ctx: ParseContext<'_>) {
    let spec = match spec::parse(value.clone(), policy, ctx) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(
                matches!(e.status, 400 | 403 | 413),
                "refused with status {}: {e:?}",
                e.status
            );
            return;
        }
    };

    // What was accepted is well-formed.
    let name_len = spec.task_name.chars().count();
    assert!(
        (1..=127).contains(&name_len),
        "task_name {:?}",
        spec.task_name
    );
    assert!(!spec.task_name.contains(' '));
    assert!(!spec.cmd_list.is_empty() && !spec.cmd_list[0].is_empty());
    assert!(spec::valid_image_ref(&spec.image), "image {:?}", spec.image);
    assert!(spec.resource_list.len() <= spec::MAX_RESOURCES);
    if let Some(pwd) = &spec.pwd {
        assert!(pwd.starts_with('/') && !pwd.split('/').any(|c| c == ".."));
    }
    if let Some(reuse) = ctx.reuse_image {
        assert_eq!(spec.image, reuse);
        assert!(spec.resource_list.iter().all(|r| !r.is_mount()));
    }

    // Parsing `raw` again, as a value and through its stored text, gives the same spec.
    let again = spec::parse(spec.raw.clone(), policy, ctx)
        .unwrap_or_else(|e| panic!("raw of an accepted spec refused: {e:?}\nraw: {}", spec.raw));
    assert_eq!(again, spec);
    let text = serde_json::to_string(&spec.raw).expect("raw serialises");
    let reread: Value = serde_json::from_str(&text).expect("raw's text is JSON");
    let stored = spec::parse(reread, policy, ctx)
        .unwrap_or_else(|e| panic!("stored text of an accepted spec refused: {e:?}\ntext: {text}"));
    assert_eq!(stored, spec, "text: {text}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let policy = Policy::default();
    check(&value, &policy, ParseContext::default());
    check(
        &value,
        &policy,
        ParseContext {
            reuse_image: Some(REUSE_IMAGE),
        },
    );
});
