//! Building a VM from a [`VmConfig`] and running it to an [`Outcome`].
//!
//! [`Vm::build`] is the whole recipe, top to bottom: check the input, open
//! KVM, create the VM and its memory, the interrupt controllers, load the
//! kernel, write the boot structures, attach devices, create the vCPUs.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ktvmm_abi::layout;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::loader::KernelImage;
use crate::boot::{self, BootError, Kernel, Protocol};
use crate::cpu::cpuid;
use crate::cpu::model::{self as cpu_model, CpuModelError, CpuSpec};
use crate::debug::core_dump::{self, CpuState, RamRange};
use crate::debug::gdb;
use crate::error::{KvmCallError, kvm_err};
use crate::host::kvm_stats;
use crate::kick;
use crate::memory::{GuestMemory, MemoryError, RamLayout};
use crate::platform::irq_routing;
use crate::platform::{Machine, Platform, PlatformError};
use crate::run::forensics::VcpuSnapshot;
use crate::run::liveness::{self, VcpuLiveness, Watch};
use crate::run::outcome::Outcome;
use crate::run::sleep::Sleep;
use crate::run::vcpu::{Vcpu, VcpuEnd};

/// Everything that describes one VM.
pub struct VmConfig {
    /// The kernel to boot.
    pub kernel: KernelImage,
    /// Number of vCPUs.
    pub cpus: u32,
    /// RAM in MiB.
    pub mem_mib: u64,
    /// The guest's command line.
    pub cmdline: String,
    /// An initial ramdisk, if any.
    pub initrd: Option<KernelImage>,
    /// Where the guest's console (COM1) goes.
    pub console: Box<dyn Write + Send>,
    /// Whether the test devices are there (a bare platform without them).
    pub testdevs: bool,
    /// The CPU model (`-cpu`).
    pub cpu: CpuSpec,
    /// Whether there is a PIT (QEMU's `-machine pit=off` leaves it out).
    pub pit: bool,
    /// The boot protocol, when not the one the file calls for.
    pub boot: Option<Protocol>,
    /// An Intel VT-d unit remapping edu's DMA and MSIs (QEMU:
    /// `-device intel-iommu,intremap=on`).
    pub iommu: bool,
}

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The kernel could not be placed, loaded or started.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The machine's devices could not be set up.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// No vCPUs asked for.
    #[error("invalid vCPU count 0: a VM needs at least one")]
    NoCpus,
    /// More vCPUs than KVM or the boot layout allow.
    #[error("{cpus} vCPUs asked for, but at most {max} are possible here ({why})")]
    TooManyCpus {
        /// Asked for.
        cpus: u32,
        /// The limit.
        max: u32,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The CPU model cannot be given.
    #[error("-cpu {spec}: {source}")]
    CpuModel {
        /// The model asked for.
        spec: String,
        /// Why not.
        source: CpuModelError,
    },
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    NoKvm(kvm_ioctls::Error),
    /// KVM lacks something ktvmm needs.
    #[error("KVM does not support {0}, which ktvmm needs")]
    MissingCap(&'static str),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmCallError),
}

/// How long each step of [`Vm::build`] (and the start of [`Vm::run`]) took.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Steps in order, with their durations.
    pub steps: Vec<(&'static str, Duration)>,
    last: Option<Instant>,
}

impl Timings {
    fn start() -> Self {
        Self {
            steps: Vec::new(),
            last: Some(Instant::now()),
        }
    }

    fn restart(&mut self) {
        self.last = Some(Instant::now());
    }

    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        let since = self.last.map_or(Duration::ZERO, |last| now - last);
        self.steps.push((name, since));
        self.last = Some(now);
    }
}

/// Capabilities ktvmm cannot work without.
const REQUIRED_CAPS: [(Cap, &str); 4] = [
    (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
    (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (
        Cap::ImmediateExit,
        "immediate_exit (KVM_CAP_IMMEDIATE_EXIT)",
    ),
];

/// A built VM, ready to run.
pub struct Vm {
    // Field order is drop order: vCPUs and devices go before the VM and its memory.
    vcpus: Vec<VcpuFd>,
    platform: Platform,
    _vm: Arc<VmFd>,
    _memory: GuestMemory,
    timings: Timings,
    counters: Option<kvm_stats::KvmCounters>,
    keep_cpu_state: bool,
    cpu_states: Vec<CpuState>,
    gdb: Option<(std::net::TcpListener, bool, gdb::arch::RegisterFile)>,
}

impl Vm {
    /// Builds the VM described by `config`.
    pub fn build(config: VmConfig) -> Result<Self, VmError> {
        let mut timings = Timings::start();

        // Check the input before touching KVM.
        let image_err = |source| BootError::Image {
            name: config.kernel.name.clone(),
            source,
        };
        let kernel = Kernel::inspect_as(&config.kernel.bytes, config.boot).map_err(image_err)?;
        if config.cpus == 0 {
            return Err(VmError::NoCpus);
        }
        if config.cpus > layout::MAX_CPUS {
            return Err(VmError::TooManyCpus {
                cpus: config.cpus,
                max: layout::MAX_CPUS,
                why: "ktvmm's boot layout",
            });
        }
        let ram = RamLayout::new(config.mem_mib)?;
        let initrd_len = config.initrd.as_ref().map_or(0, |i| i.bytes.len() as u64);
        let placement = boot::place(
            kernel,
            ram,
            config.cpus,
            initrd_len,
            &config.kernel.name,
            &config.cmdline,
        )?;
        timings.step("check input");

        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        // KVM_GET_SUPPORTED_CPUID is one of the slowest setup calls on some
        // hosts (the kernel executes CPUID for every leaf, which traps when
        // the host is itself virtual); it runs alongside the next steps.
        let supported_cpuid = thread::spawn(fetch_supported_cpuid);
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus() as u32;
        if config.cpus > max_vcpus {
            return Err(VmError::TooManyCpus {
                cpus: config.cpus,
                max: max_vcpus,
                why: "KVM_CAP_MAX_VCPUS",
            });
        }
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        timings.step("open KVM, create VM");

        let memory = ram.allocate()?;
        register_memory(&vm, &memory)?;
        timings.step("guest memory");

        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let routing = irq_routing::pc_routing().map_err(|_| {
            kvm_err("building the GSI routing table")(kvm_ioctls::Error::new(libc::ENOMEM))
        })?;
        vm.set_gsi_routing(&routing)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        if config.pit {
            vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        timings.step("irqchip and PIT");

        let initrd = config
            .initrd
            .as_ref()
            .map(|i| (i.bytes.as_slice(), i.name.as_str()));
        let entry = placement.write(
            &memory,
            &config.kernel.bytes,
            initrd,
            config.cpus,
            config.iommu,
        )?;
        timings.step("load kernel, boot data");

        let machine = Machine {
            ram_bytes: ram.size,
            // At most MAX_CPUS (1024), checked above.
            cpus: config.cpus as u16,
            iommu: config.iommu,
        };
        let platform = Platform::attach(&vm, &memory, config.console, config.testdevs, machine)?;
        timings.step("devices");

        let supported = supported_cpuid
            .join()
            .unwrap_or_else(|_| Err(kvm_ioctls::Error::new(libc::EIO)))
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let host = cpu_model::HostCpu {
            supported,
            extra: cpu_model::extra_flags(vm.check_extension(Cap::TscDeadlineTimer)),
            smaller_maxphyaddr: cpu_model::smaller_maxphyaddr(&kvm),
            vmx_controls: if config.cpu.names_vmx_controls() {
                cpu_model::vmx_controls(&kvm)
            } else {
                Vec::new()
            },
        };
        let model = cpu_model::build(&config.cpu, &host).map_err(|source| VmError::CpuModel {
            spec: config.cpu.to_string(),
            source,
        })?;
        let mut vcpus = Vec::with_capacity(config.cpus as usize);
        for cpu in 0..config.cpus {
            let fd = vm
                .create_vcpu(u64::from(cpu))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&cpuid::for_vcpu(&model, cpu))
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            placement.set_up_vcpu(&fd, cpu, entry)?;
            vcpus.push(fd);
        }
        timings.step("vCPUs");

        Ok(Self {
            vcpus,
            platform,
            _vm: vm,
            _memory: memory,
            timings,
            counters: None,
            keep_cpu_state: false,
            cpu_states: Vec::new(),
            gdb: None,
        })
    }

    /// Serves GDB on `listener` during the run, showing it `registers`;
    /// with `hold`, the vCPUs wait for the debugger before the guest's
    /// first instruction.
    pub fn debug_with(
        &mut self,
        listener: std::net::TcpListener,
        hold: bool,
        registers: gdb::arch::RegisterFile,
    ) {
        self.gdb = Some((listener, hold, registers));
    }

    /// Makes the run keep every vCPU's registers for [`Vm::write_core`].
    pub fn keep_cpu_state(&mut self, keep: bool) {
        self.keep_cpu_state = keep;
    }

    /// Writes an ELF core of the guest (all RAM, each vCPU's registers) to
    /// `out`, after a run with [`Vm::keep_cpu_state`] on.
    pub fn write_core<W: std::io::Write + std::io::Seek>(
        &self,
        out: &mut W,
    ) -> std::io::Result<()> {
        let ram: Vec<RamRange> = self
            ._memory
            .iter()
            .map(|region| RamRange {
                gpa: region.start_addr().0,
                // SAFETY: the mapping lives as long as `self`, and every
                // vCPU has stopped, so nothing writes it while it is read.
                bytes: unsafe {
                    std::slice::from_raw_parts(region.as_ptr(), region.len() as usize)
                },
            })
            .collect();
        core_dump::write(out, &ram, &self.cpu_states)
    }

    /// KVM's counters for the VM and its vCPUs at the end of its run;
    /// `None` before the run, or where KVM has no binary statistics.
    pub fn kvm_counters(&self) -> Option<&kvm_stats::KvmCounters> {
        self.counters.as_ref()
    }

    /// How long each build step, and starting the vCPU threads, took.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Runs the guest until it exits, fails, or `timeout` expires. A VM runs
    /// once; afterwards it only holds KVM state until it is dropped.
    ///
    /// Dropping a VM costs KVM tens of milliseconds on some hosts (the
    /// in-kernel irqchip and PIT unregister devices behind SRCU grace
    /// periods); a caller that is about to exit can hand that to another
    /// process instead (see `ktvmm run`).
    pub fn run(&mut self, timeout: Option<Duration>) -> Outcome {
        if self.vcpus.is_empty() {
            return Outcome::VmmError {
                message: "this VM has already run".into(),
            };
        }
        if let Err(e) = kick::install() {
            return Outcome::VmmError {
                message: format!("cannot install the vCPU kick signal handler: {e}"),
            };
        }
        self.timings.restart();
        let stop = Arc::new(AtomicBool::new(false));
        // Set with `stop` on a timeout: only then do vCPUs report their state.
        let report = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Outcome>();
        let mut threads: Vec<JoinHandle<VcpuEnd>> = Vec::with_capacity(self.vcpus.len());
        let mut outcome = None;
        let watches: Vec<Arc<Watch>> = self.vcpus.iter().map(|_| Arc::default()).collect();
        let control = self
            .gdb
            .as_ref()
            .map(|(_, hold, _)| Arc::new(gdb::control::Control::new(self.vcpus.len(), *hold)));
        let sleep = Arc::new(Sleep::new(
            self.platform.power.clone(),
            self._memory.clone(),
            self.vcpus.len(),
        ));
        for (index, fd) in self.vcpus.drain(..).enumerate() {
            let watch = watches[index].clone();
            let vcpu = Vcpu::new(fd, index as u32, self.platform.buses.clone(), watch)
                .keep_state(self.keep_cpu_state)
                .debug(control.clone())
                .sleep(Some(sleep.clone()));
            let (stop, report, tx) = (stop.clone(), report.clone(), tx.clone());
            let spawned = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(VCPU_STACK)
                .spawn(move || {
                    // KVM and its backends name the vCPU thread in what
                    // they log; a hang report keeps those lines.
                    crate::host::kmsg::claim_this_thread();
                    let mut end = vcpu.run(&stop, &report);
                    if let Some(outcome) = end.outcome.take() {
                        let _ = tx.send(outcome);
                    }
                    end
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    outcome = Some(Outcome::VmmError {
                        message: format!("cannot start vCPU thread {index}: {e}"),
                    });
                    break;
                }
            }
        }
        drop(tx);
        sleep.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        self.timings.step("start vCPU threads");
        let exit_code = Arc::new(std::sync::Mutex::new(None));
        let server = match (self.gdb.take(), &control) {
            (Some((listener, _, registers)), Some(control)) => {
                control.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
                let session = gdb::Session {
                    listener,
                    control: control.clone(),
                    memory: self._memory.clone(),
                    vcpus: threads.len(),
                    exit_code: exit_code.clone(),
                    registers,
                };
                let (done_tx, done_rx) = mpsc::channel::<()>();
                let spawned = thread::Builder::new().name("gdb".into()).spawn(move || {
                    gdb::serve(session);
                    let _ = done_tx.send(());
                });
                spawned.ok().map(|_| done_rx)
            }
            _ => None,
        };

        let mut outcome = outcome.unwrap_or_else(|| {
            self.wait_for_outcome(&rx, timeout, &threads, &watches, control.as_deref())
        });

        report.store(
            matches!(outcome, Outcome::Timeout { .. } | Outcome::Hung { .. }),
            Ordering::Release,
        );
        stop.store(true, Ordering::Release);
        if let Some(control) = &control {
            // A debugger still attached hears how the guest ended; parked
            // vCPUs leave, and see `stop`.
            if let Ok(mut code) = exit_code.lock() {
                *code = Some(outcome.exit_code());
            }
            control.finish();
            if let Some(done) = server {
                let _ = done.recv_timeout(Duration::from_millis(500));
            }
        }
        for thread in &threads {
            kick::kick(thread);
        }
        let mut snapshots: Vec<VcpuSnapshot> = Vec::new();
        let mut vcpu_stats: Vec<Vec<kvm_stats::Stat>> = Vec::new();
        self.cpu_states.clear();
        for thread in threads {
            if let Ok(end) = thread.join() {
                snapshots.extend(end.snapshot);
                vcpu_stats.push(end.stats);
                self.cpu_states.extend(end.state);
            }
        }
        // Every vCPU has stopped: these are the run's final counts.
        self.counters = kvm_stats::read(&*self._vm)
            .map(|vm_stats| kvm_stats::KvmCounters::combine(&vm_stats, &vcpu_stats))
            .map_err(|e| log::debug!("no KVM counters for the VM: {e}"))
            .ok();
        if let Outcome::Timeout { vcpus, .. } | Outcome::Hung { vcpus, .. } = &mut outcome {
            // Where a hung guest was: what a developer looks at first.
            *vcpus = snapshots;
        }
        let mut serial = crate::platform::bus::lock(&self.platform.console);
        // A console that failed has already ended the run, with a reason.
        if let Err(e) = serial.finish()
            && !matches!(outcome, Outcome::VmmError { .. })
        {
            log::warn!("writing the guest console failed: {e}");
        }
        outcome
    }
}

impl Vm {
    /// Waits for a vCPU to end the run, for `timeout`, or until the guest
    /// is found dead twice in a row, `LIVENESS_PERIOD` apart (twice, so that
    /// a device's pending work has had time to wake it).
    fn wait_for_outcome<T>(
        &self,
        rx: &mpsc::Receiver<Outcome>,
        timeout: Option<Duration>,
        threads: &[JoinHandle<T>],
        watches: &[Arc<Watch>],
        debugger: Option<&gdb::control::Control>,
    ) -> Outcome {
        let started = Instant::now();
        // Time the debugger held the guest does not count against it.
        let ran = || {
            started
                .elapsed()
                .saturating_sub(debugger.map_or(Duration::ZERO, |d| d.held()))
        };
        let mut dead_before = false;
        loop {
            let left = timeout.map(|limit| limit.saturating_sub(ran()));
            let slice = left.map_or(LIVENESS_PERIOD, |left| left.min(LIVENESS_PERIOD));
            match rx.recv_timeout(slice) {
                Ok(outcome) => return outcome,
                Err(mpsc::RecvTimeoutError::Disconnected) => return vcpus_gone(),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(limit) = timeout
                && ran() >= limit
            {
                return Outcome::timeout(limit);
            }
            if debugger.is_some_and(|d| d.stop_requested()) {
                // Parked for the debugger: held, not dead.
                dead_before = false;
                continue;
            }
            let dead = self.dead(threads, watches);
            if let (Some(why), true) = (dead, dead_before) {
                return Outcome::Hung {
                    reason: why.to_string(),
                    after_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    vcpus: Vec::new(),
                };
            }
            dead_before = dead.is_some();
        }
    }

    /// Asks every vCPU for its state and says whether the guest is dead.
    fn dead<T>(&self, threads: &[JoinHandle<T>], watches: &[Arc<Watch>]) -> Option<&'static str> {
        for (watch, thread) in watches.iter().zip(threads) {
            watch.ask();
            kick::kick(thread);
        }
        let asked = Instant::now();
        let mut answers: Vec<Option<Option<VcpuLiveness>>> = vec![None; watches.len()];
        while answers.iter().any(Option::is_none) && asked.elapsed() < ANSWER_WAIT {
            for (answer, watch) in answers.iter_mut().zip(watches) {
                if answer.is_none() {
                    *answer = watch.answer();
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        // A vCPU that did not answer in time, or could not, is not stuck.
        let states: Vec<Option<VcpuLiveness>> = answers.into_iter().map(Option::flatten).collect();
        liveness::dead(&states, liveness::ioapic_delivers_nmi(&self._vm))
    }
}

/// A vCPU thread's stack: device emulation is shallow, and the default
/// 2 MiB per thread would make a 1000-vCPU VM reserve 2 GB of address
/// space (more than a test's memory limit, or a small host, allows).
const VCPU_STACK: usize = 512 << 10;

/// How often the run loop checks whether the guest can still run.
const LIVENESS_PERIOD: Duration = Duration::from_millis(500);
/// How long it waits for the vCPUs' answers.
const ANSWER_WAIT: Duration = Duration::from_millis(200);

/// What KVM can offer a guest, through a `/dev/kvm` handle of its own so
/// that it can run on another thread.
fn fetch_supported_cpuid() -> Result<CpuId, kvm_ioctls::Error> {
    Kvm::new()?.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

fn vcpus_gone() -> Outcome {
    Outcome::VmmError {
        message: "every vCPU thread ended without an outcome".into(),
    }
}

fn register_memory(vm: &VmFd, memory: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which the
        // Vm keeps until after the VM fd (and with it the slot) is gone.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
