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
fn bounded(cmd: Command, deadline: Duration) -> (Output, bool) {
    bounded_with(cmd, deadline, |_| {})
}

/// [`bounded`], telling `started` the child's pid.
fn bounded_with(mut cmd: Command, deadline: Duration, started: impl FnOnce(u32)) -> (Output, bool) {
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
    started(child.id());
    // Read as it comes: a full pipe would stall the child.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let mut on_time = true;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > deadline {
            on_time = false;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (output, on_time)
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

/// Runs `ktvmm test` on `suite` (written into `dir`) with `args`, bounded;
/// samples the runner's peak RSS (VmHWM, KiB) while it runs.
fn test_run(dir: &Path, suite: &str, args: &[&str], deadline: Duration) -> (Output, bool, u64) {
    let path = write(dir, "s.ktvmm.toml", suite.as_bytes());
    let mut cmd = ktvmm();
    cmd.current_dir(dir).arg("test").arg(&path).args(args);
    peak_rss(cmd, deadline)
}

/// [`bounded`], sampling the process's VmHWM as it runs.
fn peak_rss(cmd: Command, deadline: Duration) -> (Output, bool, u64) {
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (pid_tx, pid_rx) = std::sync::mpsc::channel::<u32>();
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            let Ok(pid) = pid_rx.recv() else { return };
            while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                if status.contains("State:\tZ") {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (output, on_time) = bounded_with(cmd, deadline, |pid| {
        let _ = pid_tx.send(pid);
    });
    let _ = sampler.join();
    (
        output,
        on_time,
        peak.load(std::sync::atomic::Ordering::Relaxed),
    )
}

#[test]
fn a_test_printing_a_gigabyte_keeps_a_capped_log_and_the_runner_small() {
    let dir = scratch("gigabyte-log");
    let suite = "[[test]]\nname = \"flood\"\nexec = \"/bin/sh\"\n\
                 args = [\"-c\", \"echo FIRST; head -c 1073741824 /dev/zero | tr '\\\\0' x; echo; echo LAST\"]\n";
    let (output, on_time, peak_kib) = test_run(
        &dir,
        suite,
        &["-o", "out", "--log-limit", "2M"],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(on_time, "{stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let log = std::fs::read(dir.join("out/logs/flood.log")).unwrap();
    assert!(log.len() <= (2 << 20) + 300, "log of {} bytes", log.len());
    let text = String::from_utf8_lossy(&log);
    assert!(text.starts_with("FIRST\n"));
    assert!(text.ends_with("\nLAST\n"));
    assert!(
        text.contains("bytes of output cut here; the log keeps the first"),
        "no marker"
    );
    // The runner copies the output; it never holds it.
    assert!(peak_kib < 100 << 10, "runner peak RSS {peak_kib} KiB");
}

#[test]
fn a_full_disk_ends_the_test_as_error_and_the_results_are_still_written() {
    let dir = scratch("full-disk");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let suite = write(
        &dir,
        "s.ktvmm.toml",
        b"[[test]]\nname = \"forever\"\nexec = \"/usr/bin/yes\"\n\
          [[test]]\nname = \"quiet\"\nexec = \"/bin/true\"\n",
    );
    // A 4 MiB filesystem of its own, in a mount namespace that ends with it.
    let mut cmd = Command::new("unshare");
    cmd.current_dir(&dir).args(["-m", "sh", "-c"]).arg(format!(
        "mount -t tmpfs -o size=4m ktvmm-full {out} && {ktvmm} test {suite} -o {out} --timeout 20 -j 2; \
         status=$?; cp {out}/results.json {dir}/results.json; exit $status",
        out = out.display(),
        dir = dir.display(),
        ktvmm = env!("CARGO_BIN_EXE_ktvmm"),
    ));
    let started = Instant::now();
    let (output, on_time) = bounded(cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(on_time, "{stdout}{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the full disk was not noticed: {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("ERROR   forever") && stdout.contains("No space left on device"),
        "{stdout}"
    );
    assert!(stdout.contains("summary: 1 passed"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
            .unwrap();
    let statuses: Vec<&str> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["error", "pass"]);
}

/// Processes whose command line or environment holds `mark`.
fn processes_marked(mark: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            continue;
        }
        for what in ["cmdline", "environ"] {
            let bytes = std::fs::read(entry.path().join(what)).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(mark) {
                found.push(format!("{pid}: {}", stat.trim()));
                break;
            }
        }
    }
    found
}

#[test]
fn kill_9_of_the_runner_leaves_no_test_process_behind() {
    let dir = scratch("kill-9-runner");
    let mark = format!("KTVMM_ORPHAN_MARK={}", dir.display());
    let (key, value) = mark.split_once('=').unwrap();
    // Two guests spinning until their own (long) limit, two shell tests
    // whose children are in their process group.
    let suite = format!(
        "[defaults]\ntimeout = 300\nenv = {{ {key} = \"{value}\" }}\n\
         [[test]]\nname = \"hang1\"\nguest = \"bundled:hang\"\n\
         [[test]]\nname = \"hang2\"\nguest = \"bundled:hang\"\n\
         [[test]]\nname = \"sh1\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 300 & sleep 300\"]\n\
         [[test]]\nname = \"sh2\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 300 & sleep 300\"]\n"
    );
    let path = write(&dir, "s.ktvmm.toml", suite.as_bytes());
    let out = dir.join("out").display().to_string();
    let mut runner = ktvmm()
        .current_dir(&dir)
        .args(["test", &path, "-j", "4", "-o", &out])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ktvmm test");
    // The guests' command lines name the output directory; the programs'
    // environments hold the mark.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_marked(&dir.display().to_string()).len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = processes_marked(&dir.display().to_string());
    assert!(
        running.iter().filter(|p| p.contains("(ktvmm)")).count() >= 4
            && running.iter().filter(|p| p.contains("(sleep)")).count() == 4,
        "the 4 tests did not all start: {running:#?}"
    );
    runner.kill().unwrap();
    runner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = processes_marked(&dir.display().to_string());
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = processes_marked(&dir.display().to_string());
    }
    assert!(left.is_empty(), "survivors of kill -9: {left:#?}");
}

/// A guest that prints `x` lines to COM1 forever:
/// `mov dx, 0x3f8; 1: mov al, 'x'; out dx, al; mov al, 10; out dx, al; jmp 1b`.
fn flood_guest(dir: &Path) -> String {
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xb0, 0x0a, 0xee, 0xeb, 0xf8,
    ];
    write(
        dir,
        "flood.elf",
        &ktvmm_vmm::boot::test_images::elf64(0x10_0000, &code, 0),
    )
}

#[test]
fn a_closed_console_ends_the_guest_with_one_line() {
    let dir = scratch("closed-console");
    let guest = flood_guest(&dir);
    let mut child = ktvmm()
        .args(["run", &guest, "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ktvmm run");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    // `| head -c 100`: the reader goes away.
    drop(stdout);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the guest went on after its console was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr,
        "ktvmm: the guest's console output was closed (a pipe whose reader exited)\n"
    );
}

#[test]
fn full_stdout_and_stderr_do_not_panic() {
    let full = || {
        std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [
        &["run", "bundled:selftest"][..],
        &["run", "bundled:nosuch"],
        &["test", "--list"],
    ] {
        let status = ktvmm()
            .args(args)
            .stdout(full())
            .stderr(full())
            .status()
            .unwrap();
        // 101 is Rust's panic; a full console ends the run as ktvmm's error.
        assert_ne!(status.code(), Some(101), "ktvmm {args:?} panicked");
        if args[0] == "run" {
            assert_eq!(status.code(), Some(125), "ktvmm {args:?}");
        }
    }
    // The outcome file on a full disk (what `-o` on a full filesystem gave
    // a guest): ktvmm's error, one line, never a panic.
    let output = ktvmm()
        .args(["run", "bundled:exitcode", "-append", "pass"])
        .args(["--json-outcome", "/dev/full"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr,
        "ktvmm: /dev/full: cannot write the outcome: No space left on device (os error 28)\n"
    );
}

#[test]
fn a_second_run_into_the_same_output_directory_is_refused() {
    let dir = scratch("output-lock");
    let suite = write(
        &dir,
        "s.ktvmm.toml",
        b"[[test]]\nname = \"slow-fail\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 2; exit 1\"]\n",
    );
    let mut first = ktvmm()
        .current_dir(&dir)
        .args(["test", &suite, "-o", "same"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.join("same/.ktvmm-test.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(Instant::now() < deadline, "the first run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stderr) = refused(&dir, &["test", &suite, "-o", "same"]);
    assert_eq!(code, 125, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ktvmm: same: another ktvmm test (pid {}) is writing its results here; wait for it to end or choose another -o DIR\n",
            first.id()
        )
    );
    assert_eq!(first.wait().unwrap().code(), Some(1));
    let results = std::fs::read_to_string(dir.join("same/results.json")).unwrap();
    assert!(
        results.contains("\"fail\""),
        "the first run's FAIL was lost"
    );
    // Once the first has ended, the directory is free again.
    let (code, stderr) = refused(&dir, &["test", &suite, "-o", "same", "-q"]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn listing_50000_tests_takes_linear_time() {
    // Quadratic reading took 11 s for 30,000 entries and 143 s for
    // 100,000 (release build); linear reading takes seconds even here.
    let dir = scratch("many-tests");
    let n = 50_000;
    let mut suite = String::new();
    let mut cfg = String::new();
    for i in 0..n {
        suite += &format!("[[test]]\nname = \"t{i}\"\nexec = \"/bin/true\"\n");
        cfg += &format!("[t{i}]\nfile = t.flat\nsmp = 1\n\n");
    }
    let suite = write(&dir, "many.ktvmm.toml", suite.as_bytes());
    std::fs::create_dir_all(dir.join("x86")).unwrap();
    let cfg = write(&dir.join("x86"), "unittests.cfg", cfg.as_bytes());
    for path in [suite, cfg] {
        let mut cmd = ktvmm();
        cmd.args(["test", &path, "--list"]);
        let (output, on_time) = bounded(cmd, Duration::from_secs(60));
        assert!(on_time, "--list of {n} tests in {path} took over 60 s");
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(output.stdout.iter().filter(|&&b| b == b'\n').count(), n);
    }
}

#[test]
fn an_empty_test_name_is_refused_in_every_format() {
    let dir = scratch("empty-names");
    std::fs::create_dir_all(dir.join("x86")).unwrap();
    let cfg = write(
        &dir.join("x86"),
        "unittests.cfg",
        b"[a]\nfile = a.flat\n\n[]\nfile = b.flat\n",
    );
    let suite = write(
        &dir,
        "s.ktvmm.toml",
        b"[[test]]\nname = \"\"\nexec = \"/bin/true\"\n",
    );
    let (code, stderr) = refused(&dir, &["test", &cfg, "--list"]);
    assert_eq!(code, 125);
    assert_eq!(
        stderr,
        format!("ktvmm: {cfg}:4: []: a test name cannot be empty\n")
    );
    let (code, stderr) = refused(&dir, &["test", &suite, "--list"]);
    assert_eq!(code, 125);
    assert!(
        stderr.ends_with(": a test name cannot be empty\n"),
        "{stderr}"
    );
}

#[test]
fn timeout_bounds_setup_too() {
    let started = Instant::now();
    let mut cmd = ktvmm();
    cmd.args(["run", "bundled:smp", "-smp", "1000", "--timeout", "2"]);
    let (output, on_time) = bounded(cmd, Duration::from_secs(60));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(on_time, "{stderr}");
    assert_eq!(output.status.code(), Some(124), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("ktvmm: guest timed out after 2 s")),
        "{stderr}"
    );
    // The limit, the VM's own stop and a second of backstop.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn the_timeout_line_is_not_glued_to_the_guests_last_text() {
    let dir = scratch("glued-timeout");
    // mov dx, 0x3f8; mov al, 'a'; out dx, al; cli; 1: jmp 1b
    let code = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'a', 0xee, 0xfa, 0xeb, 0xfe];
    let guest = write(
        &dir,
        "unterminated.elf",
        &ktvmm_vmm::boot::test_images::elf64(0x10_0000, &code, 0),
    );
    let suite = format!("[[test]]\nname = \"u\"\nguest = \"{guest}\"\ntimeout = 1\n");
    let (output, on_time, _) = test_run(&dir, &suite, &["-o", "out"], Duration::from_secs(30));
    assert!(on_time);
    assert_eq!(output.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("out/logs/u.log")).unwrap();
    assert!(
        log.starts_with("a\nktvmm: guest timed out after 1 s\n"),
        "{log}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("TIMEOUT u (") && stdout.contains("): guest timed out after 1 s"),
        "{stdout}"
    );
}

#[test]
fn replay_refuses_what_is_not_a_reproducer_or_a_fuzzer_input() {
    let dir = scratch("replay-refuses");
    let usage = "--replay takes a reproducer ktvmm fuzz saved (JSON) or a libFuzzer input of the kvm_api target (binary)";
    for (name, bytes, why) in [
        ("empty", &b""[..], "is empty".to_string()),
        ("hello", b"hello\n", "is text, not JSON".into()),
        (
            "array",
            b"[]\n",
            "is JSON, but not an object as reproducers are".into(),
        ),
    ] {
        write(&dir, name, bytes);
        let (code, stderr) = refused(&dir, &["fuzz", "--replay", name]);
        assert_eq!(code, 125, "{name}: {stderr}");
        assert_eq!(stderr, format!("ktvmm: {name}: {why}: {usage}\n"));
    }
    // A damaged reproducer: one line, its reason once.
    write(
        &dir,
        "cut.json",
        b"{\"format\": \"ktvmm-fuzz-reproducer/1\", \"finding\"",
    );
    let (code, stderr) = refused(&dir, &["fuzz", "--replay", "cut.json"]);
    assert_eq!(code, 125);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("ktvmm: cut.json: not a ktvmm fuzz reproducer: EOF while parsing"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("EOF while parsing").count(), 1, "{stderr}");
}

#[test]
fn placement_messages_say_what_to_do() {
    use ktvmm_vmm::boot::test_images::{elf64, exit_with, multiboot_header_with_addresses};
    let dir = scratch("placement-messages");
    // Linked where it should be, but 1 TiB large: moving it cannot help.
    let huge = write(&dir, "huge.elf", &elf64(0x10_0000, &exit_with(0), 1 << 40));
    let (code, stderr) = refused(&dir, &["run", &huge]);
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("lies outside guest RAM")
            && stderr.contains("are more than any guest's RAM")
            && !stderr.contains("link the guest at or above"),
        "{stderr}"
    );
    // A flat (a.out kludge) image at 0x1000, on the multiboot information.
    const AT: u32 = 0x1000;
    let mut flat = multiboot_header_with_addresses([AT, AT, 0, AT + 0x100, AT + 32]);
    flat.extend_from_slice(&[0x90, 0xf4]);
    let flat = write(&dir, "flat.bin", &flat);
    let (code, stderr) = refused(&dir, &["run", &flat, "--boot", "multiboot"]);
    assert_eq!(code, 125, "{stderr}");
    assert!(
        !stderr.contains("at or above 0x0") && stderr.contains("link the guest below 0x"),
        "{stderr}"
    );
}

#[test]
fn a_bad_multiboot_checksum_and_a_directory_guest_are_named() {
    use ktvmm_vmm::boot::test_images::multiboot_header_with_addresses;
    let dir = scratch("checksum-and-dir");
    const AT: u32 = 0x40_0000;
    let mut image = multiboot_header_with_addresses([AT, AT, 0, AT + 0x100, AT + 32]);
    image[8] ^= 1;
    image.extend_from_slice(&[0x90, 0xf4]);
    let image = write(&dir, "bad.bin", &image);
    let (code, stderr) = refused(&dir, &["run", &image, "--boot", "multiboot"]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("the multiboot header at file offset 0x0 has a bad checksum"),
        "{stderr}"
    );
    std::fs::create_dir_all(dir.join("guest.elf")).unwrap();
    let suite = write(&dir, "s.ktvmm.toml", b"[[test]]\nguest = \"guest.elf\"\n");
    let (code, stderr) = refused(&dir, &["test", &suite, "--list"]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("guest.elf: is a directory, not a file"),
        "{stderr}"
    );
}

#[test]
fn qemu_style_options_are_echoed_as_typed() {
    let dir = scratch("typed-options");
    for (args, said, not_said) in [
        (
            &["run", "g.elf", "-nographic"][..],
            "unexpected argument '-nographic' found",
            "--nographic",
        ),
        (
            &["run", "g.elf", "-foo"],
            "unexpected argument '-foo' found",
            "'-f'",
        ),
        (
            &["run", "g.elf", "-smp", "-1"],
            "invalid value '-1' for '-smp <N>'",
            "use '-- -1'",
        ),
    ] {
        let (code, stderr) = refused(&dir, args);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stderr.contains(not_said), "{args:?}: {stderr}");
        assert!(!stderr.contains("use '-- "), "{args:?}: {stderr}");
    }
}

#[test]
fn quiet_prints_no_heartbeat_and_a_timeouts_rerun_line_keeps_its_limit() {
    let dir = scratch("quiet-and-rerun");
    let suite = "[[test]]\nname = \"slow\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 1\"]\n\
                 [[test]]\nname = \"hang\"\nguest = \"bundled:hang\"\ntimeout = 1\n";
    let (output, on_time, _) = test_run(
        &dir,
        suite,
        &["-q", "--heartbeat", "0.2", "-o", "out"],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(on_time, "{stdout}");
    assert!(!stdout.contains("running:"), "{stdout}");
    let rerun = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("rerun alone:"))
        .expect("a rerun line");
    assert!(rerun.ends_with(" --timeout 1"), "{rerun}");
}

#[test]
fn a_fifo_as_kvm_unit_tests_errata_is_refused_not_waited_for() {
    let dir = scratch("errata-fifo");
    std::fs::create_dir_all(dir.join("x86")).unwrap();
    let cfg = write(&dir.join("x86"), "unittests.cfg", b"[t]\nfile = t.flat\n");
    write(&dir.join("x86"), "t.flat", b"not really a kernel");
    mkfifo(&dir.join("errata.txt"));
    let (code, stderr) = refused(&dir, &["test", &cfg, "-o", "out"]);
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("errata.txt: is a FIFO, not a regular file"),
        "{stderr}"
    );
}

#[test]
fn a_test_that_puts_a_fifo_in_place_of_its_log_does_not_block_the_runner() {
    let dir = scratch("fifo-log");
    let log = dir.join("out/logs/evil.log");
    let suite = format!(
        "[[test]]\nname = \"evil\"\nexec = \"/bin/sh\"\n\
         args = [\"-c\", \"rm -f {log} && mkfifo {log}; exit 1\"]\n",
        log = log.display()
    );
    let (output, on_time, _) = test_run(&dir, &suite, &["-o", "out"], Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(on_time, "the runner blocked on the FIFO: {stdout}");
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(dir.join("out/results.json").is_file());
}

#[test]
fn a_test_printing_forever_is_stopped_at_its_limit_with_a_capped_log() {
    let dir = scratch("printing-forever");
    let suite = "[[test]]\nname = \"forever\"\nexec = \"/usr/bin/yes\"\ntimeout = 2\n";
    let (output, on_time, _) = test_run(
        &dir,
        suite,
        &["-o", "out", "--log-limit", "1M"],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(on_time, "{stdout}");
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TIMEOUT forever"), "{stdout}");
    let log = std::fs::metadata(dir.join("out/logs/forever.log"))
        .unwrap()
        .len();
    assert!(log <= (1 << 20) + 300, "log of {log} bytes");
    let results = std::fs::read_to_string(dir.join("out/results.json")).unwrap();
    assert!(results.contains("\"timeout\""), "{results}");
}

#[test]
fn output_from_a_process_that_escaped_the_test_does_not_hold_the_run() {
    let dir = scratch("escaped-writer");
    // `setsid yes` leaves the test's process group and keeps writing into
    // its output pipe after the test has exited; once the runner closes
    // the pipe, SIGPIPE ends it.
    let suite = "[[test]]\nname = \"escapes\"\nexec = \"/bin/sh\"\n\
                 args = [\"-c\", \"setsid yes & sleep 0.2; exit 0\"]\n";
    let (output, on_time, _) = test_run(
        &dir,
        suite,
        &["-o", "out", "--log-limit", "1M"],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(on_time, "the run waited for the escaped writer: {stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
}
