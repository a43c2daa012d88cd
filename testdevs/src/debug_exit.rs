//! isa-debug-exit: a write ends the VM with the written value as exit code.
//!
//! QEMU exits with `(value << 1) | 1` so that a guest can never claim success;
//! ktvmm passes the value through unchanged, which is what the guest meant
//! (kvm-unit-tests' `exit()` does `outl(code, 0xf4)`: 0 pass, 1 fail, 77 skip).

use crate::bus_device::{Action, BusDevice};

/// Width of the port window (QEMU's `iosize` default); the port itself is
/// platform placement (`ktvmm_abi::ports::DEBUG_EXIT`).
pub const LEN: u64 = 4;

/// The isa-debug-exit device.
#[derive(Debug, Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    // Reads return 0 (the bus zero-fills), as QEMU's device does.

    fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
        let mut value = [0u8; 4];
        let n = data.len().min(4);
        value[..n].copy_from_slice(&data[..n]);
        Action::Exit(u32::from_le_bytes(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_write_width_exits_with_the_value() {
        let mut dev = DebugExit;
        assert_eq!(dev.write(0, &[77]), Action::Exit(77));
        assert_eq!(dev.write(0, &[1, 0]), Action::Exit(1));
        assert_eq!(dev.write(0, &[0x34, 0x12, 0, 0]), Action::Exit(0x1234));
    }

    #[test]
    fn reads_leave_zeroes() {
        let mut dev = DebugExit;
        let mut data = [0u8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
