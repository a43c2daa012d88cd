//! ACPI sleep states carried out on the vCPU threads, doing firmware's part
//! of a resume so that no firmware is needed.
//!
//! A write of SLP_EN to PM1a control leaves a request (`devices::pm`); the
//! vCPU that wrote it takes it on its next turn of the loop. S4 and S5 end
//! the run as a power-off. S3 (suspend to RAM): that vCPU kicks the others
//! out of `KVM_RUN`; each resets itself as an INIT does (KVM's own reset:
//! the boot CPU runnable, the others waiting for a SIPI, as after a
//! platform reset) and parks. Once every vCPU is parked, the boot CPU
//! waits for the wake event (the RTC alarm, see `Power::wake_delay`), sets
//! the wake status, and starts at the FACS waking vector: real mode at
//! Firmware_Waking_Vector, or flat 32-bit mode at X_Firmware_Waking_Vector
//! (`acpi::wake_entry`). RAM is untouched throughout; the other devices
//! keep their state.
//!
//! A sleep that nothing can end (no wake event armed) ends the run as hung;
//! a resume without a usable waking vector (firmware would boot afresh)
//! ends it as a system event; a stop (timeout, another vCPU's outcome)
//! lets every parked vCPU leave. A debugger's stop request waits for the
//! wake: parked vCPUs do not park for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_VCPUEVENT_VALID_SMM, kvm_segment};
use kvm_ioctls::VcpuFd;

use crate::kick;
use crate::memory::GuestMemory;
use crate::platform::acpi::{self, WakeEntry};
use crate::platform::bus::lock;
use crate::platform::devices::pm::{Power, SleepState, slp_typ};
use crate::run::outcome::Outcome;

/// How often a parked vCPU looks at `stop`.
const SLICE: Duration = Duration::from_millis(10);

/// The vCPU that resumes at the waking vector.
const BOOT_CPU: u32 = 0;

/// The sleep shared by the vCPU threads of one run.
pub struct Sleep {
    power: Arc<Power>,
    memory: GuestMemory,
    cpus: usize,
    threads: OnceLock<Vec<libc::pthread_t>>,
    asleep: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Sleeps so far; the current one while asleep.
    count: u64,
    /// vCPUs parked in the current sleep.
    parked: usize,
    /// The last sleep the machine woke from.
    woken: u64,
}

impl Sleep {
    /// The sleep of a VM with `cpus` vCPUs, woken through `power`.
    pub fn new(power: Arc<Power>, memory: GuestMemory, cpus: usize) -> Self {
        Self {
            power,
            memory,
            cpus,
            threads: OnceLock::new(),
            asleep: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            started: Instant::now(),
        }
    }

    /// The vCPU threads, so that the one entering S3 can stop the others.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        let _ = self.threads.set(threads);
    }

    /// Whether the calling vCPU has a part to play: a request to take, or
    /// a sleep to join. Cheap enough for every turn of the loop.
    pub fn pending(&self) -> bool {
        self.power.request.pending() || self.asleep.load(Ordering::Acquire)
    }

    /// Plays vCPU `cpu`'s part; returns the outcome when the run ends here
    /// (a power-off, a sleep nothing wakes, a resume that cannot be done),
    /// `None` to go on (woken, or stopped: the loop sees `stop`).
    pub fn take_part(&self, cpu: u32, fd: &VcpuFd, stop: &AtomicBool) -> Option<Outcome> {
        let count = {
            let mut state = lock(&self.state);
            match self.power.request.take() {
                Some(SleepState::Off(typ)) => {
                    return Some(Outcome::SystemEvent {
                        cpu,
                        event: off_event(typ).into(),
                    });
                }
                Some(SleepState::SuspendToRam) if !self.asleep.load(Ordering::Acquire) => {
                    state.count += 1;
                    state.parked = 0;
                    self.asleep.store(true, Ordering::Release);
                    drop(state);
                    self.stop_the_others(cpu, stop);
                    state = lock(&self.state);
                }
                _ => {}
            }
            if !self.asleep.load(Ordering::Acquire) {
                return None;
            }
            state.count
        };
        if let Err(e) = reset_like_init(fd) {
            return Some(Outcome::VmmError {
                message: format!("entering S3: resetting vCPU {cpu}: {e}"),
            });
        }
        let mut state = lock(&self.state);
        state.parked += 1;
        self.changed.notify_all();
        if cpu != BOOT_CPU {
            while state.woken < count {
                if stop.load(Ordering::Acquire) {
                    return None;
                }
                state = self.wait(state);
            }
            return None;
        }
        while state.parked < self.cpus {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            state = self.wait(state);
        }
        drop(state);
        let outcome = self.wake_boot_cpu(fd, stop);
        let mut state = lock(&self.state);
        state.woken = count;
        self.asleep.store(false, Ordering::Release);
        self.changed.notify_all();
        outcome
    }

    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, State>,
    ) -> std::sync::MutexGuard<'a, State> {
        match self.changed.wait_timeout(state, SLICE) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Kicks every other vCPU out of `KVM_RUN`; they join on their next
    /// turn of the loop.
    fn stop_the_others(&self, cpu: u32, stop: &AtomicBool) {
        // The threads are handed over just after they start; a guest that
        // sleeps sooner waits for them.
        let threads = loop {
            if let Some(threads) = self.threads.get() {
                break threads;
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        for (index, &thread) in threads.iter().enumerate() {
            if index != cpu as usize {
                kick::kick_thread(thread);
            }
        }
    }

    /// Waits for the wake event and starts the boot CPU at the waking
    /// vector; `Some` when the run ends instead.
    fn wake_boot_cpu(&self, fd: &VcpuFd, stop: &AtomicBool) -> Option<Outcome> {
        let Some(delay) = self.power.wake_delay() else {
            return Some(Outcome::Hung {
                reason: "suspended to RAM (S3) with no wake event armed (ktvmm wakes it on \
                         the RTC alarm: AIE in RTC register B and RTC_EN in PM1_EN)"
                    .into(),
                after_s: (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                vcpus: Vec::new(),
            });
        };
        log::debug!(
            "S3 entered {:?} into the run; the wake event is {delay:?} away",
            self.started.elapsed()
        );
        let deadline = Instant::now() + delay;
        loop {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(SLICE));
        }
        self.power.woke();
        let entry = match acpi::wake_entry(&self.memory) {
            Ok(entry) => entry,
            Err(e) => {
                return Some(Outcome::SystemEvent {
                    cpu: BOOT_CPU,
                    event: format!("resume from S3 impossible: {e}"),
                });
            }
        };
        log::debug!(
            "resuming from S3 at {entry:?}, {:?} into the run",
            self.started.elapsed()
        );
        enter(fd, entry).err().map(|e| Outcome::VmmError {
            message: format!("resuming from S3: setting the boot CPU's registers: {e}"),
        })
    }
}

fn off_event(typ: u8) -> &'static str {
    match typ {
        slp_typ::S4 => "power off (S4, suspend to disk)",
        _ => "power off (S5)",
    }
}

/// Resets the vCPU as an INIT does, by KVM's own reset: a latched INIT,
/// taken when the mp_state is read. The boot CPU comes out runnable at the
/// reset vector, the others waiting for a SIPI.
fn reset_like_init(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut events = fd.get_vcpu_events()?;
    events.flags = KVM_VCPUEVENT_VALID_SMM;
    events.exception = Default::default();
    events.interrupt = Default::default();
    events.nmi.injected = 0;
    events.smi.latched_init = 1;
    fd.set_vcpu_events(&events)?;
    fd.get_mp_state()?;
    Ok(())
}

/// Points a freshly reset boot CPU at the waking vector.
fn enter(fd: &VcpuFd, entry: WakeEntry) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = fd.get_sregs()?;
    let mut regs = fd.get_regs()?;
    match entry {
        WakeEntry::RealMode { segment, offset } => {
            sregs.cs.selector = segment;
            sregs.cs.base = u64::from(segment) << 4;
            regs.rip = u64::from(offset);
        }
        WakeEntry::Flat32 { eip } => {
            // ACPI: interrupts off, paging off, flat 4 GiB segments (the
            // selectors are not used).
            let flat = |selector: u16, type_: u8| kvm_segment {
                base: 0,
                limit: 0xffff_ffff,
                selector,
                type_,
                present: 1,
                dpl: 0,
                db: 1,
                s: 1,
                l: 0,
                g: 1,
                ..Default::default()
            };
            sregs.cs = flat(0x08, 0xb);
            let data = flat(0x10, 0x3);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.cr0 |= 1;
            regs.rip = u64::from(eip);
        }
    }
    regs.rflags = 0x2;
    fd.set_sregs(&sregs)?;
    fd.set_regs(&regs)
}
