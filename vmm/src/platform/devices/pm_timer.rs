//! The ACPI power-management timer (PIIX4's, at port 0x608 as in QEMU): a
//! 24-bit counter running at 3.579545 MHz from VM start, read-only.

use std::time::Instant;

use ktvmm_testdevs::bus_device::BusDevice;

/// Width of the port window.
pub const LEN: u64 = 4;
/// The counter's rate.
pub const HZ: u64 = 3_579_545;
const MASK: u64 = 0xff_ffff;

/// The timer.
#[derive(Debug)]
pub struct PmTimer {
    start: Instant,
}

impl PmTimer {
    /// A timer counting from now.
    pub fn new() -> Self {
        PmTimer {
            start: Instant::now(),
        }
    }

    /// The counter value `nanos` after the start.
    pub fn count_at(nanos: u128) -> u32 {
        ((nanos * u128::from(HZ) / 1_000_000_000) as u64 & MASK) as u32
    }
}

impl Default for PmTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for PmTimer {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = Self::count_at(self.start.elapsed().as_nanos()).to_le_bytes();
        // An access inside the 4 bytes reads the bytes it covers.
        let from = (offset as usize).min(value.len());
        for (d, v) in data.iter_mut().zip(&value[from..]) {
            *d = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_3_58_mhz_and_wraps_at_24_bits() {
        assert_eq!(PmTimer::count_at(0), 0);
        assert_eq!(PmTimer::count_at(1_000_000_000), (HZ & MASK) as u32);
        assert_eq!(PmTimer::count_at(1_000_000), 3579);
        let wrap_ns = (1u128 << 24) * 1_000_000_000 / u128::from(HZ) + 1;
        assert!(PmTimer::count_at(wrap_ns) < 10);
    }

    #[test]
    fn reads_move_forward() {
        let mut timer = PmTimer::new();
        let mut a = [0u8; 4];
        timer.read(0, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut b = [0u8; 4];
        timer.read(0, &mut b);
        assert!(u32::from_le_bytes(b) > u32::from_le_bytes(a));
        let mut high = [0u8; 2];
        timer.read(2, &mut high);
        assert_eq!(high[1], 0, "a 24-bit counter's top byte");
    }
}
