//! Builds ufaas-agent (`agent/agent.c`): the static program every container runs as its main
//! process, embedded in the server binary (see `src/agent.rs`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=agent/agent.c");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("ufaas-agent");
    // The target's C compiler as `cc` finds it (CC, CC_<target>, else cc/gcc), with our own
    // flags: static so it runs in any image, even one with no libc at all.
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-static", "-O2", "-s", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg("agent/agent.c");
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building agent/agent.c failed ({s}): a C compiler with a static libc is needed \
             (Debian: gcc and libc6-dev)"
        ),
        Err(e) => panic!("cannot run the C compiler for agent/agent.c: {e}"),
    }
}
