//! What became of a test: its status, and the record every reporter
//! (console, results.json, JUnit, TAP) is written from.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    #[cfg(test)]
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

    /// Whether this status makes the run fail.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Status::Fail | Status::Timeout | Status::Error | Status::XPass
        )
    }
}

/// Subtest counts a test printed (TAP `ok`/`not ok`, kvm-unit-tests
/// `PASS:`/`FAIL:`/`SKIP:` lines), and the names of those that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtests {
    /// Passed subtests.
    pub pass: u32,
    /// Failed subtests.
    pub fail: u32,
    /// Skipped subtests.
    pub skip: u32,
    /// Subtests that failed as they were expected to (KTAP `# XFAIL`, TAP
    /// `not ok ... # TODO`): neither passes nor failures.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub xfail: u32,
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
    /// Which repetition this was (1-based), with `--repeat`/`--until-fail`.
    #[serde(skip_serializing_if = "is_first", default = "first")]
    pub iteration: u32,
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

/// The status of a guest run by `ktvmm run`, and why when it did not pass.
pub fn guest_status(ending: Ending, codes: ExitCodes) -> (Status, Option<String>) {
    use ktvmm_vmm::outcome::{EXIT_KVM_ERROR, EXIT_SHUTDOWN, EXIT_TIMEOUT, EXIT_VMM_ERROR};
    let skip = match codes {
        ExitCodes::Ktvmm => GUEST_SKIP,
        ExitCodes::KvmUnitTests => KUT_SKIP,
    };
    match ending {
        Ending::Exited(0) => (Status::Pass, None),
        Ending::Exited(c) if c == skip => (Status::Skip, Some("the guest skipped".into())),
        Ending::Exited(KUT_ABORT) if codes == ExitCodes::KvmUnitTests => {
            (Status::Fail, Some("the test called abort()".into()))
        }
        Ending::Exited(c) if c == i32::from(EXIT_TIMEOUT) => {
            (Status::Timeout, Some("timed out".into()))
        }
        Ending::Exited(c) if c == i32::from(EXIT_VMM_ERROR) => {
            (Status::Error, Some("ktvmm could not run the guest".into()))
        }
        Ending::Exited(c) if c == i32::from(EXIT_SHUTDOWN) => (
            Status::Fail,
            Some("the guest shut down (triple fault?)".into()),
        ),
        Ending::Exited(c) if c == i32::from(EXIT_KVM_ERROR) => {
            (Status::Fail, Some("KVM could not run the guest".into()))
        }
        Ending::Exited(c) => (Status::Fail, Some(format!("exit code {c}"))),
        Ending::Signalled(s) => (
            Status::Error,
            Some(format!("ktvmm died of {}", signal_name(s))),
        ),
        Ending::TimedOut => (Status::Timeout, Some("timed out".into())),
        Ending::Interrupted => (Status::Error, Some("interrupted".into())),
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
