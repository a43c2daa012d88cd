//! Per-CPU state, found through the GS base.
//!
//! Each CPU points IA32_GS_BASE at its own [`PerCpu`], so finding the current
//! CPU's index is a single `gs`-relative load instead of an LAPIC register
//! read (an MMIO exit).

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::x86;

/// Most CPUs ktest supports; the per-CPU table is sized for this many.
pub const MAX_CPUS: usize = 64;

/// Size of each CPU's interrupt stack (IST1), carved from the bottom of its
/// boot stack (at most a quarter of it).
const IST_SIZE: u64 = 16 * 1024;
/// Size of each CPU's user-mode stack, right above the interrupt stack (at
/// most an eighth of the boot stack).
const USER_STACK_SIZE: u64 = 8 * 1024;
/// Offset of IST1 in a 64-bit TSS.
const TSS_IST1_OFFSET: u64 = 0x24;

/// Work posted to a CPU by [`crate::smp`].
pub(crate) struct Mailbox {
    /// One of the `smp::MAILBOX_*` states.
    pub(crate) state: AtomicU32,
    /// The CPU that posted the work; woken when it is done.
    pub(crate) requester: AtomicU32,
    /// `extern "C" fn(*const u8)` to call, as usize.
    pub(crate) call: AtomicUsize,
    /// Its argument.
    pub(crate) data: AtomicUsize,
    /// Counter to decrement when done (null for fire-and-forget work).
    pub(crate) pending: AtomicPtr<AtomicU32>,
}

/// One CPU's state. `cpu` must stay the first field: `cpu_id` reads it with
/// `mov eax, gs:[0]`.
#[repr(C)]
pub(crate) struct PerCpu {
    pub(crate) cpu: AtomicU32,
    /// Set once the CPU has finished booting and can take work.
    pub(crate) online: AtomicU32,
    /// RSP when the CPU entered `_start` (the top of its boot stack).
    pub(crate) entry_rsp: AtomicU64,
    /// RFLAGS when the CPU entered `_start`.
    pub(crate) entry_rflags: AtomicU64,
    pub(crate) mailbox: Mailbox,
    /// Ticks of this CPU's timeout timer (see `smp::wait_until_timeout`).
    pub(crate) ticks: AtomicU32,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            cpu: AtomicU32::new(0),
            online: AtomicU32::new(0),
            entry_rsp: AtomicU64::new(0),
            entry_rflags: AtomicU64::new(0),
            mailbox: Mailbox {
                state: AtomicU32::new(0),
                requester: AtomicU32::new(0),
                call: AtomicUsize::new(0),
                data: AtomicUsize::new(0),
                pending: AtomicPtr::new(core::ptr::null_mut()),
            },
            ticks: AtomicU32::new(0),
        }
    }
}

// In .data rather than the BSS, which the boot CPU would have to clear with
// (possibly emulated) guest instructions; the VMM loads .data for free.
#[unsafe(link_section = ".data.ktest_percpu")]
static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// The state of CPU `cpu`.
pub(crate) fn get(cpu: u32) -> &'static PerCpu {
    assert!(
        (cpu as usize) < MAX_CPUS,
        "CPU {cpu} is beyond ktest's limit"
    );
    &PERCPU[cpu as usize]
}

/// The state of the calling CPU.
pub(crate) fn this() -> &'static PerCpu {
    get(cpu_id())
}

/// The index of the calling CPU (0 is the boot CPU; equals its APIC ID).
pub fn cpu_id() -> u32 {
    let cpu: u32;
    // SAFETY: GS points at this CPU's PerCpu (set in `init` before any
    // code that can call this), whose first field is the CPU index (an
    // AtomicU32, which has the layout of a u32).
    unsafe {
        core::arch::asm!("mov {:e}, gs:[0]", out(reg) cpu, options(readonly, nostack, preserves_flags))
    }
    cpu
}

/// The interrupt stack is the low end of the boot stack: the boot stack grows
/// down from its top and guests use a few KiB of it.
fn ist_top(boot: &ktvmm_abi::BootInfo, cpu: u32) -> u64 {
    let stack_bottom = boot.stacks_base + u64::from(cpu) * boot.stack_size;
    (stack_bottom + IST_SIZE.min(boot.stack_size / 4)) & !0xf
}

/// Top of CPU `cpu`'s user-mode stack, just above its interrupt stack.
pub(crate) fn user_stack_top(cpu: u32) -> u64 {
    let boot = crate::env::boot_info();
    (ist_top(boot, cpu) + USER_STACK_SIZE.min(boot.stack_size / 8)) & !0xf
}

/// Sets up the calling CPU's per-CPU state and interrupt stack.
///
/// # Safety
///
/// Once per CPU, by that CPU (`cpu` < MAX_CPUS), before it uses anything else
/// in ktest, with the boot information the VMM provided.
pub(crate) unsafe fn init(cpu: u32, boot: &ktvmm_abi::BootInfo, entry_rsp: u64, entry_rflags: u64) {
    let this = get(cpu);
    this.cpu.store(cpu, Ordering::Relaxed);
    this.entry_rsp.store(entry_rsp, Ordering::Relaxed);
    this.entry_rflags.store(entry_rflags, Ordering::Relaxed);
    // SAFETY: GS is not used by anything else in the guest.
    unsafe { x86::wrmsr(x86::msr::GS_BASE, &raw const *this as u64) };

    let ist_top = ist_top(boot, cpu);
    let tss = boot.tss_addr + u64::from(cpu) * boot.tss_stride;
    // SAFETY: the VMM gave this CPU its own TSS at that address (identity
    // mapped); IST1 is not used by anything else.
    unsafe { core::ptr::write_unaligned((tss + TSS_IST1_OFFSET) as *mut u64, ist_top) };
}
