//! The KVM calls an input makes between guest runs, each with the check
//! of what KVM must give back.

use kvm_bindings::{
    CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MP_STATE_RUNNABLE, Msrs,
    kvm_enable_cap, kvm_guest_debug, kvm_mp_state, kvm_msi, kvm_msr_entry, kvm_regs, kvm_sregs,
};

use super::slots::set_slot;
use super::{Built, Calls};
use crate::draw::is_clock_msr;
use crate::input::Op;
use crate::rules::{self, GuestVendor};

/// One KVM call of the input, with its round-trip check.
pub(super) fn op(built: &mut Built, op: &Op, calls: &mut Calls<'_>) {
    let count = built.vcpus.len();
    let index = op.cpu().map_or(0, |c| usize::from(c) % count);
    calls.note(|| format!("{op:?}"));
    // A call that changes a vCPU's state lets an ended vCPU run again.
    let mut revive = false;
    match *op {
        Op::Run { .. } => {}
        Op::SetReg { reg, value, .. } => {
            let fd = &built.vcpus[index].fd;
            let Some(mut regs) = calls.call("KVM_GET_REGS", fd.get_regs()) else {
                return;
            };
            *reg_mut(&mut regs, reg) = value;
            if calls.call("KVM_SET_REGS", fd.set_regs(&regs)).is_some() {
                revive = true;
                if let Some(back) = calls.call("KVM_GET_REGS", fd.get_regs()) {
                    let mut want = regs;
                    let mut got = back;
                    // RFLAGS bit 1 is fixed at 1; the reserved bits are
                    // KVM's, and so is TF while KVM single-steps the guest.
                    let mut kept = RFLAGS_DEFINED;
                    if built.vcpus[index].single_step {
                        kept &= !RFLAGS_TF;
                    }
                    want.rflags = (want.rflags | 2) & kept;
                    got.rflags &= kept;
                    if want != got {
                        calls.round_trip("KVM_SET_REGS/KVM_GET_REGS", &rules::REGS, || {
                            format!("set {want:x?}, read back {got:x?}")
                        });
                    }
                }
            }
        }
        Op::GetRegs { .. } => {
            calls.call("KVM_GET_REGS", built.vcpus[index].fd.get_regs());
        }
        Op::SetSreg { field, value, .. } => {
            let fd = &built.vcpus[index].fd;
            let Some(mut sregs) = calls.call("KVM_GET_SREGS", fd.get_sregs()) else {
                return;
            };
            set_sreg_field(&mut sregs, field, value);
            if calls.call("KVM_SET_SREGS", fd.set_sregs(&sregs)).is_some() {
                revive = true;
                if let Some(back) = calls.call("KVM_GET_SREGS", fd.get_sregs()) {
                    let kept =
                        |s: &kvm_sregs| (s.cr2, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit);
                    if kept(&sregs) != kept(&back) {
                        calls.round_trip("KVM_SET_SREGS/KVM_GET_SREGS", &rules::SREGS, || {
                            format!(
                                "(cr2, gdt, idt) set {:x?}, read back {:x?}",
                                kept(&sregs),
                                kept(&back)
                            )
                        });
                    }
                }
            }
        }
        Op::GetSregs { .. } => {
            calls.call("KVM_GET_SREGS", built.vcpus[index].fd.get_sregs());
        }
        Op::SetMsr {
            index: msr, value, ..
        } if !is_clock_msr(msr) => {
            let fd = &built.vcpus[index].fd;
            let entry = [kvm_msr_entry {
                index: msr,
                data: value,
                ..Default::default()
            }];
            let Ok(msrs) = Msrs::from_entries(&entry) else {
                return;
            };
            // KVM_SET_MSRS returns how many entries it wrote: 0 is a
            // refusal, not an error.
            let Some(written) = calls.call("KVM_SET_MSRS", fd.set_msrs(&msrs)) else {
                return;
            };
            if !rules::covers_msr(msr) {
                return;
            }
            let accepted = written == 1;
            let mut read_back = None;
            if accepted {
                let mut back = msrs.clone();
                if calls.call("KVM_GET_MSRS", fd.get_msrs(&mut back)) == Some(1) {
                    read_back = Some(back.as_slice()[0].data);
                }
            }
            // What KVM did, for reproducers and tests to see.
            calls.note(|| match read_back {
                Some(got) => format!("cpu{index}: MSR {msr:#x} write accepted, read back {got:#x}"),
                None if accepted => format!("cpu{index}: MSR {msr:#x} write accepted, not read"),
                None => format!("cpu{index}: MSR {msr:#x} write refused"),
            });
            let vendor = built.vcpus[index].vendor;
            if let Some(broken) = rules::check_msr_write(msr, value, vendor, accepted, read_back) {
                calls.round_trip("KVM_SET_MSRS/KVM_GET_MSRS", broken.rule, || broken.detail);
            }
        }
        Op::SetMsr { .. } => {}
        Op::GetMsr { index: msr, .. } => {
            let entry = [kvm_msr_entry {
                index: msr,
                ..Default::default()
            }];
            if let Ok(mut msrs) = Msrs::from_entries(&entry) {
                calls.call("KVM_GET_MSRS", built.vcpus[index].fd.get_msrs(&mut msrs));
            }
        }
        Op::SetCpuid {
            leaf, reg, flip, ..
        } => {
            let vcpu = &mut built.vcpus[index];
            let mut cpuid = vcpu.cpuid.clone();
            edit_cpuid(&mut cpuid, leaf, reg, flip);
            if calls
                .call("KVM_SET_CPUID2", vcpu.fd.set_cpuid2(&cpuid))
                .is_some()
            {
                vcpu.vendor = GuestVendor::of(cpuid.as_slice());
                vcpu.cpuid = cpuid;
            }
        }
        Op::GetCpuid { .. } => {
            let fd = &built.vcpus[index].fd;
            calls.call("KVM_GET_CPUID2", fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES));
        }
        Op::SetLapic { reg, value, .. } => {
            let fd = &built.vcpus[index].fd;
            let slot = usize::from(reg % 64);
            // The timer's registers would bring wall-clock interrupts.
            if matches!(slot, 0x32 | 0x38 | 0x39 | 0x3e) {
                return;
            }
            let Some(mut lapic) = calls.call("KVM_GET_LAPIC", fd.get_lapic()) else {
                return;
            };
            for (i, byte) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[slot * 16 + i] = *byte as libc::c_char;
            }
            if calls.call("KVM_SET_LAPIC", fd.set_lapic(&lapic)).is_some() && slot == 8 {
                // TPR: bits 7:0 are stored as written.
                if let Some(back) = calls.call("KVM_GET_LAPIC", fd.get_lapic()) {
                    let got = back.regs[0x80] as u8;
                    if got != value as u8 {
                        calls.round_trip("KVM_SET_LAPIC/KVM_GET_LAPIC", &rules::LAPIC_TPR, || {
                            format!("TPR set {:#x}, read back {got:#x}", value as u8)
                        });
                    }
                }
            }
        }
        Op::GetLapic { .. } => {
            calls.call("KVM_GET_LAPIC", built.vcpus[index].fd.get_lapic());
        }
        Op::SetXcr0 { value, .. } => {
            let fd = &built.vcpus[index].fd;
            let Some(mut xcrs) = calls.call("KVM_GET_XCRS", fd.get_xcrs()) else {
                return;
            };
            xcrs.nr_xcrs = 1;
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = value;
            if calls.call("KVM_SET_XCRS", fd.set_xcrs(&xcrs)).is_some()
                && let Some(back) = calls.call("KVM_GET_XCRS", fd.get_xcrs())
            {
                let got = back.xcrs[..back.nr_xcrs as usize]
                    .iter()
                    .find(|x| x.xcr == 0)
                    .map(|x| x.value);
                if got != Some(value) {
                    calls.round_trip("KVM_SET_XCRS/KVM_GET_XCRS", &rules::XCR0, || {
                        format!("XCR0 set {value:#x}, read back {got:x?}")
                    });
                }
            }
        }
        Op::GetXcrs { .. } => {
            calls.call("KVM_GET_XCRS", built.vcpus[index].fd.get_xcrs());
        }
        Op::SetDebugReg { reg, value, .. } => {
            let fd = &built.vcpus[index].fd;
            let Some(mut dregs) = calls.call("KVM_GET_DEBUGREGS", fd.get_debug_regs()) else {
                return;
            };
            match reg % 6 {
                r @ 0..=3 => dregs.db[usize::from(r)] = value,
                4 => dregs.dr6 = value,
                _ => dregs.dr7 = value,
            }
            if calls
                .call("KVM_SET_DEBUGREGS", fd.set_debug_regs(&dregs))
                .is_some()
                && let Some(back) = calls.call("KVM_GET_DEBUGREGS", fd.get_debug_regs())
                && back.db != dregs.db
            {
                calls.round_trip("KVM_SET_DEBUGREGS/KVM_GET_DEBUGREGS", &rules::DR0_3, || {
                    format!("DR0-3 set {:x?}, read back {:x?}", dregs.db, back.db)
                });
            }
        }
        Op::GetDebugRegs { .. } => {
            calls.call("KVM_GET_DEBUGREGS", built.vcpus[index].fd.get_debug_regs());
        }
        Op::SetEvents {
            kind,
            vector,
            error_code,
            ..
        } => {
            let fd = &built.vcpus[index].fd;
            let Some(mut events) = calls.call("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events()) else {
                return;
            };
            events.flags = 0;
            match kind % 4 {
                0 => {
                    events.exception.injected = 1;
                    events.exception.nr = vector;
                    events.exception.has_error_code = u8::from(error_code);
                }
                1 => {
                    events.interrupt.injected = 1;
                    events.interrupt.nr = vector;
                }
                2 => events.nmi.injected = 1,
                _ => events = Default::default(),
            }
            revive = calls
                .call("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&events))
                .is_some();
        }
        Op::GetEvents { .. } => {
            calls.call(
                "KVM_GET_VCPU_EVENTS",
                built.vcpus[index].fd.get_vcpu_events(),
            );
        }
        Op::SetMpState { state, .. } => {
            let fd = &built.vcpus[index].fd;
            let set = kvm_mp_state {
                mp_state: u32::from(state),
            };
            if calls
                .call("KVM_SET_MP_STATE", fd.set_mp_state(set))
                .is_some()
            {
                revive = true;
                if set.mp_state == KVM_MP_STATE_RUNNABLE
                    && let Some(back) = calls.call("KVM_GET_MP_STATE", fd.get_mp_state())
                    && back.mp_state != KVM_MP_STATE_RUNNABLE
                {
                    calls.round_trip(
                        "KVM_SET_MP_STATE/KVM_GET_MP_STATE",
                        &rules::MP_STATE_RUNNABLE,
                        || format!("set RUNNABLE, read back {}", back.mp_state),
                    );
                }
            }
        }
        Op::GetMpState { .. } => {
            calls.call("KVM_GET_MP_STATE", built.vcpus[index].fd.get_mp_state());
        }
        Op::IrqLine { irq, level } => {
            calls.call("KVM_IRQ_LINE", built.vm.set_irq_line(u32::from(irq), level));
        }
        Op::SignalMsi { address, data } => {
            let msi = kvm_msi {
                address_lo: address,
                data,
                ..Default::default()
            };
            calls.call("KVM_SIGNAL_MSI", built.vm.signal_msi(msi));
        }
        Op::SetSlot {
            slot,
            gpa,
            pages,
            readonly,
            dirty_log,
        } => {
            let flags = if readonly { KVM_MEM_READONLY } else { 0 }
                | if dirty_log {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                };
            set_slot(
                built,
                calls,
                u32::from(slot % 4),
                u64::from(gpa) << 16,
                u64::from(pages),
                flags,
            );
        }
        Op::GuestDebug {
            single_step,
            breakpoint,
            ..
        } => {
            let mut debug = kvm_guest_debug {
                control: KVM_GUESTDBG_ENABLE,
                ..Default::default()
            };
            if single_step {
                debug.control |= KVM_GUESTDBG_SINGLESTEP;
            }
            if breakpoint != 0 {
                debug.control |= KVM_GUESTDBG_USE_HW_BP;
                debug.arch.debugreg[0] = breakpoint;
                // DR7: L0, execute breakpoint.
                debug.arch.debugreg[7] = 0x1;
            }
            let vcpu = &mut built.vcpus[index];
            if calls
                .call("KVM_SET_GUEST_DEBUG", vcpu.fd.set_guest_debug(&debug))
                .is_some()
            {
                vcpu.single_step = single_step;
            }
        }
        Op::RequestIrqWindow { .. } => {
            built.vcpus[index].fd.get_kvm_run().request_interrupt_window = 1;
        }
        Op::UserSpaceMsr => {
            let mut cap = kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
                ..Default::default()
            };
            cap.args[0] = u64::from(
                kvm_bindings::KVM_MSR_EXIT_REASON_INVAL | kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN,
            );
            calls.call("KVM_ENABLE_CAP", built.vm.enable_cap(&cap));
        }
        Op::Nmi { .. } => {
            calls.call("KVM_NMI", built.vcpus[index].fd.nmi());
        }
        Op::Translate { address, .. } => {
            calls.call(
                "KVM_TRANSLATE",
                built.vcpus[index].fd.translate_gva(address),
            );
        }
    }
    if revive {
        built.vcpus[index].ended = false;
    }
}

/// RFLAGS bits a `KVM_SET_REGS` must keep: the architecture's (CF
/// through ID) but RF and VM, which KVM may drop when the vCPU's mode
/// cannot hold them (VM in long mode, say).
const RFLAGS_DEFINED: u64 = (0x003f_7fd5 | 2) & !(1 << 16 | 1 << 17);
const RFLAGS_TF: u64 = 1 << 8;

fn reg_mut(regs: &mut kvm_regs, reg: u8) -> &mut u64 {
    match reg % 18 {
        0 => &mut regs.rax,
        1 => &mut regs.rbx,
        2 => &mut regs.rcx,
        3 => &mut regs.rdx,
        4 => &mut regs.rsi,
        5 => &mut regs.rdi,
        6 => &mut regs.rsp,
        7 => &mut regs.rbp,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        15 => &mut regs.r15,
        16 => &mut regs.rip,
        _ => &mut regs.rflags,
    }
}

/// The special-register fields an input can change, by number.
pub const SREG_FIELDS: [&str; 16] = [
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cr8",
    "efer",
    "apic_base",
    "cs.selector",
    "cs.attributes",
    "ss.dpl",
    "gdt.base",
    "gdt.limit",
    "idt.base",
    "idt.limit",
    "tr.type",
    "ds.unusable",
];

fn set_sreg_field(s: &mut kvm_sregs, field: u8, value: u64) {
    match field % 16 {
        0 => s.cr0 = value,
        1 => s.cr2 = value,
        2 => s.cr3 = value,
        3 => s.cr4 = value,
        4 => s.cr8 = value,
        5 => s.efer = value,
        6 => s.apic_base = value,
        7 => s.cs.selector = value as u16,
        8 => {
            s.cs.type_ = value as u8 & 0xf;
            s.cs.l = (value >> 4) as u8 & 1;
            s.cs.db = (value >> 5) as u8 & 1;
            s.cs.dpl = (value >> 6) as u8 & 3;
            s.cs.present = (value >> 8) as u8 & 1;
        }
        9 => s.ss.dpl = value as u8 & 3,
        10 => s.gdt.base = value,
        11 => s.gdt.limit = value as u16,
        12 => s.idt.base = value,
        13 => s.idt.limit = value as u16,
        14 => s.tr.type_ = value as u8 & 0xf,
        _ => s.ds.unusable = value as u8 & 1,
    }
}

pub(super) fn edit_cpuid(cpuid: &mut CpuId, leaf: u32, reg: u8, flip: u32) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == leaf {
            match reg % 4 {
                0 => entry.eax ^= flip,
                1 => entry.ebx ^= flip,
                2 => entry.ecx ^= flip,
                _ => entry.edx ^= flip,
            }
        }
    }
}
