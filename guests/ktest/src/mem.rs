//! The C memory functions that `core` and the compiler call.
//!
//! There is no libc in a guest. These use string instructions rather than
//! loops: guest kernel code is often run by an instruction emulator, where
//! one `rep movsq` step is far cheaper than a loop's four instructions, and
//! the compiler cannot turn inline assembly back into a call to itself.

use core::arch::asm;

/// Copies `n` bytes forwards: 8 at a time, then the tail.
///
/// # Safety
///
/// `dest` and `src` valid for `n` bytes; if they overlap, `dest <= src`.
unsafe fn copy_forward(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller guarantees both ranges; DF is clear per the ABI, so
    // both string instructions walk upwards through exactly `n` bytes.
    unsafe {
        asm!(
            "rep movsq",
            "mov ecx, {tail:e}",
            "rep movsb",
            tail = in(reg) n & 7,
            inout("rcx") n / 8 => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

/// `memcpy(3)`.
///
/// # Safety
///
/// `dest` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe { copy_forward(dest, src, n) };
    dest
}

/// `memmove(3)`: like `memcpy`, but the ranges may overlap.
///
/// # Safety
///
/// `dest` and `src` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forwards is correct when dest is below src or past its end.
        unsafe { copy_forward(dest, src, n) };
    } else if n > 0 {
        // SAFETY: dest overlaps the tail of src, so copy from the last byte
        // down (DF set), then restore DF as the ABI requires.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack),
            );
        }
    }
    dest
}

/// `memset(3)`.
///
/// # Safety
///
/// `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let pattern = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees `dest..dest + n`; DF is clear.
    unsafe {
        asm!(
            "rep stosq",
            "mov ecx, {tail:e}",
            "rep stosb",
            tail = in(reg) n & 7,
            inout("rcx") n / 8 => _,
            inout("rdi") dest => _,
            in("rax") pattern,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// `memcmp(3)`.
///
/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes each.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp(3)`: zero when the ranges are equal.
///
/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { memcmp(a, b, n) }
}
