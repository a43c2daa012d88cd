//! What became of a test: its status, and the record every reporter
//! (console, results.json, JUnit, TAP) is written from.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::guest_outcome::GuestOutcome;
use crate::suite::ExitCodes;

/// A finished test's status, as `results.json` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It ran and failed (non-zero exit, guest crash, killed by a signal).
    Fail,
    /// It said it cannot run here (guest exit 77, kselftest exit 4).
    Skip,
    /// It ran past its time limit and was stopped.
    Timeout,
    /// It could not be run as asked (cannot start, VMM error, interrupted).
    Error,
    /// It did not pass, then passed when retried (`--retries`).
    Flaky,
    /// It failed, as the expectations file says it does.
    #[serde(rename = "xfail")]
    XFail,
    /// It passed, though the expectations file says it fails.
    #[serde(rename = "xpass")]
    XPass,
}

impl Status {
    /// Every status, in the order summaries list them.
    pub const ALL: [Status; 8] = [
        Status::Pass,
        Status::Fail,
        Status::Skip,
        Status::Timeout,
        Status::Error,
        Status::Flaky,
        Status::XFail,
        Status::XPass,
    ];

    /// The console's label.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Timeout => "TIMEOUT",
            Status::Error => "ERROR",
            Status::Flaky => "FLAKY",
            Status::XFail => "XFAIL",
            Status::XPass => "XPASS",
        }
    }

    /// The name `results.json` spells it with (`xfail`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Timeout => "timeout",
            Status::Error => "error",
            Status::Flaky => "flaky",
            Status::XFail => "xfail",
            Status::XPass => "xpass",
        }
    }

    /// Whether this status makes the run fail.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Status::Fail | Status::Timeout | Status::Error | Status::XPass
        )
    }
}

/// Subtest counts a test printed (TAP `ok`/`not ok`, kvm-unit-tests
/// `PASS:`/`FAIL:`/`SKIP:`/`XFAIL:`/`XPASS:`/`KFAIL:` lines), and the
/// names of those that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtests {
    /// Passed subtests.
    pub pass: u32,
    /// Failed subtests: kvm-unit-tests' "unexpected failures", XPASSes
    /// included.
    pub fail: u32,
    /// Skipped subtests.
    pub skip: u32,
    /// Subtests that failed as they were expected to (KTAP `# XFAIL`, TAP
    /// `not ok ... # TODO`): neither passes nor failures.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub xfail: u32,
    /// Of `fail`, those that passed though expected to fail
    /// (kvm-unit-tests' `XPASS:`, which fails the test).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub xpass: u32,
    /// Known failures (kvm-unit-tests' `KFAIL:`, `report_kfail`): failed,
    /// but not failures of the test.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub kfail: u32,
    /// Subtests the plan (`1..N`) announced that never reported a result.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub not_run: u32,
    /// The failed subtests' names, in order (the first 100).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failed: Vec<String>,
}

/// One finished test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The test's name.
    pub name: String,
    /// Its status.
    pub status: Status,
    /// Wall time from start to reaping.
    #[serde(rename = "duration_s", with = "seconds")]
    pub duration: Duration,
    /// Exit code, when the process exited (not killed by a signal).
    pub exit_code: Option<i32>,
    /// One line saying why, for anything but a pass (`exit code 1`,
    /// `killed by SIGSEGV`, `timed out after 120 s`, `KVM internal error`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Its log file (guest serial output, or stdout and stderr).
    pub log: PathBuf,
    /// Subtest counts, when it printed any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subtests: Option<Subtests>,
    /// For a guest that timed out: where each vCPU was (`ktvmm run`'s
    /// outcome `vcpus`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub forensics: Option<serde_json::Value>,
    /// For a guest ktvmm ran: KVM's counters for its VM and vCPUs at the
    /// end of the run (`ktvmm run`'s outcome `kvm_stats`; docs/kvm-stats.md).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kvm_stats: Option<serde_json::Value>,
    /// For a guest that did not pass, with `--cores`: its ELF core file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub core: Option<PathBuf>,
    /// Which repetition this was (1-based), with `--repeat`/`--until-fail`.
    #[serde(skip_serializing_if = "is_first", default = "first")]
    pub iteration: u32,
    /// Which variant of a swept test this is: the test and the values it
    /// ran with (`--sweep`, a suite's `sweep`, `--kvm-config`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<crate::suite::sweep::Variant>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_first(n: &u32) -> bool {
    *n == 1
}

fn first() -> u32 {
    1
}

/// The run as a whole, for the report headers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// `ktvmm` version.
    pub ktvmm_version: String,
    /// The command line, one word per element.
    pub command_line: Vec<String>,
    /// Host kernel release (`uname -r`).
    pub host_kernel: String,
    /// The KVM module serving /dev/kvm (`kvm_intel`, `kvm_amd`, `kvm_pvm`...).
    pub kvm_module: String,
    /// CPU model name.
    pub cpu: String,
    /// Parameters of `kvm` and of the backend module (`kvm.enable_pmu`,
    /// `kvm_intel.ept`, ...), as sysfs shows them.
    #[serde(default)]
    pub kvm_params: std::collections::BTreeMap<String, String>,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall time of the whole run.
    #[serde(rename = "duration_s", with = "seconds")]
    pub duration: Duration,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// What the run adapted to this host, said once (a QEMU CPU model
    /// replaced by a workaround, an environment that cannot run here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// How the tests were chosen (suite, filters, shard): what `ktvmm
    /// merge` checks shards against each other with. Absent in files
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<crate::select::SelectionRecord>,
    /// `--kvm-config`: each configuration's parameters, by name (a result's
    /// `variant` names the one it ran under).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kvm_configs: std::collections::BTreeMap<String, Vec<String>>,
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// How a test process ended, as the scheduler saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it (not one the runner sent).
    Signalled(i32),
    /// The runner stopped it at its time limit.
    TimedOut,
    /// Ctrl-C stopped it.
    Interrupted,
}

/// Exit code by which a guest says it skipped (the kvm-unit-tests convention).
pub const GUEST_SKIP: i32 = 77;
/// Exit code by which a kselftest says it skipped.
pub const KSELFTEST_SKIP: i32 = 4;

/// kvm-unit-tests' skip code on x86 (77 after QEMU's `(code << 1) | 1`).
pub const KUT_SKIP: i32 = 77 >> 1;
/// kvm-unit-tests' `abort()` code on x86.
pub const KUT_ABORT: i32 = 63;

/// The status of a guest from the code it wrote (any width: a code that
/// only ends in 0 is not a pass), and why when it did not pass.
pub fn guest_code_status(code: u64, codes: ExitCodes) -> (Status, Option<String>) {
    let skip = match codes {
        ExitCodes::Ktvmm => GUEST_SKIP,
        ExitCodes::KvmUnitTests => KUT_SKIP,
    };
    match code {
        0 => (Status::Pass, None),
        c if c == skip as u64 => (Status::Skip, Some("the guest skipped".into())),
        c if c == KUT_ABORT as u64 && codes == ExitCodes::KvmUnitTests => {
            (Status::Fail, Some("the test called abort()".into()))
        }
        c if c > 0xff => (Status::Fail, Some(format!("guest exit code {c} ({c:#x})"))),
        c => (Status::Fail, Some(format!("guest exit code {c}"))),
    }
}

/// The status of a guest `ktvmm run` ran, from the outcome it recorded.
pub fn ktvmm_guest_status(outcome: &GuestOutcome, codes: ExitCodes) -> (Status, Option<String>) {
    // The message's first line; a hang report's vCPU lines follow it.
    let said = || {
        let message = outcome.message.as_deref().unwrap_or(&outcome.kind);
        Some(message.lines().next().unwrap_or(message).to_string())
    };
    match outcome.kind.as_str() {
        "guest_exit" => match outcome.code {
            Some(code) => guest_code_status(code, codes),
            None => (
                Status::Error,
                Some("ktvmm's outcome names no exit code".into()),
            ),
        },
        // A hung guest would have run into its limit; it was ended early.
        "timeout" | "hung" => (Status::Timeout, said()),
        "vmm_error" => (Status::Error, said()),
        // A shutdown, a KVM error or an exit ktvmm does not handle: the
        // guest did this.
        _ => (Status::Fail, said()),
    }
}

/// The status of a guest whose VMM ended without an outcome record: it
/// died, was stopped by the runner, or (QEMU) reported the guest's code
/// through its exit status, already decoded into `Ending::Exited`.
pub fn guest_status(ending: Ending, codes: ExitCodes) -> (Status, Option<String>) {
    match ending {
        Ending::Exited(c) => match u64::try_from(c) {
            Ok(code) => guest_code_status(code, codes),
            Err(_) => (Status::Error, Some(format!("exit status {c}"))),
        },
        Ending::Signalled(s) => (
            Status::Error,
            Some(format!("the VMM died of {}", signal_name(s))),
        ),
        Ending::TimedOut => (Status::Timeout, Some("timed out".into())),
        Ending::Interrupted => (Status::Error, Some("interrupted".into())),
    }
}

/// The status of `ktvmm run` that left no outcome record: whatever its
/// exit status, that is ktvmm failing, not a verdict on the guest.
pub fn ktvmm_without_outcome(ending: Ending) -> (Status, Option<String>) {
    match ending {
        Ending::Exited(c) => (
            Status::Error,
            Some(format!("ktvmm exited with status {c} without an outcome")),
        ),
        Ending::Signalled(s) => (
            Status::Error,
            Some(format!("ktvmm died of {}", signal_name(s))),
        ),
        other => guest_status(other, ExitCodes::Ktvmm),
    }
}

/// The status of a host program (kselftest convention).
pub fn exec_status(ending: Ending) -> (Status, Option<String>) {
    match ending {
        Ending::Exited(0) => (Status::Pass, None),
        Ending::Exited(KSELFTEST_SKIP) => (Status::Skip, Some("the test skipped".into())),
        Ending::Exited(c) => (Status::Fail, Some(format!("exit code {c}"))),
        Ending::Signalled(s) => (Status::Fail, Some(format!("killed by {}", signal_name(s)))),
        Ending::TimedOut => (Status::Timeout, Some("timed out".into())),
        Ending::Interrupted => (Status::Error, Some("interrupted".into())),
    }
}

/// `SIGSEGV` rather than `signal 11`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: &str, code: Option<u64>, message: Option<&str>) -> GuestOutcome {
        GuestOutcome {
            kind: kind.into(),
            code,
            message: message.map(Into::into),
            vcpus: None,
            kvm_stats: None,
            core: None,
        }
    }

    #[test]
    fn names_are_the_json_spelling() {
        for status in Status::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.name())
            );
        }
    }

    #[test]
    fn a_guest_code_is_judged_whole() {
        let ktvmm = ExitCodes::Ktvmm;
        assert_eq!(guest_code_status(0, ktvmm), (Status::Pass, None));
        assert_eq!(guest_code_status(77, ktvmm).0, Status::Skip);
        for code in [256, 0x8000_0000, 0x1_0000_0000] {
            let (status, reason) = guest_code_status(code, ktvmm);
            assert_eq!(status, Status::Fail);
            assert!(reason.unwrap().contains(&code.to_string()));
        }
        // Codes that look like ktvmm's reserved ones are the guest's own.
        for code in [121, 122, 123, 124, 125] {
            assert_eq!(
                guest_code_status(code, ktvmm),
                (Status::Fail, Some(format!("guest exit code {code}")))
            );
        }
        assert_eq!(
            guest_code_status(KUT_ABORT as u64, ExitCodes::KvmUnitTests).0,
            Status::Fail
        );
        assert_eq!(
            guest_code_status(KUT_SKIP as u64, ExitCodes::KvmUnitTests).0,
            Status::Skip
        );
    }

    #[test]
    fn the_outcome_decides_and_says_why() {
        let ktvmm = ExitCodes::Ktvmm;
        assert_eq!(
            ktvmm_guest_status(&outcome("guest_exit", Some(124), None), ktvmm),
            (Status::Fail, Some("guest exit code 124".into()))
        );
        let hang = outcome(
            "timeout",
            None,
            Some("guest timed out after 5 s\n  vCPU 0: running"),
        );
        assert_eq!(
            ktvmm_guest_status(&hang, ktvmm),
            (Status::Timeout, Some("guest timed out after 5 s".into()))
        );
        let hung = outcome(
            "hung",
            None,
            Some("guest hung: every vCPU halted with interrupts off; nothing can wake it"),
        );
        assert_eq!(ktvmm_guest_status(&hung, ktvmm).0, Status::Timeout);
        let shutdown = outcome("shutdown", None, Some("guest shut down (triple fault?)"));
        assert_eq!(ktvmm_guest_status(&shutdown, ktvmm).0, Status::Fail);
        let error = outcome("vmm_error", None, Some("x.elf: not an ELF file"));
        assert_eq!(
            ktvmm_guest_status(&error, ktvmm),
            (Status::Error, Some("x.elf: not an ELF file".into()))
        );
        assert_eq!(
            ktvmm_guest_status(&outcome("guest_exit", None, None), ktvmm).0,
            Status::Error
        );
    }

    #[test]
    fn without_an_outcome_ktvmm_failed_whatever_its_status() {
        for status in [0, 1, 124, 125] {
            assert_eq!(
                ktvmm_without_outcome(Ending::Exited(status)).0,
                Status::Error,
                "{status}"
            );
        }
        assert_eq!(
            ktvmm_without_outcome(Ending::Signalled(libc::SIGSEGV)),
            (Status::Error, Some("ktvmm died of SIGSEGV".into()))
        );
        assert_eq!(ktvmm_without_outcome(Ending::TimedOut).0, Status::Timeout);
    }
}
