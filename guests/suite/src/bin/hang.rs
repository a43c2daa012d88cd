//! Never finishes: every CPU disables interrupts and spins, so that the
//! VMM's timeout (and nothing else) ends the VM.
#![no_std]
#![no_main]

ktest::main!(main);

/// Spins forever with interrupts off.
fn spin() {
    // SAFETY: an endless loop with interrupts masked touches nothing.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(nomem, nostack, noreturn)) }
}

fn main() -> u8 {
    let cpus = ktest::cpu_count();
    ktest::println!("hang: spinning with interrupts off on {} CPUs", cpus);
    for cpu in 1..cpus {
        ktest::on_cpu_async(cpu, spin);
    }
    spin();
    1
}
