//! The frame an interrupt handler is given: the IDT's entry stubs build
//! it, and the exception, IRQ and test handlers read it. Its own module, so
//! the handlers depend on its layout rather than on the IDT.

/// What the interrupt entry code saved: the general registers, the vector,
/// the error code (zero when the vector has none) and the CPU's frame.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InterruptFrame {
    /// RAX at the time of the interrupt.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// The vector (only the low byte is meaningful).
    pub vector: u64,
    /// The error code, or zero for vectors without one.
    pub error_code: u64,
    /// Where execution continues (the faulting instruction for faults).
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

impl InterruptFrame {
    /// The vector number.
    pub fn vector(&self) -> u8 {
        self.vector as u8
    }
}
