//! ktvmm's test devices as plain state machines.
//!
//! Nothing here knows about KVM: a device sees reads and writes at an offset
//! into its own window, and reports what the VM must do through the value its
//! `write` returns. The VMM places devices on its buses and wires their
//! interrupts; these models are unit-tested on the host with no VM at all.
#![warn(missing_docs)]

pub mod bus_device;
pub mod debug_exit;
pub mod interrupt;
pub mod pc_testdev;
pub mod pci;
pub mod postfix;

pub use bus_device::{Action, BusDevice};
pub use interrupt::{Deferred, DmaError, DmaMemory, InterruptLine, MsiSender, PageFlush};
pub use pci::{PciConfig, PciDevice};
