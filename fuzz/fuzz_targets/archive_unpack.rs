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
    check(data, "");
    // Tar headers carry a checksum that random mutations almost never keep right, so the
    // reader would refuse nearly every mutated header: the same bytes go in again with every
    // header's checksum recomputed, which lets the fuzzer reach the entry handling.
    if let Some(fixed) = fix_tar_checksums(data) {
        check(&fixed, " (tar checksums recomputed)");
    }
});

fn check(data: &[u8], how: &str) {
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
        let inside = path.trim_end_matches('/') == dir || path.starts_with(&format!("{dir}/"));
        assert!(inside, "entry `{path}` is not under `{dir}`{how}");
        assert!(
            !path.split('/').any(|c| c == ".."),
            "entry `{path}` has a `..` component{how}"
        );
        assert!(!path.contains('\0'), "entry `{path}` holds NUL{how}");
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
                    "link `{path}` -> `{target}` leaves `{dir}`{how}"
                );
            }
            other => panic!("entry `{path}` has unexpected type {other:?}{how}"),
        }
    }
    assert!(total <= MAX_BYTES, "files add up to {total} bytes{how}");
}

/// A copy of `data` with the checksum of every tar header recomputed, walking the headers by
/// their (octal) size fields; `None` when `data` is a zip or gzip, or too short for a header.
fn fix_tar_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 512 || data.starts_with(b"PK") || data.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let mut out = data.to_vec();
    let mut off = 0usize;
    while off + 512 <= out.len() {
        let block = &mut out[off..off + 512];
        if block.iter().all(|b| *b == 0) {
            off += 512;
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        // Past a size that is not plain octal (or absurd), the walk cannot go on.
        let Some(next) = octal(&block[124..136])
            .and_then(|size| size.checked_add(511))
            .map(|n| n / 512 * 512)
            .and_then(|n| n.checked_add(off + 512))
        else {
            break;
        };
        off = next;
    }
    (out != data).then_some(out)
}

fn octal(field: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    usize::from_str_radix(s, 8).ok()
}

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
