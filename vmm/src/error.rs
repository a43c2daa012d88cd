//! The two failures every layer that sets up a VM can meet: a KVM call
//! refused, and boot data that does not go into guest memory. Each layer's
//! own error wraps these, so no layer needs another's error type.

/// A KVM call failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct KvmCallError {
    /// The call.
    pub what: &'static str,
    /// KVM's error.
    pub source: kvm_ioctls::Error,
}

/// Writing boot data into guest memory failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {what} into guest memory failed: {source}")]
pub struct GuestWriteError {
    /// What was being written.
    pub what: &'static str,
    /// The error.
    pub source: vm_memory::GuestMemoryError,
}

/// For `map_err`: names the KVM call that failed.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmCallError {
    move |source| KvmCallError { what, source }
}

/// For `map_err`: names what could not be written into guest memory.
pub(crate) fn mem_err(
    what: &'static str,
) -> impl FnOnce(vm_memory::GuestMemoryError) -> GuestWriteError {
    move |source| GuestWriteError { what, source }
}
