//! QEMU's pci-testdev (PCI 1b36:0005): its test table ([`Window`],
//! [`hdr`]) and its [`Driver`] ([`PciTestdevDriver`]), which binds but has
//! no DMA engine and no interrupt: memcpy and MSI are unsupported.
//!
//! BAR0 (4 KiB of memory) and BAR1 (256 ports) each hold the same table:
//! writing `t` to byte 0 selects test `t` (0-2) of that BAR's kind and
//! resets its count; the selected test's header and name can then be read
//! byte by byte, and writes at its `offset` are counted unless a KVM
//! ioeventfd eats them first.

use crate::driver::{Driver, DriverError, MsiTarget};
use crate::pci::{BarKind, PciDevice, command};
use crate::{mmio, x86};

/// Vendor ID (Red Hat).
pub const VENDOR_ID: u16 = 0x1b36;
/// Device ID of pci-testdev.
pub const DEVICE_ID: u16 = 0x0005;
/// Tests per BAR (no-eventfd, wildcard-eventfd, datamatch-eventfd).
pub const TESTS_PER_BAR: u8 = 3;

/// Offsets in the selected test's header.
pub mod hdr {
    /// u8: write selects a test; reads the test's index.
    pub const TEST: u64 = 0;
    /// u8: access width of the counted writes.
    pub const WIDTH: u64 = 1;
    /// u32: where counted writes go.
    pub const OFFSET: u64 = 4;
    /// u8: the value datamatch tests count.
    pub const DATA: u64 = 8;
    /// u32: writes counted since the test was selected.
    pub const COUNT: u64 = 12;
    /// NUL-terminated name.
    pub const NAME: u64 = 16;
}

/// Where a pci-testdev table is: BAR0 (memory) or BAR1 (ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The memory BAR at this address.
    Mmio(u64),
    /// The I/O BAR at this port.
    Pio(u16),
}

impl Window {
    /// Reads a byte of the table.
    pub fn read8(&self, offset: u64) -> u8 {
        // SAFETY: pci-testdev's BARs; reads have no side effects.
        unsafe {
            match *self {
                Window::Mmio(base) => mmio::read8(base + offset),
                Window::Pio(port) => x86::inb(port + offset as u16),
            }
        }
    }

    /// Reads 32 bits of the table.
    pub fn read32(&self, offset: u64) -> u32 {
        // SAFETY: as for `read8`.
        unsafe {
            match *self {
                Window::Mmio(base) => mmio::read32(base + offset),
                Window::Pio(port) => x86::inl(port + offset as u16),
            }
        }
    }

    /// Writes a byte (selects a test at offset 0, else may be counted).
    pub fn write8(&self, offset: u64, value: u8) {
        // SAFETY: pci-testdev's BARs; writes only select and count.
        unsafe {
            match *self {
                Window::Mmio(base) => mmio::write8(base + offset, value),
                Window::Pio(port) => x86::outb(port + offset as u16, value),
            }
        }
    }

    /// Selects test `test` of this window's kind (3 or more: none).
    pub fn select(&self, test: u8) {
        self.write8(hdr::TEST, test);
    }

    /// Reads the selected test's name into `buf` (truncated to its size).
    pub fn name<'a>(&self, buf: &'a mut [u8]) -> &'a str {
        let mut len = 0;
        while len < buf.len() {
            let c = self.read8(hdr::NAME + len as u64);
            if c == 0 {
                break;
            }
            buf[len] = c;
            len += 1;
        }
        core::str::from_utf8(&buf[..len]).unwrap_or("<not UTF-8>")
    }
}

/// The device's two windows: (BAR0 memory, BAR1 ports).
pub fn windows(device: &PciDevice) -> Option<(Window, Window)> {
    let bars = device.bars();
    let mem = bars[0].filter(|bar| bar.kind != BarKind::Io)?;
    let io = bars[1].filter(|bar| bar.kind == BarKind::Io)?;
    Some((Window::Mmio(mem.address), Window::Pio(io.address as u16)))
}

/// The [`Driver`] for pci-testdev: probe, init and remove only.
#[derive(Default)]
pub struct PciTestdevDriver {
    bound: Option<(PciDevice, u16, Window, Window)>,
}

impl Driver for PciTestdevDriver {
    fn name(&self) -> &'static str {
        "pci-testdev"
    }

    fn probe(&self, device: &PciDevice) -> bool {
        device.vendor_id == VENDOR_ID && device.device_id == DEVICE_ID
    }

    fn init(&mut self, device: &PciDevice, _msi: MsiTarget) -> Result<(), DriverError> {
        self.remove();
        let (mem, io) = windows(device).ok_or(DriverError::Device("BAR0/BAR1 missing"))?;
        let command = device.command();
        // SAFETY: the BARs decode where they are programmed.
        unsafe { device.set_command(command | command::IO | command::MEMORY) };
        for window in [mem, io] {
            window.select(1);
            // With no test selected everything reads 0.
            let answers = window.read8(hdr::WIDTH) == 1 && window.read32(hdr::COUNT) == 0;
            window.select(TESTS_PER_BAR);
            if !answers {
                // SAFETY: restores what the device had.
                unsafe { device.set_command(command) };
                return Err(DriverError::Device("test table does not answer"));
            }
        }
        self.bound = Some((*device, command, mem, io));
        Ok(())
    }

    fn remove(&mut self) {
        if let Some((device, command, mem, io)) = self.bound.take() {
            mem.select(TESTS_PER_BAR);
            io.select(TESTS_PER_BAR);
            // SAFETY: restores the command register from before `init`.
            unsafe { device.set_command(command) };
        }
    }
}
