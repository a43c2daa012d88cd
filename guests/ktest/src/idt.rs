//! The interrupt descriptor table, its entry stubs and the dispatcher.
//!
//! One IDT is shared by all CPUs. Each of the 256 vectors has a 16-byte stub
//! that pushes a uniform frame (a zero error code where the CPU pushes none,
//! then the vector number) and jumps to common code that saves the general
//! registers and calls `dispatch`.
//!
//! Every gate uses IST1, a per-CPU stack set up at boot: the precompiled
//! `core` uses the 128-byte red zone below RSP, which an exception or
//! interrupt pushed onto the interrupted stack would overwrite.
//!
//! Gates are filled lazily: the 32 exception vectors and ktest's own vectors
//! at boot, others when a handler is registered. An interrupt on a vector
//! without a handler finds a not-present gate and raises #NP, which is
//! reported as a failure naming the vector.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use ktvmm_abi::gdt::KERNEL_CODE;

use crate::frame::InterruptFrame;
use crate::vectors::{
    FIRST_RESERVED_VECTOR, PROBE_VECTOR, SPURIOUS_VECTOR, TICK_VECTOR, WAKE_VECTOR,
};
use crate::{exceptions, lapic, x86};

/// Number of exception vectors reserved by the architecture.
const EXCEPTION_VECTORS: u8 = 32;
/// The stack-table slot every gate uses (IST1).
const IST_INDEX: u64 = 1;
/// Present, DPL 0, 64-bit interrupt gate (clears IF on entry).
const INTERRUPT_GATE: u64 = 0x8e;

/// A handler for an interrupt vector (32..=239). It runs with interrupts
/// disabled on a per-CPU interrupt stack; the LAPIC EOI is sent after it
/// returns, so it must not send one itself.
pub type IrqHandler = fn(&InterruptFrame);

#[repr(C, align(16))]
struct Idt(UnsafeCell<[[u64; 2]; 256]>);

// SAFETY: gates are only written with volatile stores through raw pointers
// (never through references), and the CPUs read them on their own.
unsafe impl Sync for Idt {}

// This table and the next are in .data, not the BSS: the VMM loads .data
// with a host memcpy, while clearing BSS is guest work, slow when guest
// kernel code is emulated.
#[unsafe(link_section = ".data.ktest_idt")]
static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; 256]));

/// Handler addresses indexed by vector; zero means none.
#[unsafe(link_section = ".data.ktest_irq_handlers")]
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

unsafe extern "C" {
    /// The 256 entry stubs, 16 bytes apart (see the assembly below).
    #[link_name = "ktest_isr_stubs"]
    static ISR_STUBS: [u8; 256 * 16];
}

core::arch::global_asm!(
    ".section .text.ktest_isr,\"ax\",@progbits",
    ".balign 16",
    ".global ktest_isr_stubs",
    "ktest_isr_stubs:",
    ".set ktest_vector, 0",
    ".rept 256",
    ".balign 16",
    // The CPU pushes an error code for #DF, #TS, #NP, #SS, #GP, #PF, #AC,
    // #CP, #VC and #SX; every other stub pushes a zero in its place.
    ".if (ktest_vector == 8) || ((ktest_vector >= 10) && (ktest_vector <= 14)) || (ktest_vector == 17) || (ktest_vector == 21) || (ktest_vector == 29) || (ktest_vector == 30)",
    ".else",
    ".byte 0x6a, 0", // push 0
    ".endif",
    // push imm8: sign-extends vectors >= 128, so only the low byte counts.
    ".byte 0x6a, ktest_vector",
    "jmp {common}",
    ".set ktest_vector, ktest_vector + 1",
    ".endr",
    common = sym ktest_isr_common,
);

core::arch::global_asm!(
    ".section .text.ktest_isr,\"ax\",@progbits",
    ".balign 16",
    ".global {common}",
    "{common}:",
    "push r15",
    "push r14",
    "push r13",
    "push r12",
    "push r11",
    "push r10",
    "push r9",
    "push r8",
    "push rbp",
    "push rdi",
    "push rsi",
    "push rdx",
    "push rcx",
    "push rbx",
    "push rax",
    // 15 registers + vector + error code + the CPU's 5 words: RSP is
    // 16-byte aligned here, as the call below requires.
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    "pop rax",
    "pop rbx",
    "pop rcx",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    "pop rbp",
    "pop r8",
    "pop r9",
    "pop r10",
    "pop r11",
    "pop r12",
    "pop r13",
    "pop r14",
    "pop r15",
    "add rsp, 16",
    "iretq",
    common = sym ktest_isr_common,
    dispatch = sym dispatch,
);

unsafe extern "C" {
    /// Common entry code (defined in the assembly above); never called from
    /// Rust, declared so the assembly can name it with `sym`.
    fn ktest_isr_common();
}

/// Called by the entry code for every interrupt and exception.
extern "C" fn dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector();
    if vector < EXCEPTION_VECTORS {
        exceptions::handle(frame);
        return;
    }
    if vector == SPURIOUS_VECTOR {
        // Spurious interrupts are not in service: an EOI would end another.
        return;
    }
    let handler = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: only `set_handler` stores non-zero values, and those are
        // `IrqHandler` function pointers converted to usize.
        let handler = unsafe { core::mem::transmute::<usize, IrqHandler>(handler) };
        handler(frame);
    }
    lapic::eoi();
}

fn stub_address(vector: u8) -> u64 {
    let base = &raw const ISR_STUBS as u64;
    base + u64::from(vector) * 16
}

/// Writes the gate for `vector`, pointing at its stub.
fn install_gate(vector: u8) {
    let offset = stub_address(vector);
    // `int3` is a software interrupt: from user mode it needs a DPL 3 gate
    // (else it raises #GP instead of #BP).
    let dpl = if vector == 3 { 3 << 5 } else { 0 };
    let low = (offset & 0xffff)
        | u64::from(KERNEL_CODE) << 16
        | IST_INDEX << 32
        | (INTERRUPT_GATE | dpl) << 40
        | ((offset >> 16) & 0xffff) << 48;
    let high = offset >> 32;
    // SAFETY: the pointer is to this vector's 16 bytes of the static IDT.
    // The high half goes first so the present bit (in the low half) is only
    // seen once the gate is complete.
    unsafe {
        let gate = IDT.0.get().cast::<[u64; 2]>().add(usize::from(vector));
        core::ptr::write_volatile(&raw mut (*gate)[1], high);
        core::ptr::write_volatile(&raw mut (*gate)[0], low);
    }
}

/// Builds the boot-time gates; run once, by the boot CPU.
pub(crate) fn init() {
    for vector in 0..EXCEPTION_VECTORS {
        install_gate(vector);
    }
    install_gate(WAKE_VECTOR);
    install_gate(TICK_VECTOR);
    install_gate(PROBE_VECTOR);
    install_gate(SPURIOUS_VECTOR);
}

/// Loads the shared IDT on the calling CPU.
pub(crate) fn load() {
    let size = core::mem::size_of::<Idt>();
    // SAFETY: the IDT is a static, and every gate in it is either
    // not present or points at a stub whose handling is sound.
    unsafe { x86::lidt(IDT.0.get() as u64, (size - 1) as u16) }
}

/// Registers `handler` for interrupt `vector` (32..=239) on all CPUs.
///
/// # Panics
///
/// If `vector` is an exception vector or one of ktest's own (240..=255).
pub fn set_irq_handler(vector: u8, handler: IrqHandler) {
    assert!(
        (EXCEPTION_VECTORS..FIRST_RESERVED_VECTOR).contains(&vector),
        "vector {vector} cannot have an interrupt handler"
    );
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
    install_gate(vector);
}

/// Registers ktest's handler for one of its own vectors.
pub(crate) fn set_internal_handler(vector: u8, handler: IrqHandler) {
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}
