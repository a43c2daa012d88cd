//! The static `ktvmm` (`cargo static`, docs/ci.md) runs the bundled suite
//! in an empty root filesystem holding only itself and /dev/kvm: no libc,
//! no shell, no /proc, /sys or /tmp, as in a `FROM scratch` container.
//!
//! Building it inside `cargo test` would take minutes, so `.ci/run` builds
//! it first and sets `KTVMM_REQUIRE_STATIC=1`; elsewhere, without the
//! binary, the test says SKIPPED. `KTVMM_STATIC_BIN` names another path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{optional_tool, parts, scratch};

/// Where `cargo static` puts the binary, unless `KTVMM_STATIC_BIN` says.
fn static_binary() -> PathBuf {
    match std::env::var_os("KTVMM_STATIC_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/x86_64-unknown-linux-gnu/release/ktvmm"),
    }
}

#[test]
fn the_static_binary_runs_the_bundled_suite_in_an_empty_root() {
    const TEST: &str = "the_static_binary_runs_the_bundled_suite_in_an_empty_root";
    let binary = static_binary();
    let usable = if binary.is_file() {
        Ok(())
    } else {
        Err(format!(
            "{} is not built (run `cargo static` first)",
            binary.display()
        ))
    };
    if !optional_tool(TEST, "KTVMM_REQUIRE_STATIC", usable) {
        return;
    }
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: ktvmm's integration tests boot real guests and need KVM"
    );

    // No dynamic dependencies, as ldd sees it.
    let ldd = Command::new("ldd").arg(&binary).output().expect("run ldd");
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd {}: {said}",
        binary.display()
    );

    // The root: the binary and an empty file to mount /dev/kvm on.
    let root = scratch("static-root");
    std::fs::create_dir(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/kvm"), b"").unwrap();
    std::fs::copy(&binary, root.join("ktvmm")).unwrap();
    let mut entries: Vec<String> = walk(&root);
    entries.sort();
    assert_eq!(entries, ["dev", "dev/kvm", "ktvmm"]);

    // A mount namespace of its own (in a user namespace, so that no
    // privilege is needed) where /dev/kvm is bound into the root, then
    // chroot: the host's sh and mount do the setting up, none of it is
    // inside.
    let setup =
        r#"mount --bind /dev/kvm "$1/dev/kvm" && exec chroot "$1" /ktvmm test -q -o /results"#;
    let started = Instant::now();
    let output = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            setup,
            "sh",
        ])
        .arg(&root)
        .output()
        .expect("run unshare");
    let elapsed = started.elapsed();
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(" 0 failed, 0 skipped, 0 timed out, 0 errors"),
        "{stdout}"
    );

    // The results are there, every bundled guest passed, and what could
    // not be known without /proc and /sys reads "unknown".
    let text = std::fs::read_to_string(root.join("results/results.json")).unwrap();
    let results: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tests = results["tests"].as_array().unwrap();
    let bundled = results["meta"]["selection"]["discovered"].as_u64().unwrap();
    assert_eq!(tests.len() as u64, bundled);
    assert!(tests.iter().all(|t| t["status"] == "pass"), "{text}");
    assert_eq!(results["meta"]["cpu"], "unknown");
    for t in tests {
        let log = t["log"].as_str().unwrap();
        assert!(root.join(log.trim_start_matches('/')).is_file(), "{log}");
    }
    let size = std::fs::metadata(&binary).unwrap().len();
    // Measured figures, on the terminal (not captured).
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "static ktvmm: {} bytes; ldd: {}; bundled suite ({bundled} tests) in an empty root: {:.2} s\n",
            size,
            said.trim(),
            elapsed.as_secs_f64()
        )
        .as_bytes(),
    );
}

/// Every path under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.file_name().unwrap().to_string_lossy().into_owned());
        if path.is_dir() {
            for inner in walk(&path) {
                out.push(format!(
                    "{}/{inner}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    out
}
