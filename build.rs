//! Builds the XDP program (ebpf/turnd_xdp.c) with clang, only with the `xdp` feature:
//! the default build needs no C toolchain.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    let source = "ebpf/turnd_xdp.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("turnd_xdp.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps asm/ under the multiarch directory, which -target bpf does not search.
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &multiarch, "-c", source, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed ({s}) building {source}"),
        Err(e) => {
            panic!("the `xdp` feature needs clang and libbpf-dev (apt-get install clang libbpf-dev): {clang}: {e}")
        }
    }
}
