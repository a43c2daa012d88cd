//! pc-testdev (QEMU hw/misc/pc-testdev.c): a scratch register, a page
//! flush, ISA interrupt lines, and an MMIO buffer that always exits.

use std::sync::Arc;

use crate::bus_device::{Action, BusDevice};
use crate::interrupt::{InterruptLine, PageFlush};

/// Ports the register device spans: register lanes 0-3, flush 4-7, the
/// register again for byte access 8-11.
pub const PORTS_LEN: u64 = 12;
const FLUSH: u64 = 4;
const BYTE_REGISTER: u64 = 8;
/// Size of the MMIO buffer.
pub const IOMEM_LEN: u64 = 0x1_0000;

/// Ports 0xe0-0xeb: one 32-bit register seen through two windows, and the
/// page-flush port between them.
pub struct PcTestdevPorts {
    register: u32,
    pages: Arc<dyn PageFlush>,
}

impl PcTestdevPorts {
    /// The ports, flushing pages through `pages`.
    pub fn new(pages: Arc<dyn PageFlush>) -> Self {
        Self { register: 0, pages }
    }
}

impl BusDevice for PcTestdevPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if (FLUSH..BYTE_REGISTER).contains(&offset) {
            return; // the flush port reads 0
        }
        // An access at lane p sees the register shifted right by p bytes.
        let bytes = self.register.to_le_bytes();
        let lane = (offset & 3) as usize;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(lane + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if (FLUSH..BYTE_REGISTER).contains(&offset) {
            // Only a 4-byte write at the port itself carries an address.
            if offset == FLUSH && data.len() == 4 {
                let mut address = [0u8; 4];
                address.copy_from_slice(data);
                self.pages
                    .flush_page(u64::from(u32::from_le_bytes(address)));
            }
            return Action::Continue;
        }
        let mut bytes = self.register.to_le_bytes();
        let lane = (offset & 3) as usize;
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(lane + i) {
                *slot = byte;
            }
        }
        self.register = u32::from_le_bytes(bytes);
        Action::Continue
    }
}

/// Ports 0x2000-0x2017: a write to port `0x2000 + n` drives ISA IRQ `n` to
/// (value != 0).
pub struct PcTestdevIrqs {
    lines: Vec<Box<dyn InterruptLine>>,
}

impl PcTestdevIrqs {
    /// The ports; `lines[n]` is ISA IRQ `n`.
    pub fn new(lines: Vec<Box<dyn InterruptLine>>) -> Self {
        Self { lines }
    }
}

impl BusDevice for PcTestdevIrqs {
    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        // Byte-wide ports: a wider access drives only the line it starts at,
        // with level = (value != 0).
        if let Some(line) = usize::try_from(offset).ok().and_then(|n| self.lines.get(n)) {
            line.set_level(data.iter().any(|&b| b != 0));
        }
        Action::Continue
    }
}

/// The 64 KiB buffer at 0xff000000: plain little-endian copies, so the
/// instruction emulator has real memory semantics to be tested against.
pub struct PcTestdevIomem {
    buffer: Vec<u8>,
}

impl Default for PcTestdevIomem {
    fn default() -> Self {
        Self {
            buffer: vec![0; IOMEM_LEN as usize],
        }
    }
}

impl BusDevice for PcTestdevIomem {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(bytes) = window(&self.buffer, offset, data.len()) {
            data.copy_from_slice(bytes);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let len = self.buffer.len();
        if let Some(start) = usize::try_from(offset)
            .ok()
            .filter(|&o| o.checked_add(data.len()).is_some_and(|end| end <= len))
        {
            self.buffer[start..start + data.len()].copy_from_slice(data);
        }
        Action::Continue
    }
}

fn window(buffer: &[u8], offset: u64, len: usize) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    buffer.get(start..start.checked_add(len)?)
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

    struct Line(Arc<Mutex<Vec<bool>>>);

    impl InterruptLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    fn read(dev: &mut dyn BusDevice, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        dev.read(offset, &mut data);
        data
    }

    #[test]
    fn the_register_has_byte_lanes_in_both_windows() {
        let mut dev = PcTestdevPorts::new(Arc::new(Flushes::default()));
        let _ = dev.write(0, &0x1234_5678u32.to_le_bytes());
        assert_eq!(read(&mut dev, 0, 4), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(read(&mut dev, 2, 2), [0x34, 0x12]);
        assert_eq!(
            read(&mut dev, 1, 4),
            [0x56, 0x34, 0x12, 0],
            "bytes past lane 3 read 0"
        );
        assert_eq!(read(&mut dev, BYTE_REGISTER + 3, 1), [0x12]);
        let _ = dev.write(BYTE_REGISTER + 1, &[0xab]);
        assert_eq!(read(&mut dev, 0, 4), [0x78, 0xab, 0x34, 0x12]);
        let _ = dev.write(3, &[1, 2, 3, 4]);
        assert_eq!(
            read(&mut dev, 0, 4),
            [0x78, 0xab, 0x34, 1],
            "bytes past lane 3 are dropped"
        );
        // A string of byte writes (rep outsb arrives as one write per element).
        for b in [9, 8, 7] {
            let _ = dev.write(0, &[b]);
        }
        assert_eq!(read(&mut dev, 0, 1), [7]);
    }

    #[test]
    fn the_flush_port_takes_4_byte_addresses_and_reads_zero() {
        let flushes = Arc::new(Flushes::default());
        let mut dev = PcTestdevPorts::new(flushes.clone());
        let _ = dev.write(FLUSH, &0x0040_1234u32.to_le_bytes());
        let _ = dev.write(FLUSH, &[1, 2]);
        let _ = dev.write(FLUSH + 1, &[1, 2, 3, 4]);
        assert_eq!(*flushes.0.lock().unwrap(), vec![0x0040_1234]);
        let _ = dev.write(0, &[0xff; 4]);
        assert_eq!(read(&mut dev, FLUSH, 4), [0; 4]);
    }

    #[test]
    fn irq_ports_drive_their_line() {
        let levels: Vec<Arc<Mutex<Vec<bool>>>> = (0..24).map(|_| Arc::default()).collect();
        let lines = levels
            .iter()
            .map(|l| Box::new(Line(l.clone())) as Box<dyn InterruptLine>)
            .collect();
        let mut dev = PcTestdevIrqs::new(lines);
        let _ = dev.write(14, &[1]);
        let _ = dev.write(14, &[0]);
        let _ = dev.write(23, &[0x80]);
        let _ = dev.write(24, &[1]);
        let _ = dev.write(u64::MAX, &[1]);
        assert_eq!(*levels[14].lock().unwrap(), vec![true, false]);
        assert_eq!(*levels[23].lock().unwrap(), vec![true]);
        assert!(levels[0].lock().unwrap().is_empty());
    }

    #[test]
    fn iomem_is_a_plain_buffer_with_bounds() {
        let mut dev = PcTestdevIomem::default();
        let _ = dev.write(0x10, &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(read(&mut dev, 0x12, 2), [0x66, 0x55]);
        let _ = dev.write(IOMEM_LEN - 2, &[1, 2, 3, 4]);
        assert_eq!(
            read(&mut dev, IOMEM_LEN - 2, 2),
            [0, 0],
            "a write past the end is dropped"
        );
        assert_eq!(read(&mut dev, IOMEM_LEN - 1, 4), [0; 4]);
        let _ = dev.write(u64::MAX, &[1]);
        let _ = dev.write(IOMEM_LEN - 1, &[0xee]);
        assert_eq!(read(&mut dev, IOMEM_LEN - 1, 1), [0xee]);
    }
}
