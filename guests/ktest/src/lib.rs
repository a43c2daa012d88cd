//! ktest: the library every ktvmm unit-test guest kernel is built on.
//!
//! It has the shape of kvm-unit-tests' libcflat, in Rust: a guest is a
//! `#![no_std]`, `#![no_main]` binary with a `main` that calls [`report!`]
//! and returns [`report_summary`]; its output uses the same
//! `PASS:`/`FAIL:`/`SKIP:`/`SUMMARY:` lines, and its exit code is 0 for pass,
//! 1 for fail and 77 for skip.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! ktest::main!(main);
//!
//! fn main() -> u8 {
//!     ktest::report!(ktest::cpu_count() >= 1, "at least one CPU");
//!     ktest::report_summary()
//! }
//! ```
//!
//! ktest boots every CPU (ktvmm's ELF64 protocol, see `ktvmm_abi`), installs
//! an IDT that reports unexpected exceptions, enables each LAPIC and parks
//! the other CPUs so [`on_cpu`]/[`on_cpus`] can run code on them.
//!
//! Guest kernel code may run under an instruction emulator (as with KVM's
//! PVM backend), so the library favours few instructions, never spins where
//! it can halt, and guests must not use floating point.
#![no_std]
#![warn(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod console;
pub mod driver;
pub mod env;
pub mod exceptions;
mod exit;
pub mod frame;
pub mod fw_cfg;
pub mod idt;
pub mod ioapic;
pub mod lapic;
pub mod mem;
pub mod mmio;
mod multiboot;
pub mod pci;
mod percpu;
pub mod report;
pub mod smp;
pub mod spinlock;
pub mod user;
pub mod vectors;
pub mod x86;

pub use env::{alloc_pages, arg_value, args, boot_info, cmdline, has_arg, initrd, mem_size};
pub use exceptions::{Fault, Vector, catch_exception, rdmsr_safe, wrmsr_safe};
pub use exit::{exit, halt_forever};
pub use frame::InterruptFrame;
pub use idt::{IrqHandler, set_irq_handler};
pub use ktvmm_abi as abi;
pub use report::{report_prefix_pop, report_prefix_push, report_summary};
pub use smp::{
    cpu_count, cpu_id, delay_ms, on_cpu, on_cpu_async, on_cpus, wait_idle, wait_until,
    wait_until_timeout, wake,
};
pub use spinlock::{Spinlock, SpinlockGuard};
pub use user::run_user;

/// Declares the test's entry point: `ktest::main!(main);` with
/// `fn main() -> u8`, whose return value becomes the VM's exit code.
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn ktest_main() -> u8 {
            let main: fn() -> u8 = $main;
            main()
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::with_console_dying(|w| {
        use core::fmt::Write;
        let _ = write!(w, "FAIL: panic on CPU {}", smp::cpu_id());
        if let Some(location) = info.location() {
            let _ = write!(w, " at {location}");
        }
        let _ = writeln!(w, ": {}", info.message());
    });
    exit(1)
}

/// Referenced by the precompiled `core`'s unwind tables; with
/// `panic = "abort"` nothing ever unwinds, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
