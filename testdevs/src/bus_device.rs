//! The interface every device on a PIO or MMIO bus implements.

/// What the VM must do after a device handled a write.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the guest goes on.
    Continue,
    /// The guest asked to end the VM with this exit code.
    Exit(u32),
    /// The device cannot go on for a reason on the host's side (its output
    /// is closed or full): the run ends with this as ktvmm's error.
    Stop(&'static str),
}

/// A device reached through a bus window; `offset` is relative to the start
/// of the window the device was inserted at, `data` holds 1 to 8 bytes in
/// little-endian order (the guest's access width).
pub trait BusDevice: Send {
    /// A guest read; `data` arrives zero-filled, so a device may leave bytes it
    /// has nothing to say about.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let _ = (offset, data);
    }

    /// A guest write.
    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let _ = (offset, data);
        Action::Continue
    }
}
