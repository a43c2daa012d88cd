//! The interrupt vectors ktest keeps for itself. They sit apart from the
//! IDT, the LAPIC and SMP code that all use them, so none of those needs
//! another for a number.

/// Vectors from here up are used by ktest itself.
pub const FIRST_RESERVED_VECTOR: u8 = 0xf0;
/// Wakes a CPU waiting in [`crate::smp::wait_until`] or idling.
pub const WAKE_VECTOR: u8 = 0xf0;
/// The LAPIC timer tick of [`crate::smp::wait_until_timeout`].
pub const TICK_VECTOR: u8 = 0xf1;
/// The self-IPI of [`crate::lapic::eoi_at_delivery`].
pub const PROBE_VECTOR: u8 = 0xf2;
/// The LAPIC's spurious-interrupt vector (never acknowledged with EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;
