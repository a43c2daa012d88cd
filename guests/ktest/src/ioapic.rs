//! The IOAPIC: routing a GSI (an IOAPIC input pin) to a vector on a CPU.
//!
//! ktvmm uses KVM's in-kernel IOAPIC at 0xfec00000 with 24 pins, GSI n on
//! pin n: ISA IRQs 1-15 on pins 1-15 (edge, active-high; ISA IRQ 0 is on
//! pin 2, as on a PC), PCI INTx on pins 16-19 (level, active-high, see
//! `ktvmm_abi::pci::intx_gsi`).
//!
//! Level-triggered interrupts: the IOAPIC sets the entry's Remote IRR when
//! it delivers, and delivers nothing more on that pin until the CPU's EOI
//! for the vector, which the LAPIC broadcasts to the IOAPIC (KVM does this
//! for vectors that came from a level-triggered entry). ktest's dispatcher
//! sends that EOI after the handler returns, so a handler must quiet the
//! device first; if the line is still asserted at EOI, the interrupt is
//! delivered again. The IOAPIC has no EOI register of its own (version
//! 0x11).

use ktvmm_abi::layout::IOAPIC_ADDR;

use crate::spinlock::Spinlock;
use crate::{mmio, x86};

/// Index register (selects a register for the window).
const IOREGSEL: u64 = 0x00;
/// Data window.
const IOWIN: u64 = 0x10;

/// Indirect register numbers.
pub mod reg {
    /// IOAPIC ID (bits 27:24).
    pub const ID: u32 = 0x00;
    /// Version (bits 7:0) and maximum redirection entry (bits 23:16).
    pub const VERSION: u32 = 0x01;
    /// Low half of redirection entry 0; entry n is at `0x10 + 2n`.
    pub const REDIRECTION_TABLE: u32 = 0x10;
}

/// Redirection entry bits (low half).
pub mod entry {
    /// Delivery mode: fixed (bits 10:8 = 0).
    pub const DELIVERY_FIXED: u64 = 0 << 8;
    /// Destination mode: logical (clear: physical).
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status: sent but not yet accepted (read-only).
    pub const DELIVERY_PENDING: u64 = 1 << 12;
    /// Polarity: active-low (clear: active-high).
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Remote IRR: a level-triggered interrupt awaits its EOI (read-only).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode: level (clear: edge).
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASKED: u64 = 1 << 16;
}

/// Serialises the select-then-access pairs across CPUs (and handlers).
static LOCK: Spinlock<()> = Spinlock::new(());

/// Reads an indirect IOAPIC register.
pub fn read(register: u32) -> u32 {
    let _guard = LOCK.lock();
    // SAFETY: the IOAPIC page is identity-mapped device memory; selecting
    // and reading a register have no side effects.
    unsafe {
        mmio::write32(IOAPIC_ADDR + IOREGSEL, register);
        mmio::read32(IOAPIC_ADDR + IOWIN)
    }
}

/// Writes an indirect IOAPIC register.
///
/// # Safety
///
/// Redirection entries decide which vectors CPUs receive: the caller must
/// have handlers for what it routes.
pub unsafe fn write(register: u32, value: u32) {
    let _guard = LOCK.lock();
    // SAFETY: device memory, as in `read`; the caller vouches for the effect.
    unsafe {
        mmio::write32(IOAPIC_ADDR + IOREGSEL, register);
        mmio::write32(IOAPIC_ADDR + IOWIN, value);
    }
}

/// The IOAPIC's version register.
pub fn version() -> u32 {
    read(reg::VERSION)
}

/// Number of input pins (redirection entries).
pub fn pins() -> u32 {
    ((version() >> 16) & 0xff) + 1
}

/// How an input is triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// On the rising edge (of the asserted level).
    Edge,
    /// While asserted (with Remote IRR until EOI).
    Level,
}

/// Which line level counts as asserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// High is asserted.
    ActiveHigh,
    /// Low is asserted.
    ActiveLow,
}

/// A fixed-delivery, physical-destination route for one pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The vector delivered.
    pub vector: u8,
    /// APIC ID of the CPU it goes to (= CPU index).
    pub dest: u8,
    /// Edge or level.
    pub trigger: Trigger,
    /// Active-high or active-low.
    pub polarity: Polarity,
    /// Whether the entry is masked.
    pub masked: bool,
}

impl Route {
    /// An unmasked edge-triggered, active-high route (ISA IRQs).
    pub const fn edge(vector: u8, dest: u8) -> Self {
        Self {
            vector,
            dest,
            trigger: Trigger::Edge,
            polarity: Polarity::ActiveHigh,
            masked: false,
        }
    }

    /// An unmasked level-triggered, active-high route (PCI INTx here).
    pub const fn level(vector: u8, dest: u8) -> Self {
        Self {
            vector,
            dest,
            trigger: Trigger::Level,
            polarity: Polarity::ActiveHigh,
            masked: false,
        }
    }

    /// The same route, masked.
    pub const fn masked(self) -> Self {
        Self {
            masked: true,
            ..self
        }
    }

    /// The 64-bit redirection entry.
    pub const fn entry(&self) -> u64 {
        let mut value = self.vector as u64 | entry::DELIVERY_FIXED | (self.dest as u64) << 56;
        if let Trigger::Level = self.trigger {
            value |= entry::LEVEL;
        }
        if let Polarity::ActiveLow = self.polarity {
            value |= entry::ACTIVE_LOW;
        }
        if self.masked {
            value |= entry::MASKED;
        }
        value
    }
}

/// The raw redirection entry of `pin`.
pub fn redirection(pin: u32) -> u64 {
    let register = reg::REDIRECTION_TABLE + 2 * pin;
    // Two separate reads; entries change only through `set_redirection`,
    // apart from the read-only status bits in the low half.
    let high = u64::from(read(register + 1));
    high << 32 | u64::from(read(register))
}

/// Writes the raw redirection entry of `pin`: masks it first, then writes
/// the destination, then the low half (which may unmask it), so no
/// half-written entry is ever live.
///
/// # Safety
///
/// As for [`write`].
pub unsafe fn set_redirection(pin: u32, value: u64) {
    let register = reg::REDIRECTION_TABLE + 2 * pin;
    // SAFETY: forwarded from the caller.
    unsafe {
        write(register, entry::MASKED as u32);
        write(register + 1, (value >> 32) as u32);
        write(register, value as u32);
    }
}

/// Routes `pin` (a GSI) as described. The caller must have a handler for
/// `route.vector` (see [`crate::set_irq_handler`]) before it unmasks.
pub fn route(pin: u32, route: Route) {
    // SAFETY: a fixed vector to one CPU; an interrupt on a vector without a
    // handler is reported by ktest as a failure, not undefined behaviour.
    unsafe { set_redirection(pin, route.entry()) }
}

/// Masks `pin`.
pub fn mask(pin: u32) {
    let low = read(reg::REDIRECTION_TABLE + 2 * pin);
    // SAFETY: masking delivers nothing new.
    unsafe { write(reg::REDIRECTION_TABLE + 2 * pin, low | entry::MASKED as u32) }
}

/// Unmasks `pin` (keeping its route). A level-triggered pin whose line is
/// asserted delivers at once.
pub fn unmask(pin: u32) {
    let low = read(reg::REDIRECTION_TABLE + 2 * pin);
    // SAFETY: the route was set up with `route` by the caller.
    unsafe {
        write(
            reg::REDIRECTION_TABLE + 2 * pin,
            low & !(entry::MASKED as u32),
        )
    }
}

/// Whether `pin` awaits an EOI (Remote IRR, level-triggered pins only).
pub fn remote_irr(pin: u32) -> bool {
    u64::from(read(reg::REDIRECTION_TABLE + 2 * pin)) & entry::REMOTE_IRR != 0
}

/// Masks every input of both legacy 8259 PICs (OCW1 = 0xff).
///
/// ISA IRQ lines also reach the in-kernel PIC, whose output goes to the
/// boot CPU's LINT0 (ExtINT after reset). ktvmm has no firmware to
/// program the PIC, so a test that raises ISA IRQs masks it first; then
/// only the IOAPIC delivers them.
pub fn mask_legacy_pic() {
    // SAFETY: writing the interrupt mask registers only stops PIC delivery.
    unsafe {
        x86::outb(0x21, 0xff);
        x86::outb(0xa1, 0xff);
    }
}
