//! Bounded resources (docs/limits.md): hostile files, huge outputs, a
//! killed runner, closed or full stdio. Each case runs `ktvmm` under a
//! memory limit and a deadline, so a regression fails here instead of
//! taking the machine down.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ktvmm, scratch, write};

/// Address space for `ktvmm` under test: enough for a 128 MiB guest and
/// its threads, far less than reading `/dev/zero` would take.
const MEMORY_LIMIT: u64 = 2 << 30;

/// Runs `cmd` with [`MEMORY_LIMIT`] and kills it after `deadline`; returns
/// its output and whether it finished on time.
fn bounded(mut cmd: Command, deadline: Duration) -> (Output, bool) {
    // SAFETY: setrlimit is async-signal-safe; it only changes the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ktvmm");
    let started = Instant::now();
    let mut on_time = true;
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > deadline {
            on_time = false;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("collect output"), on_time)
}

/// `ktvmm ARGS` in `dir`, bounded; exit code and stderr.
fn refused(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut cmd = ktvmm();
    cmd.current_dir(dir).args(args);
    let (output, on_time) = bounded(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(on_time, "ktvmm {args:?} did not finish in 10 s: {stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn devices_fifos_and_huge_files_are_refused_at_once_with_one_line() {
    let dir = scratch("hostile-inputs");
    mkfifo(&dir.join("fifo"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.ktvmm.toml")).unwrap();
    std::fs::File::create(dir.join("sparse"))
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    write(&dir, "hello", b"hello");
    let (code, stderr) = refused(&dir, &["test", "-f", "exitcode-pass", "-o", "run-a", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    let device = "/dev/zero: is a character device, not a regular file";
    let fifo = "fifo: is a FIFO, not a regular file";
    for (args, message) in [
        (&["run", "/dev/zero"][..], device),
        (&["run", "bundled:exitcode", "-initrd", "/dev/zero"], device),
        (&["test", "/dev/zero"], device),
        (
            &["test", "--expect", "/dev/zero", "-f", "exitcode-pass"],
            device,
        ),
        (&["fuzz", "--replay", "/dev/zero"], device),
        (&["diff", "run-a", "/dev/zero"], device),
        (
            &["test", "zero.ktvmm.toml"],
            "zero.ktvmm.toml: is a character device, not a regular file",
        ),
        (
            &["run", "sparse"],
            "sparse: is 10737418240 bytes; a guest for 128 MiB of RAM (-m) may be at most 134217728 bytes",
        ),
        (&["run", "fifo"], fifo),
        (&["run", "bundled:exitcode", "-initrd", "fifo"], fifo),
        (&["diff", "run-a", "fifo"], fifo),
        (&["fuzz", "--replay", "fifo"], fifo),
        (&["test", "fifo", "--list"], fifo),
    ] {
        let (code, stderr) = refused(&dir, args);
        assert_eq!(code, 125, "ktvmm {args:?}: {stderr}");
        assert_eq!(stderr, format!("ktvmm: {message}\n"), "ktvmm {args:?}");
    }
}
