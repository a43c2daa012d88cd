//! The ktvmm virtual machine: everything between a [`VmConfig`] and an
//! [`Outcome`]. It knows nothing about test suites or fuzzing.
//!
//! The folders are the layers. [`vm`] assembles a VM from the others:
//! [`boot`] (loaders, boot protocols, page tables, boot data),
//! [`platform`] (buses, PCI, the machine's devices and ACPI tables),
//! [`cpu`] (models and CPUID) and [`run`] (the vCPU loop, its liveness
//! watch, the outcome and its forensics), with [`debug`] (GDB stub, guest
//! cores) and [`host`] (the host kernel's log, KVM's counters) serving the
//! run loop. Uses go one way: `vm` → `run` → `debug` → `boot` →
//! `platform`, `run` → `host`, and every layer → [`memory`], [`error`],
//! [`kick`] (the signal that pulls a vCPU out of `KVM_RUN`) and [`input`].
//! [`floor`] is the bare-KVM baseline `ktvmm bench` compares with.
#![warn(missing_docs)]

pub mod boot;
pub mod cpu;
pub mod debug;
pub mod error;
pub mod floor;
pub mod host;
pub mod input;
pub mod kick;
pub mod memory;
pub mod platform;
pub mod run;
pub mod vm;

pub use boot::loader::KernelImage;
pub use run::outcome::Outcome;
pub use vm::{Timings, Vm, VmConfig, VmError};
