//! Register traffic from raw bytes against every device, for fuzzers
//! (`cargo fuzz run testdev_registers`) and for tests that replay their
//! corpus: no device may panic, whatever the guest writes, and the
//! identity registers a guest relies on never change.
//!
//! The devices run with links that do nothing (interrupts, MSIs, page
//! flushes) and 64 KiB of bounds-checked RAM for DMA.

use std::sync::{Arc, Mutex};

use crate::pci::reg;
use crate::{
    BusDevice, Deferred, DmaError, DmaMemory, Edu, EduLinks, InterruptLine, MsiSender, PageFlush,
    PcTestdevIomem, PcTestdevIrqs, PcTestdevPorts, PciDevice, PciTestdev, Postfix,
};

/// Links that go nowhere.
pub struct NoLinks;

impl InterruptLine for NoLinks {
    fn set_level(&self, _high: bool) {}
}

impl MsiSender for NoLinks {
    fn send(&self, _address: u64, _data: u32) {}
}

impl PageFlush for NoLinks {
    fn flush_page(&self, _gpa: u64) {}
}

impl Deferred for NoLinks {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        work();
    }
}

/// Bounds-checked RAM, as the VMM's DMA window is.
pub struct FakeRam(Mutex<Vec<u8>>);

impl FakeRam {
    /// `size` bytes of zeroes.
    pub fn new(size: usize) -> Self {
        FakeRam(Mutex::new(vec![0; size]))
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let size = self.0.lock().unwrap_or_else(|p| p.into_inner()).len();
        usize::try_from(addr)
            .ok()
            .and_then(|s| Some(s..s.checked_add(len)?))
            .filter(|r| r.end <= size)
            .ok_or(DmaError { addr, len })
    }
}

impl DmaMemory for FakeRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let range = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap_or_else(|p| p.into_inner())[range]);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
        let range = self.range(addr, buf.len())?;
        self.0.lock().unwrap_or_else(|p| p.into_inner())[range].copy_from_slice(buf);
        Ok(())
    }
}

/// Every device, fresh.
struct Devices {
    edu: Edu,
    pci_testdev: PciTestdev,
    ports: PcTestdevPorts,
    irqs: PcTestdevIrqs,
    iomem: PcTestdevIomem,
    postfix: Postfix,
}

impl Devices {
    fn new() -> Self {
        let links = EduLinks {
            intx: Arc::new(NoLinks),
            msi: Arc::new(NoLinks),
            dma: Arc::new(FakeRam::new(64 << 10)),
            deferred: Arc::new(NoLinks),
        };
        let mut edu = Edu::new(links);
        // Decoding and bus mastering on, so the DMA paths run too.
        edu.config_write(reg::COMMAND, &[0x07, 0x00]);
        let lines = (0..24)
            .map(|_| Box::new(NoLinks) as Box<dyn InterruptLine>)
            .collect();
        Devices {
            edu,
            pci_testdev: PciTestdev::new(),
            ports: PcTestdevPorts::new(Arc::new(NoLinks)),
            irqs: PcTestdevIrqs::new(lines),
            iomem: PcTestdevIomem::new(),
            postfix: Postfix::new(),
        }
    }
}

fn id(device: &dyn PciDevice) -> [u8; 4] {
    let mut id = [0u8; 4];
    device.config_read(reg::VENDOR_ID, &mut id);
    id
}

/// Plays `bytes` as register accesses: each access takes 4 bytes (device,
/// kind and width, two offset bytes) and then as many data bytes as its
/// width. Panics when a device does, or when an invariant breaks.
pub fn play(bytes: &[u8]) {
    let mut devices = Devices::new();
    let ids = (id(&devices.edu), id(&devices.pci_testdev));
    let mut rest = bytes;
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let width = [1usize, 2, 4, 8, 3][usize::from(head[1] >> 4) % 5];
        let write = head[1] & 1 == 1;
        let offset = u64::from(u16::from_le_bytes([head[2], head[3]]));
        let take = width.min(tail.len());
        let (data, after) = tail.split_at(take);
        rest = after;
        let mut buf = vec![0u8; width];
        buf[..take].copy_from_slice(data);
        let bar = usize::from(head[1] >> 1 & 7);
        match head[0] % 8 {
            0 | 1 => {
                let dev: &mut dyn PciDevice = if head[0] % 8 == 0 {
                    &mut devices.edu
                } else {
                    &mut devices.pci_testdev
                };
                let span = if head[0] % 8 == 0 { 0x10_0100 } else { 0x1100 };
                match (write, head[1] & 2 == 2) {
                    (true, true) => dev.config_write(offset as usize % 0x110, &buf[..width.min(4)]),
                    (false, true) => {
                        dev.config_read(offset as usize % 0x110, &mut buf[..width.min(4)])
                    }
                    (true, false) => {
                        let _ = dev.bar_write(bar % 7, offset * 16 % span, &buf);
                    }
                    (false, false) => dev.bar_read(bar % 7, offset * 16 % span, &mut buf),
                }
            }
            2 => bus(&mut devices.ports, write, offset % 0x20, &mut buf),
            3 => bus(&mut devices.irqs, write, offset % 0x20, &mut buf),
            4 => bus(&mut devices.iomem, write, offset, &mut buf),
            _ => {
                for &byte in data {
                    let _ = devices.postfix.push(byte);
                }
            }
        }
        assert_eq!(id(&devices.edu), ids.0, "edu's vendor/device ID changed");
        assert_eq!(
            id(&devices.pci_testdev),
            ids.1,
            "pci-testdev's vendor/device ID changed"
        );
    }
    let mut ident = [0u8; 4];
    devices.edu.bar_read(0, 0, &mut ident);
    assert_eq!(u32::from_le_bytes(ident), 0x0100_00ed, "edu's ID register");
}

fn bus(device: &mut dyn BusDevice, write: bool, offset: u64, buf: &mut [u8]) {
    if write {
        let _ = device.write(offset, buf);
    } else {
        device.read(offset, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_odd_inputs_play() {
        play(&[]);
        play(&[0, 0x31, 0x04, 0x00, 0x07, 0x00, 0x00, 0x00]);
        play(&[5, 1, 0, 0, b'1', b' ', b'q']);
        play(&[0xff; 64]);
    }
}
