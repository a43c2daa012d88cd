//! VM exits: sent to the devices, and named.

use ktvmm_testdevs::Action;
use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuExit;

use super::{Calls, RunEnd};
use crate::oracle::Finding;
use ktvmm_vmm::platform::bus::Buses;
use ktvmm_vmm::run::outcome::internal_error_reason;
use ktvmm_vmm::run::vcpu::{Step, io_size, port_in, port_out};

/// Sends an exit to the devices; says whether the run goes on.
pub(super) fn handle_exit(
    buses: &Buses,
    run: *mut kvm_run,
    exit: VcpuExit<'_>,
    cpu: usize,
    calls: &mut Calls<'_>,
) -> RunEnd {
    let trace = calls.trace;
    let end = |e: &str| RunEnd::End(e.to_string());
    match exit {
        VcpuExit::IoOut(port, data) => {
            calls.note(|| format!("cpu{cpu}: KVM_EXIT_IO out {port:#x} {data:02x?}"));
            // SAFETY: this is a KVM_EXIT_IO of this vCPU's `run`.
            let size = unsafe { io_size(run) };
            match port_out(&buses.pio, port, size, data) {
                Step::Continue => RunEnd::Continue,
                Step::End(_) => end("guest-exit"),
            }
        }
        VcpuExit::IoIn(port, data) => {
            // SAFETY: this is a KVM_EXIT_IO of this vCPU's `run`.
            let size = unsafe { io_size(run) };
            port_in(&buses.pio, port, size, data);
            calls.note(|| format!("cpu{cpu}: KVM_EXIT_IO in {port:#x} -> {data:02x?}"));
            RunEnd::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            calls.note(|| format!("cpu{cpu}: KVM_EXIT_MMIO read {addr:#x} -> {data:02x?}"));
            RunEnd::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            calls.note(|| format!("cpu{cpu}: KVM_EXIT_MMIO write {addr:#x} {data:02x?}"));
            match buses.mmio.write(addr, data) {
                Action::Continue => RunEnd::Continue,
                Action::Exit(_) => end("guest-exit"),
                Action::Stop(_) => end("device-stop"),
            }
        }
        VcpuExit::Hlt => end("hlt"),
        VcpuExit::Shutdown => end("shutdown"),
        VcpuExit::Debug(debug) => {
            calls.note(|| format!("cpu{cpu}: KVM_EXIT_DEBUG at {:#x}", debug.pc));
            RunEnd::Continue
        }
        VcpuExit::IrqWindowOpen => {
            // SAFETY: `run` is this vCPU's mapped kvm_run; no exit borrows it now.
            unsafe { (*run).request_interrupt_window = 0 };
            RunEnd::Continue
        }
        VcpuExit::X86Rdmsr(msr) => {
            // Known-looking MSRs read as zero, the rest fault: both paths run.
            *msr.error = u8::from(msr.index & 1 == 1);
            *msr.data = 0;
            RunEnd::Continue
        }
        VcpuExit::X86Wrmsr(msr) => {
            *msr.error = u8::from(msr.index & 1 == 1);
            RunEnd::Continue
        }
        VcpuExit::Hypercall(call) => {
            *call.ret = 0;
            RunEnd::Continue
        }
        VcpuExit::InternalError => {
            // SAFETY: the exit is KVM_EXIT_INTERNAL_ERROR, whose union
            // member KVM filled in.
            let suberror = unsafe { (*run).__bindgen_anon_1.internal.suberror };
            let kind = format!("suberror {suberror} ({})", internal_error_reason(suberror));
            *calls.record.internal_errors.entry(kind).or_default() += 1;
            end("internal-error")
        }
        VcpuExit::FailEntry(reason, _) => {
            calls.record.findings.push(Finding::FailEntry { reason });
            end("fail-entry")
        }
        VcpuExit::SystemEvent(..) => end("system-event"),
        other => {
            if trace {
                calls.note(|| format!("cpu{cpu}: unexpected exit {other:?}"));
            }
            end("other-exit")
        }
    }
}

/// The `KVM_EXIT_*` name of an exit reason.
pub fn exit_name(reason: u32) -> &'static str {
    use kvm_bindings::*;
    match reason {
        KVM_EXIT_UNKNOWN => "KVM_EXIT_UNKNOWN",
        KVM_EXIT_EXCEPTION => "KVM_EXIT_EXCEPTION",
        KVM_EXIT_IO => "KVM_EXIT_IO",
        KVM_EXIT_HYPERCALL => "KVM_EXIT_HYPERCALL",
        KVM_EXIT_DEBUG => "KVM_EXIT_DEBUG",
        KVM_EXIT_HLT => "KVM_EXIT_HLT",
        KVM_EXIT_MMIO => "KVM_EXIT_MMIO",
        KVM_EXIT_IRQ_WINDOW_OPEN => "KVM_EXIT_IRQ_WINDOW_OPEN",
        KVM_EXIT_SHUTDOWN => "KVM_EXIT_SHUTDOWN",
        KVM_EXIT_FAIL_ENTRY => "KVM_EXIT_FAIL_ENTRY",
        KVM_EXIT_INTR => "KVM_EXIT_INTR",
        KVM_EXIT_SET_TPR => "KVM_EXIT_SET_TPR",
        KVM_EXIT_TPR_ACCESS => "KVM_EXIT_TPR_ACCESS",
        KVM_EXIT_NMI => "KVM_EXIT_NMI",
        KVM_EXIT_INTERNAL_ERROR => "KVM_EXIT_INTERNAL_ERROR",
        KVM_EXIT_SYSTEM_EVENT => "KVM_EXIT_SYSTEM_EVENT",
        KVM_EXIT_IOAPIC_EOI => "KVM_EXIT_IOAPIC_EOI",
        KVM_EXIT_HYPERV => "KVM_EXIT_HYPERV",
        KVM_EXIT_X86_RDMSR => "KVM_EXIT_X86_RDMSR",
        KVM_EXIT_X86_WRMSR => "KVM_EXIT_X86_WRMSR",
        KVM_EXIT_X86_BUS_LOCK => "KVM_EXIT_X86_BUS_LOCK",
        KVM_EXIT_XEN => "KVM_EXIT_XEN",
        KVM_EXIT_NOTIFY => "KVM_EXIT_NOTIFY",
        KVM_EXIT_MEMORY_FAULT => "KVM_EXIT_MEMORY_FAULT",
        _ => "KVM_EXIT_(other)",
    }
}
