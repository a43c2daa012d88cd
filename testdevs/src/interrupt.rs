//! How a device raises interrupts and reaches guest memory, as traits, so
//! that the models run on the host with fakes and under KVM with the real
//! thing (`KVM_IRQ_LINE`, irqfd, `KVM_SIGNAL_MSI`, vm-memory).

/// A level-sensitive interrupt line (an ISA IRQ or a PCI INTx pin).
pub trait InterruptLine: Send + Sync {
    /// Drives the line high (`true`) or low.
    fn set_level(&self, high: bool);
}

/// Drops guest pages from the host's mappings (pc-testdev's flush port).
pub trait PageFlush: Send + Sync {
    /// Makes the guest's next access to the page at `gpa` (page-aligned)
    /// fault into the host again, keeping its data; an address that is not
    /// RAM is ignored.
    fn flush_page(&self, gpa: u64);
}

/// Delivers message-signalled interrupts.
pub trait MsiSender: Send + Sync {
    /// Writes `data` to `address` as an MSI (`address` is the full 64-bit
    /// message address the guest programmed; it may be bogus).
    fn send(&self, address: u64, data: u32);
}

/// Why a DMA access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DMA of {len} bytes at {addr:#x} is outside guest RAM")]
pub struct DmaError {
    /// Guest-physical start.
    pub addr: u64,
    /// Length.
    pub len: usize,
}

/// A device's window onto guest RAM. Every access is bounds-checked by the
/// implementation: an access that is not entirely inside RAM fails and
/// touches nothing.
pub trait DmaMemory: Send + Sync {
    /// Copies `buf.len()` bytes of guest RAM at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Copies `buf` into guest RAM at `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError>;
}

/// Runs work later, off the vCPU thread (edu computes and copies "in the
/// background", as its QEMU model does).
pub trait Deferred: Send + Sync {
    /// Runs `work` soon, on another thread.
    fn defer(&self, work: Box<dyn FnOnce() + Send>);
}
