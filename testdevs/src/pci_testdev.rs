//! pci-testdev, QEMU's PCI test device (hw/misc/pci-testdev.c): PCI
//! 1b36:0005 with a table of six ioeventfd tests behind its two BARs.
//!
//! BAR0 (4 KiB MMIO) and BAR1 (256 bytes of I/O) share one selected test.
//! Writing `t` to byte 0 of BAR0 selects MMIO test `t`, of BAR1 port I/O
//! test `3 + t`; `t >= 3` deselects. Selecting resets the test's count. The
//! selected test's header and name read byte by byte from either BAR:
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | u8 test index |
//! | 1 | u8 width of the counted writes (1) |
//! | 4 | u32 offset the counted writes go to |
//! | 8 | u8 data of datamatch writes |
//! | 12 | u32 count of writes that reached the device |
//! | 16 | name, NUL-terminated |
//!
//! A byte written at the selected test's offset counts if it equals the
//! test's data, or whatever it is for a wildcard test (QEMU sets
//! `match_data` for the no-eventfd tests as well as the datamatch ones). The wildcard and datamatch tests want
//! KVM to absorb those writes with an ioeventfd ([`PciDevice::ioeventfds`]),
//! so that they never reach here and the count stays 0; the guest accepts 0
//! or the number it wrote.
//!
//! As in QEMU, every access is handled as single bytes (QEMU's regions
//! implement only 1-byte accesses, so its memory core splits wider ones):
//! a 4-byte write at a test's offset counts once if its low byte matches, and
//! the size check on datamatch tests in QEMU's source never fires. Writes to
//! one BAR at the offset of a test selected through the other BAR count too.

use crate::bus_device::Action;
use crate::pci::{BarKind, IoEventFd, PciConfig, PciDevice};

/// PCI vendor ID (Red Hat).
pub const VENDOR_ID: u16 = 0x1b36;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x0005;
/// Revision.
pub const REVISION: u8 = 0;
/// Class code as `0xCCSSPP`: QEMU's `PCI_CLASS_OTHERS` (0x00ff) is class
/// 0x00, subclass 0xff.
pub const CLASS: u32 = 0x00_ff_00;
/// The MMIO BAR.
pub const MMIO_BAR: usize = 0;
/// Its size.
pub const MMIO_BAR_SIZE: u64 = 4096;
/// The port I/O BAR.
pub const IO_BAR: usize = 1;
/// Its size.
pub const IO_BAR_SIZE: u64 = 256;
/// Number of tests per BAR.
pub const TESTS_PER_BAR: usize = 3;
/// Number of tests.
pub const TESTS: usize = 2 * TESTS_PER_BAR;
/// Offset of the name in a test's header.
pub const NAME_OFFSET: usize = 16;

/// QEMU's subsystem IDs for devices that declare none (Red Hat / QEMU).
const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
const SUBSYSTEM_ID: u16 = 0x1100;

/// Data of no-eventfd and datamatch tests (QEMU's `IOTEST_DATAMATCH`).
const DATAMATCH: u8 = 0xfa;
/// Data of wildcard tests (`IOTEST_NOMATCH`).
const NOMATCH: u8 = 0xce;
/// Counted writes start past the header area of each BAR's first half.
const MMIO_TEST_BASE: u32 = 2048;
const IO_TEST_BASE: u32 = 128;

const NAMES: [&str; TESTS] = [
    "mmio-no-eventfd",
    "mmio-wildcard-eventfd",
    "mmio-datamatch-eventfd",
    "portio-no-eventfd",
    "portio-wildcard-eventfd",
    "portio-datamatch-eventfd",
];

/// What kind of test index `i` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NoEventfd,
    Wildcard,
    Datamatch,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
struct Test {
    index: usize,
}

impl Test {
    fn kind(self) -> Kind {
        match self.index % TESTS_PER_BAR {
            0 => Kind::NoEventfd,
            1 => Kind::Wildcard,
            _ => Kind::Datamatch,
        }
    }

    fn bar(self) -> usize {
        if self.index < TESTS_PER_BAR {
            MMIO_BAR
        } else {
            IO_BAR
        }
    }

    /// Where counted writes go: past the first half of the test's BAR, one
    /// byte per test index (2048-2050 and 131-133).
    fn offset(self) -> u32 {
        let base = if self.bar() == MMIO_BAR {
            MMIO_TEST_BASE
        } else {
            IO_TEST_BASE
        };
        base + self.index as u32
    }

    fn data(self) -> u8 {
        if self.kind() == Kind::Wildcard {
            NOMATCH
        } else {
            DATAMATCH
        }
    }

    fn matches_data(self) -> bool {
        self.kind() != Kind::Wildcard
    }

    fn name(self) -> &'static [u8] {
        NAMES.get(self.index).map_or(&[], |n| n.as_bytes())
    }

    /// Byte `at` of the header, the name and its NUL; 0 past the end.
    fn byte(self, at: u64, count: u32) -> u8 {
        let Ok(at) = usize::try_from(at) else {
            return 0;
        };
        let offset = self.offset().to_le_bytes();
        let count = count.to_le_bytes();
        match at {
            0 => self.index as u8,
            1 => 1, // width
            4..=7 => offset[at - 4],
            8 => self.data(),
            12..=15 => count[at - 12],
            _ => at
                .checked_sub(NAME_OFFSET)
                .and_then(|i| self.name().get(i))
                .copied()
                .unwrap_or(0),
        }
    }
}

/// pci-testdev.
pub struct PciTestdev {
    config: PciConfig,
    selected: Option<Test>,
    count: u32,
}

impl Default for PciTestdev {
    fn default() -> Self {
        Self::new()
    }
}

impl PciTestdev {
    /// The device with no test selected; its BARs still need addresses.
    pub fn new() -> Self {
        let config = PciConfig::new(VENDOR_ID, DEVICE_ID, CLASS, REVISION)
            .with_subsystem(SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID)
            .with_bar(MMIO_BAR, BarKind::Memory32, MMIO_BAR_SIZE)
            .with_bar(IO_BAR, BarKind::Io, IO_BAR_SIZE);
        Self {
            config,
            selected: None,
            count: 0,
        }
    }

    fn bar_size(bar: usize) -> Option<u64> {
        match bar {
            MMIO_BAR => Some(MMIO_BAR_SIZE),
            IO_BAR => Some(IO_BAR_SIZE),
            _ => None,
        }
    }

    /// One byte written at `at` of BAR `bar` (QEMU's `pci_testdev_write`
    /// with a 1-byte access).
    fn write_byte(&mut self, bar: usize, at: u64, value: u8) {
        if at == 0 {
            // Selecting first ends the current test (QEMU's reset).
            self.selected = None;
            let t = usize::from(value);
            if t < TESTS_PER_BAR {
                let first = if bar == MMIO_BAR { 0 } else { TESTS_PER_BAR };
                self.selected = Some(Test { index: first + t });
                self.count = 0;
            }
            return;
        }
        let Some(test) = self.selected else { return };
        if at == u64::from(test.offset()) && (!test.matches_data() || value == test.data()) {
            self.count = self.count.wrapping_add(1);
        }
    }
}

impl PciDevice for PciTestdev {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let (Some(size), Some(test)) = (Self::bar_size(bar), self.selected) else {
            return;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            if let Some(at) = offset.checked_add(i as u64).filter(|&at| at < size) {
                *byte = test.byte(at, self.count);
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> Action {
        let Some(size) = Self::bar_size(bar) else {
            return Action::Continue;
        };
        for (i, &value) in data.iter().enumerate() {
            match offset.checked_add(i as u64).filter(|&at| at < size) {
                Some(at) => self.write_byte(bar, at, value),
                None => break,
            }
        }
        Action::Continue
    }

    /// What QEMU registers for the selected test: a 1-byte ioeventfd at its
    /// offset in its own BAR, matching its data for a datamatch test, any
    /// value for a wildcard test; none for a no-eventfd test or no test.
    fn ioeventfds(&self) -> Vec<IoEventFd> {
        let Some(test) = self.selected.filter(|t| t.kind() != Kind::NoEventfd) else {
            return Vec::new();
        };
        vec![IoEventFd {
            bar: test.bar(),
            offset: u64::from(test.offset()),
            len: 1,
            datamatch: test.matches_data().then(|| u64::from(test.data())),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::reg;

    fn read(dev: &mut PciTestdev, bar: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        dev.bar_read(bar, offset, &mut data);
        data
    }

    fn read8(dev: &mut PciTestdev, bar: usize, offset: u64) -> u8 {
        read(dev, bar, offset, 1)[0]
    }

    fn read32(dev: &mut PciTestdev, bar: usize, offset: u64) -> u32 {
        let bytes = read(dev, bar, offset, 4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    fn write(dev: &mut PciTestdev, bar: usize, offset: u64, data: &[u8]) {
        assert_eq!(dev.bar_write(bar, offset, data), Action::Continue);
    }

    fn name(dev: &mut PciTestdev, bar: usize) -> String {
        let bytes: Vec<u8> = (NAME_OFFSET as u64..64)
            .map(|at| read8(dev, bar, at))
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    fn config32(dev: &PciTestdev, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        dev.config_read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn configuration_space_is_qemus() {
        let mut dev = PciTestdev::new();
        assert_eq!(config32(&dev, reg::VENDOR_ID), 0x0005_1b36);
        assert_eq!(config32(&dev, reg::REVISION), 0x00ff_0000);
        assert_eq!(config32(&dev, reg::SUBSYSTEM_VENDOR_ID), 0x1100_1af4);
        assert_eq!(
            (config32(&dev, reg::INTERRUPT_LINE) >> 8) & 0xff,
            0,
            "no pin"
        );
        assert_eq!(
            config32(&dev, reg::CAPABILITIES) & 0xff,
            0,
            "no capabilities"
        );
        dev.config_write(reg::BAR0, &[0xff; 8]);
        assert_eq!(config32(&dev, reg::BAR0), 0xffff_f000);
        assert_eq!(config32(&dev, reg::BAR0 + 4), 0xffff_ff01);
        assert!(dev.config().msi().is_none());
    }

    #[test]
    fn nothing_selected_reads_zero_and_counts_nothing() {
        let mut dev = PciTestdev::new();
        assert_eq!(read(&mut dev, MMIO_BAR, 0, 8), [0; 8]);
        assert_eq!(read(&mut dev, IO_BAR, 16, 4), [0; 4]);
        write(&mut dev, MMIO_BAR, 2048, &[DATAMATCH]);
        assert!(dev.ioeventfds().is_empty());
        // Selecting afterwards starts from 0.
        write(&mut dev, MMIO_BAR, 0, &[0]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 0);
    }

    #[test]
    fn every_header_is_qemus_table() {
        let expected = [
            ("mmio-no-eventfd", 2048, 0xfa),
            ("mmio-wildcard-eventfd", 2049, 0xce),
            ("mmio-datamatch-eventfd", 2050, 0xfa),
            ("portio-no-eventfd", 131, 0xfa),
            ("portio-wildcard-eventfd", 132, 0xce),
            ("portio-datamatch-eventfd", 133, 0xfa),
        ];
        let mut dev = PciTestdev::new();
        for (i, (want_name, offset, data)) in expected.into_iter().enumerate() {
            let bar = if i < 3 { MMIO_BAR } else { IO_BAR };
            write(&mut dev, bar, 0, &[(i % 3) as u8]);
            assert_eq!(read8(&mut dev, bar, 0), i as u8, "test index");
            assert_eq!(read8(&mut dev, bar, 1), 1, "width");
            assert_eq!(read(&mut dev, bar, 2, 2), [0, 0], "padding");
            assert_eq!(read32(&mut dev, bar, 4), offset);
            // kvm-unit-tests reads the data as a u32: padding is zero.
            assert_eq!(read32(&mut dev, bar, 8), data);
            assert_eq!(read32(&mut dev, bar, 12), 0, "count");
            assert_eq!(name(&mut dev, bar), want_name);
            let end = (NAME_OFFSET + want_name.len()) as u64;
            assert_eq!(read(&mut dev, bar, end, 8), [0; 8], "NUL and beyond");
        }
    }

    #[test]
    fn writes_at_the_offset_are_counted() {
        let mut dev = PciTestdev::new();
        write(&mut dev, MMIO_BAR, 0, &[0]); // mmio-no-eventfd, 2048
        for _ in 0..16 {
            write(&mut dev, MMIO_BAR, 2048, &[DATAMATCH]);
        }
        write(&mut dev, MMIO_BAR, 2047, &[DATAMATCH]);
        write(&mut dev, MMIO_BAR, 2049, &[DATAMATCH]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 16);
        // QEMU's no-eventfd tests match the data too (`match_data` is set
        // for every test but the wildcard ones).
        write(&mut dev, MMIO_BAR, 2048, &[0x12]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 16);
        // Selecting again resets the count.
        write(&mut dev, MMIO_BAR, 0, &[0]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 0);
    }

    #[test]
    fn wildcard_counts_any_byte_datamatch_only_its_data() {
        let mut dev = PciTestdev::new();
        write(&mut dev, IO_BAR, 0, &[1]); // portio-wildcard-eventfd, 132
        write(&mut dev, IO_BAR, 132, &[0]);
        write(&mut dev, IO_BAR, 132, &[NOMATCH]);
        assert_eq!(read32(&mut dev, IO_BAR, 12), 2);

        write(&mut dev, IO_BAR, 0, &[2]); // portio-datamatch-eventfd, 133
        write(&mut dev, IO_BAR, 133, &[NOMATCH]);
        write(&mut dev, IO_BAR, 133, &[0]);
        assert_eq!(read32(&mut dev, IO_BAR, 12), 0);
        write(&mut dev, IO_BAR, 133, &[DATAMATCH]);
        assert_eq!(read32(&mut dev, IO_BAR, 12), 1);
    }

    #[test]
    fn wide_writes_are_bytes_as_in_qemu() {
        let mut dev = PciTestdev::new();
        write(&mut dev, MMIO_BAR, 0, &[2]); // mmio-datamatch-eventfd, 2050
        // A dword whose low byte is the data counts once...
        write(&mut dev, MMIO_BAR, 2050, &0x0000_00fau32.to_le_bytes());
        // ...and so does one whose byte at 2050 is the data.
        write(&mut dev, MMIO_BAR, 2048, &0xccfa_0000u32.to_le_bytes());
        // A word with the data in its high byte does not.
        write(&mut dev, MMIO_BAR, 2050, &0xfa00u16.to_le_bytes());
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 2);
        // A dword at 0 selects by its low byte.
        write(&mut dev, MMIO_BAR, 0, &1u32.to_le_bytes());
        assert_eq!(read8(&mut dev, MMIO_BAR, 0), 1);
    }

    #[test]
    fn a_value_of_3_or_more_deselects() {
        let mut dev = PciTestdev::new();
        write(&mut dev, MMIO_BAR, 0, &[1]);
        assert_eq!(dev.ioeventfds().len(), 1);
        for t in [3, 4, 0xff] {
            write(&mut dev, MMIO_BAR, 0, &[1]);
            write(&mut dev, MMIO_BAR, 0, &[t]);
            assert_eq!(read(&mut dev, MMIO_BAR, 0, 16), [0; 16], "{t}");
            assert!(dev.ioeventfds().is_empty());
            write(&mut dev, MMIO_BAR, 2049, &[NOMATCH]);
        }
        write(&mut dev, MMIO_BAR, 0, &[1]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 0);
    }

    #[test]
    fn ioeventfds_follow_the_selected_test() {
        let mut dev = PciTestdev::new();
        let cases = [
            (MMIO_BAR, 0, None),
            (
                MMIO_BAR,
                1,
                Some(IoEventFd {
                    bar: MMIO_BAR,
                    offset: 2049,
                    len: 1,
                    datamatch: None,
                }),
            ),
            (
                MMIO_BAR,
                2,
                Some(IoEventFd {
                    bar: MMIO_BAR,
                    offset: 2050,
                    len: 1,
                    datamatch: Some(0xfa),
                }),
            ),
            (IO_BAR, 0, None),
            (
                IO_BAR,
                1,
                Some(IoEventFd {
                    bar: IO_BAR,
                    offset: 132,
                    len: 1,
                    datamatch: None,
                }),
            ),
            (
                IO_BAR,
                2,
                Some(IoEventFd {
                    bar: IO_BAR,
                    offset: 133,
                    len: 1,
                    datamatch: Some(0xfa),
                }),
            ),
        ];
        for (bar, t, want) in cases {
            write(&mut dev, bar, 0, &[t]);
            assert_eq!(dev.ioeventfds(), want.into_iter().collect::<Vec<_>>());
        }
        write(&mut dev, IO_BAR, 0, &[3]);
        assert!(dev.ioeventfds().is_empty());
    }

    #[test]
    fn both_bars_share_the_selection() {
        let mut dev = PciTestdev::new();
        write(&mut dev, IO_BAR, 0, &[0]); // portio-no-eventfd, 131
        assert_eq!(name(&mut dev, MMIO_BAR), "portio-no-eventfd");
        // QEMU compares only the offset, whatever BAR the write came to.
        write(&mut dev, MMIO_BAR, 131, &[DATAMATCH]);
        assert_eq!(read32(&mut dev, IO_BAR, 12), 1);
        // Deselecting through either BAR deselects.
        write(&mut dev, MMIO_BAR, 0, &[7]);
        assert_eq!(read8(&mut dev, IO_BAR, 0), 0);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let mut dev = PciTestdev::new();
        write(&mut dev, MMIO_BAR, 0, &[2]);
        assert_eq!(read(&mut dev, MMIO_BAR, u64::MAX, 8), [0; 8]);
        assert_eq!(read(&mut dev, MMIO_BAR, MMIO_BAR_SIZE - 1, 8), [0; 8]);
        assert_eq!(read(&mut dev, IO_BAR, 4096, 1), [0]);
        assert_eq!(read(&mut dev, 2, 0, 4), [0; 4], "no BAR 2");
        write(&mut dev, MMIO_BAR, u64::MAX - 3, &[0; 8]);
        write(&mut dev, 5, 0, &[0]);
        // Past the end of BAR1 nothing counts or selects: 256 + 0 is not 0.
        write(&mut dev, IO_BAR, IO_BAR_SIZE, &[0]);
        assert_eq!(read8(&mut dev, MMIO_BAR, 0), 2, "still selected");
        write(&mut dev, MMIO_BAR, 2050, &[DATAMATCH]);
        assert_eq!(read32(&mut dev, MMIO_BAR, 12), 1);
    }
}
