//! The host oracles: the kernel's taint flags and its log. A KVM bug that
//! does not crash the host usually shows up as a `WARNING:` (with a call
//! trace) and a new taint flag.

use super::exec::Finding;
use crate::kmsg::KernelLog;

const TAINTED: &str = "/proc/sys/kernel/tainted";
/// What marks a log line as the kernel noticing something wrong.
const ALARMS: [&str; 5] = [
    "WARNING:",
    "BUG:",
    "Call Trace",
    "general protection",
    "kernel BUG",
];

fn tainted() -> Option<u64> {
    std::fs::read_to_string(TAINTED).ok()?.trim().parse().ok()
}

/// Watches the host between inputs.
pub struct HostWatch {
    taint: Option<u64>,
    log: Option<KernelLog>,
}

impl HostWatch {
    /// Starts watching: the current taint flags, the log from now on
    /// (when `/dev/kmsg` is readable).
    pub fn start() -> Self {
        Self {
            taint: tainted(),
            log: KernelLog::open_at_end(),
        }
    }

    /// Whether the kernel log is being watched.
    pub fn reads_kernel_log(&self) -> bool {
        self.log.is_some()
    }

    /// What changed since the last check.
    pub fn check(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let now = tainted();
        if let (Some(before), Some(after)) = (self.taint, now)
            && before != after
        {
            findings.push(Finding::Taint { before, after });
        }
        self.taint = now.or(self.taint);
        if let Some(log) = &mut self.log {
            let lines: Vec<String> = log
                .new_lines()
                .into_iter()
                .filter(|l| ALARMS.iter().any(|alarm| l.contains(alarm)))
                .collect();
            if !lines.is_empty() {
                findings.push(Finding::KernelLog { lines });
            }
        }
        findings
    }
}
