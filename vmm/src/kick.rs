//! Stopping a vCPU that is inside `KVM_RUN`, whatever the guest is doing.
//!
//! The stopping thread sends a real-time signal to the vCPU thread. Its
//! handler sets `immediate_exit` in that thread's `kvm_run`, so `KVM_RUN`
//! returns `EINTR` now, or at once if the signal lands just before the next
//! `KVM_RUN`: a guest spinning with interrupts disabled cannot miss it.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::ptr;
use std::sync::Once;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

thread_local! {
    /// This thread's `kvm_run` while it runs a vCPU.
    static CURRENT_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: a const thread-local read and a store.
    let run = CURRENT_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped kvm_run, set by
        // `RunGuard::new` and cleared before the mapping goes away.
        unsafe { ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Installs the signal handler (once per process).
pub fn install() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), on_kick));
    result
}

/// Marks this thread as running the vCPU whose `kvm_run` is `run`, until dropped.
pub struct RunGuard(());

impl RunGuard {
    /// `run` must stay mapped for as long as the guard lives.
    pub fn new(run: *mut kvm_run) -> Self {
        CURRENT_RUN.with(|current| current.set(run));
        RunGuard(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        CURRENT_RUN.with(|current| current.set(ptr::null_mut()));
    }
}

/// Makes the vCPU thread `thread` (a `pthread_t`) leave `KVM_RUN` now;
/// whether it enters it again is up to its loop.
pub fn kick_thread(thread: libc::pthread_t) {
    // SAFETY: the caller keeps the thread joinable while it may be kicked,
    // so the pthread_t stays valid; a thread outside its vCPU loop ignores
    // the signal.
    let ret = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if ret != 0 {
        log::debug!("kick: pthread_kill returned {ret}");
    }
}

/// Makes the vCPU thread `thread` leave `KVM_RUN` and not enter it again.
pub fn kick<T>(thread: &JoinHandle<T>) {
    // The handle keeps the thread joinable, so its pthread_t stays valid.
    kick_thread(thread.as_pthread_t());
}
