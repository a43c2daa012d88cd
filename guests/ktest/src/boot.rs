//! Entry from the VMM and bring-up of every CPU.
//!
//! All vCPUs start at `_start` at once (ktvmm's ELF64 protocol). The boot
//! CPU (index 0) clears the BSS and sets up the shared state; the others wait
//! for it, then set themselves up and go idle in `smp::idle_loop`. The boot
//! CPU waits until they are all online before calling the test's `main`.

use core::sync::atomic::{AtomicU32, Ordering};

use ktvmm_abi::{BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo};

use crate::exit::{exit, halt_forever};
use crate::idt;
use crate::percpu::{self, MAX_CPUS};
use crate::vectors::{PROBE_VECTOR, SPURIOUS_VECTOR, TICK_VECTOR, WAKE_VECTOR};
use crate::{console, env, lapic, smp, x86};

/// Value of [`SHARED_STATE`] once the boot CPU has set everything up.
const SHARED_STATE_READY: u32 = 0x6b74_6573;

/// Set by the boot CPU when the BSS is clear and the IDT built. It lives in
/// `.data`: a flag in the BSS would be cleared under the waiting CPUs' feet.
#[unsafe(link_section = ".data.ktest_shared_state")]
static SHARED_STATE: AtomicU32 = AtomicU32::new(0);

/// Number of CPUs that finished booting (in the BSS: only counted after it
/// is cleared).
static ONLINE: AtomicU32 = AtomicU32::new(0);

unsafe extern "Rust" {
    /// The test's entry point, defined by [`crate::main!`].
    fn ktest_main() -> u8;
}

unsafe extern "C" {
    #[link_name = "__bss_start"]
    static BSS_START: u8;
    #[link_name = "__bss_end"]
    static BSS_END: u8;
}

// RDI = boot information, RSI = CPU index, RSP = this CPU's stack top
// (16-byte aligned, so the call leaves the ABI-required alignment).
core::arch::global_asm!(
    ".section .text.ktest_start,\"ax\",@progbits",
    ".global _start",
    "_start:",
    "mov rdx, rsp",
    "pushfq",
    "pop rcx",
    "xor ebp, ebp",
    "call {entry}",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    entry = sym entry,
);

/// First Rust code on every CPU (called from `_start`).
extern "C" fn entry(boot: *const BootInfo, cpu: u64, entry_rsp: u64, entry_rflags: u64) -> ! {
    let cpu = cpu as u32;
    if cpu == 0 {
        boot_cpu(boot, entry_rsp, entry_rflags)
    } else {
        application_cpu(boot, cpu, entry_rsp, entry_rflags)
    }
}

fn clear_bss() {
    let start = &raw const BSS_START as usize;
    let end = &raw const BSS_END as usize;
    // SAFETY: the linker script places the BSS between these symbols, and
    // nothing in it is in use yet: only this CPU runs Rust code so far, and
    // it has not touched any zero-initialised static.
    unsafe { crate::mem::memset(start as *mut u8, 0, end - start) };
}

fn boot_cpu(boot: *const BootInfo, entry_rsp: u64, entry_rflags: u64) -> ! {
    clear_bss();
    env::init(boot);
    let info = env::boot_info();
    // Before anything trusts the addresses in it.
    check_boot_info(info);
    // SAFETY: first thing on this CPU, with the VMM's boot information.
    unsafe { percpu::init(0, info, entry_rsp, entry_rflags) };
    idt::set_internal_handler(WAKE_VECTOR, smp::wake_handler);
    idt::set_internal_handler(TICK_VECTOR, smp::tick_handler);
    idt::set_internal_handler(PROBE_VECTOR, lapic::probe_handler);
    idt::init();
    idt::load();
    lapic::enable(SPURIOUS_VECTOR);
    percpu::get(0).online.store(1, Ordering::Release);
    ONLINE.store(1, Ordering::Relaxed);
    SHARED_STATE.store(SHARED_STATE_READY, Ordering::Release);

    let expected = smp::online_count();
    smp::wait_until(|| ONLINE.load(Ordering::Acquire) >= expected);
    // SAFETY: `ktest_main` is defined by the `main!` macro in the guest
    // binary with exactly this signature.
    let code = unsafe { ktest_main() };
    exit(u32::from(code))
}

/// Refuses to run tests on a boot contract this library does not speak.
fn check_boot_info(info: &BootInfo) {
    use core::fmt::Write;
    let problem = if info.magic != BOOT_INFO_MAGIC {
        "bad boot information magic"
    } else if info.version != BOOT_INFO_VERSION {
        "unsupported boot information version"
    } else if info.cpu_count as usize > MAX_CPUS {
        "more CPUs than ktest supports"
    } else {
        return;
    };
    console::with_console(|w| {
        let _ = writeln!(
            w,
            "FAIL: ktest: {problem} (magic {:#x}, version {}, {} CPUs, at most {MAX_CPUS} supported)",
            info.magic, info.version, info.cpu_count
        );
    });
    exit(1)
}

fn application_cpu(boot: *const BootInfo, cpu: u32, entry_rsp: u64, entry_rflags: u64) -> ! {
    // No IDT yet, so no interrupts to wait for: spin. The boot CPU only
    // clears the BSS and builds a few IDT gates before it lets us go.
    while SHARED_STATE.load(Ordering::Acquire) != SHARED_STATE_READY {
        x86::pause();
    }
    if cpu as usize >= MAX_CPUS {
        // The boot CPU reports this and ends the test.
        halt_forever();
    }
    // SAFETY: the BSS is clear; `boot` is the VMM's boot information.
    unsafe { percpu::init(cpu, &*boot, entry_rsp, entry_rflags) };
    idt::load();
    lapic::enable(SPURIOUS_VECTOR);
    percpu::get(cpu).online.store(1, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    smp::wake(0);
    smp::idle_loop()
}

/// Registers as the VMM set them for a CPU, recorded at `_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// RSP: the top of the CPU's boot stack.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
}

/// What CPU `cpu` had in its registers when it entered the guest.
pub fn entry_state(cpu: u32) -> EntryState {
    let state = percpu::get(cpu);
    EntryState {
        rsp: state.entry_rsp.load(Ordering::Relaxed),
        rflags: state.entry_rflags.load(Ordering::Relaxed),
    }
}
