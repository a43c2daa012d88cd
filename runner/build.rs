//! Builds the bundled guests (`guests/`, a separate no_std Cargo workspace)
//! and generates the table that embeds them in the `ktvmm` binary.
//!
//! The guests need their own profile (`panic = "abort"`) and link flags, so
//! they are built by a nested `cargo build` run from `guests/` (where their
//! `.cargo/config.toml` applies), with the outer build's `CARGO_*` and
//! `RUSTFLAGS` variables removed so that they do not leak in.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("runner/ has a parent");
    let guests = root.join("guests");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for input in [
        "guests/Cargo.toml",
        "guests/Cargo.lock",
        "guests/.cargo",
        "guests/ktest",
        "guests/suite",
        "abi",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }

    let guests_out = build_guests(&guests, &out_dir.join("guests-target"));
    let mut table = String::from(
        "/// Every bundled guest: (name, ELF image).\npub static GUESTS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &guests_out {
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?})),",
            path.display()
        )
        .unwrap();
    }
    table.push_str("];\n");
    fs::write(out_dir.join("bundled_guests.rs"), table).expect("write bundled_guests.rs");
    let dir = guests_out
        .first()
        .and_then(|(_, path)| path.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // Lets integration tests boot the guests from files too.
    println!("cargo:rustc-env=KTVMM_GUESTS_DIR={}", dir.display());
}

/// Runs the nested build and returns (name, executable) for every guest.
fn build_guests(guests: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--target-dir",
        ])
        .arg(target_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key.as_ref(),
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if leaks {
            cmd.env_remove(key.as_ref());
        }
    }
    let output = cmd.output().expect("run cargo for the guests");
    if !output.status.success() {
        panic!(
            "building the bundled guests in {} failed (see the messages above)",
            guests.display()
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    found.sort();
    assert!(!found.is_empty(), "the guest build produced no executables");
    found
}
