//! Whether a guest can ever run again. A guest whose every vCPU is halted
//! with interrupts disabled, or waits for a SIPI, with nothing left that
//! could deliver an NMI, is dead: waiting for its timeout (kvm-unit-tests
//! gives 90 s) only delays the report. The run loop asks each vCPU for its
//! state now and then ([`Watch`]) and ends such a guest with
//! `Outcome::Hung`. Guests that spin, or halt with interrupts on, are left
//! to their timeout: only certain deadlocks end early.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED, kvm_irqchip,
};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::host::kvm_stats;

const RFLAGS_IF: u64 = 1 << 9;
/// LAPIC registers whose NMI delivery could wake a halted vCPU in ktvmm:
/// LINT0 (KVM's PIT reaches it as a watchdog NMI) and the performance
/// counter LVT. LINT1 is not one: only `KVM_NMI` from the VMM drives it,
/// and ktvmm never issues that.
const LVT_WAKERS: [usize; 2] = [0x350, 0x340];
const LVT_MASKED: u32 = 1 << 16;
const DELIVERY_MODE: u32 = 0b111 << 8;
const DELIVERY_NMI: u32 = 0b100 << 8;

/// What a vCPU says about itself when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuLiveness {
    /// `KVM_GET_MP_STATE`.
    pub mp_state: u32,
    /// RFLAGS.IF.
    pub interrupts_on: bool,
    /// An NMI (or SMI) is pending or being injected.
    pub event_pending: bool,
    /// Its LAPIC can deliver an NMI by itself (LINT0 or the PMU LVT set to
    /// NMI, unmasked).
    pub nmi_source: bool,
    /// It runs a nested guest, which an interrupt reaches through the
    /// outer hypervisor whatever its own IF says.
    pub nested: bool,
}

impl VcpuLiveness {
    /// Reads `fd`'s state; `None` when KVM refuses one of the reads.
    pub fn read(fd: &VcpuFd) -> Option<Self> {
        let mp_state = fd.get_mp_state().ok()?.mp_state;
        let interrupts_on = fd.get_regs().ok()?.rflags & RFLAGS_IF != 0;
        let events = fd.get_vcpu_events().ok()?;
        let event_pending = events.nmi.pending != 0
            || events.nmi.injected != 0
            || events.smi.pending != 0
            || events.exception.injected != 0;
        let lapic = fd.get_lapic().ok()?;
        let nmi_source = LVT_WAKERS.iter().any(|&offset| {
            let bytes: Vec<u8> = lapic.regs[offset..offset + 4]
                .iter()
                .map(|&b| b as u8)
                .collect();
            let lvt = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            lvt & LVT_MASKED == 0 && lvt & DELIVERY_MODE == DELIVERY_NMI
        });
        let nested = kvm_stats::read(fd)
            .map(|stats| stats.iter().any(|s| s.name == "guest_mode" && s.value != 0))
            .unwrap_or(false);
        Some(VcpuLiveness {
            mp_state,
            interrupts_on,
            event_pending,
            nmi_source,
            nested,
        })
    }

    /// Whether nothing inside this vCPU can make it run again.
    fn stuck(&self) -> bool {
        let quiet = !self.event_pending && !self.nmi_source && !self.nested;
        match self.mp_state {
            KVM_MP_STATE_HALTED => !self.interrupts_on && quiet,
            KVM_MP_STATE_INIT_RECEIVED | KVM_MP_STATE_UNINITIALIZED => quiet,
            _ => false,
        }
    }
}

/// Why the guest can never run again, or `None` while it might: every vCPU
/// stuck, at least one of them halted (a guest of vCPUs that all wait for
/// INIT or SIPI cannot exist), and no IOAPIC pin set to deliver an NMI.
pub fn dead(vcpus: &[Option<VcpuLiveness>], ioapic_nmi: bool) -> Option<&'static str> {
    let states: Vec<&VcpuLiveness> = vcpus.iter().flatten().collect();
    if ioapic_nmi || states.len() != vcpus.len() || states.is_empty() {
        return None;
    }
    let halted = states
        .iter()
        .filter(|s| s.mp_state == KVM_MP_STATE_HALTED)
        .count();
    if halted == 0 || !states.iter().all(|s| s.stuck()) {
        return None;
    }
    Some(if halted == states.len() {
        "every vCPU halted with interrupts off"
    } else {
        "every vCPU halted with interrupts off or waiting for a SIPI no one can send"
    })
}

/// Whether an unmasked IOAPIC pin delivers NMIs (a device or the PIT could
/// then wake a halted vCPU). Unknown counts as yes.
pub fn ioapic_delivers_nmi(vm: &VmFd) -> bool {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    if vm.get_irqchip(&mut chip).is_err() {
        return true;
    }
    // SAFETY: with chip_id IOAPIC, KVM fills the union as kvm_ioapic_state.
    let redirections = unsafe { chip.chip.ioapic.redirtbl };
    redirections.iter().any(|entry| {
        // SAFETY: every bit pattern is a valid u64.
        let low = unsafe { entry.bits } as u32;
        low & LVT_MASKED == 0 && low & DELIVERY_MODE == DELIVERY_NMI
    })
}

/// A vCPU thread's mailbox for liveness questions: the run loop sets
/// `asked` and kicks the thread; the thread answers when `KVM_RUN` returns.
#[derive(Debug, Default)]
pub struct Watch {
    asked: AtomicBool,
    answer: Mutex<Option<Option<VcpuLiveness>>>,
}

impl Watch {
    /// Asks for a fresh answer (the caller then kicks the thread).
    pub fn ask(&self) {
        if let Ok(mut answer) = self.answer.lock() {
            *answer = None;
        }
        self.asked.store(true, Ordering::Release);
    }

    /// On the vCPU thread, outside `KVM_RUN`: answers if asked.
    pub fn answer_if_asked(&self, fd: &VcpuFd) {
        if self.asked.swap(false, Ordering::AcqRel)
            && let Ok(mut answer) = self.answer.lock()
        {
            *answer = Some(VcpuLiveness::read(fd));
        }
    }

    /// The answer, once there is one (`Some(None)`: KVM refused a read).
    pub fn answer(&self) -> Option<Option<VcpuLiveness>> {
        self.answer.lock().ok().and_then(|a| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MP_STATE_RUNNABLE;

    fn vcpu(mp_state: u32, interrupts_on: bool) -> Option<VcpuLiveness> {
        Some(VcpuLiveness {
            mp_state,
            interrupts_on,
            event_pending: false,
            nmi_source: false,
            nested: false,
        })
    }

    #[test]
    fn only_certain_deadlocks_are_dead() {
        let cli_hlt = vcpu(KVM_MP_STATE_HALTED, false);
        let sipi = vcpu(KVM_MP_STATE_INIT_RECEIVED, false);
        assert!(dead(&[cli_hlt, cli_hlt], false).is_some());
        assert!(dead(&[cli_hlt, sipi], false).unwrap().contains("SIPI"));
        // Someone left to wake them, or a way to be woken.
        assert_eq!(
            dead(&[cli_hlt, vcpu(KVM_MP_STATE_RUNNABLE, false)], false),
            None
        );
        assert_eq!(dead(&[vcpu(KVM_MP_STATE_HALTED, true)], false), None);
        assert_eq!(dead(&[cli_hlt], true), None, "an IOAPIC pin delivers NMIs");
        assert_eq!(dead(&[sipi, sipi], false), None);
        assert_eq!(dead(&[cli_hlt, None], false), None, "a vCPU did not answer");
        assert_eq!(dead(&[], false), None);
        for tweak in [
            |s: &mut VcpuLiveness| s.event_pending = true,
            |s: &mut VcpuLiveness| s.nmi_source = true,
            |s: &mut VcpuLiveness| s.nested = true,
        ] {
            let mut woken = cli_hlt.unwrap();
            tweak(&mut woken);
            assert_eq!(dead(&[Some(woken)], false), None, "{woken:?}");
        }
    }
}
