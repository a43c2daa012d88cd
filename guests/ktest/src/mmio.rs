//! Memory-mapped device registers: single accesses of an exact width at a
//! physical address (the guest runs on an identity map, and the VMM maps
//! the MMIO hole uncached).
//!
//! Every access is one `mov` of the stated width, so a device sees exactly
//! the access size the test asked for (which matters for devices such as
//! edu that treat sizes differently). Each is also a compiler barrier for
//! memory, like Linux's `readl`/`writel`: RAM that the code prepared before
//! starting a device (a DMA buffer, say) is written before the access, and
//! RAM read after it is read afresh, so what a device did behind the
//! compiler's back is seen.

use core::arch::asm;

macro_rules! accessors {
    ($($(#[$rdoc:meta])* $read:ident, $(#[$wdoc:meta])* $write:ident, $ty:ty, $class:ident, $operand:literal, $ptr:literal;)*) => {$(
        $(#[$rdoc])*
        ///
        /// # Safety
        ///
        /// `address` must be identity-mapped device memory (or RAM) that is
        /// valid to read at this width; reads can have device side effects.
        pub unsafe fn $read(address: u64) -> $ty {
            let value: $ty;
            // SAFETY: the caller vouches for the address. No `nomem`: the
            // access orders the surrounding memory accesses.
            unsafe {
                asm!(
                    concat!("mov ", $operand, ", ", $ptr, " ptr [{address}]"),
                    address = in(reg) address,
                    value = out($class) value,
                    options(nostack, preserves_flags),
                );
            }
            value
        }

        $(#[$wdoc])*
        ///
        /// # Safety
        ///
        /// `address` must be identity-mapped device memory (or RAM that
        /// nothing else relies on); the caller vouches for the effect.
        pub unsafe fn $write(address: u64, value: $ty) {
            // SAFETY: as for the read.
            unsafe {
                asm!(
                    concat!("mov ", $ptr, " ptr [{address}], ", $operand),
                    address = in(reg) address,
                    value = in($class) value,
                    options(nostack, preserves_flags),
                );
            }
        }
    )*};
}

accessors! {
    /// Reads one byte.
    read8,
    /// Writes one byte.
    write8, u8, reg_byte, "{value}", "byte";
    /// Reads 16 bits.
    read16,
    /// Writes 16 bits.
    write16, u16, reg, "{value:x}", "word";
    /// Reads 32 bits.
    read32,
    /// Writes 32 bits.
    write32, u32, reg, "{value:e}", "dword";
    /// Reads 64 bits.
    read64,
    /// Writes 64 bits.
    write64, u64, reg, "{value:r}", "qword";
}

/// Copies `len` bytes from `src` to `dst` with one `rep movsb`, either side
/// device memory or RAM. Unlike `memcpy`, the compiler cannot see through
/// it (it would, for example, turn two copies through a device buffer into
/// one copy that skips the device).
///
/// # Safety
///
/// `src` readable and `dst` writable for `len` bytes (identity-mapped),
/// not overlapping.
pub unsafe fn copy(dst: u64, src: u64, len: usize) {
    // SAFETY: the caller vouches for both ranges; DF is clear per the ABI.
    unsafe {
        asm!(
            "rep movsb",
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
            options(nostack, preserves_flags),
        );
    }
}
