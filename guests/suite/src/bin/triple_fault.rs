//! Shuts the CPU down: with an empty IDT, an exception cannot be delivered,
//! nor can the #GP and #DF that follow, which is a triple fault. The VMM
//! must report it as such.
#![no_std]
#![no_main]

ktest::main!(main);

fn main() -> u8 {
    ktest::println!("triple-fault: loading an empty IDT and raising #UD");
    // SAFETY: the point of the test is to take the machine down; nothing
    // runs after the ud2.
    unsafe {
        ktest::x86::lidt(0, 0);
        core::arch::asm!("ud2", options(nomem, nostack));
    }
    ktest::println!("FAIL: triple-fault: still running after #UD with an empty IDT");
    1
}
