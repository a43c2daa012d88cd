//! Runs one input: a fresh VM with the test devices on its buses, the
//! vCPUs set up as the input says, then its operations in order. Every run
//! is bounded: a number of exits per `Run`, a time slice per `KVM_RUN`
//! enforced by a timer signal that sets `immediate_exit`, and a time budget
//! per input.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktvmm_testdevs::debug_exit::{self, DebugExit};
use ktvmm_testdevs::edu::{Edu, EduLinks};
use ktvmm_testdevs::pc_testdev::{self, PcTestdevIomem, PcTestdevIrqs, PcTestdevPorts};
use ktvmm_testdevs::{Action, BusDevice, Deferred, InterruptLine, MsiSender};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, Msrs, kvm_debugregs, kvm_mp_state, kvm_msi,
    kvm_msr_entry, kvm_regs, kvm_run, kvm_segment, kvm_sregs, kvm_userspace_memory_region,
    kvm_xcrs,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::input::{Input, Irqchip, MAX_VCPUS, Mode, Op, VcpuSetup};
use crate::bus::Bus;
use crate::devices::links::{GuestDma, GuestPages};
use crate::kick::{self, RunGuard};
use crate::memory::GuestMemory;
use crate::pci::{self, HostBridge, PciConfigIo, PciRoot};
use crate::vcpu::Buses;

/// Where things are in a fuzz VM.
pub mod layout {
    /// PML4, PDPT, then four page directories: 4 GiB identity-mapped with
    /// 2 MiB user-accessible pages (also the PAE tables of 32-bit paging).
    pub const PML4: u64 = 0x2000;
    /// PDPT.
    pub const PDPT: u64 = 0x3000;
    /// First page directory.
    pub const PD: u64 = 0x4000;
    /// Where every real-mode interrupt vector points: `hlt; iret`.
    pub const REAL_MODE_HANDLER: u64 = 0x7f00;
    /// The program.
    pub const CODE: u64 = 0x8000;
    /// Most program bytes.
    pub const CODE_MAX: usize = 0x1000;
    /// Scratch data (string I/O source and target).
    pub const DATA: u64 = 0x9000;
    /// Stack top.
    pub const STACK: u64 = 0xf000;
    /// RAM every input has at least (the tables, code, data and stack).
    pub const MIN_RAM: u64 = 0x1_0000;
    /// The extra memory slot's size.
    pub const EXTRA_SLOT: u64 = 0x1_0000;
    /// The planted bug's port (`--plant-bug`): writing 0x5a there panics.
    pub const PLANTED_BUG_PORT: u16 = 0x5f0;
    /// The byte that sets it off.
    pub const PLANTED_BUG_TRIGGER: u8 = 0x5a;
    /// pci-testdev's memory BAR.
    pub const PCI_TESTDEV_BAR: u64 = 0xc000_0000;
    /// edu's BAR.
    pub const EDU_BAR: u64 = 0xc010_0000;
}

/// The limits of one input's execution.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Exits handled per `Run` operation.
    pub exits_per_run: u32,
    /// Longest a single `KVM_RUN` may take before it is kicked (and the
    /// vCPU asked whether it is halted).
    pub slice: Duration,
    /// How much longer than a slice a runnable vCPU may go without an exit
    /// before it counts as spinning and is stopped. The longer, the rarer a
    /// slow stretch of emulated code that finishes on one run and is cut on
    /// the next; the slower each input that really spins.
    pub spin: Duration,
    /// Guest time per input (summed runs); past it, runs are skipped. A
    /// safety net: the exit budgets and the slice are what bound inputs
    /// (deterministically), so this is rarely reached.
    pub guest_time: Duration,
    /// How late a kicked `KVM_RUN` may return before it counts as a hang.
    pub hang: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            exits_per_run: 32,
            slice: Duration::from_millis(2),
            spin: Duration::ZERO,
            guest_time: Duration::from_millis(200),
            hang: Duration::from_secs(1),
        }
    }
}

/// Something a fuzz input made happen that should not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Finding {
    /// The VMM panicked.
    Panic {
        /// The panic message.
        message: String,
    },
    /// An ioctl failed with an errno its documentation does not list.
    UndocumentedErrno {
        /// The ioctl.
        ioctl: String,
        /// The errno.
        errno: i32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// `KVM_RUN` kept running long after it was kicked.
    Hang {
        /// How long it took to return.
        millis: u64,
    },
    /// A `GET` returned other than the `SET` just before it.
    RoundTrip {
        /// What was set.
        what: String,
        /// The value set.
        set: u64,
        /// The value read back.
        got: u64,
    },
    /// The host kernel's taint flags changed.
    Taint {
        /// Before.
        before: u64,
        /// After.
        after: u64,
    },
    /// The host kernel logged a warning, a bug or a call trace.
    KernelLog {
        /// The lines.
        lines: Vec<String>,
    },
}

impl Finding {
    /// A short name for the kind, for statistics and for the minimiser.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Panic { .. } => "panic",
            Finding::UndocumentedErrno { .. } => "undocumented-errno",
            Finding::FailEntry { .. } => "fail-entry",
            Finding::Hang { .. } => "hang",
            Finding::RoundTrip { .. } => "round-trip",
            Finding::Taint { .. } => "taint",
            Finding::KernelLog { .. } => "kernel-log",
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Panic { message } => write!(f, "the VMM panicked: {message}"),
            Finding::UndocumentedErrno { ioctl, errno } => write!(
                f,
                "{ioctl} failed with errno {errno} ({}), which its documentation does not list",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Finding::FailEntry { reason } => {
                write!(f, "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}")
            }
            Finding::Hang { millis } => {
                write!(f, "KVM_RUN returned {millis} ms after it was kicked")
            }
            Finding::RoundTrip { what, set, got } => {
                write!(f, "{what}: set {set:#x}, read back {got:#x}")
            }
            Finding::Taint { before, after } => {
                write!(
                    f,
                    "the kernel's taint flags went from {before:#x} to {after:#x}"
                )
            }
            Finding::KernelLog { lines } => {
                write!(f, "the kernel logged: {}", lines.join(" | "))
            }
        }
    }
}

/// What one input did.
#[derive(Clone, Debug, Default)]
pub struct Execution {
    /// How it ended: the last vCPU's final exit, or "done".
    pub outcome: String,
    /// The exits, in order (at most [`TRACE_MAX`] kept).
    pub trace: Vec<&'static str>,
    /// Exits by reason.
    pub exits: BTreeMap<&'static str, u64>,
    /// ioctls issued, by name.
    pub ioctls: BTreeMap<&'static str, u64>,
    /// `KVM_EXIT_INTERNAL_ERROR` suberrors seen.
    pub internal_errors: BTreeMap<u32, u64>,
    /// Findings.
    pub findings: Vec<Finding>,
}

/// Exits kept in a trace.
pub const TRACE_MAX: usize = 256;

/// Errnos the KVM API documents for the ioctls used here (and the
/// interrupted-call ones). Anything else is a finding.
const DOCUMENTED_ERRNOS: [i32; 14] = [
    libc::EINVAL,
    libc::EFAULT,
    libc::E2BIG,
    libc::ENOMEM,
    libc::EINTR,
    libc::EAGAIN,
    libc::ENXIO,
    libc::EEXIST,
    libc::EBUSY,
    libc::EPERM,
    libc::EOPNOTSUPP,
    libc::ENOENT,
    libc::ENOSPC,
    libc::ERANGE,
];

/// Address MSRs that KVM stores as written when the value is canonical, so
/// a `GET` must return what a successful `SET` put. (What it does with a
/// non-canonical value differs between backends and is not checked.)
const ROUND_TRIP_MSRS: [u32; 4] = [0xc000_0081, 0xc000_0082, 0xc000_0102, 0x176];

/// Whether `value` is a canonical 48-bit address.
fn canonical(value: u64) -> bool {
    let top = value >> 47;
    top == 0 || top == 0x1_ffff
}

/// Runs inputs, one fresh VM each.
pub struct Executor {
    kvm: Kvm,
    supported: CpuId,
    memory: GuestMemory,
    extra: GuestMemory,
    budget: Budget,
    plant_bug: bool,
    timer: SliceTimer,
}

/// What can stop an executor from starting.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Host memory or the timer could not be had.
    #[error("{0}")]
    Host(String),
}

impl Executor {
    /// Opens `/dev/kvm` and reserves the memory every input reuses.
    pub fn new(budget: Budget, plant_bug: bool) -> Result<Self, ExecError> {
        let kvm = Kvm::new().map_err(|source| ExecError::Kvm {
            what: "opening /dev/kvm",
            source,
        })?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| ExecError::Kvm {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 16 * layout::MIN_RAM as usize)])
            .map_err(|e| ExecError::Host(format!("guest memory: {e}")))?;
        let extra = GuestMemory::from_ranges(&[(GuestAddress(0), layout::EXTRA_SLOT as usize)])
            .map_err(|e| ExecError::Host(format!("guest memory: {e}")))?;
        kick::install().map_err(|e| ExecError::Host(format!("signal handler: {e}")))?;
        Ok(Self {
            kvm,
            supported,
            memory,
            extra,
            budget,
            plant_bug,
            timer: SliceTimer::new()?,
        })
    }

    /// The CPUID `KVM_GET_SUPPORTED_CPUID` reported (for reproducers).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported
    }

    /// Runs `input`. Never panics on its own account; a panic in a device
    /// model unwinds to the caller.
    pub fn execute(&mut self, input: &Input) -> Execution {
        let mut run = Run {
            execution: Execution::default(),
            budget: self.budget,
            guest_time: Duration::ZERO,
            timer: &self.timer,
        };
        if let Err(step) = run.execute(self, input) {
            run.execution.outcome = step;
        }
        if run.execution.outcome.is_empty() {
            run.execution.outcome = "done".into();
        }
        run.execution
    }
}

/// The state of one execution.
struct Run<'a> {
    execution: Execution,
    budget: Budget,
    guest_time: Duration,
    timer: &'a SliceTimer,
}

struct FuzzVcpu {
    fd: VcpuFd,
    /// The final exit it took, after which it is not run again.
    ended: Option<&'static str>,
}

impl Run<'_> {
    /// Counts an ioctl and checks its errno; `Ok` values pass through.
    fn ioctl<T>(&mut self, name: &'static str, result: Result<T, kvm_ioctls::Error>) -> Option<T> {
        *self.execution.ioctls.entry(name).or_default() += 1;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if !DOCUMENTED_ERRNOS.contains(&e.errno()) {
                    self.execution.findings.push(Finding::UndocumentedErrno {
                        ioctl: name.into(),
                        errno: e.errno(),
                    });
                }
                None
            }
        }
    }

    fn round_trip(&mut self, what: impl Into<String>, set: u64, got: u64) {
        if set != got {
            self.execution.findings.push(Finding::RoundTrip {
                what: what.into(),
                set,
                got,
            });
        }
    }

    fn execute(&mut self, executor: &Executor, input: &Input) -> Result<(), String> {
        let ram = layout::MIN_RAM * u64::from(input.mem_64k.clamp(1, 16));
        prepare_memory(&executor.memory, ram, &input.program)?;
        // The extra slot too: what an earlier input left there must not
        // reach this one.
        fill(&executor.extra, layout::EXTRA_SLOT, 0xf4)?;

        let vm = self
            .ioctl("KVM_CREATE_VM", executor.kvm.create_vm())
            .ok_or("setup: KVM_CREATE_VM failed")?;
        let vm = Arc::new(vm);
        match input.irqchip {
            Irqchip::None => {}
            Irqchip::Kernel => {
                self.ioctl("KVM_CREATE_IRQCHIP", vm.create_irq_chip())
                    .ok_or("setup: KVM_CREATE_IRQCHIP failed")?;
            }
            Irqchip::Split => {
                let cap = kvm_bindings::kvm_enable_cap {
                    cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                    args: [24, 0, 0, 0],
                    ..Default::default()
                };
                self.ioctl("KVM_ENABLE_CAP", vm.enable_cap(&cap))
                    .ok_or("setup: KVM_CAP_SPLIT_IRQCHIP refused")?;
            }
        }
        let region = executor.memory.iter().next().ok_or("setup: no memory")?;
        let slot = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram,
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the executor's memory outlives every VM it runs.
        let mapped = unsafe { vm.set_user_memory_region(slot) };
        self.ioctl("KVM_SET_USER_MEMORY_REGION", mapped)
            .ok_or("setup: the memory slot was refused")?;

        let buses = devices(&vm, &executor.memory, executor.plant_bug);

        let setups: Vec<VcpuSetup> = if input.vcpus.is_empty() {
            vec![default_setup()]
        } else {
            input.vcpus.iter().take(MAX_VCPUS).cloned().collect()
        };
        let mut vcpus = Vec::new();
        for (index, setup) in setups.iter().enumerate() {
            let Some(fd) = self.ioctl("KVM_CREATE_VCPU", vm.create_vcpu(index as u64)) else {
                return Err("setup: KVM_CREATE_VCPU failed".into());
            };
            self.set_up(&fd, setup, &executor.supported, input.program.len());
            vcpus.push(FuzzVcpu { fd, ended: None });
        }

        for op in &input.ops {
            self.op(op, &vm, &mut vcpus, &buses, executor, &executor.supported);
        }
        if let Some(last) = vcpus.iter().rev().find_map(|v| v.ended) {
            self.execution.outcome = last.into();
        }
        Ok(())
    }

    fn set_up(&mut self, fd: &VcpuFd, setup: &VcpuSetup, supported: &CpuId, program_len: usize) {
        let mut cpuid = supported.clone();
        if let Some(edit) = setup.cpuid_edit {
            edit_cpuid(&mut cpuid, edit);
        }
        self.ioctl("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid));
        if let Some(sregs) = self.ioctl("KVM_GET_SREGS", fd.get_sregs()) {
            let sregs = mode_sregs(sregs, setup.mode, setup.user);
            self.ioctl("KVM_SET_SREGS", fd.set_sregs(&sregs));
        }
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8] = setup.gprs;
        let entry = u64::from(setup.entry) % program_len.max(1) as u64;
        let regs = kvm_regs {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            r8,
            rsp: layout::STACK,
            rip: layout::CODE + entry,
            rflags: 0x2 | if setup.interrupts { 0x200 } else { 0 },
            ..Default::default()
        };
        self.ioctl("KVM_SET_REGS", fd.set_regs(&regs));
        for &(index, data) in &setup.msrs {
            self.set_msr(fd, index, data);
        }
    }

    /// `KVM_SET_MSRS` of one MSR; returns whether KVM took it.
    fn set_msr(&mut self, fd: &VcpuFd, index: u32, data: u64) -> bool {
        let entry = kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let Ok(msrs) = Msrs::from_entries(&[entry]) else {
            return false;
        };
        self.ioctl("KVM_SET_MSRS", fd.set_msrs(&msrs)) == Some(1)
    }

    fn get_msr(&mut self, fd: &VcpuFd, index: u32) -> Option<u64> {
        let entry = kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = Msrs::from_entries(&[entry]).ok()?;
        let read = self.ioctl("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        (read == 1).then(|| msrs.as_slice()[0].data)
    }

    fn op(
        &mut self,
        op: &Op,
        vm: &Arc<VmFd>,
        vcpus: &mut [FuzzVcpu],
        buses: &Buses,
        executor: &Executor,
        supported: &CpuId,
    ) {
        let count = vcpus.len();
        let pick = |vcpu: &u8| usize::from(*vcpu) % count;
        match op {
            Op::Run { vcpu } => {
                let index = pick(vcpu);
                self.run(&mut vcpus[index], buses);
            }
            Op::SetReg { vcpu, reg, value } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let Some(mut regs) = self.ioctl("KVM_GET_REGS", fd.get_regs()) else {
                    return;
                };
                let slot = match reg % 18 {
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
                };
                *slot = *value;
                let is_rflags = reg % 18 == 17;
                if self.ioctl("KVM_SET_REGS", fd.set_regs(&regs)).is_some()
                    && let Some(got) = self.ioctl("KVM_GET_REGS", fd.get_regs())
                    && !is_rflags
                {
                    let gprs = |r: &kvm_regs| {
                        [
                            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9,
                            r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rip,
                        ]
                    };
                    let index = usize::from(reg % 18);
                    self.round_trip(
                        format!("KVM_SET_REGS/KVM_GET_REGS register {index}"),
                        gprs(&regs)[index],
                        gprs(&got)[index],
                    );
                }
            }
            Op::SetSreg { vcpu, field, value } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let Some(mut sregs) = self.ioctl("KVM_GET_SREGS", fd.get_sregs()) else {
                    return;
                };
                match field % 10 {
                    0 => sregs.cr0 = *value,
                    1 => sregs.cr2 = *value,
                    2 => sregs.cr3 = *value,
                    3 => sregs.cr4 = *value,
                    4 => sregs.cr8 = *value,
                    5 => sregs.efer = *value,
                    6 => sregs.cs.selector = *value as u16,
                    7 => set_attributes(&mut sregs.cs, *value),
                    8 => set_attributes(&mut sregs.ss, *value),
                    _ => sregs.apic_base = *value,
                }
                if self.ioctl("KVM_SET_SREGS", fd.set_sregs(&sregs)).is_some()
                    && let Some(got) = self.ioctl("KVM_GET_SREGS", fd.get_sregs())
                    && field % 10 == 1
                {
                    self.round_trip("KVM_SET_SREGS/KVM_GET_SREGS CR2", sregs.cr2, got.cr2);
                }
            }
            Op::SetMsr { vcpu, index, value } => {
                let fd = &vcpus[pick(vcpu)].fd;
                if self.set_msr(fd, *index, *value)
                    && ROUND_TRIP_MSRS.contains(index)
                    && (canonical(*value) || *index == 0xc000_0081)
                    && let Some(got) = self.get_msr(fd, *index)
                {
                    self.round_trip(format!("MSR {index:#x}"), *value, got);
                }
            }
            Op::GetMsr { vcpu, index } => {
                let fd = &vcpus[pick(vcpu)].fd;
                self.get_msr(fd, *index);
            }
            Op::SetCpuid { vcpu, edit } => {
                let mut cpuid = supported.clone();
                edit_cpuid(&mut cpuid, *edit);
                let fd = &vcpus[pick(vcpu)].fd;
                self.ioctl("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid));
            }
            Op::SetDebugRegs { vcpu, db, dr7 } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let regs = kvm_debugregs {
                    db: *db,
                    dr6: 0xffff_0ff0,
                    dr7: *dr7,
                    ..Default::default()
                };
                if self
                    .ioctl("KVM_SET_DEBUGREGS", fd.set_debug_regs(&regs))
                    .is_some()
                    && let Some(got) = self.ioctl("KVM_GET_DEBUGREGS", fd.get_debug_regs())
                {
                    for (i, (&set, &got)) in db.iter().zip(&got.db).enumerate() {
                        self.round_trip(
                            format!("KVM_SET_DEBUGREGS/KVM_GET_DEBUGREGS DR{i}"),
                            set,
                            got,
                        );
                    }
                }
            }
            Op::SetXcr0 { vcpu, value } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let mut xcrs = kvm_xcrs {
                    nr_xcrs: 1,
                    ..Default::default()
                };
                xcrs.xcrs[0].xcr = 0;
                xcrs.xcrs[0].value = *value;
                if self.ioctl("KVM_SET_XCRS", fd.set_xcrs(&xcrs)).is_some()
                    && let Some(got) = self.ioctl("KVM_GET_XCRS", fd.get_xcrs())
                {
                    let xcr0 = got.xcrs[..got.nr_xcrs.min(16) as usize]
                        .iter()
                        .find(|x| x.xcr == 0)
                        .map_or(0, |x| x.value);
                    self.round_trip("KVM_SET_XCRS/KVM_GET_XCRS XCR0", *value, xcr0);
                }
            }
            Op::InjectEvent {
                vcpu,
                exception,
                error_code,
            } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let Some(mut events) = self.ioctl("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())
                else {
                    return;
                };
                match exception {
                    Some(vector) => {
                        events.exception.injected = 1;
                        events.exception.nr = *vector;
                        events.exception.has_error_code = u8::from(error_code.is_some());
                        events.exception.error_code = error_code.unwrap_or(0);
                    }
                    None => events.nmi.injected = 1,
                }
                self.ioctl("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&events));
            }
            Op::SetMpState { vcpu, state } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let mp = kvm_mp_state { mp_state: *state };
                self.ioctl("KVM_SET_MP_STATE", fd.set_mp_state(mp));
                self.ioctl("KVM_GET_MP_STATE", fd.get_mp_state());
            }
            Op::SetLapic {
                vcpu,
                offset,
                value,
            } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let Some(mut lapic) = self.ioctl("KVM_GET_LAPIC", fd.get_lapic()) else {
                    return;
                };
                let at = usize::from(offset % 0x400) & !0xf;
                for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
                    lapic.regs[at + i] = byte as i8 as _;
                }
                self.ioctl("KVM_SET_LAPIC", fd.set_lapic(&lapic));
            }
            Op::IrqLine { gsi, level } => {
                self.ioctl("KVM_IRQ_LINE", vm.set_irq_line(*gsi, *level));
            }
            Op::SignalMsi { address, data } => {
                let msi = kvm_msi {
                    address_lo: *address as u32,
                    address_hi: (*address >> 32) as u32,
                    data: *data,
                    ..Default::default()
                };
                self.ioctl("KVM_SIGNAL_MSI", vm.signal_msi(msi));
            }
            Op::Interrupt { vcpu, vector } => {
                let fd = &vcpus[pick(vcpu)].fd;
                let result = interrupt(fd, *vector);
                self.ioctl("KVM_INTERRUPT", result);
            }
            Op::Nmi { vcpu } => {
                let fd = &vcpus[pick(vcpu)].fd;
                self.ioctl("KVM_NMI", fd.nmi());
            }
            Op::SetSlot { page, read_only } => {
                let region = executor.extra.iter().next();
                let Some(region) = region else {
                    return;
                };
                let slot = kvm_userspace_memory_region {
                    slot: 1,
                    flags: if *read_only { KVM_MEM_READONLY } else { 0 },
                    // Above RAM (16 slots of 64 KiB at most), below 4 GiB.
                    guest_phys_addr: page.map_or(0, |p| 0x10_0000 + u64::from(p) * 0x1_0000),
                    memory_size: if page.is_some() {
                        layout::EXTRA_SLOT
                    } else {
                        0
                    },
                    userspace_addr: region.as_ptr() as u64,
                };
                // SAFETY: the executor's extra memory outlives every VM.
                let result = unsafe { vm.set_user_memory_region(slot) };
                self.ioctl("KVM_SET_USER_MEMORY_REGION", result);
            }
        }
    }

    /// `KVM_RUN` until a final exit, the exit budget, or the time budget.
    fn run(&mut self, vcpu: &mut FuzzVcpu, buses: &Buses) {
        if vcpu.ended.is_some() {
            return;
        }
        let run: *mut kvm_run = vcpu.fd.get_kvm_run();
        let _guard = RunGuard::new(run);
        let mut exits = 0;
        let mut spinning = Duration::ZERO;
        while exits < self.budget.exits_per_run {
            if self.guest_time >= self.budget.guest_time {
                vcpu.ended = Some("time-budget");
                return;
            }
            self.timer.arm(self.budget.slice);
            let started = Instant::now();
            let cpu_before = thread_cpu_time();
            let result = vcpu.fd.run();
            let took = started.elapsed();
            let cpu = thread_cpu_time().saturating_sub(cpu_before);
            self.timer.disarm();
            // The timer's signal may have landed after KVM_RUN returned (it
            // is handled by now, on the way out of the disarming call): it
            // must not cut the next run short.
            // SAFETY: `run` is this vCPU's mapped kvm_run.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 0) };
            self.guest_time += took;
            if took > self.budget.slice + self.budget.hang {
                self.execution.findings.push(Finding::Hang {
                    millis: (took - self.budget.slice).as_millis() as u64,
                });
            }
            let exit = match result {
                Ok(exit) => exit,
                // Waiting for INIT/SIPI: KVM_RUN returns at once, and will
                // until another vCPU sends them.
                Err(e) if e.errno() == libc::EAGAIN => {
                    self.note_stop("blocked");
                    vcpu.ended = Some("blocked");
                    return;
                }
                Err(e) if e.errno() == libc::EINTR => {
                    if took < self.budget.slice {
                        // A late signal from the previous run: run again.
                        continue;
                    }
                    // A whole slice without an exit. Halted (or waiting
                    // for a SIPI) in the kernel: nothing more will happen.
                    // Runnable: keep going until it has spun for long. The
                    // probe is not counted: how often it happens depends on
                    // the host's speed.
                    let runnable = vcpu
                        .fd
                        .get_mp_state()
                        .is_ok_and(|mp| mp.mp_state == kvm_bindings::KVM_MP_STATE_RUNNABLE);
                    // What the vCPU used, not the wall time: a slice spent
                    // waiting for the host CPU says nothing about the guest.
                    spinning += cpu;
                    if runnable && spinning < self.budget.slice + self.budget.spin {
                        continue;
                    }
                    let name = if runnable { "spinning" } else { "blocked" };
                    self.note_stop(name);
                    vcpu.ended = Some(name);
                    return;
                }
                Err(e) => {
                    if !DOCUMENTED_ERRNOS.contains(&e.errno()) && e.errno() != libc::ENOEXEC {
                        self.execution.findings.push(Finding::UndocumentedErrno {
                            ioctl: "KVM_RUN".into(),
                            errno: e.errno(),
                        });
                    }
                    vcpu.ended = Some("run-error");
                    return;
                }
            };
            *self.execution.ioctls.entry("KVM_RUN").or_default() += 1;
            exits += 1;
            spinning = Duration::ZERO;
            let name = exit_name(&exit);
            self.note_exit(name);
            let end = match exit {
                VcpuExit::IoOut(port, data) => {
                    let size = io_size(run);
                    matches!(
                        crate::vcpu::port_out(&buses.pio, port, size, data),
                        crate::vcpu::Step::End(_)
                    )
                }
                VcpuExit::IoIn(port, data) => {
                    crate::vcpu::port_in(&buses.pio, port, io_size(run), data);
                    false
                }
                VcpuExit::MmioRead(addr, data) => {
                    buses.mmio.read(addr, data);
                    false
                }
                VcpuExit::MmioWrite(addr, data) => {
                    matches!(buses.mmio.write(addr, data), Action::Exit(_))
                }
                // Halted without an in-kernel LAPIC: nothing happens until
                // an operation injects an interrupt, so this run is over.
                VcpuExit::Hlt => return,
                VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::Debug(_) => false,
                VcpuExit::InternalError => {
                    // SAFETY: KVM filled in the `internal` member for this exit.
                    let suberror = unsafe { (*run).__bindgen_anon_1.internal.suberror };
                    *self.execution.internal_errors.entry(suberror).or_default() += 1;
                    true
                }
                VcpuExit::FailEntry(reason, _) => {
                    self.execution.findings.push(Finding::FailEntry { reason });
                    true
                }
                _ => true,
            };
            if end {
                vcpu.ended = Some(if name == "io-out" || name == "mmio-write" {
                    "guest-exit"
                } else {
                    name
                });
                return;
            }
        }
    }

    /// Why the harness stopped a vCPU that had no exit: in the trace, not
    /// among the exit reasons.
    fn note_stop(&mut self, why: &'static str) {
        if self.execution.trace.len() < TRACE_MAX {
            self.execution.trace.push(why);
        }
    }

    fn note_exit(&mut self, name: &'static str) {
        *self.execution.exits.entry(name).or_default() += 1;
        if self.execution.trace.len() < TRACE_MAX {
            self.execution.trace.push(name);
        }
    }
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// `KVM_INTERRUPT` (kvm-ioctls has no wrapper for it): queues an external
/// interrupt on a vCPU without an in-kernel irqchip.
fn interrupt(fd: &VcpuFd, vector: u32) -> Result<(), kvm_ioctls::Error> {
    use std::os::fd::AsRawFd;
    let irq = kvm_bindings::kvm_interrupt { irq: vector };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt, which lives across the
    // call; the descriptor is a vCPU's.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_INTERRUPT(), &irq) };
    let _ = fd.as_raw_fd();
    if ret == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

/// CPU time this thread has used (guest time in `KVM_RUN` included).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The name of an exit reason.
fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::IoOut(..) => "io-out",
        VcpuExit::IoIn(..) => "io-in",
        VcpuExit::MmioRead(..) => "mmio-read",
        VcpuExit::MmioWrite(..) => "mmio-write",
        VcpuExit::Unknown => "unknown",
        VcpuExit::Exception => "exception",
        VcpuExit::Hypercall(..) => "hypercall",
        VcpuExit::Debug(_) => "debug",
        VcpuExit::Hlt => "hlt",
        VcpuExit::IrqWindowOpen => "irq-window-open",
        VcpuExit::Shutdown => "shutdown",
        VcpuExit::FailEntry(..) => "fail-entry",
        VcpuExit::Intr => "intr",
        VcpuExit::SetTpr => "set-tpr",
        VcpuExit::TprAccess => "tpr-access",
        VcpuExit::Nmi => "nmi",
        VcpuExit::InternalError => "internal-error",
        VcpuExit::SystemEvent(..) => "system-event",
        VcpuExit::IoapicEoi(_) => "ioapic-eoi",
        VcpuExit::Hyperv => "hyperv",
        VcpuExit::X86Rdmsr(_) => "x86-rdmsr",
        VcpuExit::X86Wrmsr(_) => "x86-wrmsr",
        _ => "other",
    }
}

/// The element size of the port I/O exit being handled.
fn io_size(run: *mut kvm_run) -> usize {
    // SAFETY: called only while handling KVM_EXIT_IO, when KVM filled in
    // the `io` member.
    usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1)
}

fn default_setup() -> VcpuSetup {
    VcpuSetup {
        mode: Mode::Long64,
        user: false,
        gprs: [0; 8],
        interrupts: false,
        entry: 0,
        msrs: Vec::new(),
        cpuid_edit: None,
    }
}

/// Sets the first `len` bytes of `memory` (one region) to `byte`, at
/// memset speed: vm-memory's volatile copies would cost more than the VM.
fn fill(memory: &GuestMemory, len: u64, byte: u8) -> Result<(), String> {
    let region = memory.iter().next().ok_or("setup: no memory")?;
    if len > vm_memory::GuestMemoryRegion::len(region) {
        return Err(format!(
            "setup: {len:#x} bytes of guest memory asked, more than there are"
        ));
    }
    // SAFETY: the region is this executor's own mapping of at least `len`
    // bytes, and no VM runs while inputs are set up.
    unsafe { std::ptr::write_bytes(region.as_ptr(), byte, len as usize) };
    Ok(())
}

/// Fills the RAM an input uses and writes the real-mode vectors, the
/// identity map and the program.
fn prepare_memory(memory: &GuestMemory, ram: u64, program: &[u8]) -> Result<(), String> {
    // HLT everywhere but in the tables: code that strays from the program
    // stops at once instead of running through memory, and how far it got
    // can never depend on how fast the host emulates it.
    fill(memory, ram, 0xf4)?;
    let err = |e: vm_memory::GuestMemoryError| format!("setup: guest memory: {e}");
    memory
        .write_slice(&[0u8; 0x6000], GuestAddress(layout::PML4))
        .map_err(err)?;
    // Present, writable, user; PS on the directory entries: 2 MiB pages.
    const FLAGS: u64 = 0x7;
    memory
        .write_obj(layout::PDPT | FLAGS, GuestAddress(layout::PML4))
        .map_err(err)?;
    for gib in 0..4u64 {
        memory
            .write_obj(
                (layout::PD + gib * 0x1000) | FLAGS,
                GuestAddress(layout::PDPT + gib * 8),
            )
            .map_err(err)?;
    }
    let directories: Vec<u8> = (0..2048u64)
        .flat_map(|i| ((i << 21) | FLAGS | 0x80).to_le_bytes())
        .collect();
    memory
        .write_slice(&directories, GuestAddress(layout::PD))
        .map_err(err)?;
    // A real-mode exception or INT lands on `hlt; iret` rather than on
    // address 0, whose zeroes would run round the 64 KiB segment for ever.
    let ivt: Vec<u8> = (0..256)
        .flat_map(|_| [(layout::REAL_MODE_HANDLER as u16).to_le_bytes(), [0, 0]].concat())
        .collect();
    memory.write_slice(&ivt, GuestAddress(0)).map_err(err)?;
    memory
        .write_slice(&[0xf4, 0xcf], GuestAddress(layout::REAL_MODE_HANDLER))
        .map_err(err)?;
    let len = program.len().min(layout::CODE_MAX);
    memory
        .write_slice(&program[..len], GuestAddress(layout::CODE))
        .map_err(err)
}

fn set_attributes(seg: &mut kvm_segment, value: u64) {
    seg.type_ = (value & 0xf) as u8;
    seg.s = (value >> 4 & 1) as u8;
    seg.dpl = (value >> 5 & 3) as u8;
    seg.present = (value >> 7 & 1) as u8;
    seg.avl = (value >> 12 & 1) as u8;
    seg.l = (value >> 13 & 1) as u8;
    seg.db = (value >> 14 & 1) as u8;
    seg.g = (value >> 15 & 1) as u8;
    seg.unusable = (value >> 16 & 1) as u8;
}

/// Flat segments for `mode` at CPL 0 or 3.
fn mode_sregs(mut sregs: kvm_sregs, mode: Mode, user: bool) -> kvm_sregs {
    let user = user && mode != Mode::Real;
    let dpl = if user { 3 } else { 0 };
    let (code_l, code_db) = match mode {
        Mode::Real | Mode::Protected16 => (0, 0),
        Mode::Protected32 | Mode::Paged32 => (0, 1),
        Mode::Long64 => (1, 0),
    };
    let flat = |type_, selector: u16, l, db| kvm_segment {
        base: 0,
        limit: if mode == Mode::Real {
            0xffff
        } else {
            0xffff_ffff
        },
        selector: selector | u16::from(dpl),
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: u8::from(mode != Mode::Real),
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let (code_sel, data_sel) = if mode == Mode::Real {
        (0, 0)
    } else {
        (0x08, 0x10)
    };
    sregs.cs = flat(0xb, code_sel, code_l, code_db);
    let data = flat(0x3, data_sel, 0, code_db | u8::from(mode == Mode::Long64));
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    use crate::long_mode::{
        CR0_ET as ET, CR0_NE as NE, CR0_PE as PE, CR0_PG as PG, CR4_OSFXSR as OSFXSR,
        CR4_PAE as PAE, EFER_LMA as LMA, EFER_LME as LME,
    };
    let (cr0, cr4, efer) = match mode {
        Mode::Real => (ET, 0, 0),
        Mode::Protected16 | Mode::Protected32 => (PE | ET | NE, OSFXSR, 0),
        Mode::Paged32 => (PE | ET | NE | PG, PAE | OSFXSR, 0),
        Mode::Long64 => (PE | ET | NE | PG, PAE | OSFXSR, LME | LMA),
    };
    sregs.cr0 = cr0;
    sregs.cr4 = cr4;
    sregs.efer = efer;
    // The PAE tables of 32-bit paging are the PDPT (its first four entries).
    sregs.cr3 = if mode == Mode::Paged32 {
        layout::PDPT
    } else {
        layout::PML4
    };
    sregs
}

/// XORs `mask` into register `reg` (EAX, EBX, ECX, EDX) of every entry of
/// `leaf`.
fn edit_cpuid(cpuid: &mut CpuId, (leaf, reg, mask): (u32, u8, u32)) {
    for entry in cpuid
        .as_mut_slice()
        .iter_mut()
        .filter(|e| e.function == leaf)
    {
        match reg % 4 {
            0 => entry.eax ^= mask,
            1 => entry.ebx ^= mask,
            2 => entry.ecx ^= mask,
            _ => entry.edx ^= mask,
        }
    }
}

/// Deferred work done at once: the same input always sees it finish at the
/// same point.
struct Immediate;

impl Deferred for Immediate {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        work();
    }
}

/// Interrupt lines and MSIs into the VM, failures ignored: without an
/// irqchip they fail, which is the input's business.
struct QuietLinks {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl InterruptLine for QuietLinks {
    fn set_level(&self, high: bool) {
        let _ = self.vm.set_irq_line(self.gsi, high);
    }
}

impl MsiSender for QuietLinks {
    fn send(&self, address: u64, data: u32) {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        let _ = self.vm.signal_msi(msi);
    }
}

/// A device with a bug planted on purpose, to check that the fuzzer finds
/// and reproduces one: it panics when the guest writes the trigger byte.
struct PlantedBug;

impl BusDevice for PlantedBug {
    fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
        assert!(
            data.first() != Some(&layout::PLANTED_BUG_TRIGGER),
            "planted bug: {:#x} written to port {:#x}",
            layout::PLANTED_BUG_TRIGGER,
            layout::PLANTED_BUG_PORT
        );
        Action::Continue
    }
}

/// The test devices, fresh for each input (so no state leaks between
/// inputs): isa-debug-exit, pc-testdev, and pci-testdev and edu on PCI.
fn devices(vm: &Arc<VmFd>, memory: &GuestMemory, plant_bug: bool) -> Arc<Buses> {
    use ktvmm_abi::{pci as slots, ports};
    let buses = Arc::new(Buses::default());
    let place = |bus: &Bus, device: crate::bus::SharedDevice, base: u64, len: u64| {
        // The layout is fixed and has no overlaps.
        let _ = bus.insert(device, base, len);
    };
    place(
        &buses.pio,
        Arc::new(Mutex::new(DebugExit)),
        u64::from(ports::DEBUG_EXIT),
        debug_exit::LEN,
    );
    if plant_bug {
        place(
            &buses.pio,
            Arc::new(Mutex::new(PlantedBug)),
            u64::from(layout::PLANTED_BUG_PORT),
            1,
        );
    }
    let pages = Arc::new(GuestPages::new(memory.clone()));
    place(
        &buses.pio,
        Arc::new(Mutex::new(PcTestdevPorts::new(pages))),
        u64::from(ports::PC_TESTDEV_REGISTER),
        pc_testdev::PORTS_LEN,
    );
    let lines = (0..u32::from(ports::PC_TESTDEV_IRQS))
        .map(|gsi| {
            Box::new(QuietLinks {
                vm: vm.clone(),
                gsi,
            }) as Box<dyn InterruptLine>
        })
        .collect();
    place(
        &buses.pio,
        Arc::new(Mutex::new(PcTestdevIrqs::new(lines))),
        u64::from(ports::PC_TESTDEV_IRQ_BASE),
        u64::from(ports::PC_TESTDEV_IRQS),
    );
    place(
        &buses.mmio,
        Arc::new(Mutex::new(PcTestdevIomem::default())),
        ktvmm_abi::layout::PC_TESTDEV_IOMEM,
        ktvmm_abi::layout::PC_TESTDEV_IOMEM_SIZE,
    );
    let root = PciRoot::new(Arc::downgrade(&buses), vm.clone());
    let edu_gsi = slots::intx_gsi(slots::EDU_SLOT, 1);
    let edu = Edu::new(EduLinks {
        intx: Arc::new(QuietLinks {
            vm: vm.clone(),
            gsi: edu_gsi,
        }),
        msi: Arc::new(QuietLinks {
            vm: vm.clone(),
            gsi: 0,
        }),
        dma: Arc::new(GuestDma::new(memory.clone())),
        deferred: Arc::new(Immediate),
    });
    crate::bus::lock(&root).add(
        slots::HOST_BRIDGE_SLOT,
        Arc::new(Mutex::new(HostBridge::default())),
    );
    crate::platform::add_pci_testdevs(&root, edu);
    place(
        &buses.pio,
        Arc::new(Mutex::new(PciConfigIo::new(root))),
        u64::from(ports::PCI_CONFIG_ADDRESS),
        pci::CONFIG_IO_PORTS,
    );
    buses
}

/// A one-shot timer that sends this process the kick signal, whose
/// handler sets `immediate_exit` in the `kvm_run` of the vCPU running on
/// this thread: a `KVM_RUN` cannot outlive its slice by more than the
/// time KVM takes to notice a pending signal.
struct SliceTimer(libc::timer_t);

impl SliceTimer {
    fn new() -> Result<Self, ExecError> {
        // SAFETY: a zeroed sigevent is valid; we fill in what we use.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = vmm_sys_util::signal::SIGRTMIN();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(ExecError::Host(format!(
                "timer_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self(timer))
    }

    fn set(&self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the timer is ours and the spec is valid.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }

    fn arm(&self, slice: Duration) {
        self.set(slice.max(Duration::from_micros(1)));
    }

    fn disarm(&self) {
        self.set(Duration::ZERO);
    }
}

impl Drop for SliceTimer {
    fn drop(&mut self) {
        // SAFETY: the timer is ours.
        unsafe { libc::timer_delete(self.0) };
    }
}
