//! Executing one input: a fresh VM (small RAM, the real device buses), the
//! vCPUs in the modes asked for, then the input's KVM calls and guest runs
//! in order, each call checked by the oracles.
//!
//! Everything runs on the calling thread, vCPUs taking turns, so the same
//! input makes the same calls in the same order every time. A run is
//! bounded three ways: exits handled (the input's own count and a total),
//! the thread's CPU time (a guest spinning without exits), and a wall-clock
//! hang limit; a POSIX timer aimed at this thread kicks `KVM_RUN` out with
//! `immediate_exit` (see [`ktvmm_vmm::kick`]) so every bound is checked even
//! when the guest never exits.

mod devices;
mod exits;
mod ops;
mod slots;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE, Msrs, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_run,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::bounds::{CpuTimer, Watcher, thread_cpu_time};
use super::catch::capture_panics;
use super::draw::is_clock_msr;
use super::guest::{RamTemplate, mode_sregs};
use super::input::{Input, Op, VcpuSetup};
use super::oracle::{Finding, documented};
use super::planted::{self, PlantedBug};
use super::program::Mode;
use super::program::{CODE_ADDR, EXTRA_SLOTS_ADDR, RAM_SIZE, STACK_TOP};
use super::rules::{GuestVendor, Rule};
use devices::bare_buses;
pub use exits::exit_name;
use exits::handle_exit;
use ktvmm_vmm::cpu::{cpuid, model as cpu_model};
use ktvmm_vmm::kick::{self, RunGuard};
use ktvmm_vmm::memory::GuestMemory;
use ktvmm_vmm::platform::bus::Buses;
use ktvmm_vmm::platform::{Machine, Platform};
pub use ops::SREG_FIELDS;
use ops::edit_cpuid;
use slots::{HostPages, set_slot, slot_region};

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
        // This thread makes every KVM call of the executions: what the
        // kernel logs naming it is about this harness's VMs.
        ktvmm_vmm::host::kmsg::claim_this_thread();
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
        // `max`: no phys-bits or VMX controls to check.
        let host = cpu_model::HostCpu {
            supported,
            extra: cpu_model::extra_flags(kvm.check_extension(Cap::TscDeadlineTimer)),
            smaller_maxphyaddr: false,
            vmx_controls: Vec::new(),
        };
        let cpuid = cpu_model::build(&Default::default(), &host).map_err(|e| ExecError::Setup {
            what: "the CPU model",
            source: io::Error::other(e.to_string()),
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
                ops::op(&mut built, op, &mut calls);
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
                iommu: false,
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
            let vendor = match calls.call("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid)) {
                Some(()) => GuestVendor::of(cpuid.as_slice()),
                // KVM holds no CPUID for the vCPU.
                None => GuestVendor::of(&[]),
            };
            let vcpu = Vcpu {
                fd,
                cpuid,
                vendor,
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

    fn round_trip(&mut self, ioctl: &str, rule: &Rule, detail: impl FnOnce() -> String) {
        self.record.findings.push(Finding::RoundTrip {
            ioctl: ioctl.into(),
            detail: detail(),
            rule: rule.id.into(),
        });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        self.record.note(self.trace, line);
    }
}

struct Vcpu {
    fd: VcpuFd,
    /// The CPUID the input gave the vCPU (edits build on it).
    cpuid: CpuId,
    /// The vendor of the CPUID KVM holds: the last `KVM_SET_CPUID2` that
    /// succeeded (KVM's MSR rules differ by it).
    vendor: GuestVendor,
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
