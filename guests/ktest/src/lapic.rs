//! The local APIC in xAPIC (MMIO) mode: IDs, EOI, IPIs and the timer.
//!
//! Every register access is an MMIO exit to KVM's in-kernel LAPIC, so the
//! helpers touch as few registers as they can (no delivery-status polling:
//! KVM delivers an IPI during the ICR write).

use core::sync::atomic::{AtomicU8, Ordering};

use ktvmm_abi::layout::LAPIC_ADDR;

use crate::vectors::PROBE_VECTOR;
use crate::x86;

/// Register offsets from the LAPIC base.
pub mod reg {
    /// Local APIC ID (bits 31:24).
    pub const ID: u32 = 0x20;
    /// Version and number of LVT entries.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// End of interrupt.
    pub const EOI: u32 = 0xb0;
    /// Spurious-interrupt vector and the software enable bit.
    pub const SVR: u32 = 0xf0;
    /// First of the eight in-service (ISR) registers, 0x10 apart.
    pub const ISR: u32 = 0x100;
    /// First of the eight interrupt-request (IRR) registers, 0x10 apart.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half (writing it sends the IPI).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (destination).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT entry of the timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT entry of LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT entry of LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT entry of internal errors.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT: interrupt masked.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: periodic mode.
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// ICR: level assert (required for fixed IPIs).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR: delivery status (send pending).
const ICR_BUSY: u32 = 1 << 12;

/// Reads a LAPIC register.
pub fn read(reg: u32) -> u32 {
    // SAFETY: the LAPIC page is inside the identity map and every offset
    // below 0x1000 is a register (or reads as zero).
    unsafe { core::ptr::read_volatile((LAPIC_ADDR + u64::from(reg & 0xff0)) as *const u32) }
}

/// Writes a LAPIC register.
///
/// # Safety
///
/// The LAPIC can send INIT or NMI to any CPU, or reconfigure delivery of
/// every interrupt: the caller must know what the value does.
pub unsafe fn write(reg: u32, value: u32) {
    // SAFETY: as in `read`; the caller vouches for the effect.
    unsafe { core::ptr::write_volatile((LAPIC_ADDR + u64::from(reg & 0xff0)) as *mut u32, value) }
}

/// Writes one of the registers the safe helpers below restrict to fixed
/// interrupts.
fn write_reg(reg: u32, value: u32) {
    // SAFETY: callers in this module only program fixed-delivery vectors,
    // counts and masks, which have no effect beyond interrupts ktest handles.
    unsafe { write(reg, value) }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(reg::ID) >> 24
}

/// Signals the end of the interrupt in service. ktest's dispatcher already
/// does this after a registered handler returns.
pub fn eoi() {
    write_reg(reg::EOI, 0);
}

/// Software-enables this CPU's LAPIC (SVR enable bit) with
/// `spurious_vector`, accepts all priorities and masks the timer and error
/// interrupts. ktest does this on every CPU at boot, with
/// [`SPURIOUS_VECTOR`](crate::vectors::SPURIOUS_VECTOR).
pub fn enable(spurious_vector: u8) {
    write_reg(reg::TPR, 0);
    write_reg(reg::LVT_TIMER, LVT_MASKED);
    write_reg(reg::LVT_ERROR, LVT_MASKED);
    write_reg(reg::SVR, SVR_ENABLE | u32::from(spurious_vector));
}

/// Whether `vector` is pending in this CPU's IRR.
pub fn irr_pending(vector: u8) -> bool {
    read(reg::IRR + u32::from(vector / 32) * 0x10) & (1 << (vector % 32)) != 0
}

/// Whether `vector` is in service in this CPU's ISR.
pub fn in_service(vector: u8) -> bool {
    read(reg::ISR + u32::from(vector / 32) * 0x10) & (1 << (vector % 32)) != 0
}

/// Who an IPI goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The CPU with this APIC ID (= CPU index).
    Cpu(u32),
    /// The sending CPU.
    ToSelf,
    /// Every CPU, the sender included.
    All,
    /// Every CPU but the sender.
    AllButSelf,
}

/// Sends a fixed-delivery IPI with `vector`.
pub fn send_ipi(destination: Destination, vector: u8) {
    let (shorthand, apic_id) = match destination {
        Destination::Cpu(id) => (0, id),
        Destination::ToSelf => (1, 0),
        Destination::All => (2, 0),
        Destination::AllButSelf => (3, 0),
    };
    // An interrupt handler sending its own IPI between the two writes would
    // change the destination under us.
    x86::without_interrupts(|| {
        write_reg(reg::ICR_HIGH, apic_id << 24);
        write_reg(
            reg::ICR_LOW,
            shorthand << 18 | ICR_ASSERT | u32::from(vector),
        );
    });
}

/// Whether the last IPI is still being sent (ICR delivery status).
pub fn ipi_busy() -> bool {
    read(reg::ICR_LOW) & ICR_BUSY != 0
}

/// Timer operating modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// Counts down once, interrupts at zero and stops.
    OneShot,
    /// Counts down, interrupts and reloads the initial count, forever.
    Periodic,
}

/// Timer clock divisors (of the APIC bus clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divide {
    /// Divide by 1.
    By1,
    /// Divide by 2.
    By2,
    /// Divide by 4.
    By4,
    /// Divide by 8.
    By8,
    /// Divide by 16.
    By16,
    /// Divide by 32.
    By32,
    /// Divide by 64.
    By64,
    /// Divide by 128.
    By128,
}

impl Divide {
    /// The divide-configuration register encoding.
    pub const fn register_value(self) -> u32 {
        match self {
            Divide::By1 => 0b1011,
            Divide::By2 => 0b0000,
            Divide::By4 => 0b0001,
            Divide::By8 => 0b0010,
            Divide::By16 => 0b0011,
            Divide::By32 => 0b1000,
            Divide::By64 => 0b1001,
            Divide::By128 => 0b1010,
        }
    }
}

/// Programs and starts this CPU's timer. A `masked` timer counts down but
/// delivers no interrupt.
pub fn timer_start(mode: TimerMode, vector: u8, initial_count: u32, divide: Divide, masked: bool) {
    let mut lvt = u32::from(vector);
    if mode == TimerMode::Periodic {
        lvt |= LVT_TIMER_PERIODIC;
    }
    if masked {
        lvt |= LVT_MASKED;
    }
    write_reg(reg::TIMER_DIVIDE, divide.register_value());
    write_reg(reg::LVT_TIMER, lvt);
    // Writing the initial count is what starts the countdown.
    write_reg(reg::TIMER_INITIAL, initial_count);
}

/// Starts a one-shot timer: one interrupt on `vector` after
/// `count * divisor` bus clocks.
pub fn timer_oneshot(vector: u8, count: u32, divide: Divide) {
    timer_start(TimerMode::OneShot, vector, count, divide, false);
}

/// Starts a periodic timer: an interrupt on `vector` every
/// `count * divisor` bus clocks.
pub fn timer_periodic(vector: u8, count: u32, divide: Divide) {
    timer_start(TimerMode::Periodic, vector, count, divide, false);
}

/// Stops this CPU's timer and masks it.
pub fn timer_stop() {
    write_reg(reg::TIMER_INITIAL, 0);
    write_reg(reg::LVT_TIMER, LVT_MASKED);
}

/// The timer's current count (zero once a one-shot has expired).
pub fn timer_current_count() -> u32 {
    read(reg::TIMER_CURRENT)
}

/// The timer's initial count.
pub fn timer_initial_count() -> u32 {
    read(reg::TIMER_INITIAL)
}

/// The timer's divide-configuration register.
pub fn timer_divide() -> u32 {
    read(reg::TIMER_DIVIDE)
}

/// What the probe of [`eoi_at_delivery`] saw: 0 not probed yet, 1 its
/// vector was in service inside the handler, 2 it was not.
static PROBE: AtomicU8 = AtomicU8::new(0);

/// Records whether the probe interrupt is in service in its own handler.
pub(crate) fn probe_handler(_frame: &crate::InterruptFrame) {
    let seen = if in_service(PROBE_VECTOR) { 1 } else { 2 };
    PROBE.store(seen, Ordering::Release);
}

/// Whether this CPU's local APIC ends an interrupt's in-service state as it
/// delivers it: inside the handler the vector's ISR bit is already clear,
/// as if the EOI had come at delivery. KVM's PVM backend (`kvm_pvm`)
/// behaves like this; hardware and other KVM backends keep the vector in
/// service until the handler's EOI.
///
/// What it changes for tests: the EOI that a level-triggered IOAPIC entry
/// waits for arrives while the line is still asserted, so the IOAPIC
/// delivers the interrupt once more even though the handler quiets the
/// device before its own EOI. Probed once with a self-IPI (on the calling
/// CPU; every CPU of a VM behaves alike), then cached.
pub fn eoi_at_delivery() -> bool {
    if PROBE.load(Ordering::Acquire) == 0 {
        // The self-IPI arrives at once: halting for it needs none of the
        // SMP machinery (no work from other CPUs can be waiting on this).
        x86::without_interrupts(|| {
            send_ipi(Destination::ToSelf, PROBE_VECTOR);
            while PROBE.load(Ordering::Acquire) == 0 {
                x86::enable_interrupts_and_halt();
            }
        });
    }
    PROBE.load(Ordering::Acquire) == 2
}
