//! Shared pieces of the integration tests: they run the real `ktvmm` binary,
//! which boots real guests under `/dev/kvm`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `ktvmm` binary, after checking that KVM is there: these tests must
/// fail loudly, not pass quietly, on a machine without it.
pub fn ktvmm() -> Command {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: ktvmm's integration tests boot real guests and need KVM"
    );
    Command::new(env!("CARGO_BIN_EXE_ktvmm"))
}

/// Whether a test may use an optional tool it compares ktvmm against
/// (QEMU, GDB, a browser): ktvmm never needs one, so without it the test
/// is skipped with one line on the terminal (not captured, so a green run
/// says what it did not check). When `require` (e.g. `KTVMM_REQUIRE_QEMU`)
/// is 1, as `.ci/run` sets it, a missing or unusable tool fails the test.
pub fn optional_tool(test: &str, require: &str, usable: Result<(), String>) -> bool {
    use std::io::Write;
    let Err(why) = usable else {
        return true;
    };
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{test}: {why} ({require}=1 makes this a failure)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (set {require}=1 to make this a failure)"
    );
    false
}

/// Whether QEMU can start a VM here, as `ktvmm envs qemu-kvm` finds out by
/// booting a tiny guest (installed is not enough).
pub fn qemu_usable(test: &str) -> bool {
    let usable = match ktvmm().args(["envs", "qemu-kvm"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "no comparison with QEMU: ktvmm envs says {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Err(format!("cannot run ktvmm envs: {e}")),
    };
    optional_tool(test, "KTVMM_REQUIRE_QEMU", usable)
}

/// Whether GDB is there for the tests that open cores or attach to guests.
pub fn gdb_usable(test: &str) -> bool {
    let usable = match Command::new("gdb").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("gdb is not installed (Debian: apt-get install gdb)".to_string()),
    };
    optional_tool(test, "KTVMM_REQUIRE_GDB", usable)
}

/// Whether headless Chromium is there for the tests that render
/// `report.html` in a browser.
pub fn chromium_usable(test: &str) -> bool {
    let usable = match Command::new("chromium").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("chromium is not installed (Debian: apt-get install chromium)".to_string()),
    };
    optional_tool(test, "KTVMM_REQUIRE_CHROMIUM", usable)
}

/// The test named `name` in a `results.json` value.
pub fn test_named<'a>(results: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    results["tests"]
        .as_array()
        .expect("results.json has tests")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {results}"))
}

/// Runs `ktvmm` with `args`; returns the output and how long it took.
pub fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = ktvmm().args(args).output().expect("start ktvmm");
    (output, started.elapsed())
}

/// Exit code, stdout and stderr of a finished process.
pub fn parts(output: &Output) -> (i32, String, String) {
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A bundled guest's ELF file, as built next to the binary.
pub fn guest_file(name: &str) -> PathBuf {
    let path = Path::new(env!("KTVMM_GUESTS_DIR")).join(name);
    assert!(
        path.exists(),
        "bundled guest {} was not built",
        path.display()
    );
    path
}

/// A scratch directory for this test, emptied first.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes `bytes` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path.display().to_string()
}
