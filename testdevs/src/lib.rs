//! ktvmm's test devices as plain state machines.
//!
//! Nothing here knows about KVM: a device sees reads and writes at an offset
//! into its own window, and reports what the VM must do through the value its
//! `write` returns. The VMM places devices on its buses and wires their
//! interrupts; these models are unit-tested on the host with no VM at all.
#![warn(missing_docs)]

mod access;
pub mod bus_device;
pub mod debug_exit;
pub mod edu;
pub mod fuzzing;
pub mod interrupt;
pub mod pc_testdev;
pub mod pci;
pub mod pci_testdev;
pub mod postfix;

pub use bus_device::{Action, BusDevice};
pub use edu::{Edu, EduLinks};
pub use interrupt::{Deferred, DmaError, DmaMemory, InterruptLine, MsiSender, PageFlush};
pub use pc_testdev::{PcTestdevIomem, PcTestdevIrqs, PcTestdevPorts};
pub use pci::{IoEventFd, PciConfig, PciDevice};
pub use pci_testdev::PciTestdev;
pub use postfix::Postfix;
