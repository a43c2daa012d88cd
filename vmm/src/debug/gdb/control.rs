//! Stopping the world for the debugger. While GDB looks at a guest every
//! vCPU thread is parked outside `KVM_RUN`, where it runs the debugger's
//! requests on its own vCPU file descriptor (KVM's vCPU calls belong to the
//! thread that runs the vCPU) until the debugger resumes the guest.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;

/// Work for a parked vCPU thread.
pub type Request = Box<dyn FnOnce(&VcpuFd) + Send>;

/// Why a vCPU stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopEvent {
    /// `KVM_EXIT_DEBUG`: exception 1 (#DB: single step, hardware
    /// breakpoint or watchpoint, with DR6) or 3 (#BP: `int3`).
    Debug {
        /// The exception vector.
        exception: u32,
        /// DR6 as KVM reported it.
        dr6: u64,
    },
}

#[derive(Default)]
struct Shared {
    /// vCPUs must park at their next chance.
    stop: bool,
    /// Bumped by every resume: a parked vCPU leaves when it changes.
    generation: u64,
    /// Which vCPUs are parked.
    parked: Vec<bool>,
    /// Which parked vCPUs the last resume let go (the others stay).
    released: Vec<bool>,
    /// Requests waiting for each parked vCPU.
    requests: Vec<VecDeque<Request>>,
    /// Debug exits not yet reported to the debugger.
    events: VecDeque<(u32, StopEvent)>,
    /// The run is over: park no more.
    finished: bool,
    /// The vCPU threads, to kick out of `KVM_RUN`.
    threads: Vec<libc::pthread_t>,
    /// Since when the guest is held, and for how long it was held before.
    held_since: Option<Instant>,
    held_before: Duration,
    /// Written when a debug exit is queued or the run ends: the stub waits
    /// on it beside its socket.
    waker: Option<Arc<EventFd>>,
}

impl Shared {
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            // Only fails when the counter would overflow: it is woken then.
            let _ = waker.write(1);
        }
    }
}

/// The debugger's handle on the vCPU threads.
pub struct Control {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Control {
    /// Control of `vcpus` vCPUs; with `hold`, they park before running the
    /// guest's first instruction (QEMU's `-S`).
    pub fn new(vcpus: usize, hold: bool) -> Self {
        Control {
            shared: Mutex::new(Shared {
                stop: hold,
                parked: vec![false; vcpus],
                released: vec![true; vcpus],
                requests: (0..vcpus).map(|_| VecDeque::new()).collect(),
                held_since: hold.then(Instant::now),
                ..Shared::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panicking vCPU thread must not take the debugger down with it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether vCPUs should park now (checked before each `KVM_RUN`).
    pub fn stop_requested(&self) -> bool {
        let shared = self.lock();
        shared.stop && !shared.finished
    }

    /// The vCPU threads (their `pthread_t`s), once started.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        self.lock().threads = threads;
    }

    /// Asks every vCPU to park, and kicks them out of `KVM_RUN`.
    pub fn request_stop(&self) {
        let mut shared = self.lock();
        if !shared.stop {
            shared.stop = true;
            shared.held_since = Some(Instant::now());
        }
        self.changed.notify_all();
        for &thread in &shared.threads {
            crate::kick::kick_thread(thread);
        }
    }

    /// The eventfd [`Control::report`] and [`Control::finish`] write, for a
    /// debugger that waits on file descriptors.
    pub fn set_waker(&self, waker: Arc<EventFd>) {
        self.lock().waker = Some(waker);
    }

    /// The eventfd set by [`Control::set_waker`].
    pub fn waker(&self) -> Option<Arc<EventFd>> {
        self.lock().waker.clone()
    }

    /// A vCPU hit a debug exit: the world stops for the debugger.
    pub fn report(&self, cpu: u32, event: StopEvent) {
        {
            let mut shared = self.lock();
            shared.events.push_back((cpu, event));
            shared.wake();
        }
        self.request_stop();
    }

    /// On vCPU thread `cpu`: parks until resumed, running requests.
    pub fn park(&self, cpu: usize, fd: &VcpuFd) {
        let mut shared = self.lock();
        let generation = shared.generation;
        shared.parked[cpu] = true;
        self.changed.notify_all();
        loop {
            while let Some(request) = shared.requests[cpu].pop_front() {
                drop(shared);
                request(fd);
                shared = self.lock();
            }
            let let_go = shared.generation != generation && shared.released[cpu];
            if shared.finished || (let_go && !shared.stop) {
                break;
            }
            shared = self.changed.wait(shared).unwrap_or_else(|e| e.into_inner());
        }
        shared.parked[cpu] = false;
        self.changed.notify_all();
    }

    /// Waits until every vCPU is parked (or the run is over); false after
    /// `limit`.
    pub fn wait_all_parked(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut shared = self.lock();
        while !shared.finished && !shared.parked.iter().all(|&p| p) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            shared = self
                .changed
                .wait_timeout(shared, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        !shared.finished
    }

    /// Runs `f` on parked vCPU `cpu`'s thread and returns its result;
    /// `None` when the vCPU is gone or the run ended.
    pub fn on_vcpu<R: Send + 'static>(
        &self,
        cpu: usize,
        f: impl FnOnce(&VcpuFd) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::channel();
        {
            let mut shared = self.lock();
            if shared.finished || !shared.parked.get(cpu).copied().unwrap_or(false) {
                return None;
            }
            shared.requests[cpu].push_back(Box::new(move |fd| {
                let _ = tx.send(f(fd));
            }));
            self.changed.notify_all();
        }
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Resumes every vCPU.
    pub fn resume(&self) {
        let all = vec![true; self.lock().parked.len()];
        self.resume_only(&all);
    }

    /// Resumes the vCPUs marked in `which`; the others stay parked.
    pub fn resume_only(&self, which: &[bool]) {
        let mut shared = self.lock();
        for (released, &go) in shared.released.iter_mut().zip(which) {
            *released = go;
        }
        shared.stop = false;
        shared.generation += 1;
        if let Some(since) = shared.held_since.take() {
            shared.held_before += since.elapsed();
        }
        self.changed.notify_all();
    }

    /// The next debug exit to report, if any.
    pub fn next_event(&self) -> Option<(u32, StopEvent)> {
        self.lock().events.pop_front()
    }

    /// The run is over: parked vCPUs leave, nothing parks again.
    pub fn finish(&self) {
        let mut shared = self.lock();
        shared.finished = true;
        shared.wake();
        self.changed.notify_all();
    }

    /// Whether the run is over.
    pub fn finished(&self) -> bool {
        self.lock().finished
    }

    /// How long the debugger has held the guest in all, so that its
    /// timeout counts only the time it ran.
    pub fn held(&self) -> Duration {
        let shared = self.lock();
        shared.held_before + shared.held_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}
