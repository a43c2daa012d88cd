//! CPU exceptions: names, catching them in tests, and reporting the rest.
//!
//! [`catch_exception`] works like `setjmp`/`longjmp`: it records where the
//! stack was before calling the closure, and if the closure raises an
//! exception, the handler rewrites the interrupt frame so that `iretq`
//! resumes at a landing pad on that stack instead of at the faulting
//! instruction. Any exception on a CPU that is not inside
//! `catch_exception` ends the test with a `FAIL:` line.

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering, compiler_fence};

use ktvmm_abi::gdt::{KERNEL_CODE, KERNEL_DATA};

use crate::frame::InterruptFrame;
use crate::percpu::{self, MAX_CPUS};
use crate::{console, x86};

/// An interrupt or exception vector number.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vector(pub u8);

impl Vector {
    /// Divide error.
    pub const DE: Vector = Vector(0);
    /// Debug.
    pub const DB: Vector = Vector(1);
    /// Non-maskable interrupt.
    pub const NMI: Vector = Vector(2);
    /// Breakpoint (`int3`).
    pub const BP: Vector = Vector(3);
    /// Overflow (`into`).
    pub const OF: Vector = Vector(4);
    /// Bound range exceeded.
    pub const BR: Vector = Vector(5);
    /// Invalid opcode.
    pub const UD: Vector = Vector(6);
    /// Device not available.
    pub const NM: Vector = Vector(7);
    /// Double fault.
    pub const DF: Vector = Vector(8);
    /// Invalid TSS.
    pub const TS: Vector = Vector(10);
    /// Segment not present.
    pub const NP: Vector = Vector(11);
    /// Stack-segment fault.
    pub const SS: Vector = Vector(12);
    /// General protection.
    pub const GP: Vector = Vector(13);
    /// Page fault.
    pub const PF: Vector = Vector(14);
    /// x87 floating-point error.
    pub const MF: Vector = Vector(16);
    /// Alignment check.
    pub const AC: Vector = Vector(17);
    /// Machine check.
    pub const MC: Vector = Vector(18);
    /// SIMD floating-point exception.
    pub const XM: Vector = Vector(19);
    /// Virtualization exception.
    pub const VE: Vector = Vector(20);
    /// Control-protection exception.
    pub const CP: Vector = Vector(21);

    /// The mnemonic of an exception vector ("UD" for 6), or "" for vectors
    /// that are not architectural exceptions.
    pub const fn mnemonic(self) -> &'static str {
        const NAMES: [&str; 32] = [
            "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "CSO", "TS", "NP", "SS", "GP",
            "PF", "15", "MF", "AC", "MC", "XM", "VE", "CP", "22", "23", "24", "25", "26", "27",
            "HV", "VC", "SX", "31",
        ];
        if (self.0 as usize) < NAMES.len() {
            NAMES[self.0 as usize]
        } else {
            ""
        }
    }
}

impl fmt::Display for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.mnemonic();
        if name.is_empty() {
            write!(f, "vector {}", self.0)
        } else {
            write!(f, "#{name}")
        }
    }
}

impl fmt::Debug for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Page-fault error code bits.
pub mod pf_error {
    /// The page was present (a protection violation, not a missing page).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access came from CPL 3.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a paging entry.
    pub const RESERVED: u64 = 1 << 3;
    /// The access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// An exception that [`catch_exception`] caught.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which exception.
    pub vector: Vector,
    /// Its error code (zero for exceptions without one).
    pub error_code: u64,
    /// RIP in the exception frame: the faulting instruction for faults, the
    /// next one for traps such as #BP.
    pub rip: u64,
    /// CR2 when the exception was taken (the address for #PF).
    pub cr2: u64,
}

/// Where a CPU inside [`catch_exception`] resumes after an exception.
/// `rsp` and `landing` are at fixed offsets used by `ktest_try_call`.
#[repr(C)]
pub(crate) struct Recovery {
    rsp: u64,
    landing: u64,
    fault: Fault,
    /// RAX at the exception (how user mode hands back its result).
    rax: u64,
}

/// Per CPU, the recovery context of its innermost `catch_exception`.
static RECOVERY: [AtomicPtr<Recovery>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// This CPU's slot in [`RECOVERY`].
fn recovery_slot() -> &'static AtomicPtr<Recovery> {
    &RECOVERY[percpu::cpu_id() as usize]
}

unsafe extern "C" {
    /// Calls `call(data)`; returns 0 when it returns, or 1 when an exception
    /// interrupted it and the handler resumed at the landing pad (with the
    /// fault stored in `*recovery`).
    fn ktest_try_call(recovery: *mut Recovery, call: extern "C" fn(*mut u8), data: *mut u8) -> u64;
}

core::arch::global_asm!(
    ".section .text.ktest_try_call,\"ax\",@progbits",
    ".global ktest_try_call",
    "ktest_try_call:",
    // Callee-saved registers: the landing pad restores them from here, so
    // they hold what they held before the call whatever the closure did.
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8", // keeps the call below 16-byte aligned
    "mov [rdi], rsp",
    "lea rax, [rip + 2f]",
    "mov [rdi + 8], rax",
    "mov rdi, rdx",
    "call rsi",
    "xor eax, eax",
    "jmp 3f",
    "2:",
    "mov eax, 1",
    "3:",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
);

extern "C" fn call_once<F: FnOnce()>(data: *mut u8) {
    // SAFETY: `catch_exception` passes a pointer to its `Option<F>`.
    let slot = unsafe { &mut *data.cast::<Option<F>>() };
    if let Some(f) = slot.take() {
        f();
    }
}

/// Runs `f`; returns the exception it raised, or `None` if it returned.
///
/// Used to check that an instruction faults:
/// `catch_exception(|| unsafe { asm!("ud2") })` is `Some` with vector
/// [`Vector::UD`]. After an exception the rest of `f` is abandoned: its
/// stack frames are popped without running destructors, so `f` must not
/// own anything that needs `Drop` (locks, guards) across a faulting
/// instruction. Only exceptions (vectors 0-31) are caught, on the calling
/// CPU; it can nest, and must not be used inside an interrupt handler.
pub fn catch_exception<F: FnOnce()>(f: F) -> Option<Fault> {
    catch_with_rax(f).map(|(fault, _)| fault)
}

/// [`catch_exception`], also returning RAX at the time of the exception.
pub(crate) fn catch_with_rax<F: FnOnce()>(f: F) -> Option<(Fault, u64)> {
    let mut recovery = Recovery {
        rsp: 0,
        landing: 0,
        fault: Fault {
            vector: Vector(0),
            error_code: 0,
            rip: 0,
            cr2: 0,
        },
        rax: 0,
    };
    let mut slot = Some(f);
    let slot_of_this_cpu = recovery_slot();
    let outer = slot_of_this_cpu.swap(&raw mut recovery, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    // SAFETY: `recovery` and `slot` outlive the call; `call_once::<F>`
    // matches the type behind `slot`. An exception in `f` resumes in
    // ktest_try_call's landing pad on this same stack, with the
    // callee-saved registers it saved, so this frame is intact either way.
    let faulted = unsafe {
        ktest_try_call(
            &raw mut recovery,
            call_once::<F>,
            (&raw mut slot).cast::<u8>(),
        )
    };
    compiler_fence(Ordering::SeqCst);
    slot_of_this_cpu.store(outer, Ordering::Relaxed);
    if faulted != 0 {
        Some((recovery.fault, recovery.rax))
    } else {
        None
    }
}

/// Reads an MSR, returning the fault (normally #GP) if the CPU refuses.
pub fn rdmsr_safe(msr: u32) -> Result<u64, Fault> {
    let mut value = 0;
    match catch_exception(|| value = x86::rdmsr(msr)) {
        None => Ok(value),
        Some(fault) => Err(fault),
    }
}

/// Writes an MSR, returning the fault (normally #GP) if the CPU refuses.
///
/// # Safety
///
/// As for [`x86::wrmsr`]: if the write succeeds, its effects must be sound.
pub unsafe fn wrmsr_safe(msr: u32, value: u64) -> Result<(), Fault> {
    // SAFETY: forwarded from the caller.
    match catch_exception(|| unsafe { x86::wrmsr(msr, value) }) {
        None => Ok(()),
        Some(fault) => Err(fault),
    }
}

/// RFLAGS.DF: must be clear when Rust code runs.
const RFLAGS_DF: u64 = 1 << 10;

/// Handles exception vectors 0-31 (called by the IDT dispatcher).
pub(crate) fn handle(frame: &mut InterruptFrame) {
    let cr2 = x86::read_cr2();
    let recovery = recovery_slot().load(Ordering::Relaxed);
    if !recovery.is_null() {
        // SAFETY: a non-null pointer was stored by `catch_exception` on this
        // CPU, whose frame (holding the context) is still live because the
        // exception interrupted the closure it is running.
        let recovery = unsafe { &mut *recovery };
        recovery.fault = Fault {
            vector: Vector(frame.vector()),
            error_code: frame.error_code,
            rip: frame.rip,
            cr2,
        };
        recovery.rax = frame.rax;
        frame.rip = recovery.landing;
        frame.rsp = recovery.rsp;
        // The exception may come from user mode (see `crate::user`); the
        // landing pad is kernel code either way.
        frame.cs = u64::from(KERNEL_CODE);
        frame.ss = u64::from(KERNEL_DATA);
        frame.rflags &= !RFLAGS_DF;
        return;
    }
    unexpected(frame, cr2);
}

fn unexpected(frame: &InterruptFrame, cr2: u64) -> ! {
    let vector = Vector(frame.vector());
    let cpu = percpu::cpu_id();
    console::with_console_dying(|w| {
        use fmt::Write;
        let _ = writeln!(
            w,
            "FAIL: unexpected exception {} (vector {}) at RIP={:#x}, error code {:#x}, on CPU {}",
            vector, vector.0, frame.rip, frame.error_code, cpu
        );
        if vector == Vector::NP && frame.error_code & 2 != 0 {
            // The IDT flag: the "missing segment" is the gate of a vector
            // that nobody registered a handler for.
            let _ = writeln!(
                w,
                "  (interrupt vector {} has no handler)",
                frame.error_code >> 3
            );
        }
        let _ = writeln!(
            w,
            "  RSP={:#x} RFLAGS={:#x} CR2={:#x} RAX={:#x} RBX={:#x} RCX={:#x} RDX={:#x} RSI={:#x} RDI={:#x} RBP={:#x}",
            frame.rsp,
            frame.rflags,
            cr2,
            frame.rax,
            frame.rbx,
            frame.rcx,
            frame.rdx,
            frame.rsi,
            frame.rdi,
            frame.rbp
        );
    });
    crate::exit(1)
}
