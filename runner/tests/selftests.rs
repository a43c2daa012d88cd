//! Kernel selftest trees as `ktvmm test` inputs, on fixture trees that
//! reproduce the kernel's layouts (a target's build directory with helpers
//! and scripts without `#!`, the selftests directory with `TARGETS`, an
//! install directory, the KVM runner's `*.test` files), with small programs
//! that print the formats the real tests print.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{parts, run, scratch};
use serde_json::Value;

fn file(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `tools/testing/selftests` in miniature: `lib.mk` (which, as the
/// kernel's, puts `$(OUTPUT)` in front of the generated programs), the
/// runner's scripts, and a `kvm` target whose Makefile lists tests, a
/// helper program and helper scripts, with `settings`.
fn selftests_tree(dir: &Path) -> PathBuf {
    assert!(
        Command::new("make").arg("--version").output().is_ok(),
        "make is missing: kernel selftest trees are read through their Makefiles"
    );
    let root = dir.join("selftests");
    let kvm = root.join("kvm");
    let busy = dir.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    file(
        &root.join("lib.mk"),
        "OUTPUT ?= $(CURDIR)\nTEST_GEN_PROGS := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS))\n\
         all:\n\t@:\n",
        0o644,
    );
    file(
        &root.join("kselftest/runner.sh"),
        "# the kernel's runner\n",
        0o644,
    );
    file(
        &kvm.join("Makefile"),
        "TEST_GEN_PROGS = pass_test x86/assert_test x86/skip_test ktap_test short_plan_test\n\
         TEST_GEN_PROGS += dirty_log_perf_test\n\
         TEST_GEN_PROGS_EXTENDED = x86/wrapper\n\
         TEST_PROGS = x86/wrapper.sh x86/noshebang.sh x86/notexec.sh\n\
         TEST_FILES = scripts/setup.sh\n\
         include ../lib.mk\n",
        0o644,
    );
    file(
        &kvm.join("settings"),
        "# per-collection\ntimeout=30\n",
        0o644,
    );
    // Tests that are not alone note that they run; the perf test checks
    // that none does while it runs.
    let busy_s = busy.display();
    let note = |name: &str, body: &str| {
        format!("#!/bin/sh\ntouch {busy_s}/{name}\nsleep 0.3\nrm -f {busy_s}/{name}\n{body}\n")
    };
    file(
        &kvm.join("pass_test"),
        &note("pass", "echo hello; exit 0"),
        0o755,
    );
    file(
        &kvm.join("x86/assert_test"),
        &note(
            "assert",
            "printf 'Random seed: 0x6b8b4567\\nprogress 50%%\\r100%%\\n' \n\
             printf '==== Test Assertion Failure ====\\n  x86/assert_test.c:42: r == 0\\n' >&2\n\
             printf '  pid=1 tid=1 errno=4 - Interrupted system call\\n' >&2\n\
             printf '     1\\t0x402d1c: main at assert_test.c:42\\n' >&2\n\
             printf '  Unexpected result, r = -1\\n' >&2\nexit 254",
        ),
        0o755,
    );
    file(
        &kvm.join("x86/skip_test"),
        "#!/bin/sh\necho 'TAP version 13'\n\
         echo '1..0 # SKIP - Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)'\nexit 4\n",
        0o755,
    );
    file(
        &kvm.join("ktap_test"),
        &note(
            "ktap",
            "printf 'TAP version 13\\n1..5\\nok 1 alpha\\nok 2 beta # SKIP no beta\\n\
             not ok 3 gamma\\nok 4 # XFAIL delta\\nnot ok 5 # error epsilon\\n\
             # Totals: pass:1 fail:2 xfail:1 xpass:0 skip:1 error:1\\n'\nexit 1",
        ),
        0o755,
    );
    file(
        &kvm.join("short_plan_test"),
        &note(
            "short",
            "printf 'TAP version 13\\n1..5\\nok 1 a\\n'\nkill -SEGV $$",
        ),
        0o755,
    );
    file(
        &kvm.join("dirty_log_perf_test"),
        &format!(
            "#!/bin/sh\nfor i in 1 2 3 4 5 6; do\n  if [ -n \"$(ls {busy_s})\" ]; then\n    \
             echo \"not alone: $(ls {busy_s})\"; exit 1\n  fi\n  sleep 0.1\ndone\necho alone\n"
        ),
        0o755,
    );
    // The kernel's nx_huge_pages_test.sh: a script test and its helper
    // program of the same stem; only the script is a test.
    file(
        &kvm.join("x86/wrapper.sh"),
        "#!/bin/sh\nexec ./wrapper \"${1:-from-wrapper}\"\n",
        0o755,
    );
    file(
        &kvm.join("x86/wrapper"),
        "#!/bin/sh\necho \"helper: $1\"\n",
        0o755,
    );
    // Executable without #!: execvp runs it with /bin/sh, so the kernel's
    // runner does.
    file(
        &kvm.join("x86/noshebang.sh"),
        "echo \"ran by sh in $(pwd)\"\nexit 0\n",
        0o755,
    );
    // Neither executable nor #!: the kernel's runner fails it unrun.
    file(&kvm.join("x86/notexec.sh"), "exit 0\n", 0o644);
    // Helper scripts (TEST_FILES) are not tests, #! or not.
    file(&kvm.join("scripts/setup.sh"), "exit 1\n", 0o755);
    root
}

const KVM_TESTS: [&str; 9] = [
    "pass_test",
    "assert_test",
    "skip_test",
    "ktap_test",
    "short_plan_test",
    "dirty_log_perf_test",
    "wrapper.sh",
    "noshebang.sh",
    "notexec.sh",
];

fn listed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.split("  ").next().unwrap().to_string())
        .collect()
}

fn results(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json is JSON")
}

#[test]
fn a_target_build_directory_lists_what_the_kernels_runner_runs() {
    let dir = scratch("kselftest-list");
    let root = selftests_tree(&dir);
    let kvm = root.join("kvm");
    let (code, stdout, stderr) = parts(&run(&["test", kvm.to_str().unwrap(), "--list"]).0);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(listed(&stdout), KVM_TESTS, "{stdout}");
    assert!(
        stdout.contains("dirty_log_perf_test  [kvm]  (runs alone)"),
        "{stdout}"
    );
    assert!(stdout.contains("pass_test  [kvm]\n"), "{stdout}");

    // The selftests directory takes TARGETS as make does...
    let output = common::ktvmm()
        .args(["test", root.to_str().unwrap(), "--list"])
        .env("TARGETS", "kvm")
        .output()
        .unwrap();
    let (code, stdout, _) = parts(&output);
    assert_eq!(
        (code, listed(&stdout)),
        (0, KVM_TESTS.map(String::from).to_vec())
    );
    // ...and without it says what to do.
    let output = common::ktvmm()
        .args(["test", root.to_str().unwrap(), "--list"])
        .env_remove("TARGETS")
        .output()
        .unwrap();
    let (code, _, stderr) = parts(&output);
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("TARGETS=\"kvm vfio\""), "{stderr}");
    assert!(stderr.contains(root.to_str().unwrap()), "{stderr}");
}

#[test]
fn selftests_run_with_the_kernels_verdicts_and_their_reasons() {
    let dir = scratch("kselftest-run");
    let root = selftests_tree(&dir);
    let out = dir.join("out");
    let (code, stdout, stderr) = parts(
        &run(&[
            "test",
            root.join("kvm").to_str().unwrap(),
            "-j",
            "4",
            "-o",
            out.to_str().unwrap(),
        ])
        .0,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let r = results(&out);
    let verdict = |name: &str| {
        let t = common::test_named(&r, name);
        (
            t["status"].as_str().unwrap().to_string(),
            t["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(verdict("pass_test").0, "pass");
    assert_eq!(
        verdict("assert_test"),
        (
            "fail".into(),
            "exit code 254; x86/assert_test.c:42: r == 0: Unexpected result, r = -1".into()
        )
    );
    assert_eq!(
        verdict("skip_test"),
        (
            "skip".into(),
            "Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)".into()
        )
    );
    assert_eq!(
        verdict("ktap_test"),
        (
            "fail".into(),
            "exit code 1; 2 subtests failed: gamma; epsilon".into()
        )
    );
    let ktap = &common::test_named(&r, "ktap_test")["subtests"];
    assert_eq!(
        (&ktap["pass"], &ktap["fail"], &ktap["skip"], &ktap["xfail"]),
        (&1.into(), &2.into(), &1.into(), &1.into()),
        "{ktap}"
    );
    assert_eq!(
        verdict("short_plan_test"),
        (
            "fail".into(),
            "killed by SIGSEGV; 4 subtests planned never reported".into()
        )
    );
    assert_eq!(
        verdict("dirty_log_perf_test"),
        ("pass".into(), String::new()),
        "the perf test ran beside others:\n{stdout}"
    );
    assert_eq!(verdict("wrapper.sh").0, "pass");
    let wrapper_log = std::fs::read_to_string(out.join("logs/wrapper.sh.log")).unwrap();
    assert!(
        wrapper_log.contains("helper: from-wrapper"),
        "{wrapper_log}"
    );
    assert_eq!(verdict("noshebang.sh").0, "pass");
    let sh_log = std::fs::read_to_string(out.join("logs/noshebang.sh.log")).unwrap();
    assert!(
        sh_log.contains(&format!("ran by sh in {}", root.join("kvm/x86").display())),
        "{sh_log}"
    );
    assert_eq!(verdict("notexec.sh").0, "fail");
    let notexec_log = std::fs::read_to_string(out.join("logs/notexec.sh.log")).unwrap();
    assert!(
        notexec_log.contains("is not executable and has no #! line"),
        "{notexec_log}"
    );
    assert_eq!(r["tests"].as_array().unwrap().len(), KVM_TESTS.len());

    // The reasons are in the summary, JUnit and TAP too.
    assert!(
        stdout.contains("(exit code 254; x86/assert_test.c:42: r == 0: Unexpected result, r = -1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SKIP    skip_test (")
            && stdout.contains("): Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "skipped (1), by reason:\n    1  Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)  (skip_test)\n"
        ),
        "{stdout}"
    );
    // The carriage return of a progress line, readable in the tail.
    assert!(stdout.contains("| progress 50%^M100%"), "{stdout}");
    assert!(!stdout.contains('\u{fffd}'), "{stdout}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(
        junit.contains("x86/assert_test.c:42: r == 0: Unexpected result, r = -1"),
        "{junit}"
    );
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap();
    assert!(
        tap.contains("ok 3 - skip_test # SKIP Requirement not met"),
        "{tap}"
    );
}

#[test]
fn exact_names_select_one_test_and_an_empty_selection_stops_list_and_run_alike() {
    let dir = scratch("kselftest-select");
    let root = selftests_tree(&dir);
    let kvm = root.join("kvm");
    let kvm = kvm.to_str().unwrap();
    let (_, stdout, _) = parts(&run(&["test", kvm, "--list", "-f", "test"]).0);
    assert_eq!(listed(&stdout).len(), 6);
    let (code, stdout, _) = parts(&run(&["test", kvm, "--list", "-f", "=pass_test"]).0);
    assert_eq!((code, listed(&stdout)), (0, vec!["pass_test".to_string()]));
    let (_, stdout, _) = parts(&run(&["test", kvm, "--list", "-x", "=ktap_test", "-f", "_test"]).0);
    assert_eq!(listed(&stdout).len(), 5, "{stdout}");
    for args in [vec!["--list"], vec![]] {
        let mut all = vec!["test", kvm, "-f", "=pass"];
        all.extend(args.iter());
        let (code, stdout, stderr) = parts(&run(&all).0);
        assert_eq!(code, 125, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("no tests selected (9 found"),
            "{args:?}: {stderr}"
        );
    }
    // A relative path to the tree: tests start in their own directories.
    // KSELFTEST_<NAME>_ARGS are the test's arguments, as runner.sh gives
    // them.
    let output = common::ktvmm()
        .current_dir(&dir)
        .env("KSELFTEST_WRAPPER_SH_ARGS", "from-the-environment")
        .args([
            "test",
            "selftests/kvm",
            "-f",
            "=noshebang.sh",
            "-f",
            "=wrapper.sh",
        ])
        .args(["-o", "out-relative"])
        .output()
        .unwrap();
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("2 passed"), "{stdout}");
    let log = std::fs::read_to_string(dir.join("out-relative/logs/wrapper.sh.log")).unwrap();
    assert_eq!(log, "helper: from-the-environment\n");
    // --exclusive marks more; a suite key does the same.
    let (_, stdout, _) = parts(&run(&["test", kvm, "--list", "--exclusive", "=pass_test"]).0);
    assert!(
        stdout.contains("pass_test  [kvm]  (runs alone)"),
        "{stdout}"
    );
    let suite = dir.join("alone.ktvmm.toml");
    std::fs::write(
        &suite,
        "[[test]]\nname = \"quiet\"\nexec = \"/bin/true\"\nexclusive = true\n",
    )
    .unwrap();
    let (_, stdout, _) = parts(&run(&["test", suite.to_str().unwrap(), "--list"]).0);
    assert_eq!(stdout, "quiet  (runs alone)\n");
}

/// What `make install INSTALL_PATH=DIR` writes: kselftest-list.txt, one
/// flat directory per collection with its `settings`, helpers beside.
#[test]
fn an_install_directory_runs_its_list_with_each_collections_settings() {
    let dir = scratch("kselftest-install");
    let install = dir.join("install");
    file(&install.join("run_kselftest.sh"), "#!/bin/sh\n", 0o755);
    file(
        &install.join("kselftest-list.txt"),
        "kvm:pass_test\nkvm:sleepy_test\nvfio:vfio_pci_device_test\n",
        0o644,
    );
    file(&install.join("kvm/settings"), "timeout=1\n", 0o644);
    file(&install.join("kvm/pass_test"), "#!/bin/sh\nexit 0\n", 0o755);
    file(
        &install.join("kvm/sleepy_test"),
        "#!/bin/sh\nsleep 30\n",
        0o755,
    );
    file(&install.join("kvm/helper"), "#!/bin/sh\nexit 1\n", 0o755);
    file(
        &install.join("vfio/vfio_pci_device_test"),
        "#!/bin/sh\necho 'Unable to determine which device(s) to use, skipping test.' >&2\nexit 4\n",
        0o755,
    );
    let out = dir.join("out");
    let (code, stdout, stderr) = parts(
        &run(&[
            "test",
            install.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .0,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let r = results(&out);
    let names: Vec<&str> = r["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kvm:pass_test",
            "kvm:sleepy_test",
            "vfio:vfio_pci_device_test"
        ]
    );
    let sleepy = common::test_named(&r, "kvm:sleepy_test");
    assert_eq!(sleepy["status"], "timeout");
    assert_eq!(sleepy["reason"], "timed out after 1 s");
    assert!(sleepy["duration_s"].as_f64().unwrap() < 10.0, "{sleepy}");
    let vfio = common::test_named(&r, "vfio:vfio_pci_device_test");
    assert_eq!(
        (&vfio["status"], &vfio["reason"]),
        (
            &"skip".into(),
            &"Unable to determine which device(s) to use".into()
        )
    );

    file(
        &install.join("kselftest-list.txt"),
        "kvm:pass_test\nnot a test line\n",
        0o644,
    );
    let (code, _, stderr) = parts(&run(&["test", install.to_str().unwrap(), "--list"]).0);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("kselftest-list.txt:2: \"not a test line\" is not COLLECTION:TEST"),
        "{stderr}"
    );
}

/// The KVM selftests runner under review: `*.test` files of one command
/// line each, programs relative to the target they sit in.
#[test]
fn test_files_of_the_kvm_runner() {
    let dir = scratch("kselftest-testfiles");
    let root = selftests_tree(&dir);
    let cases = root.join("kvm/testcases");
    file(
        &cases.join("x86/wrapper/default.test"),
        "# the helper, with an argument\nx86/wrapper 'two words'\n",
        0o644,
    );
    file(&cases.join("pass_test.test"), "pass_test\n", 0o644);
    let out = dir.join("out");
    let (code, stdout, stderr) =
        parts(&run(&["test", cases.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r = results(&out);
    assert_eq!(common::test_named(&r, "pass_test")["status"], "pass");
    assert_eq!(
        common::test_named(&r, "x86/wrapper/default")["status"],
        "pass"
    );
    let log = std::fs::read_to_string(out.join("logs/x86_wrapper_default.log")).unwrap();
    assert_eq!(log, "helper: two words\n");

    file(&cases.join("bad.test"), "nothing_built --x\n", 0o644);
    let (code, _, stderr) = parts(&run(&["test", cases.to_str().unwrap(), "--list"]).0);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("bad.test:1: program") && stderr.contains("nothing_built is not there"),
        "{stderr}"
    );
}

/// ktest guests say why they skip on their `SKIP:` line.
#[test]
fn a_guests_skip_reason_is_its_own() {
    let dir = scratch("guest-skip-reason");
    let suite = dir.join("g.ktvmm.toml");
    std::fs::write(
        &suite,
        "[[test]]\nname = \"skipper\"\nguest = \"bundled:exitcode\"\nappend = \"skip\"\n",
    )
    .unwrap();
    let out = dir.join("out");
    let (code, stdout, stderr) =
        parts(&run(&["test", suite.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r = results(&out);
    let t = common::test_named(&r, "skipper");
    assert_eq!(
        (&t["status"], &t["reason"]),
        (&"skip".into(), &"exitcode: skip (requested)".into())
    );
}
