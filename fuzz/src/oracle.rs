//! What counts as a bug: the findings an execution can produce, the errno
//! values KVM's API documents per call, and the host-side watchers (kernel
//! log, taint flags).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::rules;
use ktvmm_vmm::host::kmsg::{self, KernelLog};

/// A bug an execution found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// ktvmm panicked while handling the input (a device, the harness).
    VmmPanic {
        /// The panic message.
        message: String,
    },
    /// A KVM call failed with an errno its documentation does not give.
    UndocumentedErrno {
        /// The ioctl.
        ioctl: String,
        /// The errno.
        errno: i32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused the state KVM accepted.
    FailEntry {
        /// The hardware's reason.
        reason: u64,
    },
    /// `KVM_RUN` did not come back within the hang limit after the VMM
    /// asked it to (guest code that merely spins is stopped and counted).
    Hang {
        /// How long it took, in milliseconds.
        millis: u64,
    },
    /// A `GET_*` right after a successful `SET_*` disagreed with it, or
    /// KVM accepted what its rules say it refuses.
    RoundTrip {
        /// The ioctl pair.
        ioctl: String,
        /// What differed.
        detail: String,
        /// The id of the KVM rule the harness believes broken (see
        /// [`rules`]); empty in reproducers older than the rules.
        #[serde(default)]
        rule: String,
    },
    /// The kernel's taint flags changed during the execution.
    Taint {
        /// Flags before.
        before: u64,
        /// Flags after.
        after: u64,
    },
    /// The kernel logged a warning, a BUG or a call trace.
    KernelLog {
        /// The line.
        line: String,
    },
}

impl Finding {
    /// What makes two findings the same bug: the kind and where, not the
    /// values that vary between reproductions (a panic's message up to its
    /// first line, an errno's call and number).
    pub fn signature(&self) -> String {
        match self {
            Finding::VmmPanic { message } => {
                format!("vmm-panic: {}", message.lines().next().unwrap_or(""))
            }
            Finding::UndocumentedErrno { ioctl, errno } => {
                format!("undocumented-errno: {ioctl} {errno}")
            }
            Finding::FailEntry { reason } => format!("fail-entry: {reason:#x}"),
            Finding::Hang { .. } => "hang".into(),
            Finding::RoundTrip { ioctl, rule, .. } if !rule.is_empty() => {
                format!("round-trip: {ioctl} [{rule}]")
            }
            Finding::RoundTrip { ioctl, .. } => format!("round-trip: {ioctl}"),
            Finding::Taint { .. } => "taint".into(),
            Finding::KernelLog { .. } => "kernel-log".into(),
        }
    }

    /// The finding's kind, for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::VmmPanic { .. } => "vmm-panic",
            Finding::UndocumentedErrno { .. } => "undocumented-errno",
            Finding::FailEntry { .. } => "fail-entry",
            Finding::Hang { .. } => "hang",
            Finding::RoundTrip { .. } => "round-trip",
            Finding::Taint { .. } => "taint",
            Finding::KernelLog { .. } => "kernel-log",
        }
    }

    /// Findings about the host rather than the input: they may come from
    /// anything else on the machine, so they are reported but do not make
    /// a reproducer that must replay.
    pub fn is_host_wide(&self) -> bool {
        matches!(self, Finding::Taint { .. } | Finding::KernelLog { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::VmmPanic { message } => write!(f, "ktvmm panicked: {message}"),
            Finding::UndocumentedErrno { ioctl, errno } => write!(
                f,
                "{ioctl} failed with {} ({errno}), which its documentation does not give",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Finding::FailEntry { reason } => {
                write!(f, "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}")
            }
            Finding::Hang { millis } => write!(f, "KVM_RUN hung for {millis} ms after a kick"),
            Finding::RoundTrip {
                ioctl,
                detail,
                rule,
            } => {
                write!(f, "{ioctl} round trip: {detail}")?;
                match rules::rule(rule) {
                    Some(rule) => write!(
                        f,
                        "; breaks KVM's rule {}: {} ({})",
                        rule.id, rule.says, rule.source
                    ),
                    None if rule.is_empty() => Ok(()),
                    None => write!(f, "; breaks KVM's rule {rule}"),
                }
            }
            Finding::Taint { before, after } => {
                write!(f, "kernel taint changed from {before:#x} to {after:#x}")
            }
            Finding::KernelLog { line } => write!(f, "kernel log: {line}"),
        }
    }
}

/// Errno values the KVM API documentation (Documentation/virt/kvm/api.rst)
/// gives for `ioctl`, plus the ones every call may return (a bad pointer,
/// no memory). Anything else is a finding.
pub fn documented(call: &str, errno: i32) -> bool {
    use libc::*;
    if matches!(errno, EFAULT | ENOMEM | EINVAL) {
        return true;
    }
    let specific: &[i32] = match call {
        "KVM_RUN" => &[EINTR, EAGAIN, ENOEXEC, ENOSYS, EPERM],
        "KVM_CREATE_VM" | "KVM_CREATE_VCPU" => &[EEXIST, E2BIG, EMFILE, ENFILE],
        "KVM_CREATE_IRQCHIP" => &[EEXIST, EBUSY],
        // EPERM: a dynamic XSAVE feature (AMX) the process has not asked
        // for with ARCH_REQ_XCOMP_GUEST_PERM.
        "KVM_SET_CPUID2" | "KVM_GET_CPUID2" => &[E2BIG, EBUSY, ENOTTY, EPERM],
        "KVM_SET_MSRS" | "KVM_GET_MSRS" => &[E2BIG],
        "KVM_SET_USER_MEMORY_REGION" => &[EEXIST],
        "KVM_IRQ_LINE" | "KVM_SIGNAL_MSI" | "KVM_GET_LAPIC" | "KVM_SET_LAPIC" | "KVM_NMI" => {
            &[ENXIO, ENOTTY]
        }
        "KVM_SET_XCRS" | "KVM_GET_XCRS" | "KVM_ENABLE_CAP" => &[ENOTTY, ENXIO],
        "KVM_SET_MP_STATE" | "KVM_GET_MP_STATE" => &[EBUSY, ENXIO],
        "KVM_SET_GUEST_DEBUG" => &[EBUSY],
        _ => &[],
    };
    specific.contains(&errno)
}

/// The kernel's taint flags, when readable.
pub fn taint() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Watches the host for signs of a kernel bug between two points: new
/// taint flags, new kernel-wide alarms (`WARNING:`, `BUG:`, a call trace,
/// a lockup: [`kmsg::is_alarm`]) in the kernel log when it is readable.
/// Another process's KVM messages are not this harness's and are left
/// out; an alarm counts whoever logged it.
pub struct HostWatch {
    log: Option<KernelLog>,
    taint: Option<u64>,
}

impl HostWatch {
    /// Starts watching from now.
    pub fn start() -> Self {
        HostWatch {
            log: KernelLog::open_at_end(),
            taint: taint(),
        }
    }

    /// Whether the kernel log can be read.
    pub fn reads_kernel_log(&self) -> bool {
        self.log.is_some()
    }

    /// What changed since the last call.
    pub fn check(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let now = taint();
        if let (Some(before), Some(after)) = (self.taint, now)
            && before != after
        {
            findings.push(Finding::Taint { before, after });
        }
        self.taint = now;
        if let Some(log) = &mut self.log {
            for message in log.read().messages {
                if kmsg::is_alarm(&message.text) {
                    findings.push(Finding::KernelLog {
                        line: message.to_string(),
                    });
                }
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_errnos_are_per_call() {
        assert!(documented("KVM_RUN", libc::EINTR));
        assert!(documented("KVM_SET_SREGS", libc::EINVAL));
        assert!(documented("KVM_IRQ_LINE", libc::ENXIO));
        assert!(!documented("KVM_SET_REGS", libc::ENXIO));
        assert!(!documented("KVM_RUN", libc::EIO));
    }

    #[test]
    fn signatures_ignore_what_varies() {
        let a = Finding::VmmPanic {
            message: "planted bug\nat 0x10".into(),
        };
        let b = Finding::VmmPanic {
            message: "planted bug\nat 0x20".into(),
        };
        assert_eq!(a.signature(), b.signature());
        assert!(
            Finding::Taint {
                before: 0,
                after: 1
            }
            .is_host_wide()
        );
        assert!(!a.is_host_wide());
    }

    #[test]
    fn a_round_trip_finding_names_the_kvm_rule_it_believes_broken() {
        let finding = Finding::RoundTrip {
            ioctl: "KVM_SET_MSRS/KVM_GET_MSRS".into(),
            detail: "MSR 0xc0000103 (TSC_AUX): set 0x80000000005, read back 0x80000000005".into(),
            rule: rules::TSC_AUX_AMD.id.into(),
        };
        let text = finding.to_string();
        assert!(
            text.contains("breaks KVM's rule tsc-aux-amd-bits-31-0"),
            "{text}"
        );
        assert!(text.contains("__kvm_set_msr()"), "{text}");
        // Different rules are different bugs.
        assert_eq!(
            finding.signature(),
            "round-trip: KVM_SET_MSRS/KVM_GET_MSRS [tsc-aux-amd-bits-31-0]"
        );
        // A reproducer saved before findings named rules still loads.
        let old: Finding = serde_json::from_str(
            r#"{"kind":"round-trip","ioctl":"KVM_SET_REGS/KVM_GET_REGS","detail":"x"}"#,
        )
        .unwrap();
        assert_eq!(old.signature(), "round-trip: KVM_SET_REGS/KVM_GET_REGS");
    }
}
