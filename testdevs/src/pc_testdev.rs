//! pc-testdev, QEMU's x86 ISA test device (hw/misc/pc-testdev.c), as three
//! bus devices:
//!
//! - [`PcTestdevPorts`], ports 0xe0-0xeb: the 32-bit register at 0xe0-0xe3,
//!   the flush-page port at 0xe4, the same register again at 0xe8-0xeb;
//! - [`PcTestdevIrqs`], ports 0x2000-0x2017: port 0x2000 + n drives ISA IRQ n;
//! - [`PcTestdevIomem`], MMIO 0xff000000-0xff00ffff: a 64 KiB byte buffer.
//!
//! Placement is the VMM's (`ktvmm_abi::ports::PC_TESTDEV_*`,
//! `ktvmm_abi::layout::PC_TESTDEV_IOMEM`); offsets here are from the start
//! of each window. One device spans 0xe0-0xeb because QEMU lets an access
//! run from one of those regions into the next (a 4-byte access at 0xe2
//! reads lanes 2-3 of the register and two bytes of the flush port), which a
//! bus that dispatches whole accesses could not reproduce with three devices.

use std::sync::Arc;

use crate::access::{le_value, pieces};
use crate::bus_device::{Action, BusDevice};
use crate::interrupt::{InterruptLine, PageFlush};

/// Length of the [`PcTestdevPorts`] window (ports 0xe0-0xeb).
pub const PORTS_LEN: u64 = 12;
/// Offset of the register's first byte lane (port 0xe0).
pub const REGISTER: u64 = 0;
/// Offset of the flush-page port (port 0xe4).
pub const FLUSH_PAGE: u64 = 4;
/// Offset of the register's byte-access window (port 0xe8).
pub const REGISTER_BYTES: u64 = 8;
/// Length of the [`PcTestdevIrqs`] window: QEMU's region covers IRQs 0-23.
pub const IRQS_LEN: u64 = 24;
/// Length of the [`PcTestdevIomem`] buffer.
pub const IOMEM_LEN: u64 = 0x1_0000;

const PAGE_MASK: u32 = 0xfff;

/// Ports 0xe0-0xeb: the register (twice) and the flush-page port.
///
/// The register is one little-endian `u32`; an access at offset `p` reads or
/// updates the byte lanes from `p & 3` on, so byte, word and dword accesses
/// see their own lanes, and string I/O (split into elements by the VMM)
/// writes or reads lane 0 at each element. Both windows share the register.
///
/// A 4-byte write at 0xe4 flushes the page holding the written (32-bit)
/// guest-physical address; narrower or misaligned writes there are ignored
/// (QEMU's region only accepts 4-byte accesses), and it reads 0.
pub struct PcTestdevPorts {
    register: u32,
    pages: Arc<dyn PageFlush>,
}

impl PcTestdevPorts {
    /// The ports, flushing pages through `pages`; the register starts at 0.
    pub fn new(pages: Arc<dyn PageFlush>) -> Self {
        Self { register: 0, pages }
    }

    /// The register's byte lane for window offset `offset`, if it is one.
    fn lane(offset: u64) -> Option<usize> {
        match offset {
            REGISTER..FLUSH_PAGE => Some((offset - REGISTER) as usize),
            REGISTER_BYTES..PORTS_LEN => Some((offset - REGISTER_BYTES) as usize),
            _ => None,
        }
    }
}

impl BusDevice for PcTestdevPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let lanes = self.register.to_le_bytes();
        // Lanes are independent bytes, so byte by byte is what QEMU's
        // shift-and-mask per piece amounts to; the flush port and anything
        // past the window leave their zeroes.
        for (i, byte) in data.iter_mut().enumerate() {
            if let Some(lane) = offset.checked_add(i as u64).and_then(Self::lane) {
                *byte = lanes[lane];
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let mut lanes = self.register.to_le_bytes();
        for piece in pieces(offset, data.len(), 4) {
            let bytes = &data[piece.range()];
            if piece.offset == FLUSH_PAGE {
                // Only an aligned 4-byte access is valid on the flush port.
                if piece.len == 4 {
                    let gpa = le_value(bytes) as u32 & !PAGE_MASK;
                    self.pages.flush_page(u64::from(gpa));
                }
                continue;
            }
            for (i, &byte) in bytes.iter().enumerate() {
                if let Some(lane) = piece.offset.checked_add(i as u64).and_then(Self::lane) {
                    lanes[lane] = byte;
                }
            }
        }
        self.register = u32::from_le_bytes(lanes);
        Action::Continue
    }
}

/// Ports 0x2000-0x2017: a write of `v` to port 0x2000 + n sets ISA IRQ n to
/// `v != 0`.
///
/// QEMU's region only takes 1-byte accesses, and its memory core splits a
/// wider write into bytes, so a word written at 0x2000 sets IRQ 0 from its
/// low byte and IRQ 1 from its high byte; we do the same. Reads return 0.
/// QEMU declares 24 ports but asserts on IRQs above 15 (`isa_bus_get_irq`),
/// killing the VM; ktvmm drives IRQs 16-23 like the others.
pub struct PcTestdevIrqs {
    lines: Vec<Box<dyn InterruptLine>>,
}

impl PcTestdevIrqs {
    /// The IRQ ports; `lines[n]` is ISA IRQ n (on a PC with KVM's irqchip,
    /// GSI n, which QEMU's routing sends to IOAPIC input n, except IRQ 0 to
    /// input 2). Ports without a line, up to [`IRQS_LEN`], are ignored.
    pub fn new(lines: Vec<Box<dyn InterruptLine>>) -> Self {
        Self { lines }
    }
}

impl BusDevice for PcTestdevIrqs {
    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        for (i, &value) in data.iter().enumerate() {
            let Some(irq) = offset.checked_add(i as u64).filter(|&n| n < IRQS_LEN) else {
                break;
            };
            if let Some(line) = self.lines.get(irq as usize) {
                line.set_level(value != 0);
            }
        }
        Action::Continue
    }
}

/// MMIO 0xff000000-0xff00ffff: 64 KiB of plain memory behind an exit, for the
/// emulator tests (every access goes through KVM's instruction emulator).
/// Reads and writes are little-endian byte copies; bytes past the buffer
/// read as 0 and are not written.
pub struct PcTestdevIomem {
    buffer: Box<[u8]>,
}

impl Default for PcTestdevIomem {
    fn default() -> Self {
        Self::new()
    }
}

impl PcTestdevIomem {
    /// A zeroed buffer.
    pub fn new() -> Self {
        Self {
            buffer: vec![0; IOMEM_LEN as usize].into_boxed_slice(),
        }
    }

    fn index(&self, offset: u64, i: usize) -> Option<usize> {
        let at = usize::try_from(offset.checked_add(i as u64)?).ok()?;
        (at < self.buffer.len()).then_some(at)
    }
}

impl BusDevice for PcTestdevIomem {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            if let Some(at) = self.index(offset, i) {
                *byte = self.buffer[at];
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        for (i, &byte) in data.iter().enumerate() {
            if let Some(at) = self.index(offset, i) {
                self.buffer[at] = byte;
            }
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Flushes(Mutex<Vec<u64>>);

    impl PageFlush for Flushes {
        fn flush_page(&self, gpa: u64) {
            self.0.lock().unwrap().push(gpa);
        }
    }

    /// ISA IRQ `n`, recording into a log shared by all lines.
    struct Line(u32, IrqLog);

    impl InterruptLine for Line {
        fn set_level(&self, high: bool) {
            self.1.lock().unwrap().push((self.0, high));
        }
    }

    type IrqLog = Arc<Mutex<Vec<(u32, bool)>>>;

    fn irq_ports(count: u32) -> (PcTestdevIrqs, IrqLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = (0..count)
            .map(|n| Box::new(Line(n, log.clone())) as Box<dyn InterruptLine>)
            .collect();
        (PcTestdevIrqs::new(lines), log)
    }

    fn ports() -> (PcTestdevPorts, Arc<Flushes>) {
        let flushes = Arc::new(Flushes::default());
        (PcTestdevPorts::new(flushes.clone()), flushes)
    }

    fn read(dev: &mut impl BusDevice, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        dev.read(offset, &mut data);
        data
    }

    fn read32(dev: &mut impl BusDevice, offset: u64) -> u32 {
        le_value(&read(dev, offset, 4)) as u32
    }

    fn write(dev: &mut impl BusDevice, offset: u64, data: &[u8]) {
        assert_eq!(dev.write(offset, data), Action::Continue);
    }

    #[test]
    fn the_register_has_byte_lanes() {
        let (mut dev, _) = ports();
        write(&mut dev, REGISTER, &0x1234_5678u32.to_le_bytes());
        assert_eq!(read32(&mut dev, REGISTER), 0x1234_5678);
        let lanes: Vec<u8> = (0..4).map(|p| read(&mut dev, p, 1)[0]).collect();
        assert_eq!(lanes, [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(read(&mut dev, 2, 2), [0x34, 0x12]);
        write(&mut dev, 1, &[0xab]);
        assert_eq!(read32(&mut dev, REGISTER), 0x1234_ab78);
        write(&mut dev, 2, &[0xef, 0xcd]);
        assert_eq!(read32(&mut dev, REGISTER), 0xcdef_ab78);
    }

    #[test]
    fn the_byte_window_is_the_same_register() {
        let (mut dev, _) = ports();
        write(&mut dev, REGISTER, &0xcdef_ab78u32.to_le_bytes());
        assert_eq!(read(&mut dev, REGISTER_BYTES + 1, 1), [0xab]);
        write(&mut dev, REGISTER_BYTES + 3, &[0x01]);
        assert_eq!(read32(&mut dev, REGISTER), 0x01ef_ab78);
        assert_eq!(read32(&mut dev, REGISTER_BYTES), 0x01ef_ab78);
        write(&mut dev, REGISTER_BYTES, &0x5566_7788u32.to_le_bytes());
        assert_eq!(read32(&mut dev, REGISTER), 0x5566_7788);
    }

    #[test]
    fn string_io_elements_land_in_lane_0() {
        let (mut dev, _) = ports();
        write(&mut dev, REGISTER, &0x1122_3344u32.to_le_bytes());
        // `rep outsb` of "WXYZ": four 1-byte writes at the same port.
        for &b in b"WXYZ" {
            write(&mut dev, REGISTER, &[b]);
        }
        assert_eq!(read32(&mut dev, REGISTER), 0x1122_3300 | u32::from(b'Z'));
        // `rep insb` of 3 bytes from 0xe2: three 1-byte reads of lane 2.
        let got: Vec<u8> = (0..3).map(|_| read(&mut dev, 2, 1)[0]).collect();
        assert_eq!(got, [0x22; 3]);
    }

    #[test]
    fn accesses_running_into_the_flush_port_keep_their_register_lanes() {
        let (mut dev, flushes) = ports();
        write(&mut dev, REGISTER, &0x1122_3344u32.to_le_bytes());
        assert_eq!(read(&mut dev, 2, 4), [0x22, 0x11, 0, 0]);
        write(&mut dev, 2, &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(read32(&mut dev, REGISTER), 0xbbaa_3344);
        assert!(flushes.0.lock().unwrap().is_empty(), "2 bytes at 0xe4");
    }

    #[test]
    fn a_dword_write_to_the_flush_port_flushes_its_page() {
        let (mut dev, flushes) = ports();
        write(&mut dev, FLUSH_PAGE, &0x0012_3abcu32.to_le_bytes());
        write(&mut dev, FLUSH_PAGE, &0xffff_f001u32.to_le_bytes());
        assert_eq!(*flushes.0.lock().unwrap(), [0x0012_3000, 0xffff_f000]);
        // Narrow or misaligned accesses are not valid there.
        write(&mut dev, FLUSH_PAGE, &[0x00, 0x10]);
        write(&mut dev, FLUSH_PAGE, &[0x00]);
        write(&mut dev, FLUSH_PAGE + 1, &[0, 0x10, 0, 0]);
        assert_eq!(flushes.0.lock().unwrap().len(), 2);
        assert_eq!(read32(&mut dev, FLUSH_PAGE), 0, "the flush port reads 0");
        assert_eq!(read32(&mut dev, REGISTER), 0, "the register is untouched");
    }

    #[test]
    fn eight_byte_writes_are_cut_in_dwords() {
        // Port I/O is at most 4 bytes, but the model must cope with anything.
        let (mut dev, flushes) = ports();
        write(&mut dev, REGISTER, &0x0000_5000_8765_4321u64.to_le_bytes());
        assert_eq!(read32(&mut dev, REGISTER), 0x8765_4321);
        assert_eq!(*flushes.0.lock().unwrap(), [0x5000]);
    }

    #[test]
    fn offsets_outside_the_window_are_harmless() {
        let (mut dev, flushes) = ports();
        write(&mut dev, PORTS_LEN, &[1, 2, 3, 4]);
        write(&mut dev, u64::MAX, &[1; 8]);
        write(&mut dev, u64::MAX - 3, &[1; 8]);
        assert_eq!(read(&mut dev, u64::MAX - 1, 8), [0; 8]);
        assert_eq!(read(&mut dev, 10, 8), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read32(&mut dev, REGISTER), 0);
        assert!(flushes.0.lock().unwrap().is_empty());
    }

    #[test]
    fn irq_ports_set_levels_byte_by_byte() {
        let (mut dev, log) = irq_ports(IRQS_LEN as u32);
        write(&mut dev, 14, &[1]);
        write(&mut dev, 14, &[0]);
        write(&mut dev, 0, &[0x80]);
        write(&mut dev, 23, &[2]);
        // A word at port 0x2000 is two byte writes (QEMU's 1-byte region).
        write(&mut dev, 0, &[0, 7]);
        // Nothing past IRQ 23, nothing that wraps.
        write(&mut dev, 22, &[1, 1, 1, 1]);
        write(&mut dev, IRQS_LEN, &[1]);
        write(&mut dev, u64::MAX, &[1, 1]);
        assert_eq!(
            *log.lock().unwrap(),
            [
                (14, true),
                (14, false),
                (0, true),
                (23, true),
                (0, false),
                (1, true),
                (22, true),
                (23, true)
            ]
        );
        assert_eq!(read(&mut dev, 14, 1), [0], "IRQ ports read 0");
    }

    #[test]
    fn ports_without_a_line_are_ignored() {
        let (mut dev, log) = irq_ports(16);
        write(&mut dev, 15, &[1, 1]);
        assert_eq!(*log.lock().unwrap(), [(15, true)]);
        let (mut dev, log) = irq_ports(0);
        write(&mut dev, 0, &[1; 8]);
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn iomem_is_little_endian_memory() {
        let mut dev = PcTestdevIomem::new();
        write(&mut dev, 0x100, &0x1122_3344u32.to_le_bytes());
        assert_eq!(read(&mut dev, 0x100, 1), [0x44]);
        assert_eq!(read(&mut dev, 0x102, 2), [0x22, 0x11]);
        write(&mut dev, 0x101, &[0xaa]);
        write(&mut dev, 0x102, &[0xcc, 0xbb]);
        assert_eq!(read32(&mut dev, 0x100), 0xbbcc_aa44);
        write(&mut dev, 0x200, &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(le_value(&read(&mut dev, 0x200, 8)), 0x0102_0304_0506_0708);
        // Across a page boundary inside the buffer.
        write(&mut dev, 4095, &[0xaa, 0x88]);
        assert_eq!(read(&mut dev, 4095, 2), [0xaa, 0x88]);
    }

    #[test]
    fn iomem_bounds() {
        let mut dev = PcTestdevIomem::default();
        write(&mut dev, IOMEM_LEN - 4, &0xdead_beefu32.to_le_bytes());
        assert_eq!(read32(&mut dev, IOMEM_LEN - 4), 0xdead_beef);
        // Straddling the end: the part inside is written, the rest dropped.
        write(&mut dev, IOMEM_LEN - 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read(&mut dev, IOMEM_LEN - 2, 4), [1, 2, 0, 0]);
        assert_eq!(read(&mut dev, IOMEM_LEN, 8), [0; 8]);
        write(&mut dev, u64::MAX, &[9; 8]);
        assert_eq!(read(&mut dev, u64::MAX - 3, 8), [0; 8]);
        assert_eq!(read(&mut dev, 0, 4), [0; 4]);
    }
}
