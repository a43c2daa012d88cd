//! Running code on other CPUs.
//!
//! Application processors idle in `sti; hlt` and each has a mailbox. Posting
//! work fills the mailbox and sends the target a wake-up IPI; when the work
//! is done the target wakes the poster the same way. Nobody spins while
//! waiting, which matters when guest kernel code is emulated and the host
//! has fewer cores than the guest has vCPUs.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::lapic::{self, Destination, Divide};
use crate::percpu::{self, Mailbox};
use crate::vectors::{TICK_VECTOR, WAKE_VECTOR};
use crate::{env, x86};

pub use crate::percpu::{MAX_CPUS, cpu_id};

const MAILBOX_FREE: u32 = 0;
const MAILBOX_CLAIMED: u32 = 1;
const MAILBOX_PENDING: u32 = 2;
const MAILBOX_RUNNING: u32 = 3;

/// Number of CPUs in the guest (from the boot information).
pub fn cpu_count() -> u32 {
    env::boot_info().cpu_count
}

/// Waits, halted with interrupts enabled, until `condition` holds.
///
/// The condition is checked with interrupts disabled and the CPU only halts
/// after that check, so a wake-up cannot slip in between: whoever makes the
/// condition true must then send this CPU an interrupt (any vector; ktest's
/// own [`wake`] or the interrupt being waited for). Work that other CPUs
/// post to this one runs while it waits. Restores the interrupt flag on
/// return.
pub fn wait_until(mut condition: impl FnMut() -> bool) {
    let interrupts_were_enabled = x86::interrupts_enabled();
    let mailbox = &percpu::this().mailbox;
    loop {
        x86::disable_interrupts();
        run_posted_work(mailbox);
        if condition() {
            break;
        }
        x86::enable_interrupts_and_halt();
    }
    if interrupts_were_enabled {
        x86::enable_interrupts();
    }
}

/// LAPIC timer count for a 1 ms tick with a divisor of 16, at KVM's
/// default 1 GHz APIC bus clock.
const TICK_COUNT: u32 = 62_500;

/// Like [`wait_until`], but gives up after about `timeout_ms` milliseconds;
/// returns whether `condition` held.
///
/// While waiting, this CPU's LAPIC timer ticks every millisecond, so the
/// condition is checked at least that often: it may poll a device register
/// that no interrupt announces. The timer is stopped (and masked) on
/// return, so do not use this while a test runs its own LAPIC timer on the
/// same CPU.
pub fn wait_until_timeout(timeout_ms: u32, mut condition: impl FnMut() -> bool) -> bool {
    if condition() {
        return true;
    }
    let ticks = &percpu::this().ticks;
    let start = ticks.load(Ordering::Relaxed);
    let mut met = false;
    lapic::timer_periodic(TICK_VECTOR, TICK_COUNT, Divide::By16);
    wait_until(|| {
        met = condition();
        met || ticks.load(Ordering::Relaxed).wrapping_sub(start) >= timeout_ms
    });
    lapic::timer_stop();
    met
}

/// Halts for about `ms` milliseconds (this CPU keeps taking interrupts and
/// posted work). Uses the LAPIC timer, as [`wait_until_timeout`] does.
pub fn delay_ms(ms: u32) {
    wait_until_timeout(ms, || false);
}

/// Counts timeout ticks on the CPU that took one.
pub(crate) fn tick_handler(_frame: &crate::InterruptFrame) {
    percpu::this().ticks.fetch_add(1, Ordering::Relaxed);
}

/// Wakes `cpu` if it is halted in [`wait_until`] or idle.
pub fn wake(cpu: u32) {
    lapic::send_ipi(Destination::Cpu(cpu), WAKE_VECTOR);
}

/// The wake-up vector only needs to end the `hlt`; the dispatcher sends EOI.
pub(crate) fn wake_handler(_frame: &crate::InterruptFrame) {}

extern "C" fn call_fn<F: Fn()>(data: usize) {
    // SAFETY: `post` callers pass a pointer to an `F` that outlives the call.
    let f = unsafe { &*(data as *const F) };
    f();
}

extern "C" fn call_fn_pointer(data: usize) {
    // SAFETY: `on_cpu_async` passes a `fn()` converted to usize.
    let f = unsafe { core::mem::transmute::<usize, fn()>(data) };
    f();
}

fn checked_target(cpu: u32) -> &'static Mailbox {
    assert!(cpu < cpu_count(), "CPU {cpu} does not exist");
    let target = percpu::get(cpu);
    assert!(
        target.online.load(Ordering::Acquire) != 0,
        "CPU {cpu} is not online"
    );
    &target.mailbox
}

/// Posts `call(data)` to `cpu` and wakes it. If `pending` is non-null, the
/// target decrements it and wakes the caller when done.
fn post(cpu: u32, call: extern "C" fn(usize), data: usize, pending: *mut AtomicU32) {
    let mailbox = checked_target(cpu);
    // Only a second poster racing for the same busy CPU waits here, and the
    // target does not wake it: spin.
    while mailbox
        .state
        .compare_exchange_weak(
            MAILBOX_FREE,
            MAILBOX_CLAIMED,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        x86::pause();
    }
    mailbox.requester.store(cpu_id(), Ordering::Relaxed);
    mailbox.call.store(call as usize, Ordering::Relaxed);
    mailbox.data.store(data, Ordering::Relaxed);
    mailbox.pending.store(pending, Ordering::Relaxed);
    mailbox.state.store(MAILBOX_PENDING, Ordering::Release);
    wake(cpu);
}

/// Runs `f` on CPU `cpu` and waits for it to finish (directly, if `cpu` is
/// the caller). Application processors take work whenever they are idle;
/// the boot CPU only while it waits in [`wait_until`] (which `on_cpu` and
/// friends do).
pub fn on_cpu<F: Fn() + Sync>(cpu: u32, f: F) {
    if cpu == cpu_id() {
        f();
        return;
    }
    let pending = AtomicU32::new(1);
    post(
        cpu,
        call_fn::<F>,
        &raw const f as usize,
        (&raw const pending).cast_mut(),
    );
    wait_until(|| pending.load(Ordering::Acquire) == 0);
}

/// Runs `f` on every online CPU, the caller included, and waits for all of
/// them to finish.
pub fn on_cpus<F: Fn() + Sync>(f: F) {
    let me = cpu_id();
    let count = online_count();
    let pending = AtomicU32::new(count - 1);
    for cpu in (0..count).filter(|&cpu| cpu != me) {
        post(
            cpu,
            call_fn::<F>,
            &raw const f as usize,
            (&raw const pending).cast_mut(),
        );
    }
    f();
    wait_until(|| pending.load(Ordering::Acquire) == 0);
}

/// Starts `f` on CPU `cpu` without waiting for it (see [`wait_idle`]). If
/// `cpu` is the caller, `f` runs before this returns.
pub fn on_cpu_async(cpu: u32, f: fn()) {
    if cpu == cpu_id() {
        f();
        return;
    }
    post(cpu, call_fn_pointer, f as usize, core::ptr::null_mut());
}

/// Waits until CPU `cpu` has finished the work posted to it.
pub fn wait_idle(cpu: u32) {
    if cpu == cpu_id() {
        return;
    }
    let mailbox = checked_target(cpu);
    // The target wakes its last poster when done; a different caller may
    // not be woken, so halting is only used when we posted the work.
    while mailbox.state.load(Ordering::Acquire) != MAILBOX_FREE {
        if mailbox.requester.load(Ordering::Relaxed) == cpu_id() {
            wait_until(|| mailbox.state.load(Ordering::Acquire) == MAILBOX_FREE);
        } else {
            x86::pause();
        }
    }
}

/// Number of CPUs that have booted and can run work (all of them once the
/// test's `main` runs).
pub fn online_count() -> u32 {
    cpu_count().min(MAX_CPUS as u32)
}

/// Runs the work posted to this CPU, if any; returns whether there was.
fn run_posted_work(mailbox: &Mailbox) -> bool {
    if mailbox.state.load(Ordering::Acquire) != MAILBOX_PENDING {
        return false;
    }
    let call = mailbox.call.load(Ordering::Relaxed);
    let data = mailbox.data.load(Ordering::Relaxed);
    let pending = mailbox.pending.load(Ordering::Relaxed);
    let requester = mailbox.requester.load(Ordering::Relaxed);
    mailbox.state.store(MAILBOX_RUNNING, Ordering::Relaxed);
    // SAFETY: `post` stored an `extern "C" fn(usize)` as usize.
    let call = unsafe { core::mem::transmute::<usize, extern "C" fn(usize)>(call) };
    call(data);
    mailbox.state.store(MAILBOX_FREE, Ordering::Release);
    if !pending.is_null() {
        // SAFETY: a synchronous poster keeps the counter alive until it
        // reaches zero, which this decrement may be the one to do.
        unsafe { (*pending).fetch_sub(1, Ordering::Release) };
    }
    wake(requester);
    true
}

/// What an application processor does after booting: run posted work,
/// halt in between.
pub(crate) fn idle_loop() -> ! {
    let mailbox = &percpu::this().mailbox;
    loop {
        x86::disable_interrupts();
        if !run_posted_work(mailbox) {
            x86::enable_interrupts_and_halt();
        }
    }
}
