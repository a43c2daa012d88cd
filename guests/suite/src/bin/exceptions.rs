//! Exceptions are delivered with the right vector, error code, RIP (and CR2
//! for page faults), and the guest carries on after each one: #UD, #DE, #BP,
//! #GP (non-canonical access, reserved EFER bit, unknown MSR) and #PF (read
//! and write above the identity map), on every CPU for #UD, nested.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use ktest::exceptions::pf_error;
use ktest::x86::{self, msr};
use ktest::{Fault, Vector, catch_exception, report};

ktest::main!(main);

// Each faulting instruction has a label, so the test can check the RIP the
// CPU reported. Arguments come in RDI as usual.
core::arch::global_asm!(
    ".section .text.fault_sites,\"ax\",@progbits",
    ".global ud2_site",
    "ud2_site:",
    "ud2",
    "ret",
    ".global divide_error_site",
    "divide_error_site:",
    "xor eax, eax",
    "xor edx, edx",
    "xor ecx, ecx",
    ".global divide_error_insn",
    "divide_error_insn:",
    "div ecx",
    "ret",
    ".global breakpoint_site",
    "breakpoint_site:",
    "int3",
    ".global breakpoint_after",
    "breakpoint_after:",
    "ret",
    ".global load_site",
    "load_site:",
    "mov rax, [rdi]",
    "ret",
    ".global store_site",
    "store_site:",
    "mov qword ptr [rdi], 0",
    "ret",
);

unsafe extern "C" {
    fn ud2_site();
    fn divide_error_site();
    fn divide_error_insn();
    fn breakpoint_site(arg: u64) -> u64;
    fn breakpoint_after();
    fn load_site(address: u64) -> u64;
    fn store_site(address: u64);
}

fn raise_ud() {
    // SAFETY: ud2_site executes ud2 and returns; the #UD is caught by the
    // caller's catch_exception.
    unsafe { ud2_site() }
}

fn raise_de() {
    // SAFETY: divide_error_site divides by zero (clobbering only
    // caller-saved registers); the #DE is caught by the caller.
    unsafe { divide_error_site() }
}

/// Runs in user mode: returns the privilege level it runs at, plus `arg`.
extern "C" fn user_cpl_plus(arg: u64) -> u64 {
    u64::from(x86::read_cs() & 3) + arg
}

/// Runs in user mode: executes int3.
extern "C" fn user_breakpoint(arg: u64) -> u64 {
    // SAFETY: breakpoint_site executes int3 and returns; the #BP ends the
    // user-mode excursion.
    unsafe { breakpoint_site(arg) }
}

/// Runs in user mode: executes a privileged instruction.
extern "C" fn user_cli(_arg: u64) -> u64 {
    x86::disable_interrupts();
    0
}

/// Loads from `address`, which must not be memory Rust code uses (the test
/// only passes addresses that fault).
fn probe_load(address: u64) {
    // SAFETY: as documented: no Rust object lives at `address`.
    unsafe { load_site(address) };
}

/// Stores zero to `address`, under the same rule as [`probe_load`].
fn probe_store(address: u64) {
    // SAFETY: as documented: no Rust object lives at `address`.
    unsafe { store_site(address) }
}

/// 512 GiB: above any identity map ktvmm builds (at most 64 GiB).
const UNMAPPED: u64 = 0x80_0000_0000;
/// The lowest non-canonical address.
const NON_CANONICAL: u64 = 0x8000_0000_0000;
/// Reserved EFER bit (bits 1-7 are reserved).
const EFER_RESERVED_BIT: u64 = 1 << 2;
/// An MSR index no CPU implements.
const UNKNOWN_MSR: u32 = 0xdead_beef;

/// Number of `check` calls in `main`.
const CHECKED_SITES: u64 = 6;

static CONTINUED: AtomicU64 = AtomicU64::new(0);
static UD_CAUGHT_ON: AtomicU64 = AtomicU64::new(0);

/// Reports that `fault` is `vector` at `rip`, with the error code checked by
/// the caller.
fn check(name: &str, fault: Option<Fault>, vector: Vector, rip: u64) -> Option<Fault> {
    CONTINUED.fetch_add(1, Ordering::Relaxed);
    match fault {
        Some(f) => {
            report!(
                f.vector == vector,
                "{}: raises {} (got {})",
                name,
                vector,
                f.vector
            );
            report!(
                f.rip == rip,
                "{}: RIP {:#x} (expected {:#x})",
                name,
                f.rip,
                rip
            );
        }
        None => {
            report!(false, "{}: raises {} (no exception)", name, vector);
        }
    }
    fault
}

fn main() -> u8 {
    ktest::report_prefix_push("exceptions");

    let fault = catch_exception(raise_ud);
    if let Some(f) = check("ud2", fault, Vector::UD, ud2_site as *const () as u64) {
        report!(f.error_code == 0, "ud2: error code 0 ({:#x})", f.error_code);
    }

    let fault = catch_exception(raise_de);
    check(
        "div by zero",
        fault,
        Vector::DE,
        divide_error_insn as *const () as u64,
    );

    // User mode runs natively even where kernel code is emulated, and the
    // emulator cannot deliver software interrupts: int3 is tested at CPL 3.
    let result = ktest::run_user(user_cpl_plus, 40);
    report!(
        result == Ok(43),
        "user mode: function runs at CPL 3 and returns ({:?})",
        result.map_err(|f| f.vector)
    );
    let result = ktest::run_user(user_cli, 0);
    report!(
        matches!(result, Err(f) if f.vector == Vector::GP),
        "user mode: cli raises #GP ({:?})",
        result.map_err(|f| f.vector)
    );
    // #BP is a trap: RIP points after the int3.
    let fault = ktest::run_user(user_breakpoint, 0).err();
    check(
        "int3 (CPL 3)",
        fault,
        Vector::BP,
        breakpoint_after as *const () as u64,
    );

    let fault = catch_exception(|| probe_load(NON_CANONICAL));
    if let Some(f) = check(
        "non-canonical load",
        fault,
        Vector::GP,
        load_site as *const () as u64,
    ) {
        report!(
            f.error_code == 0,
            "non-canonical load: error code 0 ({:#x})",
            f.error_code
        );
    }

    let efer = x86::rdmsr(msr::EFER);
    // SAFETY: the write is refused; were it not, a reserved EFER bit has no
    // effect the test depends on, and EFER is restored below.
    let result = unsafe { ktest::wrmsr_safe(msr::EFER, efer | EFER_RESERVED_BIT) };
    report!(
        matches!(result, Err(f) if f.vector == Vector::GP),
        "wrmsr of a reserved EFER bit raises #GP ({:?})",
        result.err().map(|f| f.vector)
    );
    if result.is_ok() {
        // SAFETY: puts back the value read above.
        unsafe { x86::wrmsr(msr::EFER, efer) };
    }
    let result = ktest::rdmsr_safe(UNKNOWN_MSR);
    report!(
        matches!(result, Err(f) if f.vector == Vector::GP),
        "rdmsr of unknown MSR {:#x} raises #GP ({:?})",
        UNKNOWN_MSR,
        result.map_err(|f| f.vector)
    );
    let apic_base = ktest::rdmsr_safe(msr::APIC_BASE);
    report!(
        apic_base.is_ok(),
        "rdmsr of IA32_APIC_BASE succeeds ({:#x})",
        apic_base.unwrap_or(0)
    );

    let fault = catch_exception(|| probe_load(UNMAPPED));
    if let Some(f) = check(
        "unmapped load",
        fault,
        Vector::PF,
        load_site as *const () as u64,
    ) {
        report!(
            f.cr2 == UNMAPPED,
            "unmapped load: CR2 {:#x} (expected {:#x})",
            f.cr2,
            UNMAPPED
        );
        report!(
            f.error_code & (pf_error::PRESENT | pf_error::WRITE | pf_error::USER) == 0,
            "unmapped load: error code {:#x} says not-present supervisor read",
            f.error_code
        );
    }
    let fault = catch_exception(|| probe_store(UNMAPPED + 0x1000));
    if let Some(f) = check(
        "unmapped store",
        fault,
        Vector::PF,
        store_site as *const () as u64,
    ) {
        report!(
            f.cr2 == UNMAPPED + 0x1000,
            "unmapped store: CR2 {:#x}",
            f.cr2
        );
        report!(
            f.error_code & (pf_error::PRESENT | pf_error::WRITE) == pf_error::WRITE,
            "unmapped store: error code {:#x} says not-present write",
            f.error_code
        );
    }

    let mut ran = false;
    let fault = catch_exception(|| ran = true);
    report!(
        fault.is_none() && ran,
        "a closure without exception runs and returns normally"
    );

    // An inner catch handles its own exception; the outer one sees only
    // the exception raised after it.
    let mut inner = None;
    let outer = catch_exception(|| {
        inner = catch_exception(raise_ud);
        raise_de();
    });
    report!(
        inner.map(|f| f.vector) == Some(Vector::UD) && outer.map(|f| f.vector) == Some(Vector::DE),
        "nested: inner catches #UD, outer catches #DE"
    );

    let cpus = ktest::cpu_count();
    ktest::on_cpus(|| {
        if catch_exception(raise_ud).map(|f| f.vector) == Some(Vector::UD) {
            UD_CAUGHT_ON.fetch_or(1 << ktest::cpu_id(), Ordering::Relaxed);
        }
    });
    let all = u64::MAX >> (64 - cpus);
    report!(
        UD_CAUGHT_ON.load(Ordering::Relaxed) == all,
        "#UD caught on each of the {} CPUs (mask {:#x})",
        cpus,
        UD_CAUGHT_ON.load(Ordering::Relaxed)
    );

    let continued = CONTINUED.load(Ordering::Relaxed);
    report!(
        continued == CHECKED_SITES,
        "execution continued after each of the {} checked exceptions",
        continued
    );
    ktest::report_prefix_pop();
    ktest::report_summary()
}
