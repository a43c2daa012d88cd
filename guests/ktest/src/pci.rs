//! PCI: configuration space through mechanism #1 (ports 0xcf8/0xcfc),
//! enumeration of bus 0, BARs (address, kind, size), the command register,
//! the capability list, MSI and the INTx registers.
//!
//! ktvmm pre-assigns BARs and enables decoding, so a guest can use a device
//! straight away; bus mastering (DMA and MSI writes) is left to drivers,
//! as on real hardware after firmware.
//!
//! ```ignore
//! let edu = ktest::pci::find(0x1234, 0x11e8).expect("edu");
//! edu.enable_bus_master();
//! let bar0 = edu.bar(0).expect("BAR0");
//! let id = unsafe { ktest::mmio::read32(bar0.address) };
//! ```

use core::fmt;

use ktvmm_abi::ports::{PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA};

use crate::spinlock::Spinlock;
use crate::x86;

/// Offsets of the type 0 header registers.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u8 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u8 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u8 = 0x04;
    /// Status (16 bits).
    pub const STATUS: u8 = 0x06;
    /// Revision ID (8 bits), then the 24-bit class code.
    pub const REVISION: u8 = 0x08;
    /// Header type (8 bits; bit 7: multi-function).
    pub const HEADER_TYPE: u8 = 0x0e;
    /// First of the six BARs.
    pub const BAR0: u8 = 0x10;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES: u8 = 0x34;
    /// Interrupt line (8 bits: the IOAPIC input, under ktvmm).
    pub const INTERRUPT_LINE: u8 = 0x3c;
    /// Interrupt pin (8 bits: 0 none, 1 INTA# ... 4 INTD#).
    pub const INTERRUPT_PIN: u8 = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus mastering: DMA and MSI writes.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register: the device has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// What configuration reads of an absent device return.
pub const ABSENT: u32 = 0xffff_ffff;
/// Config address bit 31: enables the configuration cycle.
const CONFIG_ENABLE: u32 = 1 << 31;
/// Bound on capability-list entries, against malformed (looping) lists.
const MAX_CAPABILITIES: usize = 48;

/// Serialises the two-step address/data accesses across CPUs (and, since
/// the lock masks interrupts, against handlers on the same CPU).
static CONFIG_LOCK: Spinlock<()> = Spinlock::new(());

/// A bus/device/function triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl PciAddress {
    /// The address `bus:device.function`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }

    /// Function 0 of `device` on bus 0.
    pub const fn slot(device: u8) -> Self {
        Self::new(0, device, 0)
    }

    /// The value for the configuration address port (0xcf8) that selects
    /// the dword holding `offset`.
    pub const fn config_address(self, offset: u8) -> u32 {
        CONFIG_ENABLE
            | (self.bus as u32) << 16
            | ((self.device & 0x1f) as u32) << 11
            | ((self.function & 0x7) as u32) << 8
            | (offset & 0xfc) as u32
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Selects `offset` of `address` and runs `access` on the data port that
/// covers it (0xcfc + the byte offset within the dword).
fn with_config<R>(address: PciAddress, offset: u8, access: impl FnOnce(u16) -> R) -> R {
    let _guard = CONFIG_LOCK.lock();
    // SAFETY: selecting a configuration register has no other effect.
    unsafe { x86::outl(PCI_CONFIG_ADDRESS, address.config_address(offset)) };
    access(PCI_CONFIG_DATA + u16::from(offset & 3))
}

/// Reads the 32-bit configuration register at `offset` (rounded down to a
/// multiple of 4).
pub fn read32(address: PciAddress, offset: u8) -> u32 {
    // SAFETY: configuration reads have no side effects.
    with_config(address, offset & !3, |port| unsafe { x86::inl(port) })
}

/// Reads the 16-bit configuration register at `offset` (rounded down to a
/// multiple of 2).
pub fn read16(address: PciAddress, offset: u8) -> u16 {
    // SAFETY: as for `read32`.
    with_config(address, offset & !1, |port| unsafe { x86::inw(port) })
}

/// Reads the configuration byte at `offset`.
pub fn read8(address: PciAddress, offset: u8) -> u8 {
    // SAFETY: as for `read32`.
    with_config(address, offset, |port| unsafe { x86::inb(port) })
}

/// Writes the 32-bit configuration register at `offset`.
///
/// # Safety
///
/// Configuration writes move BARs (possibly over RAM or other devices) and
/// enable DMA: the caller vouches for the effect.
pub unsafe fn write32(address: PciAddress, offset: u8, value: u32) {
    // SAFETY: the caller vouches for the effect.
    with_config(address, offset & !3, |port| unsafe {
        x86::outl(port, value)
    })
}

/// Writes the 16-bit configuration register at `offset`.
///
/// # Safety
///
/// As for [`write32`].
pub unsafe fn write16(address: PciAddress, offset: u8, value: u16) {
    // SAFETY: the caller vouches for the effect.
    with_config(address, offset & !1, |port| unsafe {
        x86::outw(port, value)
    })
}

/// Writes the configuration byte at `offset`.
///
/// # Safety
///
/// As for [`write32`].
pub unsafe fn write8(address: PciAddress, offset: u8, value: u8) {
    // SAFETY: the caller vouches for the effect.
    with_config(address, offset, |port| unsafe { x86::outb(port, value) })
}

/// Reads back the configuration address register (0xcf8).
pub fn config_address_register() -> u32 {
    let _guard = CONFIG_LOCK.lock();
    // SAFETY: reading the address register has no side effect.
    unsafe { x86::inl(PCI_CONFIG_ADDRESS) }
}

/// Writes the configuration address register (0xcf8) without accessing data.
pub fn set_config_address_register(value: u32) {
    let _guard = CONFIG_LOCK.lock();
    // SAFETY: selecting a register has no effect until the data port is used.
    unsafe { x86::outl(PCI_CONFIG_ADDRESS, value) }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere (the BAR and the next one hold the address).
    Memory64,
}

/// A base address register as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Which BAR (0-5; the low half of a 64-bit pair).
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Where it is now (a port number for I/O BARs).
    pub address: u64,
    /// Its size (a power of two), found by sizing.
    pub size: u64,
    /// Memory BARs: prefetchable.
    pub prefetchable: bool,
}

impl Bar {
    /// Whether this is an I/O BAR.
    pub fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }

    /// One past the last address it decodes.
    pub fn end(&self) -> u64 {
        self.address + self.size
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "I/O",
            BarKind::Memory32 => "mem32",
            BarKind::Memory64 => "mem64",
        };
        write!(
            f,
            "BAR{} {} [{:#x}-{:#x}] ({:#x} bytes{})",
            self.index,
            kind,
            self.address,
            self.end() - 1,
            self.size,
            if self.prefetchable {
                ", prefetchable"
            } else {
                ""
            }
        )
    }
}

/// A function found on the bus: its address and identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class: u32,
    /// Header type (bit 7 cleared).
    pub header_type: u8,
    /// Whether function 0 reports more functions (header type bit 7).
    pub multifunction: bool,
}

impl fmt::Display for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} rev {:#04x} class {:06x}",
            self.address, self.vendor_id, self.device_id, self.revision, self.class
        )
    }
}

impl PciDevice {
    /// The function at `address`, or `None` if its vendor ID reads 0xffff.
    pub fn probe(address: PciAddress) -> Option<Self> {
        let id = read32(address, reg::VENDOR_ID);
        if id & 0xffff == 0xffff {
            return None;
        }
        let class_rev = read32(address, reg::REVISION);
        let header = read8(address, reg::HEADER_TYPE);
        Some(Self {
            address,
            vendor_id: id as u16,
            device_id: (id >> 16) as u16,
            revision: class_rev as u8,
            class: class_rev >> 8,
            header_type: header & 0x7f,
            multifunction: header & 0x80 != 0,
        })
    }

    /// Reads a 32-bit configuration register of this function.
    pub fn read32(&self, offset: u8) -> u32 {
        read32(self.address, offset)
    }

    /// Reads a 16-bit configuration register of this function.
    pub fn read16(&self, offset: u8) -> u16 {
        read16(self.address, offset)
    }

    /// Reads a configuration byte of this function.
    pub fn read8(&self, offset: u8) -> u8 {
        read8(self.address, offset)
    }

    /// Writes a 32-bit configuration register of this function.
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write32(&self, offset: u8, value: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { write32(self.address, offset, value) }
    }

    /// Writes a 16-bit configuration register of this function.
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write16(&self, offset: u8, value: u16) {
        // SAFETY: forwarded from the caller.
        unsafe { write16(self.address, offset, value) }
    }

    /// Writes a configuration byte of this function.
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write8(&self, offset: u8, value: u8) {
        // SAFETY: forwarded from the caller.
        unsafe { write8(self.address, offset, value) }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read16(reg::COMMAND)
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.read16(reg::STATUS)
    }

    /// Replaces the command register.
    ///
    /// # Safety
    ///
    /// Enables or disables decoding and DMA: the caller vouches for the
    /// BARs and the memory the device may write.
    pub unsafe fn set_command(&self, value: u16) {
        // SAFETY: forwarded from the caller.
        unsafe { self.write16(reg::COMMAND, value) }
    }

    /// Sets I/O and memory decoding for the kinds of BARs the device has.
    pub fn enable_decoding(&self) {
        let mut bits = 0;
        for bar in self.bars().into_iter().flatten() {
            bits |= if bar.is_io() {
                command::IO
            } else {
                command::MEMORY
            };
        }
        // SAFETY: the BARs decode where they are already programmed.
        unsafe { self.set_command(self.command() | bits) }
    }

    /// Lets the device master the bus (DMA and MSI).
    ///
    /// # Safety
    ///
    /// The device may write any guest memory it is programmed to.
    pub unsafe fn enable_bus_master(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.set_command(self.command() | command::BUS_MASTER) }
    }

    /// Stops the device from mastering the bus.
    pub fn disable_bus_master(&self) {
        // SAFETY: turning DMA off cannot make memory unsafe.
        unsafe { self.set_command(self.command() & !command::BUS_MASTER) }
    }

    /// The raw value of BAR `index`.
    pub fn bar_register(&self, index: u8) -> u32 {
        self.read32(reg::BAR0 + 4 * index)
    }

    /// Sizes BAR `index` (or the pair starting there): writes all-ones,
    /// reads back the mask and restores the BAR. Decoding is turned off
    /// meanwhile, so the device never decodes at the all-ones address.
    /// Returns the size mask (0 for an unimplemented BAR).
    fn size_mask(&self, index: u8, is_64bit: bool) -> u64 {
        let offset = reg::BAR0 + 4 * index;
        let command = self.command();
        let mask;
        // SAFETY: decoding is off while the BAR holds all-ones, and both the
        // BAR and the command register get their values back.
        unsafe {
            self.set_command(command & !(command::IO | command::MEMORY));
            let low = self.read32(offset);
            self.write32(offset, 0xffff_ffff);
            let low_mask = u64::from(self.read32(offset));
            self.write32(offset, low);
            let high_mask = if is_64bit {
                let high = self.read32(offset + 4);
                self.write32(offset + 4, 0xffff_ffff);
                let high_mask = u64::from(self.read32(offset + 4));
                self.write32(offset + 4, high);
                high_mask
            } else {
                0xffff_ffff
            };
            mask = high_mask << 32 | low_mask;
            self.set_command(command);
        }
        mask
    }

    /// BAR `index`, if it is implemented (`None` for an unused BAR or the
    /// high half of a 64-bit pair when asked for directly, in which case
    /// the result is garbage: walk them with [`bars`](Self::bars)).
    pub fn bar(&self, index: u8) -> Option<Bar> {
        if index >= 6 {
            return None;
        }
        let value = self.bar_register(index);
        let (kind, prefetchable) = if value & 1 != 0 {
            (BarKind::Io, false)
        } else if (value >> 1) & 3 == 2 {
            (BarKind::Memory64, value & 8 != 0)
        } else {
            (BarKind::Memory32, value & 8 != 0)
        };
        let is_64bit = kind == BarKind::Memory64 && index < 5;
        let mask = self.size_mask(index, is_64bit);
        if mask as u32 == 0 {
            // Unimplemented: no address bit is writable.
            return None;
        }
        let (address, size) = match kind {
            BarKind::Io => {
                // Only the low 16 bits of an I/O BAR need to be implemented.
                let mask = (mask & !3) | 0xffff_0000;
                (u64::from(value & !3), (!mask).wrapping_add(1) & 0xffff_ffff)
            }
            _ => {
                let high = if is_64bit {
                    u64::from(self.bar_register(index + 1)) << 32
                } else {
                    0
                };
                (
                    high | u64::from(value & !0xf),
                    (!(mask & !0xf)).wrapping_add(1),
                )
            }
        };
        if size == 0 {
            return None;
        }
        Some(Bar {
            index,
            kind,
            address,
            size,
            prefetchable,
        })
    }

    /// The implemented BARs, by index (a 64-bit BAR occupies its index; the
    /// next index, its high half, is `None`).
    pub fn bars(&self) -> [Option<Bar>; 6] {
        let mut bars = [None; 6];
        let mut index = 0;
        while index < 6 {
            let bar = self.bar(index);
            bars[usize::from(index)] = bar;
            index += match bar {
                Some(Bar {
                    kind: BarKind::Memory64,
                    ..
                }) => 2,
                _ => 1,
            };
        }
        bars
    }

    /// Moves BAR `index` to `address` (both halves of a 64-bit BAR).
    ///
    /// # Safety
    ///
    /// The new range must not cover RAM or another device the guest uses.
    pub unsafe fn set_bar_address(&self, index: u8, address: u64) {
        let offset = reg::BAR0 + 4 * index;
        let value = self.bar_register(index);
        // SAFETY: forwarded from the caller.
        unsafe {
            if value & 1 != 0 {
                self.write32(offset, (address as u32 & !3) | (value & 3));
            } else {
                self.write32(offset, (address as u32 & !0xf) | (value & 0xf));
                if (value >> 1) & 3 == 2 {
                    self.write32(offset + 4, (address >> 32) as u32);
                }
            }
        }
    }

    /// The Interrupt Line register (the IOAPIC input under ktvmm).
    pub fn interrupt_line(&self) -> u8 {
        self.read8(reg::INTERRUPT_LINE)
    }

    /// The Interrupt Pin register (0: none, 1: INTA# ... 4: INTD#).
    pub fn interrupt_pin(&self) -> u8 {
        self.read8(reg::INTERRUPT_PIN)
    }

    /// The capability list: (offset, capability ID) pairs.
    pub fn capabilities(&self) -> Capabilities {
        let next = if self.status() & STATUS_CAPABILITIES != 0 {
            self.read8(reg::CAPABILITIES) & 0xfc
        } else {
            0
        };
        Capabilities {
            device: *self,
            next,
            seen: 0,
        }
    }

    /// The offset of the first capability with ID `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities()
            .find(|&(_, cap)| cap == id)
            .map(|(offset, _)| offset)
    }

    /// The MSI capability, if the device has one.
    pub fn msi(&self) -> Option<Msi> {
        self.find_capability(CAP_ID_MSI).map(|offset| Msi {
            device: *self,
            offset,
        })
    }
}

/// Iterator over a function's capability list (see
/// [`PciDevice::capabilities`]).
pub struct Capabilities {
    device: PciDevice,
    next: u8,
    seen: usize,
}

impl Iterator for Capabilities {
    type Item = (u8, u8);

    fn next(&mut self) -> Option<(u8, u8)> {
        if self.next < 0x40 || self.seen >= MAX_CAPABILITIES {
            return None;
        }
        let offset = self.next;
        let header = self.device.read16(offset);
        self.next = (header >> 8) as u8 & 0xfc;
        self.seen += 1;
        Some((offset, header as u8))
    }
}

/// Functions on bus 0, in slot order (see [`devices`]).
pub struct Devices {
    device: u8,
    function: u8,
    multifunction: bool,
}

impl Iterator for Devices {
    type Item = PciDevice;

    fn next(&mut self) -> Option<PciDevice> {
        while self.device < 32 {
            let address = PciAddress::new(0, self.device, self.function);
            let found = PciDevice::probe(address);
            if self.function == 0 {
                self.multifunction = found.is_some_and(|d| d.multifunction);
            }
            if self.function < 7 && self.multifunction {
                self.function += 1;
            } else {
                self.device += 1;
                self.function = 0;
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Every function on bus 0 (function 0 of each slot, and functions 1-7 of
/// multi-function devices).
pub fn devices() -> Devices {
    Devices {
        device: 0,
        function: 0,
        multifunction: false,
    }
}

/// The first function on bus 0 with this vendor and device ID.
pub fn find(vendor_id: u16, device_id: u16) -> Option<PciDevice> {
    devices().find(|d| d.vendor_id == vendor_id && d.device_id == device_id)
}

/// MSI message control bits.
pub mod msi_control {
    /// MSI enabled.
    pub const ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable (log2 of the vectors the device wants).
    pub const MMC_MASK: u16 = 0x7 << 1;
    /// Multiple Message Enable (log2 of the vectors granted).
    pub const MME_MASK: u16 = 0x7 << 4;
    /// 64-bit message address.
    pub const ADDRESS_64: u16 = 1 << 7;
    /// Per-vector masking.
    pub const PER_VECTOR_MASK: u16 = 1 << 8;
}

/// The MSI message address for a fixed interrupt to the CPU with APIC ID
/// `apic_id` (physical destination mode, no redirection hint).
pub const fn msi_address(apic_id: u32) -> u64 {
    0xfee0_0000 | ((apic_id as u64 & 0xff) << 12)
}

/// The MSI message data for `vector`: fixed delivery, edge-triggered.
pub const fn msi_data(vector: u8) -> u16 {
    vector as u16
}

/// A device's MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    device: PciDevice,
    offset: u8,
}

impl Msi {
    /// Offset of the capability in configuration space.
    pub fn offset(&self) -> u8 {
        self.offset
    }

    /// The message control register.
    pub fn control(&self) -> u16 {
        self.device.read16(self.offset + 2)
    }

    /// Whether the message address is 64 bits wide.
    pub fn is_64bit(&self) -> bool {
        self.control() & msi_control::ADDRESS_64 != 0
    }

    /// How many vectors the device asks for (1, 2, 4 ... 32).
    pub fn vectors_capable(&self) -> u32 {
        1 << ((self.control() & msi_control::MMC_MASK) >> 1)
    }

    /// Whether MSI is enabled.
    pub fn enabled(&self) -> bool {
        self.control() & msi_control::ENABLE != 0
    }

    fn data_offset(&self) -> u8 {
        self.offset + if self.is_64bit() { 0xc } else { 0x8 }
    }

    /// The programmed (address, data).
    pub fn message(&self) -> (u64, u16) {
        let low = u64::from(self.device.read32(self.offset + 4));
        let high = if self.is_64bit() {
            u64::from(self.device.read32(self.offset + 8))
        } else {
            0
        };
        (high << 32 | low, self.device.read16(self.data_offset()))
    }

    /// Programs one vector, fixed and edge-triggered, to the CPU with
    /// `apic_id`; does not change whether MSI is enabled.
    pub fn configure(&self, apic_id: u32, vector: u8) {
        let address = msi_address(apic_id);
        // SAFETY: the message only targets the LAPIC with a fixed vector;
        // a single vector is granted (MME = 0).
        unsafe {
            let control = self.control() & !msi_control::MME_MASK;
            self.device.write16(self.offset + 2, control);
            self.device.write32(self.offset + 4, address as u32);
            if self.is_64bit() {
                self.device.write32(self.offset + 8, (address >> 32) as u32);
            }
            self.device.write16(self.data_offset(), msi_data(vector));
        }
    }

    /// Enables MSI (the device stops using INTx).
    pub fn enable(&self) {
        // SAFETY: the message was programmed by `configure` (or is the
        // reset value, address 0, which bus mastering still gates).
        unsafe {
            self.device
                .write16(self.offset + 2, self.control() | msi_control::ENABLE)
        }
    }

    /// Disables MSI (the device goes back to INTx).
    pub fn disable(&self) {
        // SAFETY: turning MSI off cannot make memory unsafe.
        unsafe {
            self.device
                .write16(self.offset + 2, self.control() & !msi_control::ENABLE)
        }
    }
}
