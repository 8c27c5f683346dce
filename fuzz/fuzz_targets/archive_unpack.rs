//! `resources::unpack` on any bytes: it must never panic, and what it accepts must produce a
//! readable tar whose every entry lies under the destination directory, whose symbolic links
//! stay inside it, and whose files add up to no more than the size cap.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use ufaas::resources::{unpack, TarWriter};

const DIR: &str = "/fuzz/dest";
const MAX_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut out = TarWriter::new();
    if unpack(0, data, DIR, &mut out, MAX_BYTES).is_err() {
        return;
    }
    let tar = out.finish().expect("the upload tar finishes");

    // The upload is unpacked at `/`, so its paths are DIR without the leading slash.
    let dir = DIR.trim_start_matches('/');
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut total: u64 = 0;
    for entry in archive.entries().expect("the upload tar reads back") {
        let mut entry = entry.expect("every upload entry reads back");
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let inside = path == dir
            || path.trim_end_matches('/') == dir
            || path.starts_with(&format!("{dir}/"));
        assert!(inside, "entry `{path}` is not under `{dir}`");
        assert!(
            !path.split('/').any(|c| c == ".."),
            "entry `{path}` has a `..` component"
        );
        assert!(!path.contains('\0'), "entry `{path}` holds NUL");
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut body = Vec::new();
                entry.read_to_end(&mut body).expect("entry data reads back");
                total += body.len() as u64;
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                assert!(
                    link_stays_inside(dir, &path, &target),
                    "link `{path}` -> `{target}` leaves `{dir}`"
                );
            }
            other => panic!("entry `{path}` has unexpected type {other:?}"),
        }
    }
    assert!(total <= MAX_BYTES, "files add up to {total} bytes");
});

/// Resolves `target` from the directory holding the link at `path` and checks that every
/// step stays in `dir` (an independent check of the extractor's own rule).
fn link_stays_inside(dir: &str, path: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let base: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    let inside = |parts: &[&str]| parts.len() >= base.len() && parts[..base.len()] == base[..];
    let mut parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
        if !inside(&parts) {
            return false;
        }
    }
    inside(&parts)
}
