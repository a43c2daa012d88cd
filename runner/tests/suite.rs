//! `ktvmm test`: real guests and real host programs, run through the whole
//! runner (discovery, scheduler, console, results files).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ktvmm, parts, run, scratch, write};
use ktvmm_vmm::boot::test_images::{SPIN_WITH_INTERRUPTS_OFF, elf64, exit_with};
use serde_json::Value;

const LOAD_ADDR: u64 = 0x10_0000;

/// Runs `ktvmm test` with `args`, results in `dir/out`; returns exit code,
/// stdout, stderr.
fn test_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = dir.join("out");
    let mut all = vec!["test", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    parts(&run(&all).0)
}

fn results(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("out/results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json is JSON")
}

fn status_of(results: &Value, name: &str) -> String {
    common::test_named(results, name)["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A suite file with a guest and host program of every outcome.
fn verdicts_suite(dir: &Path) -> String {
    write(dir, "fail.elf", &elf64(LOAD_ADDR, &exit_with(1), 0));
    write(dir, "skip.elf", &elf64(LOAD_ADDR, &exit_with(77), 0));
    write(
        dir,
        "hang.elf",
        &elf64(LOAD_ADDR, &SPIN_WITH_INTERRUPTS_OFF, 0),
    );
    write(
        dir,
        "verdicts.ktvmm.toml",
        br#"
[[test]]
name = "guest-pass"
guest = "bundled:exitcode"
append = "pass"
groups = ["guests"]

[[test]]
name = "guest-fail"
guest = "fail.elf"
groups = ["guests"]

[[test]]
name = "guest-skip"
guest = "skip.elf"
groups = ["guests"]

[[test]]
name = "guest-hang"
guest = "hang.elf"
timeout = 1
groups = ["guests"]

[[test]]
name = "prog-tap"
exec = "/bin/sh"
args = ["-c", "echo 1..3; echo ok 1 a; echo not ok 2 b; echo 'ok 3 c # SKIP no'; exit 1"]

[[test]]
name = "prog-skip"
exec = "/bin/sh"
args = ["-c", "exit 4"]

[[test]]
name = "prog-crash"
exec = "/bin/sh"
args = ["-c", "kill -SEGV $$"]

[[test]]
name = "prog-pass"
exec = "/bin/sh"
args = ["-c", "echo hello from $NAME"]
env = { NAME = "prog-pass" }
"#,
    )
}

#[test]
fn the_bundled_suite_passes() {
    let dir = scratch("bundled");
    let (code, stdout, stderr) = test_in(&dir, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let results = results(&dir);
    let tests = results["tests"].as_array().unwrap();
    assert!(tests.len() >= 13, "{results}");
    for test in tests {
        assert_eq!(test["status"], "pass", "{test}");
    }
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

/// A guest's verdict and reason come from what it wrote, not from the
/// 8-bit exit status: codes that only end in 0 fail, and codes that look
/// like ktvmm's reserved ones are the guest's own.
#[test]
fn verdicts_come_from_the_guests_code_not_the_exit_status() {
    let dir = scratch("wide-verdicts");
    // `mov $0x100, %eax; mov $0xf6, %dx; out %eax, %dx; hlt`: only the low
    // half of the write lands inside isa-debug-exit's window.
    let straddle = [
        0xb8, 0x00, 0x01, 0x00, 0x00, 0x66, 0xba, 0xf6, 0x00, 0xef, 0xf4, 0xeb, 0xfd,
    ];
    write(&dir, "straddle.elf", &elf64(LOAD_ADDR, &straddle, 0));
    let mut suite = String::from("[[test]]\nname = \"straddle\"\nguest = \"straddle.elf\"\n\n");
    let codes: [u64; 6] = [256, 0x8000_0000, 121, 122, 124, 125];
    for code in codes {
        suite += &format!(
            "[[test]]\nname = \"code-{code}\"\nguest = \"bundled:exitcode\"\n\
             append = \"code={code}\"\ntimeout = 30\n\n"
        );
    }
    let suite = write(&dir, "codes.ktvmm.toml", suite.as_bytes());
    let (code, stdout, _) = test_in(&dir, &[&suite]);
    assert_eq!(code, 1, "{stdout}");
    let results = results(&dir);
    let reason_of = |name: &str| {
        common::test_named(&results, name)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (name, code) in codes
        .iter()
        .map(|c| (format!("code-{c}"), *c))
        .chain([("straddle".to_string(), 0x100)])
    {
        assert_eq!(status_of(&results, &name), "fail", "{name}\n{stdout}");
        let reason = reason_of(&name);
        assert!(
            reason.starts_with(&format!("guest exit code {code}")),
            "{name}: {reason}"
        );
    }
    assert!(stdout.contains("code-124"), "{stdout}");
    assert!(!stdout.contains("TIMEOUT"), "{stdout}");
}

#[test]
fn every_outcome_is_reported_and_summarised() {
    let dir = scratch("outcomes");
    let suite = verdicts_suite(&dir);
    let (code, stdout, _) = test_in(&dir, &[&suite]);
    assert_eq!(code, 1, "failures make the run fail:\n{stdout}");
    let results = results(&dir);
    for (name, status) in [
        ("guest-pass", "pass"),
        ("guest-fail", "fail"),
        ("guest-skip", "skip"),
        ("guest-hang", "timeout"),
        ("prog-tap", "fail"),
        ("prog-skip", "skip"),
        ("prog-crash", "fail"),
        ("prog-pass", "pass"),
    ] {
        assert_eq!(status_of(&results, name), status, "{name}:\n{stdout}");
        let label = status.to_uppercase();
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&label) && l.contains(name)),
            "no {label} line for {name}:\n{stdout}"
        );
    }
    let tap = common::test_named(&results, "prog-tap");
    // Hang forensics: where the timed-out guest's vCPU was.
    let hang = common::test_named(&results, "guest-hang");
    let vcpu = &hang["forensics"][0];
    assert_eq!(vcpu["cpu"], 0, "{hang}");
    assert_eq!(vcpu["mode"], "long", "{hang}");
    assert!(vcpu["rip"].as_u64().unwrap() >= LOAD_ADDR, "{hang}");
    let hang_log = std::fs::read_to_string(hang["log"].as_str().unwrap()).unwrap();
    assert!(
        hang_log.contains("vCPU 0: running, long mode, RIP 0x10"),
        "{hang_log}"
    );
    assert!(hang_log.contains("(interrupts off)"), "{hang_log}");
    // Subtest verdicts by name, and a command to rerun the test alone.
    assert_eq!(tap["subtests"]["failed"], serde_json::json!(["b"]), "{tap}");
    assert!(
        tap["reason"]
            .as_str()
            .unwrap()
            .contains("1 subtest failed: b"),
        "{tap}"
    );
    // shlex double-quotes the script, which holds an apostrophe.
    assert!(
        stdout.contains(r#"rerun alone: /bin/sh -c "echo 1..3;"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(" run ") && stdout.contains("fail.elf --smp 1 --memory 128\n"),
        "{stdout}"
    );
    assert_eq!(tap["subtests"]["pass"], 1);
    assert_eq!(tap["subtests"]["fail"], 1);
    assert_eq!(tap["subtests"]["skip"], 1);
    assert!(stdout.contains("killed by SIGSEGV"), "{stdout}");

    let summary = &stdout[stdout.find("summary:").expect("a summary")..];
    assert!(
        summary.starts_with("summary: 2 passed, 3 failed, 2 skipped, 1 timed out, 0 errors"),
        "{summary}"
    );
    for name in ["guest-fail", "guest-hang", "prog-tap", "prog-crash"] {
        let line = summary
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not named in the summary:\n{summary}"));
        assert!(line.contains(".log"), "no log path: {line}");
    }
    // The machine-readable reports agree with the console.
    let junit = std::fs::read_to_string(dir.join("out/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&junit).expect("junit.xml is well-formed XML");
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 8);
    let with = |tag: &str| {
        cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name(tag)))
            .count()
    };
    assert_eq!((with("failure"), with("skipped"), with("error")), (4, 2, 0));
    assert!(junit.contains("1 subtest failed: b"), "{junit}");
    let tap = std::fs::read_to_string(dir.join("out/results.tap")).unwrap();
    assert!(tap.starts_with("TAP version 13\n1..8\n"), "{tap}");
    assert_eq!(tap.lines().filter(|l| l.starts_with("not ok ")).count(), 4);
    assert_eq!(tap.lines().filter(|l| l.contains("# SKIP")).count(), 2);

    let log = dir.join("out/logs");
    let pass_log = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("prog-pass"))
        .expect("a log for prog-pass");
    assert_eq!(
        std::fs::read_to_string(pass_log).unwrap(),
        "hello from prog-pass\n"
    );
}

#[test]
fn a_hung_program_is_killed_on_time_with_its_children() {
    let dir = scratch("hung");
    let pidfile = dir.join("pid");
    let suite = write(
        &dir,
        "hung.ktvmm.toml",
        format!(
            "[[test]]\nname = \"hung\"\nexec = \"/bin/sh\"\ntimeout = 1\n\
             args = [\"-c\", \"sleep 60 & echo $! > {}; trap '' TERM; sleep 60\"]\n",
            pidfile.display()
        )
        .as_bytes(),
    );
    let started = Instant::now();
    let (code, stdout, _) = test_in(&dir, &[&suite]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(status_of(&results(&dir), "hung"), "timeout");
    // 1 s limit, SIGTERM ignored, SIGKILL after the 2 s grace period.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(pid),
        "the test's background child {pid} outlived the test"
    );
}

fn alive(pid: i32) -> bool {
    // A killed orphan may linger as a zombie for a moment until init reaps it.
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return false,
            Ok(stat) if stat.contains(") Z ") => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    true
}

#[test]
fn jobs_run_in_parallel() {
    let dir = scratch("parallel");
    let mut suite = String::new();
    for i in 0..4 {
        suite += &format!(
            "[[test]]\nname = \"sleep{i}\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 1\"]\n"
        );
    }
    let suite = write(&dir, "sleep.ktvmm.toml", suite.as_bytes());
    let started = Instant::now();
    let (code, stdout, _) = test_in(&dir, &["-j", "4", &suite]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        took < Duration::from_millis(2500),
        "4 one-second tests at -j 4 took {took:?}"
    );
}

#[test]
fn shards_cover_every_test_exactly_once() {
    let dir = scratch("shards");
    let suite = verdicts_suite(&dir);
    let list = |extra: &[&str]| {
        let mut args = vec!["--list", suite.as_str()];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = test_in(&dir, &args);
        assert_eq!(code, 0, "{stderr}");
        stdout
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut all = list(&[]);
    assert_eq!(all.len(), 8);
    let mut union = Vec::new();
    for k in 1..=3 {
        let part = list(&["--shard", &format!("{k}/3")]);
        assert!(!part.is_empty());
        union.extend(part);
    }
    union.sort();
    all.sort();
    assert_eq!(union, all);
    assert_eq!(list(&["-g", "guests", "-x", "*hang"]).len(), 3);
    assert_eq!(list(&["-f", "prog-*", "-f", "guest-pass"]).len(), 5);
}

#[test]
fn rerun_failed_picks_exactly_the_failures() {
    let dir = scratch("rerun");
    let suite = verdicts_suite(&dir);
    let (code, _, _) = test_in(&dir, &[&suite]);
    assert_eq!(code, 1);
    let (code, stdout, stderr) = test_in(&dir, &["--rerun-failed", "--list", &suite]);
    assert_eq!(code, 0, "{stderr}");
    let mut names: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["guest-fail", "guest-hang", "prog-crash", "prog-tap"]
    );
}

#[test]
fn bad_suite_files_stop_the_run_before_it_starts() {
    let dir = scratch("bad-suite");
    let good = verdicts_suite(&dir);
    let bad = write(
        &dir,
        "bad.ktvmm.toml",
        b"[[test]]\nname = \"x\"\nguest = \"bundled:exitcode\"\nsmpp = 2\n",
    );
    let (code, stdout, stderr) = test_in(&dir, &[&good, &bad]);
    assert_eq!(code, 125, "{stdout}{stderr}");
    assert!(
        stderr.contains("bad.ktvmm.toml:4:") && stderr.contains("smpp"),
        "{stderr}"
    );
    assert!(!stdout.contains("PASS"), "tests ran: {stdout}");
    assert!(!dir.join("out").exists(), "an output directory was made");
}

#[test]
fn ctrl_c_stops_the_children_and_still_reports() {
    let dir = scratch("ctrl-c");
    let pidfile = dir.join("pid");
    let suite = write(
        &dir,
        "slow.ktvmm.toml",
        format!(
            "[[test]]\nname = \"quick\"\nguest = \"bundled:exitcode\"\nappend = \"pass\"\n\n\
             [[test]]\nname = \"slow-guest\"\nguest = \"bundled:hang\"\n\n\
             [[test]]\nname = \"slow-prog\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"sleep 60 & echo $! > {}; sleep 60\"]\n\n\
             [[test]]\nname = \"never\"\nexec = \"/bin/true\"\n",
            pidfile.display()
        )
        .as_bytes(),
    );
    let out = dir.join("out");
    let child = ktvmm()
        .args(["test", "-j", "2", "-o", out.to_str().unwrap(), &suite])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pidfile.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 130, "{stdout}");
    assert!(stdout.contains("summary:"), "{stdout}");
    assert!(stdout.contains("did not run"), "{stdout}");
    let results = results(&dir);
    assert_eq!(results["meta"]["interrupted"], true);
    assert_eq!(status_of(&results, "quick"), "pass");
    assert_eq!(status_of(&results, "slow-guest"), "error");
    assert_eq!(status_of(&results, "slow-prog"), "error");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "a test's child {pid} outlived Ctrl-C");
}

#[test]
fn a_heartbeat_shows_what_is_running() {
    let dir = scratch("heartbeat");
    let suite = write(
        &dir,
        "slow.ktvmm.toml",
        b"[[test]]\nname = \"slowpoke\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 1.2\"]\n",
    );
    let (code, stdout, _) = test_in(&dir, &["--heartbeat", "0.4", &suite]);
    assert_eq!(code, 0, "{stdout}");
    let beat = stdout
        .lines()
        .find(|l| l.contains("running:"))
        .unwrap_or_else(|| panic!("no heartbeat:\n{stdout}"));
    assert!(beat.starts_with("[0/1"), "{beat}");
    assert!(beat.contains("slowpoke ("), "{beat}");
}

#[test]
fn repeat_and_until_fail() {
    let dir = scratch("repeat");
    let counter = dir.join("count");
    let suite = write(
        &dir,
        "flaky.ktvmm.toml",
        format!(
            "[[test]]\nname = \"third-time-fails\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"echo x >> {0}; test $(wc -l < {0}) -lt 3\"]\n",
            counter.display()
        )
        .as_bytes(),
    );
    let (code, stdout, _) = test_in(&dir, &["--repeat", "2", &suite]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(results(&dir)["tests"].as_array().unwrap().len(), 2);
    std::fs::remove_file(&counter).unwrap();
    let (code, stdout, _) = test_in(&dir, &["--until-fail", &suite]);
    assert_eq!(code, 1, "{stdout}");
    let tests = results(&dir)["tests"].as_array().unwrap().clone();
    assert_eq!(tests.len(), 3, "{stdout}");
    assert_eq!(tests[2]["status"], "fail");
    assert_eq!(tests[2]["iteration"], 3);
    assert!(stdout.contains("third-time-fails#3"), "{stdout}");
}

#[test]
fn environment_options_are_planned_before_anything_runs() {
    let dir = scratch("kvm-env");
    // A parameter at its current value: nothing to change, on any KVM host.
    let current = std::fs::read_to_string("/sys/module/kvm/parameters/enable_pmu")
        .expect("kvm's enable_pmu parameter");
    let setting = format!("kvm.enable_pmu={}", current.trim());
    let (code, stdout, stderr) =
        test_in(&dir, &["--kvm-param", &setting, "--dry-run", "-f", "smp"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("kvm.enable_pmu is already"), "{stdout}");
    assert!(stdout.contains("would run 3 tests"), "{stdout}");
    assert!(!dir.join("out").exists(), "a dry run ran something");

    // One that does not exist stops the run with one message, nothing run.
    let (code, stdout, stderr) = test_in(&dir, &["--kvm-param", "kvm.no_such_param=1"]);
    assert_eq!(code, 125, "{stdout}{stderr}");
    assert!(
        stderr.contains("module kvm has no parameter no_such_param"),
        "{stderr}"
    );
    assert!(!stdout.contains("PASS"), "{stdout}");

    let (code, _, stderr) = test_in(&dir, &["--kvm-param", "kvm_enable_pmu", "--dry-run"]);
    assert_eq!(code, 125);
    assert!(stderr.contains("module.param=value"), "{stderr}");
}

#[test]
fn on_a_terminal_the_heartbeat_is_one_status_line_redrawn() {
    let dir = scratch("tty");
    let suite = write(
        &dir,
        "slow.ktvmm.toml",
        b"[[test]]\nname = \"slowpoke\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"sleep 0.8\"]\n",
    );
    let out = dir.join("out");
    // script(1) from util-linux gives the runner a pseudo-terminal.
    let command = format!(
        "{} test -o {} {suite}",
        env!("CARGO_BIN_EXE_ktvmm"),
        out.display()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script(1) runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let redraws = text.matches("\r\x1b[2K[0/1] ").count();
    assert!(redraws >= 2, "status line drawn {redraws} times: {text:?}");
    assert!(text.contains("running: slowpoke ("), "{text:?}");
    assert!(text.contains("PASS    slowpoke"), "{text:?}");
}

#[test]
fn a_test_that_fails_then_passes_is_flaky_not_passed() {
    let dir = scratch("flaky");
    let counter = dir.join("count");
    let suite = write(
        &dir,
        "flaky.ktvmm.toml",
        format!(
            "[[test]]\nname = \"second-time-lucky\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"echo x >> {0}; test $(wc -l < {0}) -ge 2\"]\n\n\
             [[test]]\nname = \"always-fails\"\nexec = \"/bin/false\"\n",
            counter.display()
        )
        .as_bytes(),
    );
    let (code, stdout, _) = test_in(&dir, &["--retries", "2", &suite]);
    assert_eq!(code, 1, "always-fails still fails the run:\n{stdout}");
    let results = results(&dir);
    assert_eq!(status_of(&results, "second-time-lucky"), "flaky");
    assert_eq!(status_of(&results, "always-fails"), "fail");
    assert!(stdout.contains("retrying 2 test(s)"), "{stdout}");
    assert!(stdout.contains(", 1 flaky"), "{stdout}");
    let summary = &stdout[stdout.find("summary:").unwrap()..];
    assert!(summary.contains("FLAKY   second-time-lucky"), "{summary}");
    assert!(summary.contains("failed all 2 retries"), "{summary}");
    let junit = std::fs::read_to_string(dir.join("out/junit.xml")).unwrap();
    roxmltree::Document::parse(&junit).expect("well-formed");
    assert!(junit.contains("<flakyFailure"), "{junit}");

    // Flaky alone does not fail the run.
    std::fs::remove_file(&counter).unwrap();
    let only_flaky = write(
        &dir,
        "only.ktvmm.toml",
        format!(
            "[[test]]\nname = \"lucky\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"echo x >> {0}; test $(wc -l < {0}) -ge 2\"]\n",
            counter.display()
        )
        .as_bytes(),
    );
    let (code, stdout, _) = test_in(&dir, &["--retries", "1", &only_flaky]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn shuffle_orders_reproducibly() {
    let dir = scratch("shuffle");
    let suite = verdicts_suite(&dir);
    let list = |extra: &[&str]| {
        let mut args = vec!["--list", suite.as_str()];
        args.extend_from_slice(extra);
        let (code, stdout, _) = test_in(&dir, &args);
        assert_eq!(code, 0);
        stdout
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let plain = list(&[]);
    let a = list(&["--shuffle", "42"]);
    assert_eq!(a, list(&["--shuffle", "42"]));
    assert_ne!(a, plain);
    let mut sorted = a.clone();
    sorted.sort();
    let mut expected = plain.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}

/// KVM's counters are recorded per test, and `ktvmm diff` names a counter
/// that moved although every test still passes: here 100 and then 20,000
/// exits to the VMM (port 0x80 writes); `--fail-on-counters` gates on it.
#[test]
fn diff_names_kvm_counters_that_moved_and_can_gate_on_them() {
    let dir = scratch("diff-counters");
    let run_with = |out: &str, writes: u32| {
        let suite = write(
            &dir,
            &format!("{out}.ktvmm.toml"),
            format!(
                "[[test]]\nname = \"io\"\nguest = \"bundled:exitcode\"\nappend = \"io={writes}\"\n\n\
                 [[test]]\nname = \"steady\"\nguest = \"bundled:exitcode\"\n"
            )
            .as_bytes(),
        );
        let out = dir.join(out);
        let output = ktvmm()
            .args(["test", "-q", "-o", out.to_str().unwrap(), &suite])
            .output()
            .unwrap();
        assert_eq!(parts(&output).0, 0, "{}", parts(&output).1);
        out
    };
    let (before, after) = (run_with("before", 100), run_with("after", 20_000));
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(after.join("results.json")).unwrap())
            .unwrap();
    let io = common::test_named(&results, "io");
    let exits = io["kvm_stats"]["vcpu"]["exits"].as_u64();
    if exits.is_none() {
        // Only a kernel without binary statistics may leave them out.
        assert!(
            !ktvmm_vmm::host::kvm_stats::offered(),
            "KVM offers statistics, results.json has none: {io}"
        );
        return;
    }
    assert!(exits.unwrap() >= 20_000, "{io}");
    let diff = |extra: &[&str]| {
        let mut args = vec!["diff", before.to_str().unwrap(), after.to_str().unwrap()];
        args.extend_from_slice(extra);
        parts(&ktvmm().args(&args).output().unwrap())
    };
    let (code, stdout, _) = diff(&[]);
    assert_eq!(code, 0, "no verdict changed:\n{stdout}");
    let counters = stdout
        .split_once("KVM counters that changed")
        .map(|(_, rest)| rest.split("\n\n").next().unwrap_or(rest))
        .and_then(|rest| rest.split("biggest duration changes").next())
        .unwrap_or_else(|| panic!("no counter section:\n{stdout}"));
    assert!(counters.contains("  io: vcpu.exits "), "{stdout}");
    assert!(!counters.contains("  steady: "), "{stdout}");
    let (code, stdout, _) = diff(&["--fail-on-counters"]);
    assert_eq!(code, 1, "{stdout}");
    let (code, stdout, _) = diff(&["--fail-on-counters", "--counter-min", "1000000"]);
    assert_eq!(code, 0, "{stdout}");
}

/// A host program's VMs (here `ktvmm run` itself, as a selftest would
/// create them) have their counters read from debugfs where it is
/// readable; where it is not, the run says why, once.
#[test]
fn host_programs_get_kvm_counters_from_debugfs_or_a_notice_why_not() {
    let dir = scratch("host-stats");
    let suite = write(
        &dir,
        "host.ktvmm.toml",
        format!(
            "[[test]]\nname = \"vm-maker\"\nexec = \"{}\"\n\
             args = [\"run\", \"bundled:hang\", \"-append\", \"sleep=600\"]\n\n\
             [[test]]\nname = \"no-vm\"\nexec = \"/bin/true\"\n",
            env!("CARGO_BIN_EXE_ktvmm")
        )
        .as_bytes(),
    );
    let (code, stdout, _) = test_in(&dir, &[&suite]);
    assert_eq!(code, 0, "{stdout}");
    let results = results(&dir);
    let stats_of = |name: &str| common::test_named(&results, name)["kvm_stats"].clone();
    let notices = stdout
        .matches("notice: no KVM counters for host programs")
        .count();
    let readable = std::fs::read_to_string("/sys/kernel/debug/kvm/exits").is_ok();
    if readable {
        assert_eq!(notices, 0, "{stdout}");
        let stats = stats_of("vm-maker");
        assert!(stats["vcpu"]["exits"].as_u64().unwrap_or(0) > 0, "{stats}");
        assert_eq!(stats["vms"], 1, "{stats}");
    } else {
        assert_eq!(notices, 1, "said once:\n{stdout}");
        assert!(stats_of("vm-maker").is_null());
        let meta_notices = results["meta"]["notices"].to_string();
        assert!(meta_notices.contains("no KVM counters"), "{meta_notices}");
    }
    assert!(stats_of("no-vm").is_null());
}

/// `ktvmm test --cores`: the guests that did not pass keep a core next to
/// their log, named in results.json and the summary; the others none.
#[test]
fn cores_are_kept_for_the_guests_that_did_not_pass() {
    let dir = scratch("cores");
    let suite = write(
        &dir,
        "cores.ktvmm.toml",
        b"[[test]]\nname = \"passes\"\nguest = \"bundled:exitcode\"\n\n\
          [[test]]\nname = \"hangs\"\nguest = \"bundled:hang\"\ntimeout = 1\n",
    );
    let (code, stdout, _) = test_in(&dir, &["--cores", &suite]);
    assert_eq!(code, 1, "{stdout}");
    let results = results(&dir);
    let core_of = |name: &str| common::test_named(&results, name)["core"].clone();
    let core = core_of("hangs");
    let core = Path::new(core.as_str().expect("a core for the hung guest"));
    assert!(core.exists(), "{}", core.display());
    assert!(
        stdout.contains(&format!("guest core: {}", core.display())),
        "{stdout}"
    );
    assert!(core_of("passes").is_null());
    let logs: Vec<String> = std::fs::read_dir(dir.join("out/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !logs
            .iter()
            .any(|l| l.starts_with("passes") && l.ends_with(".core")),
        "{logs:?}"
    );
}

#[test]
fn diff_names_regressions_and_gates_on_them() {
    let dir = scratch("diff");
    let flag = dir.join("broken");
    let suite = write(
        &dir,
        "d.ktvmm.toml",
        format!(
            "[[test]]\nname = \"fragile\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"! test -e {}\"]\n\n\
             [[test]]\nname = \"steady\"\nexec = \"/bin/true\"\n",
            flag.display()
        )
        .as_bytes(),
    );
    let (before, after) = (dir.join("before"), dir.join("after"));
    let run_into = |out: &Path| {
        let output = ktvmm()
            .args(["test", "-q", "-o", out.to_str().unwrap(), &suite])
            .output()
            .unwrap();
        parts(&output).0
    };
    assert_eq!(run_into(&before), 0);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(run_into(&after), 1);

    let diff = |a: &Path, b: &Path| {
        parts(
            &ktvmm()
                .args(["diff", a.to_str().unwrap(), b.to_str().unwrap()])
                .output()
                .unwrap(),
        )
    };
    let (code, stdout, _) = diff(&before, &after);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("regressions (1):\n  fragile: PASS -> FAIL"),
        "{stdout}"
    );
    assert!(stdout.contains("environment (before | after):"), "{stdout}");
    // The same as a page, with the same verdict.
    let page = dir.join("diff.html");
    let output = ktvmm()
        .args(["diff", "--html", page.to_str().unwrap()])
        .args([&before, &after])
        .output()
        .unwrap();
    assert_eq!(parts(&output).0, 1);
    let html = std::fs::read_to_string(&page).expect("diff --html writes the page");
    assert!(
        html.contains("<h2>regressions (1)</h2><ul><li><code>fragile: PASS -&gt; FAIL"),
        "{html}"
    );
    assert!(html.contains("diff: 1 regressions"), "{html}");
    let (code, stdout, _) = diff(&after, &before.join("results.json"));
    assert_eq!(code, 0, "a fix is not a regression:\n{stdout}");
    assert!(
        stdout.contains("fixed (1):\n  fragile: FAIL -> PASS"),
        "{stdout}"
    );
    let (code, _, stderr) = diff(&dir.join("nope"), &before);
    assert_eq!(code, 125);
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn expectations_turn_known_failures_into_xfail_and_surprises_into_xpass() {
    let dir = scratch("expect");
    let suite = write(
        &dir,
        "e.ktvmm.toml",
        b"[[test]]\nname = \"known-bad\"\nexec = \"/bin/false\"\n\n\
          [[test]]\nname = \"fixed-now\"\nexec = \"/bin/true\"\n\n\
          [[test]]\nname = \"fine\"\nexec = \"/bin/true\"\n",
    );
    let expect = write(
        &dir,
        "expect.toml",
        b"[[expect]]\ntest = \"known-bad\"\nreason = \"bug 123\"\n\n\
          [[expect]]\ntest = \"fixed-*\"\nreason = \"bug 456\"\n",
    );
    // --retries leaves both alone: neither is worth running again.
    let (code, stdout, _) = test_in(&dir, &["--expect", &expect, "--retries", "2", &suite]);
    assert_eq!(code, 1, "an unexpected pass fails the run:\n{stdout}");
    assert!(!stdout.contains("retrying"), "{stdout}");
    let results = results(&dir);
    assert_eq!(status_of(&results, "known-bad"), "xfail");
    assert_eq!(status_of(&results, "fixed-now"), "xpass");
    assert_eq!(status_of(&results, "fine"), "pass");
    assert!(
        stdout.contains(", 1 expected failures, 1 unexpected passes"),
        "{stdout}"
    );
    assert!(stdout.contains("expected: bug 123"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("XFAIL   known-bad")),
        "the line printed as the test ends says XFAIL too:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("XPASS   fixed-now")),
        "{stdout}"
    );

    let only_known = write(
        &dir,
        "expect2.toml",
        b"[[expect]]\ntest = \"known-bad\"\nreason = \"bug 123\"\n",
    );
    let (code, stdout, _) = test_in(&dir, &["--expect", &only_known, "-x", "fixed", &suite]);
    assert_eq!(code, 0, "only expected failures:\n{stdout}");

    let bad = write(&dir, "bad.toml", b"[[expect]]\ntest = \"x\"\n");
    let (code, _, stderr) = test_in(&dir, &["--expect", &bad, &suite]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("bad.toml:1:") && stderr.contains("reason"),
        "{stderr}"
    );
}

#[test]
fn the_same_multiboot_guest_runs_under_ktvmm_and_qemu() {
    if !common::qemu_usable("the_same_multiboot_guest_runs_under_ktvmm_and_qemu") {
        return;
    }
    let dir = scratch("envs");
    // 32-bit multiboot kernels that exit with 0 and with 1 (KUT's codes).
    write(
        &dir,
        "pass.flat",
        &ktvmm_vmm::boot::test_images::elf32_multiboot(0x40_0000, &exit_with(0), 0),
    );
    write(
        &dir,
        "fail.flat",
        &ktvmm_vmm::boot::test_images::elf32_multiboot(0x40_0000, &exit_with(1), 0),
    );
    // An ELF64 kernel without a multiboot header: QEMU cannot boot it.
    write(&dir, "elf64.elf", &elf64(LOAD_ADDR, &exit_with(0), 0));
    let suite = write(
        &dir,
        "envs.ktvmm.toml",
        b"[[test]]\nguest = \"pass.flat\"\n\n[[test]]\nguest = \"fail.flat\"\n\n\
          [[test]]\nname = \"elf64\"\nguest = \"elf64.elf\"\n",
    );
    let (code, stdout, _) = test_in(&dir, &["--env", "ktvmm", "--env", "qemu-kvm", &suite]);
    assert_eq!(code, 1, "{stdout}");
    let results = results(&dir);
    assert_eq!(status_of(&results, "pass"), "pass");
    assert_eq!(status_of(&results, "pass@qemu-kvm"), "pass", "{stdout}");
    assert_eq!(status_of(&results, "fail"), "fail");
    assert_eq!(status_of(&results, "fail@qemu-kvm"), "fail", "{stdout}");
    assert_eq!(status_of(&results, "elf64@qemu-kvm"), "skip");
    assert!(
        stdout.contains("QEMU boots multiboot kernels only"),
        "{stdout}"
    );
    assert!(!stdout.contains("environments disagree"), "{stdout}");
}

/// The bundled suite under ktvmm and under QEMU + KVM (ktest guests boot
/// there through their multiboot header): every difference is one that
/// `tests/data/bundled-under-qemu.toml` explains, and nothing it explains
/// has gone away unnoticed.
#[test]
fn the_bundled_suite_agrees_across_ktvmm_and_qemu() {
    if !common::qemu_usable("the_bundled_suite_agrees_across_ktvmm_and_qemu") {
        return;
    }
    let dir = scratch("bundled-envs");
    let expect = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/bundled-under-qemu.toml"
    );
    let (code, stdout, stderr) = test_in(
        &dir,
        &["--env", "ktvmm", "--env", "qemu-kvm", "--expect", expect],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir);
    let tests = results["tests"].as_array().unwrap();
    let under_qemu: Vec<&Value> = tests
        .iter()
        .filter(|t| t["name"].as_str().unwrap().ends_with("@qemu-kvm"))
        .collect();
    assert_eq!(under_qemu.len(), tests.len() / 2, "{stdout}");
    for t in tests {
        let (name, status) = (t["name"].as_str().unwrap(), t["status"].as_str().unwrap());
        let allowed: &[&str] = if name.ends_with("@qemu-kvm") {
            &["pass", "xfail"]
        } else {
            &["pass"]
        };
        assert!(allowed.contains(&status), "{name}: {status}\n{stdout}");
    }
    // The guests that exercise SMP bring-up, exceptions, interrupts and
    // the devices QEMU has as ktvmm has them must agree outright.
    for name in [
        "selftest",
        "smp",
        "exceptions",
        "lapic-timer",
        "pci-testdev",
        "serial-testdev",
        "isa-debug-exit",
        "smp-multiboot",
        "iommu",
    ] {
        assert_eq!(
            status_of(&results, &format!("{name}@qemu-kvm")),
            "pass",
            "{stdout}"
        );
    }
}

/// `exec = "prog"` is the program next to the suite file, even when the
/// suite is named by a relative path: not a program found in PATH.
#[test]
fn a_program_named_relative_to_a_relative_suite_runs() {
    let dir = scratch("relative-exec");
    let prog = write(&dir, "prog", b"#!/bin/sh\necho ok 1 - here\n");
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write(&dir, "r.ktvmm.toml", b"[[test]]\nexec = \"prog\"\n");
    let output = ktvmm()
        .current_dir(&dir)
        .args(["test", "-o", "out", "r.ktvmm.toml"])
        .output()
        .unwrap();
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("PASS    prog"), "{stdout}");
}

/// A kvm-unit-tests tree: `x86/unittests.cfg` runs its `.flat` files, and
/// each gets KUT's environment file (the host kernel's version, errata.txt's
/// entries) as its initrd, as KUT's scripts give it.
#[test]
fn a_kvm_unit_tests_cfg_runs_with_kuts_environment_file() {
    let dir = scratch("kut-tree");
    let x86 = dir.join("x86");
    std::fs::create_dir_all(&x86).unwrap();
    write(
        &x86,
        "pass.flat",
        &ktvmm_vmm::boot::test_images::elf32_multiboot(0x40_0000, &exit_with(0), 0),
    );
    // Exits with the multiboot information's module count: 1 with the
    // environment file (which KUT's convention reads as a failure).
    write(
        &x86,
        "mods.flat",
        &ktvmm_vmm::boot::test_images::elf32_multiboot(
            0x40_0000,
            &ktvmm_vmm::boot::test_images::exit_with_multiboot_field(20),
            0,
        ),
    );
    write(
        &dir,
        "errata.txt",
        b"# commit : minimum : summary\n0123456789ab : 2.6 : ancient fix\n",
    );
    let cfg = write(
        &x86,
        "unittests.cfg",
        b"[pass]\nfile = pass.flat\nsmp = 2\n\n[mods]\nfile = mods.flat\n\n\
          [elsewhere]\nfile = pass.flat\narch = arm64\n",
    );
    let (code, stdout, _) = test_in(&dir, &[&cfg]);
    assert_eq!(code, 1, "{stdout}");
    let results = results(&dir);
    assert_eq!(status_of(&results, "pass"), "pass", "{stdout}");
    assert_eq!(status_of(&results, "elsewhere"), "skip", "{stdout}");
    let mods = common::test_named(&results, "mods");
    assert_eq!(mods["exit_code"], 1, "one module: {mods}");
    let env = std::fs::read_to_string(dir.join("out/kut-env.1")).expect("the environment file");
    assert!(env.contains("\nKERNEL_VERSION="), "{env}");
    assert!(env.contains("ERRATA_0123456789ab=y\n"), "{env}");
}

/// kvm-unit-tests' own `s3` (suspend to RAM, woken by the RTC alarm,
/// resumed in real mode at its FACS waking vector) passes, run from a built
/// KUT tree named by `KTVMM_KUT_DIR` (optional like QEMU: KUT is not
/// packaged; `KTVMM_REQUIRE_KUT=1` makes its absence a failure).
#[test]
fn kvm_unit_tests_s3_passes() {
    let test = "kvm_unit_tests_s3_passes";
    let tree = std::env::var_os("KTVMM_KUT_DIR").map(std::path::PathBuf::from);
    let usable = match &tree {
        Some(tree) if tree.join("x86/s3.flat").is_file() => Ok(()),
        Some(tree) => Err(format!("{} has no built x86/s3.flat", tree.display())),
        None => Err("no kvm-unit-tests tree: set KTVMM_KUT_DIR to a built one".to_string()),
    };
    if !common::optional_tool(test, "KTVMM_REQUIRE_KUT", usable) {
        return;
    }
    let Some(tree) = tree else { return };
    let dir = scratch("kut-s3");
    let cfg = tree.join("x86/unittests.cfg");
    let (code, stdout, stderr) = test_in(&dir, &[cfg.to_str().unwrap(), "-f", "s3"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir);
    assert_eq!(status_of(&results, "s3"), "pass", "{stdout}");
}
