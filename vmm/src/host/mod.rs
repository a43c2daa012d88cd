//! What the host says about a VM: its kernel log and KVM's binary stats.

pub mod kmsg;
pub mod kvm_stats;
