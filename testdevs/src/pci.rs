//! PCI configuration space (type 0 header) and the interface of a PCI device.
//!
//! Every register has a mask of writable bits, so read-only fields stay
//! read-only by construction, and BAR sizing (write all-ones, read back the
//! mask) falls out of the masks with no special case.

use crate::bus_device::Action;

/// Size of conventional configuration space.
pub const CONFIG_SIZE: usize = 256;

/// Offsets of the standard header registers.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION: usize = 0x08;
    /// Programming interface, subclass, class (24 bits).
    pub const CLASS: usize = 0x09;
    /// Header type (8 bits).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First of the six BARs.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line (8 bits, for software).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits: 0 none, 1 INTA# ...).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus mastering (DMA, and MSI writes).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

const STATUS_CAPABILITIES: u16 = 1 << 4;
const CAP_ID_MSI: u8 = 0x05;
const MSI_CONTROL_ENABLE: u16 = 1 << 0;
const MSI_CONTROL_64BIT: u16 = 1 << 7;
const MSI_CONTROL_MME: u16 = 0x7 << 4;
const MSI_CAP_SIZE: usize = 14;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (takes this BAR and the next).
    Memory64,
}

/// A BAR as the device declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Its size, a power of two.
    pub size: u64,
}

/// The MSI capability as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiState {
    /// MSI enable bit.
    pub enabled: bool,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u16,
}

/// A type 0 configuration space.
#[derive(Clone, Debug)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; 6],
    msi: Option<usize>,
    next_capability: usize,
}

impl PciConfig {
    /// A header for `vendor:device` with `class` (class, subclass, prog-if
    /// as `0xCCSSPP`) and `revision`. Command bits IO, MEMORY, BUS_MASTER
    /// and INTX_DISABLE are writable.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut config = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bars: [None; 6],
            msi: None,
            next_capability: 0x40,
        };
        config.set16(reg::VENDOR_ID, vendor);
        config.set16(reg::DEVICE_ID, device);
        config.bytes[reg::REVISION] = revision;
        config.bytes[reg::CLASS..reg::CLASS + 3].copy_from_slice(&class.to_le_bytes()[..3]);
        let command_mask =
            command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        config.writable[reg::COMMAND..reg::COMMAND + 2]
            .copy_from_slice(&command_mask.to_le_bytes());
        config.writable[reg::INTERRUPT_LINE] = 0xff;
        config
    }

    /// Sets the subsystem IDs.
    pub fn with_subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.set16(reg::SUBSYSTEM_VENDOR_ID, vendor);
        self.set16(reg::SUBSYSTEM_ID, device);
        self
    }

    /// Declares interrupt pin `pin` (1 = INTA#).
    pub fn with_interrupt_pin(mut self, pin: u8) -> Self {
        self.bytes[reg::INTERRUPT_PIN] = pin;
        self
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`). `size`
    /// is rounded up to a power of two (at least 16 bytes for memory, 4 for
    /// I/O).
    pub fn with_bar(mut self, index: usize, kind: BarKind, size: u64) -> Self {
        assert!(
            index < 6 && (kind != BarKind::Memory64 || index < 5),
            "BAR {index} out of range"
        );
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let size = size.max(min).next_power_of_two();
        let offset = reg::BAR0 + 4 * index;
        let mask = !(size - 1);
        let (flags, low_mask) = match kind {
            BarKind::Io => (0x1u32, mask as u32 & !0x3),
            BarKind::Memory32 => (0x0, mask as u32 & !0xf),
            BarKind::Memory64 => (0x4, mask as u32 & !0xf),
        };
        self.set32(offset, flags);
        self.writable[offset..offset + 4].copy_from_slice(&low_mask.to_le_bytes());
        if kind == BarKind::Memory64 {
            let high_mask = (mask >> 32) as u32;
            self.writable[offset + 4..offset + 8].copy_from_slice(&high_mask.to_le_bytes());
        }
        self.bars[index] = Some(Bar { kind, size });
        self
    }

    /// Adds an MSI capability: one vector, 64-bit addresses, no masking.
    pub fn with_msi(mut self) -> Self {
        let at = self.next_capability;
        self.add_capability(at, CAP_ID_MSI, MSI_CAP_SIZE);
        self.set16(at + 2, MSI_CONTROL_64BIT);
        // Enable, and Multiple Message Enable (only 0 means anything here).
        self.writable[at + 2] = 0x71;
        self.writable[at + 4..at + 12].copy_from_slice(&(!0x3u64).to_le_bytes());
        self.writable[at + 12..at + 14].copy_from_slice(&[0xff, 0xff]);
        self.msi = Some(at);
        self
    }

    fn add_capability(&mut self, at: usize, id: u8, size: usize) {
        assert!(at + size <= CONFIG_SIZE, "no room for capability {id:#x}");
        // Link at the head of the list.
        self.bytes[at] = id;
        self.bytes[at + 1] = self.bytes[reg::CAPABILITIES];
        self.bytes[reg::CAPABILITIES] = at as u8;
        let status = self.get16(reg::STATUS) | STATUS_CAPABILITIES;
        self.set16(reg::STATUS, status);
        self.next_capability = (at + size).next_multiple_of(4);
    }

    fn get16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn set16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn get32(&self, offset: usize) -> u32 {
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(word)
    }

    fn set32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// A guest read of `data.len()` bytes at `offset`; bytes past the end
    /// of configuration space read as all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|at| self.bytes.get(at))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// A guest write; only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i).filter(|&at| at < CONFIG_SIZE) else {
                break;
            };
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
        }
        self.clamp_msi_vectors();
    }

    /// With MSI enabled, Multiple Message Enable cannot ask for more vectors
    /// than the one we have: QEMU's `msi_write_config` clamps it back to 0,
    /// so the message data is always used as programmed.
    fn clamp_msi_vectors(&mut self) {
        let Some(at) = self.msi else { return };
        let control = self.get16(at + 2);
        if control & MSI_CONTROL_ENABLE != 0 && control & MSI_CONTROL_MME != 0 {
            self.set16(at + 2, control & !MSI_CONTROL_MME);
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get16(reg::COMMAND)
    }

    /// The BAR declared at `index`.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` holds now (without its flag bits).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let offset = reg::BAR0 + 4 * index;
        let low = u64::from(self.get32(offset));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 => low & !0xf,
            BarKind::Memory64 => (u64::from(self.get32(offset + 4)) << 32) | (low & !0xf),
        })
    }

    /// Programs BAR `index` to `address` (as firmware would). Bits below the
    /// BAR's size are ignored.
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bar(index) else { return };
        let offset = reg::BAR0 + 4 * index;
        self.write(offset, &(address as u32).to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            self.write(offset + 4, &((address >> 32) as u32).to_le_bytes());
        }
    }

    /// Whether BAR `index` decodes now: declared, and its space enabled in
    /// the command register.
    pub fn bar_enabled(&self, index: usize) -> bool {
        let bit = match self.bar(index).map(|b| b.kind) {
            Some(BarKind::Io) => command::IO,
            Some(_) => command::MEMORY,
            None => return false,
        };
        self.command() & bit != 0
    }

    /// The MSI capability's state, if the device has one.
    pub fn msi(&self) -> Option<MsiState> {
        let at = self.msi?;
        let address = u64::from(self.get32(at + 4)) | (u64::from(self.get32(at + 8)) << 32);
        Some(MsiState {
            enabled: self.get16(at + 2) & MSI_CONTROL_ENABLE != 0,
            address,
            data: self.get16(at + 12),
        })
    }
}

/// A device on the PCI bus: its configuration space and its BARs.
pub trait PciDevice: Send {
    /// Configuration space.
    fn config(&self) -> &PciConfig;

    /// Configuration space, for guest writes (routed by the VMM).
    fn config_mut(&mut self) -> &mut PciConfig;

    /// A guest read at `offset` into BAR `bar`; `data` arrives zero-filled.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` into BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> Action;

    /// A guest read of configuration space. The VMM calls this rather than
    /// `config().read()`: a device may report live state there (edu's
    /// Interrupt Status bit).
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// A guest write to configuration space. The VMM calls this rather than
    /// `config_mut().write()`: a device may have to react at once (edu
    /// drops its INTx line when the guest sets Interrupt Disable or enables
    /// MSI, and tells its background work where MSIs go now).
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// Writes the device wants KVM to absorb with ioeventfds (never reaching
    /// `bar_write`), as they are now. The VMM re-reads this after every
    /// access to the device and after BARs move.
    fn ioeventfds(&self) -> Vec<IoEventFd> {
        Vec::new()
    }
}

/// A write KVM should complete in the kernel by signalling an eventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoEventFd {
    /// Which BAR.
    pub bar: usize,
    /// Offset in the BAR.
    pub offset: u64,
    /// Access width it matches.
    pub len: u32,
    /// Only writes of this value match (any value when `None`).
    pub datamatch: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(config: &PciConfig, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(config: &mut PciConfig, offset: usize, value: u32) {
        config.write(offset, &value.to_le_bytes());
    }

    fn edu_like() -> PciConfig {
        PciConfig::new(0x1234, 0x11e8, 0x00_ff_00, 0x10)
            .with_interrupt_pin(1)
            .with_bar(0, BarKind::Memory32, 1 << 20)
            .with_bar(1, BarKind::Io, 256)
            .with_bar(2, BarKind::Memory64, 0x1000)
            .with_msi()
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut config = edu_like();
        assert_eq!(read32(&config, 0), 0x11e8_1234);
        write32(&mut config, 0, 0xdead_beef);
        assert_eq!(read32(&config, 0), 0x11e8_1234);
        assert_eq!(read32(&config, 0x08), 0x00ff_0010, "class and revision");
        config.write(reg::INTERRUPT_PIN, &[4]);
        assert_eq!(config.bytes[reg::INTERRUPT_PIN], 1);
        config.write(reg::INTERRUPT_LINE, &[11]);
        assert_eq!(config.bytes[reg::INTERRUPT_LINE], 11);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut config = edu_like();
        write32(&mut config, reg::BAR0, !0);
        assert_eq!(read32(&config, reg::BAR0), 0xfff0_0000);
        write32(&mut config, reg::BAR0 + 4, !0);
        assert_eq!(
            read32(&config, reg::BAR0 + 4),
            0xffff_ff01,
            "I/O flag stays set"
        );
        write32(&mut config, reg::BAR0 + 8, !0);
        write32(&mut config, reg::BAR0 + 12, !0);
        assert_eq!(
            read32(&config, reg::BAR0 + 8),
            0xffff_f004,
            "64-bit flag stays set"
        );
        assert_eq!(read32(&config, reg::BAR0 + 12), 0xffff_ffff);
        // Unused BARs read as zero whatever is written.
        write32(&mut config, reg::BAR0 + 16, !0);
        assert_eq!(read32(&config, reg::BAR0 + 16), 0);
    }

    #[test]
    fn bar_addresses_and_decoding() {
        let mut config = edu_like();
        config.set_bar_address(0, 0xfe00_0123);
        config.set_bar_address(1, 0xc001);
        config.set_bar_address(2, 0x1_2345_6000);
        assert_eq!(config.bar_address(0), Some(0xfe00_0000));
        assert_eq!(config.bar_address(1), Some(0xc000));
        assert_eq!(config.bar_address(2), Some(0x1_2345_6000));
        assert_eq!(config.bar_address(3), None, "upper half of a 64-bit BAR");
        assert!(!config.bar_enabled(0));
        config.write(reg::COMMAND, &(command::MEMORY | 0x8000).to_le_bytes());
        assert_eq!(
            config.command(),
            command::MEMORY,
            "reserved command bits stay 0"
        );
        assert!(config.bar_enabled(0) && config.bar_enabled(2) && !config.bar_enabled(1));
    }

    #[test]
    fn msi_capability_is_listed_and_programmable() {
        let mut config = edu_like();
        assert_ne!(
            read32(&config, reg::COMMAND) >> 16 & u32::from(STATUS_CAPABILITIES),
            0
        );
        let at = usize::from(config.bytes[reg::CAPABILITIES]);
        assert_eq!(config.bytes[at], CAP_ID_MSI);
        assert_eq!(config.bytes[at + 1], 0, "end of the list");
        assert_eq!(
            config.msi(),
            Some(MsiState {
                enabled: false,
                address: 0,
                data: 0
            })
        );
        write32(&mut config, at + 4, 0xfee0_1003);
        write32(&mut config, at + 8, 0x1);
        config.write(at + 12, &0x4041u16.to_le_bytes());
        config.write(at + 2, &[0xff, 0xff]);
        let msi = config.msi().unwrap();
        assert_eq!(
            msi,
            MsiState {
                enabled: true,
                address: 0x1_fee0_1000,
                data: 0x4041
            }
        );
        assert_eq!(config.get16(at + 2) & MSI_CONTROL_64BIT, MSI_CONTROL_64BIT);
        assert_eq!(config.get16(at + 2) & 0xe, 0, "one vector capable");
    }

    #[test]
    fn enabled_msi_keeps_one_vector() {
        let mut config = edu_like();
        let at = config.msi.unwrap();
        // Multiple Message Enable sticks while MSI is off (as in QEMU)...
        config.write(at + 2, &[0x30]);
        assert_eq!(config.get16(at + 2) & MSI_CONTROL_MME, 0x30);
        // ...and is clamped to the one vector once MSI is on.
        config.write(at + 2, &[0x31]);
        assert_eq!(config.get16(at + 2) & MSI_CONTROL_MME, 0);
        assert!(config.msi().unwrap().enabled);
    }

    #[test]
    fn accesses_past_the_end_are_harmless() {
        let mut config = edu_like();
        let mut data = [0u8; 4];
        config.read(254, &mut data);
        assert_eq!(&data[2..], &[0xff, 0xff]);
        config.write(usize::MAX, &[1, 2, 3]);
        config.write(255, &[1, 2, 3, 4]);
    }
}
