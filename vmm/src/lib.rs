//! The ktvmm virtual machine: everything between a [`VmConfig`] and an
//! [`Outcome`]. It knows nothing about test suites.
#![warn(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod boot_plan;
pub mod bus;
pub mod core_dump;
pub mod cpu_model;
pub mod cpuid;
pub mod devices;
pub mod floor;
pub mod forensics;
pub mod fuzz;
pub mod gdb;
pub mod irq_routing;
pub mod kick;
pub mod kmsg;
pub mod kvm_stats;
pub mod liveness;
pub mod loader;
pub mod long_mode;
pub mod memory;
pub mod multiboot;
pub mod outcome;
pub mod pci;
pub mod platform;
pub mod test_images;
pub mod vcpu;
pub mod vm;

pub use loader::KernelImage;
pub use outcome::Outcome;
pub use vm::{Timings, Vm, VmConfig, VmError};
