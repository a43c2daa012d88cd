//! Keeping every guest run bounded without making it unrepeatable.
//!
//! A guest that spins is stopped by a timer on the vCPU thread's CPU
//! time: it fires once the CPU budget is spent, and the run ends there, so
//! no interruption in mid-run can change what the guest does next (KVM
//! injects pending interrupts when it re-enters the guest). A vCPU that
//! sleeps in the kernel (halted, waiting for a SIPI) uses no CPU time; a
//! watcher thread sees the vCPU thread asleep and kicks it out, and the
//! executor reads the vCPU's state. The watcher also kicks a run that has
//! gone on past the hang limit. Both kicks use [`ktvmm_vmm::kick`]'s signal,
//! whose handler sets `immediate_exit`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// CPU time this thread has used (guest time included).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A POSIX timer on this thread's CPU clock whose signal (the kick signal)
/// goes to this thread.
pub struct CpuTimer(libc::timer_t);

impl CpuTimer {
    /// A disarmed timer for the calling thread.
    pub fn for_this_thread() -> io::Result<Self> {
        // SAFETY: zeroed sigevent is a valid starting point; the fields
        // below make it a thread-directed signal.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = vmm_sys_util::signal::SIGRTMIN();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer_t.
        let made =
            unsafe { libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut timer) };
        if made != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CpuTimer(timer))
    }

    /// Fires after `after` more CPU time, then every `after` (a kick that
    /// lands outside `KVM_RUN` is repeated); zero disarms.
    pub fn set(&self, after: Duration) {
        let ts = libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: a timer made by timer_create and a valid itimerspec.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for CpuTimer {
    fn drop(&mut self) {
        // SAFETY: the timer made in `for_this_thread`.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// What the watcher thread and the executor share.
struct Watched {
    /// The executor thread's kernel thread id.
    tid: AtomicI32,
    /// Start of the current run in nanoseconds since `epoch`, 0 when the
    /// executor is not running a vCPU.
    run_since: AtomicU64,
    epoch: Instant,
    hang_after: Duration,
    stop: AtomicBool,
}

/// Watches the thread that made it while it runs vCPUs.
pub struct Watcher {
    watched: Arc<Watched>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching the calling thread, checking every `period`.
    pub fn for_this_thread(period: Duration, hang_after: Duration) -> io::Result<Self> {
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let watched = Arc::new(Watched {
            // SAFETY: gettid has no preconditions.
            tid: AtomicI32::new(unsafe { libc::gettid() }),
            run_since: AtomicU64::new(0),
            epoch: Instant::now(),
            hang_after,
            stop: AtomicBool::new(false),
        });
        let shared = watched.clone();
        let thread = std::thread::Builder::new()
            .name("fuzz-watcher".into())
            .spawn(move || watch(&shared, target, period))?;
        Ok(Watcher {
            watched,
            thread: Some(thread),
        })
    }

    /// The executor is about to run a vCPU.
    pub fn running(&self) {
        let now = self.watched.epoch.elapsed().as_nanos() as u64;
        self.watched.run_since.store(now.max(1), Ordering::Release);
    }

    /// The run is over.
    pub fn idle(&self) {
        self.watched.run_since.store(0, Ordering::Release);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.watched.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(watched: &Watched, target: libc::pthread_t, period: Duration) {
    let tid = watched.tid.load(Ordering::Acquire);
    let stat = format!("/proc/self/task/{tid}/stat");
    let mut last_since = 0;
    let mut asleep = 0u32;
    while !watched.stop.load(Ordering::Acquire) {
        std::thread::sleep(period);
        let since = watched.run_since.load(Ordering::Acquire);
        if since != last_since {
            (last_since, asleep) = (since, 0);
        }
        if since == 0 {
            continue;
        }
        let now = watched.epoch.elapsed().as_nanos() as u64;
        let too_long = Duration::from_nanos(now.saturating_sub(since)) > watched.hang_after;
        // Asleep twice in a row: in the kernel, halted or waiting, not
        // merely preempted (a preempted thread is runnable, `R`).
        asleep = if is_asleep(&stat) { asleep + 1 } else { 0 };
        if too_long || asleep >= 2 {
            asleep = 0;
            // SAFETY: the executor thread outlives its watcher (the
            // watcher is joined when the executor drops it).
            unsafe { libc::pthread_kill(target, vmm_sys_util::signal::SIGRTMIN()) };
        }
    }
}

/// Whether the thread is in interruptible sleep (`S` in its stat line).
fn is_asleep(stat: &str) -> bool {
    std::fs::read_to_string(stat).ok().and_then(|line| {
        line.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
    }) == Some('S')
}
