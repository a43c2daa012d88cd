//! Running a function in user mode (CPL 3).
//!
//! Some instructions only behave as the test wants outside the kernel
//! (`int3` is a software interrupt, which KVM's instruction emulator cannot
//! deliver from CPL 0), and on hosts that emulate guest kernel code, user
//! code runs natively, so it is also the place for heavy loops.
//!
//! [`run_user`] enters user mode with `iretq` on a per-CPU user stack. The
//! function ends with a `hlt` at a known address, which faults (#GP) back
//! into the kernel; any other exception ends the excursion the same way, so
//! both come back through [`catch_exception`](crate::catch_exception)'s
//! recovery.
//!
//! The VMM's identity map is supervisor-only, so on first use the 2 MiB
//! pages holding the guest image and the boot stacks are made
//! user-accessible (the tables are in guest memory).

use ktvmm_abi::gdt::{KERNEL_DATA, USER_CODE, USER_DATA};

use crate::exceptions::{Fault, Vector, catch_with_rax};
use crate::spinlock::Spinlock;
use crate::{env, percpu, x86};

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 1 << 21;
/// RFLAGS in user mode: interrupts off, reserved bit 1 set.
const USER_RFLAGS: u64 = 0x2;

unsafe extern "C" {
    /// Switches to user mode and calls `function(arg)` there; never returns
    /// (the way back is an exception, see the module documentation).
    fn ktest_enter_user(arg: u64, function: u64, user_stack_top: u64, rflags: u64);
    /// Reloads the kernel data selectors, keeping the GS base.
    fn ktest_kernel_segments();
    /// The `hlt` that ends a user function.
    fn ktest_user_exit();
}

core::arch::global_asm!(
    ".section .text.ktest_user,\"ax\",@progbits",
    ".global ktest_enter_user",
    "ktest_enter_user:",
    "mov r8, rcx",
    "mov r9, rdx",
    // iretq to CPL 3 would null data selectors of DPL 0, so load user ones.
    // Loading GS resets its base, which holds the per-CPU pointer the
    // exception handlers need: save it and write it back.
    "mov ecx, {gs_base}",
    "rdmsr",
    "mov r10d, eax",
    "mov r11d, edx",
    "mov eax, {user_data}",
    "mov ds, ax",
    "mov es, ax",
    "mov fs, ax",
    "mov gs, ax",
    "mov eax, r10d",
    "mov edx, r11d",
    "wrmsr",
    "push {user_data}",
    "push r9",
    "push r8",
    "push {user_code}",
    "lea rax, [rip + 2f]",
    "push rax",
    "iretq",
    // CPL 3 from here: RDI = argument, RSI = function.
    "2:",
    "call rsi",
    ".global ktest_user_exit",
    "ktest_user_exit:",
    "hlt",
    "",
    ".global ktest_kernel_segments",
    "ktest_kernel_segments:",
    "mov ecx, {gs_base}",
    "rdmsr",
    "mov r8d, {kernel_data}",
    "mov ds, r8w",
    "mov es, r8w",
    "mov fs, r8w",
    "mov gs, r8w",
    "wrmsr",
    "ret",
    gs_base = const x86::msr::GS_BASE,
    user_data = const USER_DATA | 3,
    user_code = const USER_CODE | 3,
    kernel_data = const KERNEL_DATA,
);

/// Whether the page tables already allow user access to image and stacks.
static PAGES_READY: Spinlock<bool> = Spinlock::new(false);

/// Sets the user bit on every paging level above `[start, end)`.
fn allow_user_access(start: u64, end: u64) {
    let root = x86::read_cr3() & PTE_ADDRESS;
    let mut address = start & !(PAGE_2M - 1);
    while address < end {
        let mut table = root;
        for shift in [39, 30, 21] {
            let entry = (table + ((address >> shift) & 511) * 8) as *mut u64;
            // SAFETY: the entry is in the VMM's page tables (identity-mapped
            // guest RAM); only the user bit changes, and only for pages
            // that are present.
            let value = unsafe { core::ptr::read_volatile(entry) };
            if value & PTE_PRESENT == 0 {
                return;
            }
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(entry, value | PTE_USER) };
            if shift == 21 || value & PTE_HUGE != 0 {
                break;
            }
            table = value & PTE_ADDRESS;
        }
        address += PAGE_2M;
    }
}

fn prepare() {
    let mut ready = PAGES_READY.lock();
    if !*ready {
        let boot = env::boot_info();
        allow_user_access(boot.kernel_start, boot.kernel_end);
        allow_user_access(
            boot.stacks_base,
            boot.stacks_base + u64::from(boot.cpu_count) * boot.stack_size,
        );
        *ready = true;
    }
    drop(ready);
    // SAFETY: reloading CR3 with its own value only flushes this CPU's TLB,
    // so it sees the user bits set above.
    unsafe {
        core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags))
    };
}

/// Runs `function(arg)` at CPL 3 on this CPU and returns its result, or the
/// exception that ended it.
///
/// `function` runs with interrupts disabled on a small (8 KiB) per-CPU user
/// stack, and may only touch the guest image (code and statics) and that
/// stack: other memory is supervisor-only. Privileged instructions fault
/// with #GP, as they should.
pub fn run_user(function: extern "C" fn(u64) -> u64, arg: u64) -> Result<u64, Fault> {
    prepare();
    let stack_top = percpu::user_stack_top(crate::smp::cpu_id());
    let result = catch_with_rax(|| {
        // SAFETY: the user stack is this CPU's own and user-accessible; the
        // excursion ends with an exception that `catch_with_rax` turns into
        // a return here.
        unsafe { ktest_enter_user(arg, function as *const () as u64, stack_top, USER_RFLAGS) }
    });
    // SAFETY: restores the kernel data selectors and the same GS base.
    unsafe { ktest_kernel_segments() };
    match result {
        Some((fault, rax))
            if fault.vector == Vector::GP && fault.rip == ktest_user_exit as *const () as u64 =>
        {
            Ok(rax)
        }
        Some((fault, _)) => Err(fault),
        None => unreachable!("user mode returned without an exception"),
    }
}
