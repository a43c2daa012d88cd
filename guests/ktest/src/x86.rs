//! Thin wrappers around x86-64 instructions that tests use directly.
//!
//! Reads that cannot break memory safety are safe functions (a faulting
//! `rdmsr` ends the test through the unexpected-exception path, it does not
//! corrupt anything). Writes to control registers, MSRs and ports are
//! `unsafe`: they can change paging, segment bases or devices under the
//! compiler's feet.

use core::arch::asm;

/// `RFLAGS.IF`: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Architectural MSR numbers used by ktest and its tests.
pub mod msr {
    /// `IA32_APIC_BASE`: LAPIC base address and enable bits.
    pub const APIC_BASE: u32 = 0x1b;
    /// `IA32_TSC`.
    pub const TSC: u32 = 0x10;
    /// `IA32_EFER`: long mode and NX enables.
    pub const EFER: u32 = 0xc000_0080;
    /// `IA32_FS_BASE`.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// `IA32_GS_BASE`: ktest keeps its per-CPU pointer here.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// `IA32_KERNEL_GS_BASE`.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// `CR0` bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// `CR4` bits.
pub mod cr4 {
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// `fxsave`/`fxrstor` and SSE enabled.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD exceptions raise #XM.
    pub const OSXMMEXCPT: u64 = 1 << 10;
}

/// `EFER` bits.
pub mod efer {
    /// System call extensions.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// The four registers `cpuid` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes `cpuid` with `leaf` in EAX and `subleaf` in ECX.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: cpuid only writes the four output registers. RBX is reserved
    // by LLVM, so it is swapped through a scratch register.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// Reads a model-specific register. An MSR the CPU does not have raises #GP,
/// which ends the test; use [`crate::rdmsr_safe`] to probe.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdmsr reads a register into EDX:EAX and has no memory effects.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
///
/// MSRs control paging, segment bases and interrupt delivery; the caller
/// must make sure the new value keeps the running code valid.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the effect of the write.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags),
        );
    }
}

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// Devices behind ports can do anything, including ending the VM.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit value to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// Reads can have device side effects (e.g. acknowledging an interrupt).
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a 16-bit value from an I/O port.
///
/// # Safety
///
/// As for [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
///
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller vouches for the device side effect.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes `bytes` to an I/O port with a single `rep outsb`.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: rep outsb reads exactly `bytes.len()` bytes from `bytes`
    // (DF is clear, as the Rust ABI guarantees); the caller vouches for the
    // device side effect.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(readonly, nostack, preserves_flags),
        );
    }
}

/// Fills `bytes` from an I/O port with a single `rep insb`.
///
/// # Safety
///
/// As for [`inb`].
pub unsafe fn insb(port: u16, bytes: &mut [u8]) {
    // SAFETY: rep insb writes exactly `bytes.len()` bytes into `bytes` (DF
    // is clear); the caller vouches for the device side effect.
    unsafe {
        asm!(
            "rep insb",
            in("dx") port,
            inout("rdi") bytes.as_mut_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags),
        );
    }
}

macro_rules! read_cr {
    ($(#[$doc:meta] $name:ident, $reg:literal;)*) => {$(
        #[$doc]
        pub fn $name() -> u64 {
            let value: u64;
            // SAFETY: reading a control register has no side effects.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags)) }
            value
        }
    )*};
}

read_cr! {
    /// Reads CR0.
    read_cr0, "cr0";
    /// Reads CR2, the address of the last page fault.
    read_cr2, "cr2";
    /// Reads CR3, the page-table root.
    read_cr3, "cr3";
    /// Reads CR4.
    read_cr4, "cr4";
}

/// Reads RFLAGS.
pub fn read_rflags() -> u64 {
    let flags: u64;
    // SAFETY: pushfq/pop only touch the stack slot they allocate.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) }
    flags
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only writes EDX:EAX.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Enables maskable interrupts (`sti`).
pub fn enable_interrupts() {
    // SAFETY: every vector that can arrive has an IDT gate (unexpected ones
    // are reported as failures), so taking interrupts is always sound.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables maskable interrupts (`cli`).
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Whether maskable interrupts are enabled on this CPU.
pub fn interrupts_enabled() -> bool {
    read_rflags() & RFLAGS_IF != 0
}

/// Runs `f` with interrupts disabled, then restores the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = interrupts_enabled();
    disable_interrupts();
    let result = f();
    if was_enabled {
        enable_interrupts();
    }
    result
}

/// Enables interrupts and halts until one arrives, then disables them again.
///
/// `sti` delays interrupt recognition by one instruction, so an interrupt
/// that became pending while they were off wakes the `hlt` rather than being
/// taken before it: checking a condition with interrupts off and then calling
/// this cannot miss the wake-up.
pub fn enable_interrupts_and_halt() {
    // SAFETY: as for `enable_interrupts`; hlt just waits.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// Lets pending interrupts in for one instruction, then disables them.
///
/// `sti` only takes effect after the instruction that follows it, so the
/// `nop` is what gives a pending interrupt its chance.
pub fn open_interrupt_window() {
    // SAFETY: as for `enable_interrupts`.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) }
}

/// Halts until the next interrupt without touching RFLAGS.IF.
pub fn hlt() {
    // SAFETY: hlt just waits for an interrupt.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// The spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// A descriptor-table register as stored by `sgdt`/`sidt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTablePointer {
    /// Size of the table minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

#[repr(C, packed)]
struct RawDtr {
    limit: u16,
    base: u64,
}

/// Reads GDTR.
pub fn sgdt() -> DescriptorTablePointer {
    let mut raw = RawDtr { limit: 0, base: 0 };
    // SAFETY: sgdt writes 10 bytes into `raw`, which is that large.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut raw, options(nostack, preserves_flags)) }
    DescriptorTablePointer {
        limit: raw.limit,
        base: raw.base,
    }
}

/// Reads IDTR.
pub fn sidt() -> DescriptorTablePointer {
    let mut raw = RawDtr { limit: 0, base: 0 };
    // SAFETY: sidt writes 10 bytes into `raw`, which is that large.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut raw, options(nostack, preserves_flags)) }
    DescriptorTablePointer {
        limit: raw.limit,
        base: raw.base,
    }
}

/// Loads IDTR.
///
/// # Safety
///
/// The table must stay valid (and hold valid gates for every vector that
/// can be raised) for as long as it is loaded.
pub unsafe fn lidt(base: u64, limit: u16) {
    let raw = RawDtr { limit, base };
    // SAFETY: the caller vouches for the table; `raw` outlives the lidt.
    unsafe {
        asm!("lidt [{}]", in(reg) &raw const raw, options(readonly, nostack, preserves_flags))
    }
}

/// Reads the task register (the current TSS selector) with `str`.
pub fn read_tr() -> u16 {
    let selector: u16;
    // SAFETY: str only writes its output register.
    unsafe { asm!("str {:x}", out(reg) selector, options(nomem, nostack, preserves_flags)) }
    selector
}

macro_rules! read_segment {
    ($(#[$doc:meta] $name:ident, $reg:literal;)*) => {$(
        #[$doc]
        pub fn $name() -> u16 {
            let selector: u16;
            // SAFETY: reading a segment register has no side effects.
            unsafe { asm!(concat!("mov {:x}, ", $reg), out(reg) selector, options(nomem, nostack, preserves_flags)) }
            selector
        }
    )*};
}

read_segment! {
    /// Reads CS.
    read_cs, "cs";
    /// Reads DS.
    read_ds, "ds";
    /// Reads SS.
    read_ss, "ss";
}
