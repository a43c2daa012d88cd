//! `ktvmm test` (minimal form): the bundled suite, and verdicts for guest files.

mod common;

use common::{parts, run, scratch, write};
use ktvmm_vmm::test_images::{SPIN_WITH_INTERRUPTS_OFF, elf64, exit_with};

const LOAD_ADDR: u64 = 0x10_0000;

#[test]
fn the_bundled_suite_passes() {
    let (output, _) = run(&["test"]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in [
        "selftest",
        "smp",
        "exceptions",
        "lapic-timer",
        "exitcode-pass",
        "isa-debug-exit",
        "serial-testdev",
        "pci-enum",
        "pci-testdev",
        "pc-testdev",
        "edu",
        "edu-driver",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS") && l.contains(name)),
            "{name} did not pass:\n{stdout}"
        );
    }
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn list_names_the_bundled_tests() {
    let (output, _) = run(&["test", "--list"]);
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 0);
    assert!(stdout.lines().any(|l| l == "smp"), "{stdout}");
}

#[test]
fn pass_fail_skip_and_timeout_are_reported_as_such() {
    let dir = scratch("verdicts");
    let pass = write(&dir, "passing.elf", &elf64(LOAD_ADDR, &exit_with(0), 0));
    let fail = write(&dir, "failing.elf", &elf64(LOAD_ADDR, &exit_with(1), 0));
    let skip = write(&dir, "skipping.elf", &elf64(LOAD_ADDR, &exit_with(77), 0));
    let hang = write(
        &dir,
        "hanging.elf",
        &elf64(LOAD_ADDR, &SPIN_WITH_INTERRUPTS_OFF, 0),
    );
    let (output, _) = run(&["test", "--timeout", "1", &pass, &fail, &skip, &hang]);
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 1, "a failure makes the run fail:\n{stdout}");
    let verdict = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(verdict("passing"), "PASS", "{stdout}");
    assert_eq!(verdict("failing"), "FAIL", "{stdout}");
    assert_eq!(verdict("skipping"), "SKIP", "{stdout}");
    assert_eq!(verdict("hanging"), "TIMEOUT", "{stdout}");
    assert!(
        stdout.contains("summary: 1 passed, 2 failed, 1 skipped (1 timed out)"),
        "{stdout}"
    );
    assert!(stdout.contains("not passed: failing, hanging"), "{stdout}");
}
