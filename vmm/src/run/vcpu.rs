//! A vCPU thread: `KVM_RUN` in a loop, exits sent to the buses, and the
//! first exit that ends the run turned into an [`Outcome`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ktvmm_testdevs::Action;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use std::time::Instant;

use crate::debug::core_dump::CpuState;
use crate::debug::gdb::control::{Control, StopEvent};
use crate::host::kvm_stats;
use crate::kick::RunGuard;
use crate::platform::bus::{Bus, Buses};
use crate::run::forensics::VcpuSnapshot;
use crate::run::liveness::Watch;
use crate::run::outcome::{Outcome, internal_error_reason};
use crate::run::sleep::Sleep;

/// How a vCPU's run ended.
pub struct VcpuEnd {
    /// What ended the run, when this vCPU did (`None`: it was stopped).
    pub outcome: Option<Outcome>,
    /// Where it was, when stopped with a report asked for (a timeout).
    pub snapshot: Option<VcpuSnapshot>,
    /// KVM's counters for it, empty where KVM offers none.
    pub stats: Vec<kvm_stats::Stat>,
    /// Its registers at the end, when asked for (for a core file).
    pub state: Option<CpuState>,
}

/// A vCPU ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    buses: Arc<Buses>,
    watch: Arc<Watch>,
    keep_state: bool,
    debug: Option<Arc<Control>>,
    sleep: Option<Arc<Sleep>>,
}

impl Vcpu {
    /// Wraps a configured vCPU; it answers liveness questions on `watch`.
    pub fn new(fd: VcpuFd, index: u32, buses: Arc<Buses>, watch: Arc<Watch>) -> Self {
        Self {
            fd,
            index,
            buses,
            watch,
            keep_state: false,
            debug: None,
            sleep: None,
        }
    }

    /// Lets the guest's ACPI sleep requests reach this vCPU.
    pub fn sleep(mut self, sleep: Option<Arc<Sleep>>) -> Self {
        self.sleep = sleep;
        self
    }

    /// Puts the vCPU under a debugger's control: it parks when asked and
    /// reports `KVM_EXIT_DEBUG` instead of failing on it.
    pub fn debug(mut self, control: Option<Arc<Control>>) -> Self {
        self.debug = control;
        self
    }

    /// Makes the run end with the vCPU's registers (`VcpuEnd::state`).
    pub fn keep_state(mut self, keep: bool) -> Self {
        self.keep_state = keep;
        self
    }

    /// Runs until the guest ends the run or `stop` is set; then reads
    /// KVM's counters for it, final since it will not run again.
    pub fn run(mut self, stop: &AtomicBool, report: &AtomicBool) -> VcpuEnd {
        let (outcome, snapshot) = self.run_loop(stop, report);
        let stats = kvm_stats::read(&self.fd).unwrap_or_else(|e| {
            log::debug!("vCPU {}: no KVM counters: {e}", self.index);
            Vec::new()
        });
        let state = self.keep_state.then(|| CpuState::read(&self.fd)).flatten();
        VcpuEnd {
            outcome,
            snapshot,
            stats,
            state,
        }
    }

    /// Runs until the guest ends the run (`Some`) or `stop` is set (`None`).
    /// Stopped with `report` set (a timeout), it also says where it was.
    fn run_loop(
        &mut self,
        stop: &AtomicBool,
        report: &AtomicBool,
    ) -> (Option<Outcome>, Option<VcpuSnapshot>) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        let _guard = RunGuard::new(run);
        let mut last_exit = ("none", Instant::now());
        loop {
            if stop.load(Ordering::Acquire) {
                let snapshot = report
                    .load(Ordering::Acquire)
                    .then(|| self.snapshot(last_exit))
                    .flatten();
                return (None, snapshot);
            }
            if let Some(control) = &self.debug
                && control.stop_requested()
            {
                control.park(self.index as usize, &self.fd);
                continue;
            }
            if let Some(sleep) = &self.sleep
                && sleep.pending()
            {
                if let Some(outcome) = sleep.take_part(self.index, &self.fd, stop) {
                    return (Some(outcome), None);
                }
                continue;
            }
            let step = match self.fd.run() {
                Ok(VcpuExit::Debug(arch)) if self.debug.is_some() => {
                    last_exit = ("debug", Instant::now());
                    log::debug!("vCPU {}: debug exit {arch:?}", self.index);
                    let event = StopEvent::Debug {
                        exception: arch.exception,
                        dr6: arch.dr6,
                    };
                    if let Some(control) = &self.debug {
                        // Stops the others too; this one parks next.
                        control.report(self.index, event);
                    }
                    Step::Continue
                }
                Ok(exit) => {
                    last_exit = (exit_name(&exit), Instant::now());
                    handle_exit(&self.buses, self.index, run, exit)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: answer a liveness question if that is why,
                    // then re-arm KVM_RUN. A stop kick is still seen, by the
                    // `stop` check above, since `stop` is set before it.
                    self.watch.answer_if_asked(&self.fd);
                    // SAFETY: `run` is this vCPU's mapped kvm_run.
                    unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 0) };
                    Step::Continue
                }
                Err(e) => Step::End(Outcome::VmmError {
                    message: format!("KVM_RUN failed on vCPU {}: {e}", self.index),
                }),
            };
            match step {
                Step::Continue => {}
                Step::End(outcome) => {
                    let outcome = self.with_rip(outcome);
                    return (Some(outcome), None);
                }
            }
        }
    }

    fn snapshot(&self, (name, at): (&str, Instant)) -> Option<VcpuSnapshot> {
        VcpuSnapshot::take(&self.fd, self.index, name, at.elapsed())
    }

    /// Fills in the instruction pointer of outcomes that report one.
    fn with_rip(&self, mut outcome: Outcome) -> Outcome {
        if let Outcome::Shutdown { rip, .. }
        | Outcome::InternalError { rip, .. }
        | Outcome::FailEntry { rip, .. } = &mut outcome
        {
            *rip = self.fd.get_regs().ok().map(|regs| regs.rip);
        }
        outcome
    }
}

/// A short name for an exit, for hang reports.
fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::IoOut(..) => "io out",
        VcpuExit::IoIn(..) => "io in",
        VcpuExit::MmioRead(..) => "mmio read",
        VcpuExit::MmioWrite(..) => "mmio write",
        VcpuExit::Intr => "intr",
        VcpuExit::Hlt => "hlt",
        VcpuExit::Shutdown => "shutdown",
        VcpuExit::SystemEvent(..) => "system event",
        VcpuExit::InternalError => "internal error",
        VcpuExit::FailEntry(..) => "fail entry",
        _ => "other",
    }
}

/// What the loop does after an exit.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Enter the guest again.
    Continue,
    /// The run is over.
    End(Outcome),
}

impl From<Action> for Step {
    fn from(action: Action) -> Self {
        match action {
            Action::Continue => Step::Continue,
            Action::Exit(code) => Step::End(Outcome::GuestExit { code }),
            Action::Stop(why) => Step::End(Outcome::VmmError {
                message: why.to_string(),
            }),
        }
    }
}

fn handle_exit(buses: &Buses, cpu: u32, run: *mut kvm_run, exit: VcpuExit<'_>) -> Step {
    match exit {
        VcpuExit::IoOut(port, data) => {
            // SAFETY: this is a KVM_EXIT_IO of this vCPU's `run`.
            let size = unsafe { io_size(run) };
            port_out(&buses.pio, port, size, data)
        }
        VcpuExit::IoIn(port, data) => {
            // SAFETY: this is a KVM_EXIT_IO of this vCPU's `run`.
            let size = unsafe { io_size(run) };
            port_in(&buses.pio, port, size, data);
            Step::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => buses.mmio.write(addr, data).into(),
        VcpuExit::Intr => Step::Continue,
        VcpuExit::Shutdown => Step::End(Outcome::Shutdown { cpu, rip: None }),
        VcpuExit::SystemEvent(kind, _) => Step::End(Outcome::SystemEvent {
            cpu,
            event: match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown".into(),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => "reset".into(),
                kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "crash".into(),
                other => other.to_string(),
            },
        }),
        VcpuExit::InternalError => {
            // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, so the
            // `internal` member of the union is the one it filled in.
            let suberror = unsafe { (*run).__bindgen_anon_1.internal.suberror };
            Step::End(Outcome::InternalError {
                cpu,
                suberror,
                reason: internal_error_reason(suberror),
                rip: None,
            })
        }
        VcpuExit::FailEntry(reason, _) => Step::End(Outcome::FailEntry {
            cpu,
            reason,
            rip: None,
        }),
        other => Step::End(Outcome::UnexpectedExit {
            cpu,
            exit: format!("{other:?}"),
        }),
    }
}

/// The element size of the port I/O exit being handled (1, 2 or 4).
///
/// # Safety
/// `run` is the vCPU's mapped `kvm_run`, and the exit being handled is
/// `KVM_EXIT_IO`, so KVM filled in its `io` member (kvm-ioctls hands us the
/// data but not the element size).
pub unsafe fn io_size(run: *mut kvm_run) -> usize {
    // SAFETY: as the caller promises.
    usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1)
}

/// An `out` or `rep outs`: string I/O arrives as one exit carrying every
/// element, each written to the port in turn.
pub fn port_out(bus: &Bus, port: u16, size: usize, data: &[u8]) -> Step {
    for element in data.chunks(size) {
        if let step @ Step::End(_) = bus.write(u64::from(port), element).into() {
            return step;
        }
    }
    Step::Continue
}

/// An `in` or `rep ins`: each element is read from the port in turn.
pub fn port_in(bus: &Bus, port: u16, size: usize, data: &mut [u8]) {
    for element in data.chunks_mut(size) {
        bus.read(u64::from(port), element);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktvmm_testdevs::BusDevice;
    use std::sync::Mutex;

    /// Records byte writes, exits on 0xff, and reads back a counter.
    #[derive(Default)]
    struct Port {
        written: Vec<Vec<u8>>,
        reads: u8,
    }

    impl BusDevice for Port {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.reads += 1;
            data[0] = self.reads;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
            self.written.push(data.to_vec());
            if data[0] == 0xff {
                Action::Exit(3)
            } else {
                Action::Continue
            }
        }
    }

    fn bus_with(port: u64) -> (Bus, Arc<Mutex<Port>>) {
        let dev = Arc::new(Mutex::new(Port::default()));
        let bus = Bus::new();
        bus.insert(dev.clone(), port, 4).unwrap();
        (bus, dev)
    }

    #[test]
    fn string_output_is_split_into_elements() {
        let (bus, dev) = bus_with(0x3f8);
        assert_eq!(port_out(&bus, 0x3f8, 1, b"abc"), Step::Continue);
        assert_eq!(port_out(&bus, 0x3f8, 2, &[1, 2, 3, 4]), Step::Continue);
        let written = &dev.lock().unwrap().written;
        assert_eq!(
            written,
            &[vec![b'a'], vec![b'b'], vec![b'c'], vec![1, 2], vec![3, 4]]
        );
    }

    #[test]
    fn an_exit_request_ends_the_run_and_stops_the_string() {
        let (bus, dev) = bus_with(0xf4);
        assert_eq!(
            port_out(&bus, 0xf4, 1, &[1, 0xff, 2]),
            Step::End(Outcome::GuestExit { code: 3 })
        );
        assert_eq!(dev.lock().unwrap().written.len(), 2);
    }

    #[test]
    fn string_input_reads_each_element_and_unclaimed_ports_read_ones() {
        let (bus, _dev) = bus_with(0x60);
        let mut data = [0u8; 3];
        port_in(&bus, 0x60, 1, &mut data);
        assert_eq!(data, [1, 2, 3]);
        let mut data = [0u8; 2];
        port_in(&bus, 0x1234, 2, &mut data);
        assert_eq!(data, [0xff, 0xff]);
    }
}
