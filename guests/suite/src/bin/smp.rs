//! Multiprocessor basics: every CPU checks in and runs work posted to it,
//! APIC IDs match CPU indices, and IPIs arrive: to self, around a ring (each
//! CPU to the next), broadcast to all but the sender and to all. With one
//! CPU the multi-CPU parts are skipped.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktest::lapic::{self, Destination};
use ktest::smp::MAX_CPUS;
use ktest::{
    InterruptFrame, Spinlock, cpu_count, cpu_id, on_cpu, on_cpus, report, report_skip, wait_until,
};

ktest::main!(main);

const SELF_VECTOR: u8 = 0x40;
const RING_VECTOR: u8 = 0x41;
const ALL_BUT_SELF_VECTOR: u8 = 0x42;
const ALL_VECTOR: u8 = 0x43;

/// Per-CPU interrupt counts, one array per test vector.
struct Counts([AtomicU32; MAX_CPUS]);

impl Counts {
    const fn new() -> Self {
        Self([const { AtomicU32::new(0) }; MAX_CPUS])
    }

    fn count_here(&self) {
        self.0[cpu_id() as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn on(&self, cpu: u32) -> u32 {
        self.0[cpu as usize].load(Ordering::Relaxed)
    }

    /// Bit mask of the CPUs whose count is exactly `expected`.
    fn mask_equal(&self, expected: impl Fn(u32) -> u32) -> u64 {
        (0..cpu_count())
            .filter(|&cpu| self.on(cpu) == expected(cpu))
            .fold(0, |mask, cpu| mask | 1 << cpu)
    }
}

static SELF_IPIS: Counts = Counts::new();
static RING_IPIS: Counts = Counts::new();
static ALL_BUT_SELF_IPIS: Counts = Counts::new();
static ALL_IPIS: Counts = Counts::new();

static CHECKED_IN: AtomicU64 = AtomicU64::new(0);
static APIC_ID_MATCHES: AtomicU64 = AtomicU64::new(0);
static RAN_ON: Counts = Counts::new();
static ASYNC_RUNS: AtomicU32 = AtomicU32::new(0);
static NESTED_RUNS: AtomicU32 = AtomicU32::new(0);
static SHARED_COUNTER: Spinlock<u32> = Spinlock::new(0);

/// Lock rounds per CPU in the contention check.
const LOCK_ROUNDS: u32 = 50;

fn all_cpus() -> u64 {
    u64::MAX >> (64 - cpu_count())
}

fn count_async() {
    ASYNC_RUNS.fetch_add(1, Ordering::Relaxed);
}

fn main() -> u8 {
    ktest::report_prefix_push("smp");
    let cpus = cpu_count();
    ktest::report_info!("{} CPUs", cpus);

    on_cpus(|| {
        CHECKED_IN.fetch_or(1 << cpu_id(), Ordering::Relaxed);
    });
    let checked_in = CHECKED_IN.load(Ordering::Relaxed);
    report!(
        checked_in == all_cpus(),
        "all {} CPUs checked in (mask {:#x})",
        cpus,
        checked_in
    );

    on_cpus(|| {
        if lapic::id() == cpu_id() {
            APIC_ID_MATCHES.fetch_or(1 << cpu_id(), Ordering::Relaxed);
        }
    });
    let matches = APIC_ID_MATCHES.load(Ordering::Relaxed);
    report!(
        matches == all_cpus(),
        "APIC ID equals CPU index on every CPU (mask {:#x})",
        matches
    );

    for cpu in 0..cpus {
        on_cpu(cpu, || RAN_ON.count_here());
    }
    report!(
        RAN_ON.mask_equal(|_| 1) == all_cpus(),
        "on_cpu runs on the requested CPU, once each"
    );

    ktest::set_irq_handler(SELF_VECTOR, |_: &InterruptFrame| SELF_IPIS.count_here());
    ktest::set_irq_handler(RING_VECTOR, |_: &InterruptFrame| RING_IPIS.count_here());
    ktest::set_irq_handler(ALL_BUT_SELF_VECTOR, |_: &InterruptFrame| {
        ALL_BUT_SELF_IPIS.count_here()
    });
    ktest::set_irq_handler(ALL_VECTOR, |_: &InterruptFrame| ALL_IPIS.count_here());

    on_cpus(|| {
        lapic::send_ipi(Destination::ToSelf, SELF_VECTOR);
        wait_until(|| SELF_IPIS.on(cpu_id()) >= 1);
    });
    report!(
        SELF_IPIS.mask_equal(|_| 1) == all_cpus(),
        "self-IPI delivered once on every CPU"
    );

    if cpus < 2 {
        report_skip!("IPI ring: needs at least 2 CPUs");
        report_skip!("broadcast IPI: needs at least 2 CPUs");
        report_skip!("on_cpu_async: needs at least 2 CPUs");
        report_skip!("nested on_cpu: needs at least 2 CPUs");
    } else {
        // Each CPU sends to the next and waits for the one from the
        // previous: every CPU both sends and receives exactly one.
        on_cpus(|| {
            let me = cpu_id();
            lapic::send_ipi(Destination::Cpu((me + 1) % cpus), RING_VECTOR);
            wait_until(|| RING_IPIS.on(me) >= 1);
        });
        report!(
            RING_IPIS.mask_equal(|_| 1) == all_cpus(),
            "IPI ring: each CPU got one IPI from its neighbour"
        );

        lapic::send_ipi(Destination::AllButSelf, ALL_BUT_SELF_VECTOR);
        on_cpus(|| {
            if cpu_id() != 0 {
                wait_until(|| ALL_BUT_SELF_IPIS.on(cpu_id()) >= 1);
            }
        });
        let expected = |cpu: u32| u32::from(cpu != 0);
        report!(
            ALL_BUT_SELF_IPIS.mask_equal(expected) == all_cpus(),
            "broadcast IPI (all but self) reached every other CPU and not the sender"
        );

        lapic::send_ipi(Destination::All, ALL_VECTOR);
        on_cpus(|| wait_until(|| ALL_IPIS.on(cpu_id()) >= 1));
        report!(
            ALL_IPIS.mask_equal(|_| 1) == all_cpus(),
            "broadcast IPI (all) reached every CPU once"
        );

        for cpu in 1..cpus {
            ktest::on_cpu_async(cpu, count_async);
        }
        for cpu in 1..cpus {
            ktest::wait_idle(cpu);
        }
        let runs = ASYNC_RUNS.load(Ordering::Relaxed);
        report!(
            runs == cpus - 1,
            "on_cpu_async ran on each of the other {} CPUs ({})",
            cpus - 1,
            runs
        );

        // CPU 1 asks CPU 0, which is itself waiting for CPU 1.
        on_cpu(1, || {
            on_cpu(0, || {
                if cpu_id() == 0 {
                    NESTED_RUNS.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let nested = NESTED_RUNS.load(Ordering::Relaxed);
        report!(
            nested == 1,
            "nested on_cpu: CPU 1 runs work on the waiting CPU 0 ({})",
            nested
        );
    }

    on_cpus(|| {
        for _ in 0..LOCK_ROUNDS {
            *SHARED_COUNTER.lock() += 1;
        }
    });
    let total = *SHARED_COUNTER.lock();
    report!(
        total == LOCK_ROUNDS * cpus,
        "spinlock: {} increments from {} CPUs add up ({})",
        LOCK_ROUNDS,
        cpus,
        total
    );

    ktest::report_prefix_pop();
    ktest::report_summary()
}
