//! Never finishes by itself, in one of three ways chosen by `-append`:
//!
//! - no argument (`spin`): every CPU disables interrupts and spins, so
//!   that the VMM's timeout, and nothing else, ends the VM;
//! - `halt`: every CPU disables interrupts and halts: nothing can ever wake
//!   it, which the VMM notices and ends at once;
//! - `sleep=MS`: the boot CPU halts with interrupts on until its LAPIC
//!   timer fires MS milliseconds later, then passes: a guest that is idle,
//!   not dead, which the VMM must leave alone.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use ktest::lapic::{self, Divide};
use ktest::{InterruptFrame, report, wait_until};

ktest::main!(main);

const WAKE_VECTOR: u8 = 0x50;
/// KVM's APIC bus runs at 1 GHz: a count of a million is a millisecond.
const COUNTS_PER_MS: u32 = 1_000_000;

static WOKE: AtomicBool = AtomicBool::new(false);

/// Spins forever with interrupts off.
fn spin() {
    // SAFETY: an endless loop with interrupts masked touches nothing.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(nomem, nostack, noreturn)) }
}

/// Halts forever with interrupts off.
fn halt() {
    // SAFETY: halting with interrupts masked touches nothing.
    unsafe {
        core::arch::asm!(
            "cli",
            "2:",
            "hlt",
            "jmp 2b",
            options(nomem, nostack, noreturn)
        )
    }
}

fn main() -> u8 {
    let cpus = ktest::cpu_count();
    let (what, body): (&str, fn()) = match ktest::args().next() {
        None | Some("spin") => ("spinning", spin),
        Some("halt") => ("halting", halt),
        Some(arg) => match arg.strip_prefix("sleep=").map(str::parse::<u32>) {
            Some(Ok(ms)) if ms <= u32::MAX / COUNTS_PER_MS => return sleep(ms),
            _ => {
                report!(
                    false,
                    "hang: unknown argument '{}' (want spin, halt or sleep=MS)",
                    arg
                );
                return ktest::report_summary();
            }
        },
    };
    ktest::println!("hang: {} with interrupts off on {} CPUs", what, cpus);
    for cpu in 1..cpus {
        ktest::on_cpu_async(cpu, body);
    }
    body();
    1
}

/// Halts with interrupts on until the LAPIC timer fires `ms` from now.
fn sleep(ms: u32) -> u8 {
    ktest::set_irq_handler(WAKE_VECTOR, |_: &InterruptFrame| {
        WOKE.store(true, Ordering::Relaxed);
    });
    ktest::println!("hang: sleeping {} ms with interrupts on", ms);
    lapic::timer_oneshot(WAKE_VECTOR, ms * COUNTS_PER_MS, Divide::By1);
    wait_until(|| WOKE.load(Ordering::Relaxed));
    report!(true, "hang: the timer woke the CPU after {} ms", ms);
    ktest::report_summary()
}
