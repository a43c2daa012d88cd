//! Executing one input: a fresh VM (small RAM, the real device buses), the
//! vCPUs in the modes asked for, then the input's KVM calls and guest runs
//! in order, each call checked by the oracles.
//!
//! Everything runs on the calling thread, vCPUs taking turns, so the same
//! input makes the same calls in the same order every time. A run is
//! bounded three ways: exits handled (the input's own count and a total),
//! the thread's CPU time (a guest spinning without exits), and a wall-clock
//! hang limit; a POSIX timer aimed at this thread kicks `KVM_RUN` out with
//! `immediate_exit` (see [`crate::kick`]) so every bound is checked even
//! when the guest never exits.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktvmm_abi::ports;
use ktvmm_testdevs::debug_exit::{self, DebugExit};
use ktvmm_testdevs::pc_testdev::{self, PcTestdevIomem, PcTestdevPorts};
use ktvmm_testdevs::{Action, PciTestdev};
use kvm_bindings::{
    CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE, Msrs, kvm_enable_cap, kvm_guest_debug, kvm_mp_state, kvm_msi,
    kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::bounds::{CpuTimer, Watcher, thread_cpu_time};
use super::catch::capture_panics;
use super::guest::{RamTemplate, mode_sregs};
use super::input::{Input, Mode, Op, VcpuSetup, is_clock_msr};
use super::oracle::{Finding, documented};
use super::planted::{self, PlantedBug};
use super::program::{CODE_ADDR, EXTRA_SLOTS_ADDR, RAM_SIZE, STACK_TOP};
use crate::bus::Bus;
use crate::devices::fw_cfg::{self, FwCfg};
use crate::devices::links::GuestPages;
use crate::devices::pm_timer::{self, PmTimer};
use crate::kick::{self, RunGuard};
use crate::memory::GuestMemory;
use crate::outcome::internal_error_reason;
use crate::pci::{self, HostBridge, PciConfigIo, PciRoot};
use crate::platform::{Machine, Platform};
use crate::vcpu::{Buses, io_size, port_in, port_out};
use crate::{cpu_model, cpuid};

/// The bounds and switches of every execution.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Exits handled per input at most.
    pub exit_budget: u32,
    /// CPU time the vCPUs of one input may use in the guest.
    pub cpu_budget: Duration,
    /// How often the watcher looks whether a running vCPU sleeps in the
    /// kernel (a halted vCPU is found within about two of these).
    pub tick: Duration,
    /// A `KVM_RUN` that has not returned this long after it started is a hang.
    pub hang_after: Duration,
    /// Put the planted bug on the bus (the harness's self-test).
    pub plant_bug: bool,
    /// Keep a trace of every exit and call (for reproducers).
    pub trace: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            exit_budget: 256,
            cpu_budget: Duration::from_millis(4),
            tick: Duration::from_micros(500),
            hang_after: Duration::from_secs(2),
            plant_bug: false,
            trace: false,
        }
    }
}

/// Why the harness could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(kvm_ioctls::Error),
    /// A call every execution depends on failed.
    #[error("{what} failed: {source}")]
    Setup {
        /// The call.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// What one execution did.
#[derive(Clone, Debug, Default)]
pub struct Execution {
    /// How the last guest run ended (`not-run` if none did).
    pub end: String,
    /// The bugs found.
    pub findings: Vec<Finding>,
    /// `KVM_EXIT_*` reasons handled, by name.
    pub exits: BTreeMap<&'static str, u32>,
    /// KVM calls made, by name.
    pub ioctls: BTreeMap<&'static str, u32>,
    /// `KVM_EXIT_INTERNAL_ERROR`s, by kind.
    pub internal_errors: BTreeMap<String, u32>,
    /// Every exit and call, when tracing.
    pub trace: Vec<String>,
    /// Times `KVM_RUN` was interrupted to check a bound (timing-dependent:
    /// not part of the statistics).
    pub kicks: u32,
    /// The first try ran into the CPU budget and the second did not.
    pub unstable: bool,
}

/// How a run that used up its CPU budget ends.
const CPU_BUDGET: &str = "cpu-budget";

/// Trace lines kept at most.
const TRACE_MAX: usize = 400;

impl Execution {
    fn note(&mut self, trace: bool, line: impl FnOnce() -> String) {
        if trace && self.trace.len() < TRACE_MAX {
            self.trace.push(line());
        }
    }
}

/// Runs inputs, one fresh VM each, reusing the KVM handle and what it
/// reported once.
pub struct Executor {
    kvm: Kvm,
    cpuid: CpuId,
    options: ExecOptions,
    ram: RamTemplate,
    cpu_timer: CpuTimer,
    watcher: Watcher,
    reaper: SyncSender<Built>,
}

/// How a guest run ended.
enum RunEnd {
    Continue,
    End(String),
}

impl Executor {
    /// Opens KVM, reads what it supports, and arms the kick signal.
    pub fn new(options: ExecOptions) -> Result<Self, ExecError> {
        let kvm = Kvm::new().map_err(ExecError::NoKvm)?;
        let setup = |what| {
            move |e: kvm_ioctls::Error| ExecError::Setup {
                what,
                source: io::Error::from_raw_os_error(e.errno()),
            }
        };
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
        let extra = cpu_model::extra_flags(kvm.check_extension(Cap::TscDeadlineTimer));
        let cpuid = cpu_model::build(&Default::default(), &supported, &extra).map_err(|e| {
            ExecError::Setup {
                what: "the CPU model",
                source: io::Error::other(e.to_string()),
            }
        })?;
        kick::install().map_err(|e| ExecError::Setup {
            what: "installing the kick signal handler",
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
        let cpu_timer = CpuTimer::for_this_thread().map_err(|source| ExecError::Setup {
            what: "timer_create",
            source,
        })?;
        let watcher =
            Watcher::for_this_thread(options.tick, options.hang_after).map_err(|source| {
                ExecError::Setup {
                    what: "starting the watcher thread",
                    source,
                }
            })?;
        Ok(Executor {
            kvm,
            cpuid,
            options,
            ram: RamTemplate::new().map_err(|source| ExecError::Setup {
                what: "building the guest RAM template",
                source,
            })?,
            cpu_timer,
            watcher,
            reaper: reaper(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &ExecOptions {
        &self.options
    }

    /// Changes the options (tracing for a reproducer, say).
    pub fn options_mut(&mut self) -> &mut ExecOptions {
        &mut self.options
    }

    /// Executes `input`; a panic inside is caught and becomes a finding.
    ///
    /// An execution that ran into the CPU budget is made once more: a
    /// guest that runs that long is where the host shows through (on a
    /// host that emulates CPL0 code, the emulator's path can depend on
    /// when the host preempts it), and a second try that ends otherwise
    /// is the result that repeats. Such executions are marked unstable.
    pub fn execute(&mut self, input: &Input) -> Execution {
        let first = self.execute_once(input);
        if first.end != CPU_BUDGET || !first.findings.is_empty() {
            return first;
        }
        let mut second = self.execute_once(input);
        second.unstable = second.end != CPU_BUDGET;
        second
    }

    fn execute_once(&mut self, input: &Input) -> Execution {
        let input = input.clone().clamped();
        let mut record = Execution {
            end: "not-run".into(),
            ..Default::default()
        };
        let caught = capture_panics(|| self.execute_inner(&input, &mut record));
        if let Err(message) = caught {
            record.end = "vmm-panic".into();
            record.findings.push(Finding::VmmPanic { message });
        }
        record
    }

    fn execute_inner(&mut self, input: &Input, record: &mut Execution) {
        let mut calls = Calls {
            record,
            trace: self.options.trace,
        };
        let Some(mut built) = self.build(input, &mut calls) else {
            calls.record.end = "setup-failed".into();
            return;
        };
        let mut exits_left = self.options.exit_budget;
        let mut cpu_left = self.options.cpu_budget;
        for op in &input.ops {
            if let Op::Run { cpu, exits } = *op {
                let index = usize::from(cpu) % built.vcpus.len();
                if built.vcpus[index].ended {
                    continue;
                }
                let limit = u32::from(exits).min(exits_left);
                let (end, used, cpu_used) =
                    self.run(&mut built, index, limit, cpu_left, &mut calls);
                exits_left -= used;
                cpu_left = cpu_left.saturating_sub(cpu_used);
                calls.note(|| format!("cpu{index}: run ended: {end}"));
                if end != "exit-limit" {
                    built.vcpus[index].ended = true;
                }
                calls.record.end = end;
                if exits_left == 0 || cpu_left.is_zero() {
                    break;
                }
            } else {
                self.op(&mut built, op, &mut calls);
            }
        }
        // Tearing a VM down waits for KVM's SRCU grace periods; another
        // thread does it while this one builds the next.
        if let Err(e) = self.reaper.send(built) {
            drop(e.0);
        }
    }

    /// Creates the VM, its memory, devices and vCPUs.
    fn build(&mut self, input: &Input, calls: &mut Calls<'_>) -> Option<Built> {
        let vm = Arc::new(calls.call("KVM_CREATE_VM", self.kvm.create_vm())?);
        let memory = self.ram.instance().ok()?;
        memory
            .write_slice(&input.program, GuestAddress(CODE_ADDR))
            .ok()?;
        let ram = memory.iter().next()?;
        let ram_host = ram.as_ptr() as u64;
        let mut built = Built {
            vcpus: Vec::new(),
            buses: Arc::new(Buses::default()),
            _platform: None,
            vm,
            extra: Vec::new(),
            ram_host,
            _memory: memory.clone(),
            irqchip: input.shape.irqchip,
        };
        let region = slot_region(0, 0, RAM_SIZE, ram_host, 0);
        // SAFETY: RAM lives in `built`, which drops the VM fd before it.
        calls.call("KVM_SET_USER_MEMORY_REGION", unsafe {
            built.vm.set_user_memory_region(region)
        })?;
        for slot in 1..=u32::from(input.shape.extra_slots) {
            let gpa = EXTRA_SLOTS_ADDR + u64::from(slot - 1) * 0x1_0000;
            set_slot(&mut built, calls, slot, gpa, 16, 0);
        }

        let cpus = input.vcpus.len() as u16;
        if input.shape.irqchip {
            calls.call("KVM_CREATE_IRQCHIP", built.vm.create_irq_chip())?;
            let machine = Machine {
                ram_bytes: RAM_SIZE,
                cpus,
            };
            let platform =
                Platform::attach(&built.vm, &memory, Box::new(io::sink()), true, machine).ok()?;
            built.buses = platform.buses.clone();
            built._platform = Some(platform);
        } else {
            built.buses = bare_buses(&built.vm, &memory, cpus)?;
        }
        if self.options.plant_bug {
            built
                .buses
                .pio
                .wrap(u64::from(planted::PORT), PlantedBug::wrap);
        }

        for (index, setup) in input.vcpus.iter().enumerate() {
            let fd = calls.call("KVM_CREATE_VCPU", built.vm.create_vcpu(index as u64))?;
            let mut cpuid = cpuid::for_vcpu(&self.cpuid, index as u32);
            for &(leaf, reg, flip) in &setup.cpuid {
                edit_cpuid(&mut cpuid, leaf, reg, flip);
            }
            calls.call("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid));
            let vcpu = Vcpu {
                fd,
                cpuid,
                ended: false,
                single_step: false,
            };
            self.set_up_vcpu(&vcpu, setup, input.shape.irqchip, calls);
            built.vcpus.push(vcpu);
        }
        Some(built)
    }

    fn set_up_vcpu(&self, vcpu: &Vcpu, setup: &VcpuSetup, irqchip: bool, calls: &mut Calls<'_>) {
        if let Some(sregs) = calls.call("KVM_GET_SREGS", vcpu.fd.get_sregs()) {
            let sregs = mode_sregs(sregs, setup);
            calls.call("KVM_SET_SREGS", vcpu.fd.set_sregs(&sregs));
        }
        let [rax, rbx, rcx, rdx, rsi, rdi] = setup.gprs;
        let (rip, rsp) = match setup.mode {
            Mode::Real | Mode::Protected16 => (0, STACK_TOP - CODE_ADDR),
            _ => (CODE_ADDR, STACK_TOP),
        };
        let regs = kvm_regs {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rip,
            rsp,
            // IOPL 3: code at CPL 3 may do port I/O too.
            rflags: 0x2 | if setup.user { 0x3000 } else { 0 },
            ..Default::default()
        };
        calls.call("KVM_SET_REGS", vcpu.fd.set_regs(&regs));
        if !setup.msrs.is_empty() {
            let entries: Vec<kvm_msr_entry> = setup
                .msrs
                .iter()
                .filter(|(index, _)| !is_clock_msr(*index))
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            if let Ok(msrs) = Msrs::from_entries(&entries) {
                calls.call("KVM_SET_MSRS", vcpu.fd.set_msrs(&msrs));
            }
        }
        if irqchip {
            // Secondary vCPUs would otherwise wait for INIT and SIPI.
            let state = kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            };
            calls.call("KVM_SET_MP_STATE", vcpu.fd.set_mp_state(state));
        }
    }

    /// One guest run: returns how it ended, the exits it used, its CPU time.
    fn run(
        &mut self,
        built: &mut Built,
        index: usize,
        max_exits: u32,
        cpu_budget: Duration,
        calls: &mut Calls<'_>,
    ) -> (String, u32, Duration) {
        let started = Instant::now();
        let cpu_start = thread_cpu_time();
        let buses = built.buses.clone();
        let irqchip = built.irqchip;
        let vcpu = &mut built.vcpus[index];
        let run: *mut kvm_run = vcpu.fd.get_kvm_run();
        let _guard = RunGuard::new(run);
        self.cpu_timer
            .set(cpu_budget.max(Duration::from_micros(100)));
        self.watcher.running();
        *calls.record.ioctls.entry("KVM_RUN").or_default() += 1;
        let mut handled = 0;
        let end = loop {
            if handled >= max_exits {
                break "exit-limit".to_string();
            }
            vcpu.fd.set_kvm_immediate_exit(0);
            let result = vcpu.fd.run();
            match result {
                Ok(exit) => {
                    // SAFETY: KVM_RUN returned 0, so KVM wrote exit_reason.
                    let reason = unsafe { (*run).exit_reason };
                    let name = exit_name(reason);
                    *calls.record.exits.entry(name).or_default() += 1;
                    handled += 1;
                    let step = handle_exit(&buses, run, exit, index, calls);
                    if let RunEnd::End(end) = step {
                        break end;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    calls.record.kicks += 1;
                    let waited = started.elapsed();
                    if waited > self.options.hang_after {
                        calls.record.findings.push(Finding::Hang {
                            millis: waited.as_millis() as u64,
                        });
                        break "hang".into();
                    }
                    if thread_cpu_time().saturating_sub(cpu_start) >= cpu_budget {
                        break CPU_BUDGET.into();
                    }
                    if irqchip {
                        // A halted or waiting vCPU sleeps in the kernel;
                        // its state, not the time, says the run is over.
                        match vcpu.fd.get_mp_state().map(|s| s.mp_state) {
                            Ok(KVM_MP_STATE_RUNNABLE) => {}
                            Ok(KVM_MP_STATE_HALTED) => break "halted".into(),
                            Ok(other) => break format!("blocked (mp_state {other})"),
                            Err(_) => break "blocked".into(),
                        }
                    }
                }
                Err(e) => {
                    calls.failed("KVM_RUN", &e);
                    break "run-error".into();
                }
            }
        };
        self.cpu_timer.set(Duration::ZERO);
        self.watcher.idle();
        let cpu_used = thread_cpu_time().saturating_sub(cpu_start);
        (end, handled, cpu_used)
    }

    /// One KVM call of the input, with its round-trip check.
    fn op(&mut self, built: &mut Built, op: &Op, calls: &mut Calls<'_>) {
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
                            calls.round_trip("KVM_SET_REGS/KVM_GET_REGS", || {
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
                        let kept = |s: &kvm_sregs| {
                            (s.cr2, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit)
                        };
                        if kept(&sregs) != kept(&back) {
                            calls.round_trip("KVM_SET_SREGS/KVM_GET_SREGS", || {
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
                let written = calls.call("KVM_SET_MSRS", fd.set_msrs(&msrs));
                if written == Some(1) && ROUND_TRIP_MSRS.contains(&msr) {
                    let mut back = msrs.clone();
                    if calls.call("KVM_GET_MSRS", fd.get_msrs(&mut back)) == Some(1) {
                        let got = back.as_slice()[0].data;
                        if got != value {
                            calls.round_trip("KVM_SET_MSRS/KVM_GET_MSRS", || {
                                format!("MSR {msr:#x}: set {value:#x}, read back {got:#x}")
                            });
                        }
                    }
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
                            calls.round_trip("KVM_SET_LAPIC/KVM_GET_LAPIC", || {
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
                        calls.round_trip("KVM_SET_XCRS/KVM_GET_XCRS", || {
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
                    calls.round_trip("KVM_SET_DEBUGREGS/KVM_GET_DEBUGREGS", || {
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
                let Some(mut events) = calls.call("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())
                else {
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
                        calls.round_trip("KVM_SET_MP_STATE/KVM_GET_MP_STATE", || {
                            format!("set RUNNABLE, read back {}", back.mp_state)
                        });
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
                    kvm_bindings::KVM_MSR_EXIT_REASON_INVAL
                        | kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN,
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
}

/// RFLAGS bits a `KVM_SET_REGS` must keep: the architecture's (CF
/// through ID) but RF and VM, which KVM may drop when the vCPU's mode
/// cannot hold them (VM in long mode, say).
const RFLAGS_DEFINED: u64 = (0x003f_7fd5 | 2) & !(1 << 16 | 1 << 17);
const RFLAGS_TF: u64 = 1 << 8;

/// MSRs KVM stores exactly as written when it accepts the write.
const ROUND_TRIP_MSRS: [u32; 4] = [0xc000_0081, 0xc000_0082, 0xc000_0102, 0xc000_0103];

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

fn edit_cpuid(cpuid: &mut CpuId, leaf: u32, reg: u8, flip: u32) {
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

/// The KVM calls of one execution, counted, checked and traced.
struct Calls<'a> {
    record: &'a mut Execution,
    trace: bool,
}

impl Calls<'_> {
    fn call<T>(&mut self, name: &'static str, result: Result<T, kvm_ioctls::Error>) -> Option<T> {
        *self.record.ioctls.entry(name).or_default() += 1;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.failed(name, &e);
                None
            }
        }
    }

    fn failed(&mut self, name: &'static str, e: &kvm_ioctls::Error) {
        let errno = e.errno();
        self.record
            .note(self.trace, || format!("{name} failed: errno {errno}"));
        if !documented(name, errno) {
            self.record.findings.push(Finding::UndocumentedErrno {
                ioctl: name.into(),
                errno,
            });
        }
    }

    fn round_trip(&mut self, ioctl: &str, detail: impl FnOnce() -> String) {
        self.record.findings.push(Finding::RoundTrip {
            ioctl: ioctl.into(),
            detail: detail(),
        });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        self.record.note(self.trace, line);
    }
}

struct Vcpu {
    fd: VcpuFd,
    cpuid: CpuId,
    /// The last run ended for good (until a call changes the vCPU's state).
    ended: bool,
    /// KVM single-steps it (and owns RFLAGS.TF meanwhile).
    single_step: bool,
}

/// A fresh VM. Field order is drop order: vCPUs and devices before the VM,
/// the VM before the memory its slots point at.
struct Built {
    vcpus: Vec<Vcpu>,
    buses: Arc<Buses>,
    _platform: Option<Platform>,
    vm: Arc<VmFd>,
    extra: Vec<(u32, HostPages)>,
    ram_host: u64,
    _memory: GuestMemory,
    irqchip: bool,
}

/// Anonymous host memory for an extra slot.
struct HostPages {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; KVM accesses it
// through the slot, never through the pointer.
unsafe impl Send for HostPages {}

impl HostPages {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(HostPages { ptr, len })
    }
}

impl Drop for HostPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by any VM
        // (`Built` drops its VM first).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn slot_region(
    slot: u32,
    gpa: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    }
}

/// Slot 0 is RAM; slots 1-3 get 64 KiB of their own the first time.
fn set_slot(built: &mut Built, calls: &mut Calls<'_>, slot: u32, gpa: u64, pages: u64, flags: u32) {
    let size = (pages * 0x1000).min(if slot == 0 { RAM_SIZE } else { 0x1_0000 });
    let host = if slot == 0 {
        built.ram_host
    } else if let Some((_, pages)) = built.extra.iter().find(|(s, _)| *s == slot) {
        pages.ptr as u64
    } else {
        let Some(pages) = HostPages::new(0x1_0000) else {
            return;
        };
        let host = pages.ptr as u64;
        built.extra.push((slot, pages));
        host
    };
    let region = slot_region(slot, gpa, size, host, flags);
    // SAFETY: the memory behind every slot lives in `built`, which drops
    // the VM fd first.
    calls.call("KVM_SET_USER_MEMORY_REGION", unsafe {
        built.vm.set_user_memory_region(region)
    });
}

/// The devices that need no interrupt controller: isa-debug-exit, fw_cfg,
/// the PM timer, pc-testdev's ports and memory window, PCI with the host
/// bridge and pci-testdev.
fn bare_buses(vm: &Arc<VmFd>, memory: &GuestMemory, cpus: u16) -> Option<Arc<Buses>> {
    let buses = Arc::new(Buses::default());
    let place = |bus: &Bus, device: crate::bus::SharedDevice, base: u64, len: u64| {
        bus.insert(device, base, len).ok()
    };
    place(
        &buses.pio,
        Arc::new(Mutex::new(DebugExit)),
        u64::from(ports::DEBUG_EXIT),
        debug_exit::LEN,
    )?;
    place(
        &buses.pio,
        Arc::new(Mutex::new(FwCfg::new(RAM_SIZE, cpus))),
        u64::from(ports::FW_CFG),
        fw_cfg::LEN,
    )?;
    place(
        &buses.pio,
        Arc::new(Mutex::new(PmTimer::new())),
        u64::from(ports::PM_TIMER),
        pm_timer::LEN,
    )?;
    let pages = Arc::new(GuestPages::new(memory.clone()));
    place(
        &buses.pio,
        Arc::new(Mutex::new(PcTestdevPorts::new(pages))),
        u64::from(ports::PC_TESTDEV_REGISTER),
        pc_testdev::PORTS_LEN,
    )?;
    place(
        &buses.mmio,
        Arc::new(Mutex::new(PcTestdevIomem::default())),
        ktvmm_abi::layout::PC_TESTDEV_IOMEM,
        ktvmm_abi::layout::PC_TESTDEV_IOMEM_SIZE,
    )?;
    let root = PciRoot::new(Arc::downgrade(&buses), vm.clone());
    let mut testdev = PciTestdev::new();
    pci::assign_bars(
        ktvmm_testdevs::PciDevice::config_mut(&mut testdev),
        ktvmm_abi::pci::MMIO_WINDOW_START,
        u64::from(ktvmm_abi::pci::IO_WINDOW_START),
    );
    {
        let mut root = crate::bus::lock(&root);
        root.add(
            ktvmm_abi::pci::HOST_BRIDGE_SLOT,
            Arc::new(Mutex::new(HostBridge::default())),
        );
        root.add(
            ktvmm_abi::pci::PCI_TESTDEV_SLOT,
            Arc::new(Mutex::new(testdev)),
        );
    }
    place(
        &buses.pio,
        Arc::new(Mutex::new(PciConfigIo::new(root))),
        u64::from(ports::PCI_CONFIG_ADDRESS),
        pci::CONFIG_IO_PORTS,
    )?;
    Some(buses)
}

/// Sends an exit to the devices; says whether the run goes on.
fn handle_exit(
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
            match port_out(&buses.pio, port, io_size(run), data) {
                crate::vcpu::Step::Continue => RunEnd::Continue,
                crate::vcpu::Step::End(_) => end("guest-exit"),
            }
        }
        VcpuExit::IoIn(port, data) => {
            port_in(&buses.pio, port, io_size(run), data);
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

/// A thread that drops finished VMs.
fn reaper() -> SyncSender<Built> {
    let (tx, rx) = sync_channel::<Built>(16);
    let spawned = std::thread::Builder::new()
        .name("fuzz-reaper".into())
        .spawn(move || {
            for built in rx {
                drop(built);
            }
        });
    if let Err(e) = spawned {
        log::warn!("no VM reaper thread ({e}): VMs are torn down inline");
    }
    tx
}

// SAFETY: a `Built` moves to the reaper thread only to be dropped; its
// vCPU fds and devices are not used there, and KVM allows closing them
// from any thread.
unsafe impl Send for Built {}
