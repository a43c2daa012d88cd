//! Exiting without waiting for KVM to tear the VM down.
//!
//! Closing a VM with an in-kernel irqchip and PIT takes KVM tens of
//! milliseconds on some hosts (see `Vm::run`), and process exit does that
//! close. `ktvmm run` has reported everything by then, so it forks: the
//! child, with stdio closed so that nobody waits on its output, holds the
//! last references to the VM and does the teardown; the parent exits at once.

use std::io::Write;

use ktvmm_vmm::Vm;

/// Exits with `code`; the VM is torn down by a short-lived child process.
pub fn exit_leaving_teardown(code: u8, vm: Vm) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: every vCPU thread has been joined, so this process is single
    // threaded apart from nothing that holds locks the child needs: the
    // child only calls close(2), drops the VM (more close(2) and munmap(2))
    // and _exit(2).
    match unsafe { libc::fork() } {
        0 => {
            for fd in 0..=2 {
                // SAFETY: closing stdio in the child only affects the child.
                unsafe { libc::close(fd) };
            }
            drop(vm);
            // SAFETY: ends the child without running the parent's atexit work.
            unsafe { libc::_exit(0) }
        }
        -1 => {
            log::debug!("fork failed; tearing the VM down before exiting");
            drop(vm);
            std::process::exit(i32::from(code))
        }
        _ => {
            // The child owns the teardown now.
            std::mem::forget(vm);
            std::process::exit(i32::from(code))
        }
    }
}
