//! Sweeps, soaks and KVM configuration matrices through the whole runner,
//! with real guests and real programs.

mod common;

use std::path::Path;

use common::{parts, run, scratch, write};
use serde_json::Value;

/// Runs `ktvmm test -o dir/OUT args`; returns exit code, stdout, stderr.
fn test_to(dir: &Path, out: &str, args: &[&str]) -> (i32, String, String) {
    let out = dir.join(out);
    let mut all = vec!["test", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    parts(&run(&all).0)
}

fn results(dir: &Path, out: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(out).join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json is JSON")
}

fn names(results: &Value) -> Vec<String> {
    let mut names: Vec<String> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn log_of(results: &Value, name: &str) -> String {
    let test = common::test_named(results, name);
    std::fs::read_to_string(test["log"].as_str().unwrap()).expect("the test's log")
}

/// A suite sweep over `smp` (a range) and an `append` word of the bundled
/// selftest guest, which checks its CPU count (`smp={smp}`) and that every
/// word is in its arguments: each variant is its own test with its own
/// log, and the guest saw the shape its name says.
#[test]
fn a_sweep_gives_every_variant_its_shape() {
    let dir = scratch("sweep-shape");
    let suite = write(
        &dir,
        "shape.ktvmm.toml",
        br#"
[[test]]
name = "shape"
guest = "bundled:selftest"
append = "smp={smp} mem={memory}"
sweep = { smp = "1..4*2", append = ["alpha", "beta gamma"] }
"#,
    );
    let (code, stdout, stderr) = test_to(&dir, "out", &[&suite, "--sweep", "memory=64M,96M"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir, "out");
    let mut want = Vec::new();
    for smp in [1, 2, 4] {
        for memory in ["64M", "96M"] {
            for word in ["alpha", "beta gamma"] {
                want.push(format!("shape[smp={smp},memory={memory},append={word}]"));
            }
        }
    }
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(names(&results), sorted);
    for smp in [1, 2, 4] {
        let name = format!("shape[smp={smp},memory=96M,append=beta gamma]");
        let test = common::test_named(&results, &name);
        assert_eq!(test["status"], "pass", "{test}");
        assert_eq!(test["variant"]["of"], "shape");
        assert_eq!(test["variant"]["values"]["smp"], smp.to_string());
        let log = log_of(&results, &name);
        for line in [
            format!("PASS: selftest: smp={smp}: cpu count is {smp}"),
            "PASS: selftest: mem=96: memory size is 96 MiB".to_string(),
            "PASS: selftest: argv contains 'beta'".to_string(),
            "PASS: selftest: argv contains 'gamma'".to_string(),
        ] {
            assert!(log.contains(&line), "{name}: no '{line}' in\n{log}");
        }
    }
    let logs: std::collections::HashSet<&str> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["log"].as_str().unwrap())
        .collect();
    assert_eq!(logs.len(), 12, "a log per variant");
    // The table: a row per test and other values, a column per last value.
    assert!(stdout.contains("verdicts per variant (12):"), "{stdout}");
    assert!(
        stdout.contains("  test   smp  memory  append=alpha  append=beta gamma\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  shape  4    96M     PASS          PASS\n"),
        "{stdout}"
    );
}

/// The command line's sweep over the bundled suite: its selftest checks
/// each variant's CPU count; `=NAME` selects a test's variants.
#[test]
fn the_bundled_suite_sweeps_from_the_command_line() {
    let dir = scratch("sweep-bundled");
    let (code, stdout, stderr) = test_to(
        &dir,
        "out",
        &["--sweep", "smp=1..3", "-f", "=selftest", "-f", "=smp"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir, "out");
    assert_eq!(
        names(&results),
        [
            "selftest[smp=1]",
            "selftest[smp=2]",
            "selftest[smp=3]",
            "smp[smp=1]",
            "smp[smp=2]",
            "smp[smp=3]"
        ]
    );
    assert!(log_of(&results, "selftest[smp=3]").contains("smp=3: cpu count is 3"));
    // A bad sweep stops the run before anything starts.
    let (code, _, stderr) = test_to(&dir, "bad", &["--sweep", "smp=4..1"]);
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("'smp=4..1' for '--sweep <KEY=V1,V2,...>': 4..1: the range runs backwards"),
        "{stderr}"
    );
    assert!(!dir.join("bad").exists());
}

/// A program's environment variable over a list of devices (the VFIO
/// selftests' `VFIO_SELFTESTS_BDF`), from the suite and from the command
/// line; `{env.NAME}` in its arguments is the variant's value.
#[test]
fn a_sweep_over_a_programs_environment() {
    let dir = scratch("sweep-env");
    let suite = write(
        &dir,
        "vfio.ktvmm.toml",
        br#"
[[test]]
name = "vfio"
exec = "/bin/sh"
args = ["-c", "echo device=$VFIO_SELFTESTS_BDF arg=$0 mode=$MODE", "{env.VFIO_SELFTESTS_BDF}"]
env = { MODE = "none" }
sweep = { env = { VFIO_SELFTESTS_BDF = ["0000:00:01.0", "0000:00:02.0"] } }
"#,
    );
    let (code, stdout, stderr) = test_to(&dir, "out", &[&suite, "--sweep", "env.MODE=a,b"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir, "out");
    assert_eq!(names(&results).len(), 4);
    for bdf in ["0000:00:01.0", "0000:00:02.0"] {
        for mode in ["a", "b"] {
            let name = format!("vfio[env.MODE={mode},env.VFIO_SELFTESTS_BDF={bdf}]");
            let log = log_of(&results, &name);
            assert!(
                log.contains(&format!("device={bdf} arg={bdf} mode={mode}")),
                "{name}: {log}"
            );
        }
    }
    // Keys that do not fit the test are an error with the line.
    let bad = write(
        &dir,
        "bad.ktvmm.toml",
        b"[[test]]\nexec = \"/bin/true\"\nsweep = { smp = [1, 2] }\n",
    );
    let (code, _, stderr) = test_to(&dir, "bad", &[&bad]);
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("bad.ktvmm.toml:1: test 'true': sweep key `smp` is for guests"),
        "{stderr}"
    );
}

/// A variant's name is the same in every run and however the sweep is
/// typed, so `--rerun-failed` picks exactly the variant that failed and
/// `ktvmm diff` pairs variants across runs; exact names and globs select
/// variants.
#[test]
fn variant_names_are_stable_across_runs() {
    let dir = scratch("sweep-stable");
    let suite = write(
        &dir,
        "pick.ktvmm.toml",
        b"[[test]]\nname = \"pick\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"test $CHOICE != bad\"]\n",
    );
    let sweep = ["--sweep", "env.CHOICE=good,bad,fine"];
    let first = |out: &str, extra: &[&str]| {
        let mut args = vec![suite.as_str(), sweep[0], sweep[1]];
        args.extend_from_slice(extra);
        test_to(&dir, out, &args)
    };
    let (code, stdout, _) = first("one", &[]);
    assert_eq!(code, 1, "{stdout}");
    let (code, stdout, _) = first("one", &["--rerun-failed", "--list"]);
    assert_eq!((code, stdout.as_str()), (0, "pick[env.CHOICE=bad]\n"));
    // Typed in another order: the same names.
    let (code, stdout, _) = test_to(
        &dir,
        "two",
        &[
            &suite,
            "--sweep",
            "env.CHOICE=fine,bad",
            "--sweep",
            "env.CHOICE=good",
        ],
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(names(&results(&dir, "one")), names(&results(&dir, "two")));
    let (code, stdout, stderr) = parts(
        &run(&[
            "diff",
            dir.join("one").to_str().unwrap(),
            dir.join("two").to_str().unwrap(),
        ])
        .0,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("0 new, 0 vanished (3 tests before, 3 after)"),
        "{stdout}"
    );
    for (filter, want) in [
        ("=pick[env.CHOICE=bad]", "pick[env.CHOICE=bad]\n"),
        ("pick[env.CHOICE=f*", "pick[env.CHOICE=fine]\n"),
        (
            "=pick",
            "pick[env.CHOICE=good]\npick[env.CHOICE=bad]\npick[env.CHOICE=fine]\n",
        ),
    ] {
        let (code, stdout, _) = first("three", &["--list", "-f", filter]);
        assert_eq!((code, stdout.as_str()), (0, want), "{filter}");
    }
}

/// A soak of a program that fails every third run: runs, passes and
/// failures add up in the table and in results.json, the failure rate is
/// the count's, and the first failure's log is named; with --until-fail it
/// stops at the first failure.
#[test]
fn a_soak_reports_each_tests_failure_rate() {
    let dir = scratch("soak");
    let counter = dir.join("count");
    let suite = write(
        &dir,
        "soak.ktvmm.toml",
        format!(
            "[[test]]\nname = \"third\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"echo x >> {0}; test $(( $(wc -l < {0}) % 3 )) -ne 0\"]\n",
            counter.display()
        )
        .as_bytes(),
    );
    let (code, stdout, stderr) = test_to(&dir, "out", &[&suite, "--for", "10s", "-j", "1", "-q"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let soaked = results(&dir, "out");
    let tests = soaked["tests"].as_array().unwrap();
    let runs = tests.len();
    let fails = tests.iter().filter(|t| t["status"] == "fail").count();
    let passes = tests.iter().filter(|t| t["status"] == "pass").count();
    assert!(runs >= 3, "{stdout}");
    assert_eq!(passes + fails, runs);
    assert_eq!(fails, runs / 3, "every third run fails");
    let ran = std::fs::read_to_string(&counter).unwrap().lines().count();
    assert_eq!(ran, runs, "every run started is reported");
    let row = format!(
        "  third  {runs:<4}  {passes:<4}  {fails:<4}  {:.1}%",
        100.0 * fails as f64 / runs as f64
    );
    assert!(stdout.contains(&row), "{row}\nnot in\n{stdout}");
    assert!(stdout.contains("third.3.log"), "{stdout}");
    assert_eq!(common::test_named(&soaked, "third")["status"], "pass");

    std::fs::remove_file(&counter).unwrap();
    let (code, stdout, _) = test_to(
        &dir,
        "until",
        &[&suite, "--for", "10s", "--until-fail", "-j", "1"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(results(&dir, "until")["tests"].as_array().unwrap().len(), 3);
    assert!(stdout.contains("soak: 3 runs of 1 tests"), "{stdout}");
}

/// Configurations at the host's own values run for real without a reload:
/// every test once per configuration, named and recorded with it, a table
/// per configuration; a configuration that needs a change this host
/// refuses (KVM built in here; elsewhere not root or in use) stops the run
/// before anything runs, and --dry-run prints the plan.
#[test]
fn kvm_configurations_run_in_turn() {
    let dir = scratch("kvm-config");
    let current = std::fs::read_to_string("/sys/module/kvm/parameters/enable_pmu")
        .expect("kvm's enable_pmu parameter");
    let same = format!("pmu:kvm.enable_pmu={}", current.trim());
    let (code, stdout, stderr) = test_to(
        &dir,
        "out",
        &[
            "--kvm-config",
            "host:",
            "--kvm-config",
            &same,
            "-f",
            "=smp",
            "-f",
            "=exitcode-pass",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir, "out");
    assert_eq!(
        names(&results),
        [
            "exitcode-pass[kvm=host]",
            "exitcode-pass[kvm=pmu]",
            "smp[kvm=host]",
            "smp[kvm=pmu]"
        ]
    );
    // Every test of one configuration before the next.
    let order: Vec<&str> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["variant"]["values"]["kvm"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["host", "host", "pmu", "pmu"]);
    assert_eq!(
        results["meta"]["kvm_configs"]["pmu"][0],
        same.trim_start_matches("pmu:")
    );
    assert!(
        stdout.contains("verdicts per KVM configuration (2):\n  test           host  pmu\n"),
        "{stdout}"
    );

    let (code, stdout, _) = test_to(
        &dir,
        "dry",
        &[
            "--kvm-config",
            "host:",
            "--kvm-config",
            &same,
            "-f",
            "=smp",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("KVM configuration matrix: 2 configurations, 2 tests"),
        "{stdout}"
    );
    assert!(stdout.contains("would run 2 tests:\n  smp[kvm=host]\n  smp[kvm=pmu]\n"));
    assert!(!dir.join("dry").exists(), "a dry run ran something");

    let flip = if current.trim() == "Y" { "N" } else { "Y" };
    let other = format!("flip:kvm.enable_pmu={flip}");
    let (code, stdout, stderr) = test_to(
        &dir,
        "refused",
        &["--kvm-config", "host:", "--kvm-config", &other, "--dry-run"],
    );
    let loadable = Path::new("/sys/module/kvm/initstate").exists();
    if loadable && stdout.contains("rmmod kvm") {
        // Root on a host with KVM as a module: the plan is the reload.
        assert_eq!(code, 0);
    } else {
        assert_eq!(code, 125, "{stdout}{stderr}");
        assert!(stderr.contains("--kvm-config flip: "), "{stderr}");
        assert!(!stdout.contains("would run"), "{stdout}");
    }
}

/// A matrix of what a VM can set without reloading anything, on any host:
/// CPU models and their flags, each checked by the guest through CPUID.
#[test]
fn a_matrix_over_cpu_models_runs() {
    let dir = scratch("cpu-matrix");
    let suite = write(
        &dir,
        "models.ktvmm.toml",
        br#"
[[test]]
name = "models"
guest = "bundled:selftest"
append = "cpu={cpu}"
matrix = { cpu = ["qemu64,+x2apic", "qemu64,-x2apic", "max,vendor=AuthenticAMD", "max,vendor=GenuineIntel,-pcid"] }
"#,
    );
    let (code, stdout, stderr) = test_to(&dir, "out", &[&suite, "--sweep", "iommu=on,off"]);
    // iommu is for guests, and this one has no edu to put it in front of:
    // it boots the same either way.
    assert_eq!(code, 0, "{stdout}{stderr}");
    let results = results(&dir, "out");
    assert_eq!(names(&results).len(), 8);
    for (model, line) in [
        ("qemu64,+x2apic", "PASS: selftest: cpu: x2apic is set"),
        ("qemu64,-x2apic", "PASS: selftest: cpu: x2apic is clear"),
        (
            "max,vendor=AuthenticAMD",
            "PASS: selftest: cpu: vendor AuthenticAMD (CPUID says AuthenticAMD)",
        ),
        (
            "max,vendor=GenuineIntel,-pcid",
            "PASS: selftest: cpu: pcid is clear",
        ),
    ] {
        let name = format!("models[cpu={model},iommu=on]");
        let log = log_of(&results, &name);
        assert!(log.contains(line), "{name}: no '{line}' in\n{log}");
    }
    assert!(
        stdout.contains("  test    cpu                            iommu=on  iommu=off\n"),
        "{stdout}"
    );
}
