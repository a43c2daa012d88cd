//! How a run ends, and the process exit code each ending maps to.
//!
//! A guest's own exit code (0-255) is passed through unchanged. Endings that
//! are not the guest's choice use reserved codes, documented in
//! `docs/exit-codes.md`, and so does a guest code too wide for an exit
//! status (never its low byte: 256 must not read as a pass). A status can
//! therefore be ambiguous (a guest may write 124 itself); the outcome file
//! (`--json-outcome`) never is, and `ktvmm test` reads verdicts from it.

use std::time::Duration;

use serde::Serialize;

use crate::run::forensics::VcpuSnapshot;

/// Exit code: the guest can never run again (every vCPU halted with
/// interrupts off, or waiting for a SIPI no one can send), ended early.
pub const EXIT_HUNG: u8 = 120;
/// Exit code: the guest shut down or triple-faulted.
pub const EXIT_SHUTDOWN: u8 = 121;
/// Exit code: KVM could not run the guest (internal error, failed entry,
/// an exit ktvmm does not handle).
pub const EXIT_KVM_ERROR: u8 = 122;
/// Exit code: the guest wrote a code above 255, which an exit status cannot
/// carry (the outcome file has the whole value).
pub const EXIT_CODE_TOO_WIDE: u8 = 123;
/// Exit code: the timeout expired.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit code: ktvmm itself failed (bad input, setup failure).
pub const EXIT_VMM_ERROR: u8 = 125;

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest asked to exit (isa-debug-exit, serial testdev).
    GuestExit {
        /// The value the guest wrote.
        code: u32,
    },
    /// The run's time limit expired.
    Timeout {
        /// The limit, in seconds.
        seconds: f64,
        /// Where each vCPU was when it stopped.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        vcpus: Vec<VcpuSnapshot>,
    },
    /// The guest can never run again: ended at once rather than at its
    /// timeout (see `liveness`).
    Hung {
        /// Why it cannot run (`every vCPU halted with interrupts off`).
        reason: String,
        /// When it was found so, in seconds from the start of the run.
        after_s: f64,
        /// Where each vCPU was.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        vcpus: Vec<VcpuSnapshot>,
    },
    /// `KVM_EXIT_SHUTDOWN`: a triple fault, or a shutdown the guest caused.
    Shutdown {
        /// The vCPU that shut down.
        cpu: u32,
        /// Its instruction pointer at the time, when it could be read.
        rip: Option<u64>,
    },
    /// `KVM_EXIT_SYSTEM_EVENT`: reset, shutdown or crash through KVM.
    SystemEvent {
        /// The vCPU that raised it.
        cpu: u32,
        /// `reset`, `shutdown`, `crash` or the raw number.
        event: String,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`: KVM gave up on the guest (often an
    /// instruction its emulator cannot handle).
    InternalError {
        /// The vCPU.
        cpu: u32,
        /// KVM's suberror code.
        suberror: u32,
        /// What the suberror means.
        reason: &'static str,
        /// Instruction pointer, when it could be read.
        rip: Option<u64>,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest.
    FailEntry {
        /// The vCPU.
        cpu: u32,
        /// Hardware entry failure reason.
        reason: u64,
        /// Instruction pointer, when it could be read.
        rip: Option<u64>,
    },
    /// An exit reason ktvmm does not handle.
    UnexpectedExit {
        /// The vCPU.
        cpu: u32,
        /// A description of the exit.
        exit: String,
    },
    /// ktvmm failed while the guest ran.
    VmmError {
        /// What failed.
        message: String,
    },
}

impl Outcome {
    /// A timeout after `limit` (vCPU snapshots are added when the vCPUs
    /// have stopped).
    pub fn timeout(limit: Duration) -> Self {
        Outcome::Timeout {
            seconds: limit.as_secs_f64(),
            vcpus: Vec::new(),
        }
    }

    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::GuestExit { code } => u8::try_from(*code).unwrap_or(EXIT_CODE_TOO_WIDE),
            Outcome::Timeout { .. } => EXIT_TIMEOUT,
            Outcome::Hung { .. } => EXIT_HUNG,
            Outcome::Shutdown { .. } | Outcome::SystemEvent { .. } => EXIT_SHUTDOWN,
            Outcome::InternalError { .. }
            | Outcome::FailEntry { .. }
            | Outcome::UnexpectedExit { .. } => EXIT_KVM_ERROR,
            Outcome::VmmError { .. } => EXIT_VMM_ERROR,
        }
    }

    /// One line for stderr, or `None` when the guest chose its own exit.
    pub fn message(&self) -> Option<String> {
        let rip = |rip: &Option<u64>| match rip {
            Some(rip) => format!(" at RIP {rip:#x}"),
            None => String::new(),
        };
        Some(match self {
            Outcome::GuestExit { code } if *code > 0xff => format!(
                "the guest's exit code {code} ({code:#x}) does not fit an exit status (0-255): \
                 exiting with {EXIT_CODE_TOO_WIDE}"
            ),
            Outcome::GuestExit { .. } => return None,
            Outcome::Timeout { seconds, vcpus } => {
                let mut text = format!("guest timed out after {seconds} s");
                for vcpu in vcpus {
                    text += &format!("\n  {vcpu}");
                }
                text
            }
            Outcome::Hung {
                reason,
                after_s,
                vcpus,
            } => {
                let mut text =
                    format!("guest hung: {reason}; nothing can wake it (ended after {after_s} s)");
                for vcpu in vcpus {
                    text += &format!("\n  {vcpu}");
                }
                text
            }
            Outcome::Shutdown { cpu, rip: r } => {
                format!("guest shut down (triple fault?) on vCPU {cpu}{}", rip(r))
            }
            Outcome::SystemEvent { cpu, event } => {
                format!("guest raised system event '{event}' on vCPU {cpu}")
            }
            Outcome::InternalError {
                cpu,
                suberror,
                reason,
                rip: r,
            } => format!(
                "KVM internal error on vCPU {cpu}{}: suberror {suberror} ({reason})",
                rip(r)
            ),
            Outcome::FailEntry {
                cpu,
                reason,
                rip: r,
            } => format!(
                "KVM failed to enter vCPU {cpu}{}: hardware entry failure reason {reason:#x}",
                rip(r)
            ),
            Outcome::UnexpectedExit { cpu, exit } => {
                format!("unhandled KVM exit on vCPU {cpu}: {exit}")
            }
            // Printed after "ktvmm: ": no second prefix.
            Outcome::VmmError { message } => message.clone(),
        })
    }

    /// The outcome as one JSON object, with the exit code it maps to.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Record<'a> {
            exit_code: u8,
            #[serde(flatten)]
            outcome: &'a Outcome,
            message: Option<String>,
        }
        let record = Record {
            exit_code: self.exit_code(),
            outcome: self,
            message: self.message(),
        };
        // Serialising plain data to a string cannot fail.
        serde_json::to_string(&record).unwrap_or_default()
    }
}

/// What KVM's `KVM_INTERNAL_ERROR_*` suberror codes mean.
pub fn internal_error_reason(suberror: u32) -> &'static str {
    match suberror {
        1 => "instruction emulation failed",
        2 => "exception while delivering an event (simultaneous exceptions)",
        3 => "delivery of an event failed",
        4 => "unexpected exit during event delivery",
        _ => "unknown suberror",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_codes_pass_through_and_reserved_codes_are_distinct() {
        assert_eq!(Outcome::GuestExit { code: 77 }.exit_code(), 77);
        assert_eq!(Outcome::GuestExit { code: 255 }.exit_code(), 255);
        assert_eq!(Outcome::GuestExit { code: 77 }.message(), None);
        // Never the low byte: 256 would read as a pass, 0x101 as a failure
        // the guest did not report.
        for wide in [0x100, 0x101, 0x8000_0000, u32::MAX] {
            let outcome = Outcome::GuestExit { code: wide };
            assert_eq!(outcome.exit_code(), EXIT_CODE_TOO_WIDE);
            let message = outcome.message().unwrap();
            assert!(message.contains(&wide.to_string()), "{message}");
        }
        let codes = [
            EXIT_HUNG,
            EXIT_SHUTDOWN,
            EXIT_KVM_ERROR,
            EXIT_CODE_TOO_WIDE,
            EXIT_TIMEOUT,
            EXIT_VMM_ERROR,
        ];
        for (i, a) in codes.iter().enumerate() {
            assert!(!codes[i + 1..].contains(a));
        }
        assert_eq!(Outcome::timeout(Duration::from_secs(3)).exit_code(), 124);
    }

    #[test]
    fn json_names_the_kind_and_the_exit_code() {
        let json = Outcome::Shutdown {
            cpu: 1,
            rip: Some(0x1000),
        }
        .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["kind"], "shutdown");
        assert_eq!(value["exit_code"], 121);
        assert_eq!(value["cpu"], 1);
        assert_eq!(value["rip"], 4096);
        assert!(
            value["message"]
                .as_str()
                .unwrap()
                .contains("vCPU 1 at RIP 0x1000")
        );
    }
}
