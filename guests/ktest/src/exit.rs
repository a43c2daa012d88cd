//! Leaving the VM: the guest's exit code through isa-debug-exit, or a CPU
//! halted for good. Everything may end the test, so this uses nothing but
//! the CPU and the boot contract's port.

use ktvmm_abi::ports;

use crate::x86;

/// Ends the VM with `code` as the exit status (the VMM keeps the low 8 bits;
/// 0 means pass, 1 fail, 77 skip).
pub fn exit(code: u32) -> ! {
    // SAFETY: isa-debug-exit ends the VM; nothing runs after it.
    unsafe { x86::outl(ports::DEBUG_EXIT, code) };
    halt_forever()
}

/// Halts this CPU for good (interrupts off).
pub fn halt_forever() -> ! {
    loop {
        x86::disable_interrupts();
        x86::hlt();
    }
}
