//! Ctrl-C (and SIGTERM, SIGHUP) during `ktvmm test`: the first asks the
//! run to stop (children killed, logs kept, summary and results written),
//! a second asks it to stop now (no grace period for the children).

use std::sync::atomic::{AtomicUsize, Ordering};

static REQUESTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTS.fetch_add(1, Ordering::SeqCst);
}

/// Catches the stop signals from now on.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches an atomic, which is
        // async-signal-safe; sigaction is given a zeroed, valid struct.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// How many stop requests have arrived.
pub fn requests() -> usize {
    REQUESTS.load(Ordering::SeqCst)
}
