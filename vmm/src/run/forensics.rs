//! Where a guest was when the run stopped: each vCPU's registers, mode and
//! last exit, taken by the vCPU thread itself as it leaves its loop. A
//! timeout report built from these says where a test hung.

use std::fmt;
use std::time::Duration;

use kvm_bindings::{
    KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::VcpuFd;
use serde::Serialize;

use crate::boot::long_mode::mode;

const RFLAGS_IF: u64 = 1 << 9;

/// One vCPU at the end of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VcpuSnapshot {
    /// vCPU index.
    pub cpu: u32,
    /// `real`, `protected`, `protected+paging`, `long`, `compat`.
    pub mode: &'static str,
    /// `running`, `halted`, `waiting for SIPI`, ...
    pub state: &'static str,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// Code segment selector.
    pub cs: u16,
    /// Control registers.
    pub cr0: u64,
    /// Page-table root.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// The last exit KVM reported on this vCPU (`io`, `mmio`, `hlt`...), or
    /// `none` if it never exited to ktvmm.
    pub last_exit: String,
    /// Time from that exit to the snapshot, in seconds.
    pub since_last_exit_s: f64,
}

impl VcpuSnapshot {
    /// Reads `fd`'s state; `None` when KVM refuses.
    pub fn take(fd: &VcpuFd, cpu: u32, last_exit: &str, since: Duration) -> Option<Self> {
        let regs = fd.get_regs().ok()?;
        let sregs = fd.get_sregs().ok()?;
        let state = match fd.get_mp_state().map(|m| m.mp_state) {
            Ok(KVM_MP_STATE_RUNNABLE) => "running",
            Ok(KVM_MP_STATE_HALTED) => "halted",
            Ok(KVM_MP_STATE_UNINITIALIZED) => "waiting for INIT",
            Ok(KVM_MP_STATE_INIT_RECEIVED) => "waiting for SIPI",
            _ => "unknown",
        };
        Some(VcpuSnapshot {
            cpu,
            mode: mode(sregs.cr0, sregs.efer, sregs.cs.l),
            state,
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cs: sregs.cs.selector,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            last_exit: last_exit.to_string(),
            since_last_exit_s: (since.as_secs_f64() * 1000.0).round() / 1000.0,
        })
    }
}

impl fmt::Display for VcpuSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vCPU {}: {}, {} mode, RIP {:#x} (CS {:#x}), RSP {:#x}, RFLAGS {:#x} (interrupts {}), CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}; ",
            self.cpu,
            self.state,
            self.mode,
            self.rip,
            self.cs,
            self.rsp,
            self.rflags,
            if self.rflags & RFLAGS_IF != 0 {
                "on"
            } else {
                "off"
            },
            self.cr0,
            self.cr3,
            self.cr4,
            self.efer,
        )?;
        if self.last_exit == "none" {
            write!(f, "no exit to ktvmm in {:.3} s", self.since_last_exit_s)
        } else {
            write!(
                f,
                "last exit ({}) {:.3} s before",
                self.last_exit, self.since_last_exit_s
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_control_registers() {
        assert_eq!(mode(0x10, 0, 0), "real");
        assert_eq!(mode(0x11, 0, 0), "protected");
        assert_eq!(mode(0x8000_0011, 0, 0), "protected+paging");
        assert_eq!(mode(0x8000_0011, 0x500, 1), "long");
        assert_eq!(mode(0x8000_0011, 0x500, 0), "compat");
    }

    #[test]
    fn a_snapshot_reads_as_one_line() {
        let s = VcpuSnapshot {
            cpu: 1,
            mode: "long",
            state: "running",
            rip: 0x10_0123,
            rsp: 0x7f_0000,
            rflags: 0x2,
            cs: 8,
            cr0: 0x8005_0033,
            cr3: 0x3000,
            cr4: 0x620,
            efer: 0x500,
            last_exit: "io".into(),
            since_last_exit_s: 0.98,
        };
        let text = s.to_string();
        assert!(
            text.starts_with("vCPU 1: running, long mode, RIP 0x100123"),
            "{text}"
        );
        assert!(text.contains("interrupts off"), "{text}");
        assert!(text.contains("last exit (io) 0.980 s before"), "{text}");
        assert!(!text.contains('\n'));
    }
}
