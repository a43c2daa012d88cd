//! What the VMM told the guest: the boot information, the command line and
//! the initrd.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use ktvmm_abi::BootInfo;
use ktvmm_abi::layout::CMDLINE_MAX;

static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());
/// The command line, checked for UTF-8 once at boot (empty if it is not).
static CMDLINE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CMDLINE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Records where the boot information is; run by the boot CPU.
pub(crate) fn init(boot: *const BootInfo) {
    BOOT_INFO.store(boot.cast_mut(), Ordering::Release);
    let bytes = cmdline_bytes();
    if core::str::from_utf8(bytes).is_ok() {
        CMDLINE_LEN.store(bytes.len(), Ordering::Relaxed);
        CMDLINE.store(bytes.as_ptr().cast_mut(), Ordering::Release);
    }
}

/// The boot information the VMM wrote (RDI at entry).
pub fn boot_info() -> &'static BootInfo {
    let boot = BOOT_INFO.load(Ordering::Acquire);
    assert!(!boot.is_null(), "boot information used before boot");
    // SAFETY: the VMM placed a BootInfo there, identity-mapped, and nothing
    // in the guest writes it.
    unsafe { &*boot }
}

/// Total guest RAM in bytes.
pub fn mem_size() -> u64 {
    boot_info().mem_size
}

/// The raw command line bytes (without the terminating NUL).
pub fn cmdline_bytes() -> &'static [u8] {
    let boot = boot_info();
    if boot.cmdline_addr == 0 {
        return &[];
    }
    let len = (boot.cmdline_len as usize).min(CMDLINE_MAX - 1);
    // SAFETY: the VMM wrote `cmdline_len` bytes at `cmdline_addr` in
    // identity-mapped RAM that the guest never writes.
    unsafe { core::slice::from_raw_parts(boot.cmdline_addr as *const u8, len) }
}

/// The command line (`-append`); empty if there is none or it is not UTF-8.
pub fn cmdline() -> &'static str {
    let start = CMDLINE.load(Ordering::Acquire);
    if start.is_null() {
        return "";
    }
    // SAFETY: `init` stored these after checking that the bytes, which
    // nothing writes, are UTF-8.
    unsafe {
        core::str::from_utf8_unchecked(core::slice::from_raw_parts(
            start,
            CMDLINE_LEN.load(Ordering::Relaxed),
        ))
    }
}

/// The command-line words, split at whitespace.
pub fn args() -> core::str::SplitAsciiWhitespace<'static> {
    cmdline().split_ascii_whitespace()
}

/// The value of the first `key=value` argument with this key.
pub fn arg_value(key: &str) -> Option<&'static str> {
    args().find_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
}

/// Whether `word` is one of the arguments.
pub fn has_arg(word: &str) -> bool {
    args().any(|arg| arg == word)
}

/// The initrd (`-initrd`), or an empty slice.
pub fn initrd() -> &'static [u8] {
    let boot = boot_info();
    if boot.initrd_len == 0 || boot.initrd_addr == 0 {
        return &[];
    }
    // SAFETY: the VMM loaded `initrd_len` bytes at `initrd_addr` in RAM
    // covered by the identity map, and ktest never writes there.
    unsafe { core::slice::from_raw_parts(boot.initrd_addr as *const u8, boot.initrd_len as usize) }
}

/// Page size of [`alloc_pages`].
pub const PAGE_SIZE: u64 = 4096;

/// Pages handed out so far by [`alloc_pages`].
static PAGES_ALLOCATED: AtomicU64 = AtomicU64::new(0);

/// Takes `count` pages of the free RAM the VMM reported
/// (`BootInfo::free_start..free_end`) and returns their address, which is
/// both the physical address (for DMA) and the pointer (identity map).
/// Pages come from the bottom of free RAM upwards and are never given back;
/// their contents are whatever the RAM held (not zeroed: clearing costs
/// emulated instructions that a test may not need).
///
/// # Panics
///
/// When free RAM runs out.
pub fn alloc_pages(count: u64) -> u64 {
    let boot = boot_info();
    let first = PAGES_ALLOCATED.fetch_add(count, Ordering::Relaxed);
    let start = boot.free_start.next_multiple_of(PAGE_SIZE) + first * PAGE_SIZE;
    assert!(
        start + count * PAGE_SIZE <= boot.free_end,
        "out of free RAM for {count} pages"
    );
    start
}
