//! QEMU's educational device, edu (PCI 1234:11e8): its registers ([`Edu`])
//! and its [`Driver`] ([`EduDriver`]).
//!
//! BAR0 is 1 MiB of registers: an ID, a liveness check, a factorial
//! calculator, interrupt status/raise/acknowledge, and a DMA engine that
//! copies between RAM and a 4 KiB buffer inside the device (at device
//! address 0x40000). Below 0x80 only 4-byte accesses are valid; the DMA
//! registers from 0x80 take 4 or 8 bytes. An interrupt goes out as MSI
//! when MSI is enabled, else on INTA#.

use crate::driver::{Driver, DriverError, MsiTarget};
use crate::mmio;
use crate::pci::{Msi, PciDevice, command};
use crate::smp::wait_until_timeout;

/// Vendor ID (QEMU).
pub const VENDOR_ID: u16 = 0x1234;
/// Device ID of edu.
pub const DEVICE_ID: u16 = 0x11e8;
/// What the identification register holds: version 1.0, 0xed.
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Device address of the DMA buffer.
pub const DMA_BUFFER: u64 = 0x4_0000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: u64 = 4096;
/// Bits of a RAM address the DMA engine keeps (QEMU's `dma_mask`).
pub const DMA_ADDRESS_MASK: u64 = (1 << 28) - 1;
/// How long a DMA transfer or a factorial may take: QEMU completes a
/// transfer 100 ms after the command.
pub const TIMEOUT_MS: u32 = 1000;

/// Register offsets in BAR0.
pub mod reg {
    /// Identification (read-only).
    pub const ID: u64 = 0x00;
    /// Liveness check: reads back the bitwise inverse of what was written.
    pub const ALIVE: u64 = 0x04;
    /// Factorial: write n to start, read n! when done.
    pub const FACTORIAL: u64 = 0x08;
    /// Status: [`STATUS_COMPUTING`](super::STATUS_COMPUTING),
    /// [`STATUS_FACTORIAL_IRQ`](super::STATUS_FACTORIAL_IRQ).
    pub const STATUS: u64 = 0x20;
    /// Interrupt status (read-only): the raised bits.
    pub const IRQ_STATUS: u64 = 0x24;
    /// Raise: ORs the value into the interrupt status and interrupts.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Acknowledge: clears bits of the interrupt status (INTx drops at 0).
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA byte count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command: [`DMA_START`](super::DMA_START),
    /// [`DMA_TO_RAM`](super::DMA_TO_RAM), [`DMA_IRQ_ENABLE`](super::DMA_IRQ_ENABLE).
    pub const DMA_CMD: u64 = 0x98;
}

/// Status: a factorial is being computed (read-only).
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise [`FACTORIAL_IRQ`] when a factorial completes.
pub const STATUS_FACTORIAL_IRQ: u32 = 0x80;
/// Interrupt status bit of a completed factorial.
pub const FACTORIAL_IRQ: u32 = 0x001;
/// Interrupt status bit of a completed DMA transfer.
pub const DMA_IRQ: u32 = 0x100;
/// DMA command: start (reads as set while the transfer runs).
pub const DMA_START: u32 = 0x1;
/// DMA command: direction device buffer -> RAM (clear: RAM -> buffer).
pub const DMA_TO_RAM: u32 = 0x2;
/// DMA command: raise [`DMA_IRQ`] when done.
pub const DMA_IRQ_ENABLE: u32 = 0x4;
/// DMA command, read back: the transfer was refused as out of range (the
/// buffer side outside 0x40000-0x40fff, or the RAM side not all RAM) and
/// moved nothing. ktvmm's own addition; QEMU has no such bit.
pub const DMA_ERROR: u32 = 1 << 31;

/// The interrupt status bit [`EduDriver::send_msi`] raises.
const SEND_MSI_IRQ: u32 = 0x1000;

/// An edu device's registers, at the address of its BAR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edu {
    base: u64,
}

impl Edu {
    /// The registers at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be where an edu device's BAR0 decodes (or, for negative
    /// tests, memory where device-style accesses are harmless).
    pub const unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    /// The registers of `device`, if it is an edu with a memory BAR0.
    pub fn from_device(device: &PciDevice) -> Option<Self> {
        if device.vendor_id != VENDOR_ID || device.device_id != DEVICE_ID {
            return None;
        }
        let bar = device.bar(0).filter(|bar| !bar.is_io())?;
        // SAFETY: BAR0 of an edu device.
        Some(unsafe { Self::new(bar.address) })
    }

    /// Where the registers are.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// A 32-bit register read (edu reads have no side effects).
    pub fn read32(&self, offset: u64) -> u32 {
        // SAFETY: device memory of this edu (see `new`).
        unsafe { mmio::read32(self.base + offset) }
    }

    /// A 64-bit register read.
    pub fn read64(&self, offset: u64) -> u64 {
        // SAFETY: as for `read32`.
        unsafe { mmio::read64(self.base + offset) }
    }

    /// A 32-bit register write.
    ///
    /// # Safety
    ///
    /// Writes can start DMA to the programmed addresses.
    pub unsafe fn write32(&self, offset: u64, value: u32) {
        // SAFETY: device memory; the caller vouches for the effect.
        unsafe { mmio::write32(self.base + offset, value) }
    }

    /// A 64-bit register write.
    ///
    /// # Safety
    ///
    /// As for [`write32`](Self::write32).
    pub unsafe fn write64(&self, offset: u64, value: u64) {
        // SAFETY: device memory; the caller vouches for the effect.
        unsafe { mmio::write64(self.base + offset, value) }
    }

    /// A register write that cannot start a DMA transfer.
    fn write_register(&self, offset: u64, value: u32) {
        debug_assert!(offset < reg::DMA_SRC);
        // SAFETY: registers below the DMA block have no memory effects.
        unsafe { self.write32(offset, value) }
    }

    /// The identification register ([`ID_VALUE`]).
    pub fn id(&self) -> u32 {
        self.read32(reg::ID)
    }

    /// Writes `value` to the liveness register and returns what it reads
    /// back (`!value` on a live device).
    pub fn liveness(&self, value: u32) -> u32 {
        self.write_register(reg::ALIVE, value);
        self.read32(reg::ALIVE)
    }

    /// Starts computing `n!` (ignored while a computation runs).
    pub fn start_factorial(&self, n: u32) {
        self.write_register(reg::FACTORIAL, n);
    }

    /// Whether a factorial is being computed.
    pub fn computing(&self) -> bool {
        self.read32(reg::STATUS) & STATUS_COMPUTING != 0
    }

    /// The factorial register (the result once `computing` is false).
    pub fn factorial(&self) -> u32 {
        self.read32(reg::FACTORIAL)
    }

    /// Computes `n!` by polling; `None` on timeout.
    pub fn compute_factorial(&self, n: u32) -> Option<u32> {
        self.start_factorial(n);
        wait_until_timeout(TIMEOUT_MS, || !self.computing()).then(|| self.factorial())
    }

    /// Sets whether a completed factorial raises [`FACTORIAL_IRQ`].
    pub fn set_factorial_irq(&self, enable: bool) {
        self.write_register(reg::STATUS, if enable { STATUS_FACTORIAL_IRQ } else { 0 });
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.read32(reg::IRQ_STATUS)
    }

    /// Raises interrupt status `bits` (and the interrupt).
    pub fn raise_irq(&self, bits: u32) {
        self.write_register(reg::IRQ_RAISE, bits);
    }

    /// Acknowledges interrupt status `bits`.
    pub fn ack_irq(&self, bits: u32) {
        self.write_register(reg::IRQ_ACK, bits);
    }

    /// Programs and starts a transfer of `count` bytes from `src` to `dst`
    /// with command bits `command` ([`DMA_START`] is added).
    ///
    /// # Safety
    ///
    /// The device reads or writes RAM at the given addresses (masked to 28
    /// bits): they must be free for it until the transfer is done.
    pub unsafe fn start_dma(&self, src: u64, dst: u64, count: u64, command: u32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.write64(reg::DMA_SRC, src);
            self.write64(reg::DMA_DST, dst);
            self.write64(reg::DMA_COUNT, count);
            self.write32(reg::DMA_CMD, command | DMA_START);
        }
    }

    /// Starts copying `len` bytes of RAM at `ram` into the device buffer at
    /// `offset`, raising [`DMA_IRQ`] when done if `irq`.
    ///
    /// # Safety
    ///
    /// As for [`start_dma`](Self::start_dma).
    pub unsafe fn start_dma_to_device(&self, ram: u64, offset: u64, len: u64, irq: bool) {
        let command = if irq { DMA_IRQ_ENABLE } else { 0 };
        // SAFETY: forwarded from the caller.
        unsafe { self.start_dma(ram, DMA_BUFFER + offset, len, command) }
    }

    /// Starts copying `len` bytes of the device buffer at `offset` to RAM at
    /// `ram`, raising [`DMA_IRQ`] when done if `irq`.
    ///
    /// # Safety
    ///
    /// As for [`start_dma`](Self::start_dma).
    pub unsafe fn start_dma_to_ram(&self, offset: u64, ram: u64, len: u64, irq: bool) {
        let command = DMA_TO_RAM | if irq { DMA_IRQ_ENABLE } else { 0 };
        // SAFETY: forwarded from the caller.
        unsafe { self.start_dma(DMA_BUFFER + offset, ram, len, command) }
    }

    /// Whether a transfer is running.
    pub fn dma_busy(&self) -> bool {
        self.read32(reg::DMA_CMD) & DMA_START != 0
    }

    /// Waits for the running transfer; false on timeout.
    pub fn wait_dma(&self) -> bool {
        wait_until_timeout(TIMEOUT_MS, || !self.dma_busy())
    }
}

/// The edu device as seen by a bound [`EduDriver`].
struct Bound {
    device: PciDevice,
    edu: Edu,
    msi: Option<Msi>,
    /// The command register before `init`.
    command: u16,
    /// The second half of a memcpy: (RAM destination, length).
    pending: Option<(u64, u64)>,
}

/// The [`Driver`] for edu: memcpy RAM -> device buffer -> RAM by DMA (up to
/// 4 KiB), and MSI by raising an interrupt status bit.
#[derive(Default)]
pub struct EduDriver {
    bound: Option<Bound>,
}

impl EduDriver {
    fn bound(&mut self) -> Result<&mut Bound, DriverError> {
        self.bound.as_mut().ok_or(DriverError::NotBound)
    }

    /// The bound device's registers.
    pub fn edu(&self) -> Option<Edu> {
        self.bound.as_ref().map(|bound| bound.edu)
    }
}

impl Driver for EduDriver {
    fn name(&self) -> &'static str {
        "edu"
    }

    fn probe(&self, device: &PciDevice) -> bool {
        device.vendor_id == VENDOR_ID && device.device_id == DEVICE_ID
    }

    fn init(&mut self, device: &PciDevice, msi: MsiTarget) -> Result<(), DriverError> {
        self.remove();
        let edu = Edu::from_device(device).ok_or(DriverError::Device("no memory BAR0"))?;
        let command = device.command();
        // SAFETY: edu only masters the bus for DMA we program and for its MSI.
        unsafe { device.set_command(command | command::MEMORY | command::BUS_MASTER) };
        if edu.id() != ID_VALUE || edu.liveness(0x5a5a_0ff0) != !0x5a5a_0ff0 {
            // SAFETY: restores what the device had.
            unsafe { device.set_command(command) };
            return Err(DriverError::Device("edu does not answer at BAR0"));
        }
        let msi_cap = device.msi();
        if let Some(cap) = msi_cap {
            cap.configure(msi.apic_id, msi.vector);
            cap.enable();
        }
        self.bound = Some(Bound {
            device: *device,
            edu,
            msi: msi_cap,
            command,
            pending: None,
        });
        Ok(())
    }

    fn remove(&mut self) {
        if let Some(bound) = self.bound.take() {
            if bound.edu.dma_busy() {
                bound.edu.wait_dma();
            }
            if let Some(msi) = bound.msi {
                msi.disable();
            }
            bound.edu.ack_irq(u32::MAX);
            // SAFETY: restores the command register from before `init`.
            unsafe { bound.device.set_command(bound.command) };
        }
    }

    fn max_memcpy_size(&self) -> usize {
        DMA_BUFFER_SIZE as usize
    }

    unsafe fn memcpy_start(&mut self, src: u64, dst: u64, len: usize) -> Result<(), DriverError> {
        let bound = self.bound()?;
        if len as u64 > DMA_BUFFER_SIZE {
            return Err(DriverError::TooLarge);
        }
        if bound.pending.is_some() || bound.edu.dma_busy() {
            return Err(DriverError::Busy);
        }
        // SAFETY: the caller lends us `src` (and `dst`, for memcpy_wait).
        unsafe { bound.edu.start_dma_to_device(src, 0, len as u64, false) };
        bound.pending = Some((dst, len as u64));
        Ok(())
    }

    fn memcpy_wait(&mut self) -> Result<(), DriverError> {
        let bound = self.bound()?;
        let (dst, len) = bound
            .pending
            .take()
            .ok_or(DriverError::Device("no memcpy started"))?;
        if !bound.edu.wait_dma() {
            return Err(DriverError::Timeout);
        }
        // SAFETY: `dst` was lent to us by the caller of `memcpy_start`.
        unsafe { bound.edu.start_dma_to_ram(0, dst, len, false) };
        if !bound.edu.wait_dma() {
            return Err(DriverError::Timeout);
        }
        Ok(())
    }

    fn send_msi(&mut self) -> Result<(), DriverError> {
        let bound = self.bound()?;
        if bound.msi.is_none() {
            return Err(DriverError::Unsupported);
        }
        // With MSI enabled every raise sends the message; the status bit
        // is only bookkeeping, cleared at once.
        bound.edu.raise_irq(SEND_MSI_IRQ);
        bound.edu.ack_irq(SEND_MSI_IRQ);
        Ok(())
    }
}
