//! Links every guest binary as a static ELF64 at 1 MiB with ktest's linker
//! script, and refuses to build guests without the code-generation flags of
//! `.cargo/config.toml`.
//!
//! The link arguments live here rather than in `.cargo/config.toml` because
//! rustflags from there also apply to build scripts, which are host programs
//! that need the C runtime.

use std::path::PathBuf;

/// Flags from `.cargo/config.toml` the guests cannot run correctly without.
/// A `RUSTFLAGS` (or `CARGO_ENCODED_RUSTFLAGS`) variable in the environment
/// replaces them silently, and the result would only fail at run time, where
/// KVM's instruction emulator meets an SSE instruction it cannot execute.
const REQUIRED_RUSTFLAGS: [&str; 5] = [
    "relocation-model=static",
    "no-vectorize-loops",
    "no-vectorize-slp",
    "--combiner-store-merging=false",
    "--max-store-memset=1",
];

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let script = manifest_dir.join("../ktest/link.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");

    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let missing: Vec<&str> = REQUIRED_RUSTFLAGS
        .iter()
        .copied()
        .filter(|flag| !rustflags.contains(flag))
        .collect();
    assert!(
        missing.is_empty(),
        "the guests must be built with the rustflags of guests/.cargo/config.toml, but {missing:?} are \
         missing: run cargo from guests/ without RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS in the environment"
    );

    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
        "-Wl,-z,max-page-size=4096",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
