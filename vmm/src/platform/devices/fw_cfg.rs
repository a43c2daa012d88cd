//! QEMU's firmware configuration device, port interface only: what
//! kvm-unit-tests reads to learn the CPU count and RAM size.
//!
//! The guest writes a 16-bit key to the selector port and reads the item's
//! bytes, one per access, from the data port; reads past the item's end or
//! of an unknown key give 0, as QEMU's do. No DMA interface (the ID item
//! says so) and no file directory entries.

use ktvmm_testdevs::bus_device::{Action, BusDevice};

/// Width of the port window: selector at +0 (16-bit), data at +1.
pub const LEN: u64 = 2;

/// Item keys ktvmm provides (QEMU's numbering).
pub mod keys {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Interface feature bits (bit 0: traditional port interface).
    pub const ID: u16 = 0x01;
    /// RAM size in bytes, u64.
    pub const RAM_SIZE: u16 = 0x03;
    /// Whether there is no graphics, u16.
    pub const NOGRAPHIC: u16 = 0x04;
    /// CPUs present at boot, u16.
    pub const NB_CPUS: u16 = 0x05;
    /// Maximum CPUs, u16.
    pub const MAX_CPUS: u16 = 0x0f;
    /// The file directory (a big-endian u32 count, then entries).
    pub const FILE_DIR: u16 = 0x19;
}

/// The device.
#[derive(Debug)]
pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    selected: Option<usize>,
    offset: usize,
}

impl FwCfg {
    /// The items for a VM of `ram_bytes` and `cpus` vCPUs.
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        let items = vec![
            (keys::SIGNATURE, b"QEMU".to_vec()),
            (keys::ID, 1u32.to_le_bytes().to_vec()),
            (keys::RAM_SIZE, ram_bytes.to_le_bytes().to_vec()),
            (keys::NOGRAPHIC, 1u16.to_le_bytes().to_vec()),
            (keys::NB_CPUS, cpus.to_le_bytes().to_vec()),
            (keys::MAX_CPUS, cpus.to_le_bytes().to_vec()),
            (keys::FILE_DIR, 0u32.to_be_bytes().to_vec()),
        ];
        FwCfg {
            items,
            selected: None,
            offset: 0,
        }
    }

    fn select(&mut self, key: u16) {
        self.selected = self.items.iter().position(|(k, _)| *k == key);
        self.offset = 0;
    }

    fn next_byte(&mut self) -> u8 {
        let Some(index) = self.selected else {
            return 0;
        };
        let byte = self.items[index].1.get(self.offset).copied().unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        byte
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The data port delivers one byte per access whatever its width;
        // the selector reads as 0.
        if let (1, Some(first)) = (offset, data.first_mut()) {
            *first = self.next_byte();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        // A selector write of any width takes the low 16 bits; writes to
        // the data port are ignored (QEMU dropped that interface in 2.4).
        if offset == 0 && !data.is_empty() {
            let low = data[0];
            let high = data.get(1).copied().unwrap_or(0);
            self.select(u16::from_le_bytes([low, high]));
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(dev: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        assert_eq!(dev.write(0, &key.to_le_bytes()), Action::Continue);
        (0..len)
            .map(|_| {
                let mut b = [0];
                dev.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn items_read_byte_by_byte() {
        let mut dev = FwCfg::new(256 << 20, 4);
        assert_eq!(read_item(&mut dev, keys::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut dev, keys::NB_CPUS, 2), [4, 0]);
        assert_eq!(read_item(&mut dev, keys::MAX_CPUS, 2), [4, 0]);
        assert_eq!(
            read_item(&mut dev, keys::RAM_SIZE, 8),
            (256u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&mut dev, keys::ID, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn past_the_end_and_unknown_keys_read_zero() {
        let mut dev = FwCfg::new(1 << 20, 1);
        assert_eq!(read_item(&mut dev, keys::NB_CPUS, 4), [1, 0, 0, 0]);
        assert_eq!(read_item(&mut dev, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut dev, 0xffff, 1), [0]);
    }

    #[test]
    fn reselecting_rewinds_and_data_writes_are_ignored() {
        let mut dev = FwCfg::new(1 << 20, 1);
        assert_eq!(read_item(&mut dev, keys::SIGNATURE, 2), b"QE");
        assert_eq!(dev.write(1, &[0x55]), Action::Continue);
        assert_eq!(read_item(&mut dev, keys::SIGNATURE, 4), b"QEMU");
        // A one-byte selector write selects the key with a zero high byte.
        assert_eq!(dev.write(0, &[keys::NB_CPUS as u8]), Action::Continue);
        let mut b = [0];
        dev.read(1, &mut b);
        assert_eq!(b, [1]);
        let mut selector = [0u8; 2];
        dev.read(0, &mut selector);
        assert_eq!(selector, [0, 0]);
    }
}
