//! The CPU a guest sees: QEMU-style models and flag edits, and the CPUID
//! table KVM is given.

pub mod cpuid;
pub mod model;
