//! The LAPIC timer: a one-shot timer interrupts once on the programmed
//! vector (on every CPU), a periodic timer keeps interrupting until stopped,
//! and a masked timer counts down without interrupting.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktest::lapic::{self, Divide, TimerMode};
use ktest::smp::MAX_CPUS;
use ktest::{InterruptFrame, cpu_id, on_cpus, report, wait_until, x86};

ktest::main!(main);

const ONESHOT_VECTOR: u8 = 0x50;
const PERIODIC_VECTOR: u8 = 0x51;
const MASKED_VECTOR: u8 = 0x52;
const PER_CPU_VECTOR: u8 = 0x53;

/// One millisecond at KVM's default 1 GHz APIC bus clock, divided by 1.
const ONESHOT_COUNT: u32 = 1_000_000;
/// One millisecond with a divisor of 16 (KVM refuses periods under 200 us).
const PERIOD_COUNT: u32 = 62_500;
const PERIODIC_TICKS: u32 = 5;
/// 100 us with a divisor of 1.
const MASKED_COUNT: u32 = 100_000;
/// Bound on current-count reads while waiting for the masked timer.
const MASKED_POLLS: u32 = 1_000_000;

static ONESHOT_TICKS: AtomicU32 = AtomicU32::new(0);
static ONESHOT_SEEN_VECTOR: AtomicU64 = AtomicU64::new(0);
static PERIODIC: AtomicU32 = AtomicU32::new(0);
static MASKED: AtomicU32 = AtomicU32::new(0);
static PER_CPU: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn oneshot_handler(frame: &InterruptFrame) {
    ONESHOT_SEEN_VECTOR.store(frame.vector, Ordering::Relaxed);
    ONESHOT_TICKS.fetch_add(1, Ordering::Relaxed);
}

fn main() -> u8 {
    ktest::report_prefix_push("lapic-timer");
    ktest::set_irq_handler(ONESHOT_VECTOR, oneshot_handler);
    ktest::set_irq_handler(PERIODIC_VECTOR, |_: &InterruptFrame| {
        PERIODIC.fetch_add(1, Ordering::Relaxed);
    });
    ktest::set_irq_handler(MASKED_VECTOR, |_: &InterruptFrame| {
        MASKED.fetch_add(1, Ordering::Relaxed);
    });
    ktest::set_irq_handler(PER_CPU_VECTOR, |_: &InterruptFrame| {
        PER_CPU[cpu_id() as usize].fetch_add(1, Ordering::Relaxed);
    });

    // One-shot.
    lapic::timer_oneshot(ONESHOT_VECTOR, ONESHOT_COUNT, Divide::By1);
    let divide = lapic::timer_divide();
    let initial = lapic::timer_initial_count();
    let current = lapic::timer_current_count();
    report!(
        divide == Divide::By1.register_value(),
        "divide configuration reads back ({:#x})",
        divide
    );
    report!(
        initial == ONESHOT_COUNT,
        "initial count reads back ({})",
        initial
    );
    report!(
        current <= ONESHOT_COUNT,
        "current count ({}) is at most the initial count",
        current
    );
    wait_until(|| ONESHOT_TICKS.load(Ordering::Relaxed) >= 1);
    let vector = ONESHOT_SEEN_VECTOR.load(Ordering::Relaxed);
    report!(
        vector == u64::from(ONESHOT_VECTOR),
        "one-shot interrupt arrives on vector {:#x}",
        vector
    );
    let current = lapic::timer_current_count();
    report!(
        current == 0,
        "current count is 0 after the one-shot expired ({})",
        current
    );

    // Periodic, also the delay that shows the one-shot does not repeat.
    lapic::timer_periodic(PERIODIC_VECTOR, PERIOD_COUNT, Divide::By16);
    wait_until(|| PERIODIC.load(Ordering::Relaxed) >= PERIODIC_TICKS);
    let current = lapic::timer_current_count();
    lapic::timer_stop();
    let ticks = PERIODIC.load(Ordering::Relaxed);
    report!(
        ticks >= PERIODIC_TICKS,
        "periodic timer delivered {} ticks",
        ticks
    );
    report!(
        current <= PERIOD_COUNT,
        "periodic current count stays within the period ({})",
        current
    );
    let oneshots = ONESHOT_TICKS.load(Ordering::Relaxed);
    report!(
        oneshots == 1,
        "one-shot timer fired exactly once ({})",
        oneshots
    );

    // Masked: counts down to zero, nothing is delivered. The countdown is
    // also the delay that shows the stopped periodic timer stays quiet.
    let ticks_after_stop = PERIODIC.load(Ordering::Relaxed);
    lapic::timer_start(
        TimerMode::OneShot,
        MASKED_VECTOR,
        MASKED_COUNT,
        Divide::By1,
        true,
    );
    let mut polls = 0;
    while lapic::timer_current_count() != 0 && polls < MASKED_POLLS {
        polls += 1;
    }
    x86::open_interrupt_window();
    report!(
        polls < MASKED_POLLS,
        "masked timer counted down to 0 ({} polls)",
        polls
    );
    report!(
        MASKED.load(Ordering::Relaxed) == 0 && !lapic::irr_pending(MASKED_VECTOR),
        "masked timer delivered no interrupt"
    );
    report!(
        PERIODIC.load(Ordering::Relaxed) == ticks_after_stop,
        "stopped periodic timer delivered no more ticks"
    );
    lapic::timer_stop();

    // Every CPU's own timer.
    on_cpus(|| {
        lapic::timer_oneshot(PER_CPU_VECTOR, ONESHOT_COUNT / 10, Divide::By1);
        wait_until(|| PER_CPU[cpu_id() as usize].load(Ordering::Relaxed) >= 1);
    });
    let cpus = ktest::cpu_count();
    let all_once = (0..cpus).all(|cpu| PER_CPU[cpu as usize].load(Ordering::Relaxed) == 1);
    report!(
        all_once,
        "one-shot timer interrupt on each of the {} CPUs",
        cpus
    );

    ktest::report_prefix_pop();
    ktest::report_summary()
}
