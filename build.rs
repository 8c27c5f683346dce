//! Builds ufaas-agent (`agent/agent.c`): the static program every container runs as its main
//! process, embedded in the server binary (see `src/agent.rs`); and the gRPC code of
//! tinyFaaS's `proto/tinyfaas.proto` (see `src/compat/tinyfaas/grpc.rs`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    tinyfaas_proto();
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

/// Compiles `proto/tinyfaas.proto` with protox, a protobuf compiler in Rust, so the build needs
/// no `protoc`; tonic-prost-build writes the messages, the server and the client to OUT_DIR.
fn tinyfaas_proto() {
    println!("cargo:rerun-if-changed=proto/tinyfaas.proto");
    let fds = match protox::compile(["tinyfaas.proto"], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto/tinyfaas.proto does not compile: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().compile_fds(fds) {
        panic!("generating the gRPC code of proto/tinyfaas.proto failed: {e}");
    }
}
