//! QEMU's firmware configuration device (fw_cfg), as ktvmm and QEMU both
//! provide it on x86: a 16-bit selector port and a byte-wide data port.

use crate::x86;

use ktvmm_abi::ports::FW_CFG;

/// The data port, next to the selector.
const DATA: u16 = FW_CFG + 1;

/// Item keys.
pub mod key {
    /// "QEMU", when the device is there.
    pub const SIGNATURE: u16 = 0x00;
    /// RAM size in bytes (64-bit).
    pub const RAM_SIZE: u16 = 0x03;
    /// Number of CPUs started (16-bit).
    pub const NB_CPUS: u16 = 0x05;
    /// Most CPUs the machine can have (16-bit).
    pub const MAX_CPUS: u16 = 0x0f;
}

/// Reads the first `N` bytes of item `key` (little-endian items are read
/// with [`read_u16`]/[`read_u64`]).
pub fn read<const N: usize>(key: u16) -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: selecting an item and reading its bytes only moves the
    // device's read cursor.
    unsafe {
        x86::outw(FW_CFG, key);
        for byte in &mut bytes {
            *byte = x86::inb(DATA);
        }
    }
    bytes
}

/// Item `key` as a little-endian u16.
pub fn read_u16(key: u16) -> u16 {
    u16::from_le_bytes(read(key))
}

/// Item `key` as a little-endian u64.
pub fn read_u64(key: u16) -> u64 {
    u64::from_le_bytes(read(key))
}

/// Whether the device answers with its signature.
pub fn present() -> bool {
    read::<4>(key::SIGNATURE) == *b"QEMU"
}
