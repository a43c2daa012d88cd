//! edu, QEMU's educational PCI device (hw/misc/edu.c): PCI 1234:11e8 rev
//! 0x10 with INTA# and a one-vector 64-bit MSI capability, and one BAR of
//! 1 MiB MMIO holding these registers:
//!
//! | offset | register |
//! | --- | --- |
//! | 0x00 | identification, 0x010000ed (RO) |
//! | 0x04 | liveness: reads the complement of what was written |
//! | 0x08 | factorial: write n, read n! once status bit 0 clears |
//! | 0x20 | status: bit 0 computing (RO), bit 7 interrupt when a factorial is done |
//! | 0x24 | interrupt status (RO) |
//! | 0x60 | interrupt raise: ORs the value into the status and signals |
//! | 0x64 | interrupt acknowledge: clears those bits |
//! | 0x80 | DMA source address (64 bits) |
//! | 0x88 | DMA destination address |
//! | 0x90 | DMA count |
//! | 0x98 | DMA command: bit 0 start, bit 1 buffer -> RAM, bit 2 interrupt 0x100 when done |
//!
//! Accesses behave as in QEMU, memory core included: the region takes 4- and
//! 8-byte aligned accesses; wider or misaligned ones are first cut into
//! aligned pieces (an 8-byte access at 0x84 is 4 bytes at 0x84 and 4 at
//! 0x88). A 1- or 2-byte piece is refused by the memory core: it reads 0 and
//! writes nothing. Below 0x80 edu.c itself refuses 8-byte accesses (reads
//! all-ones); an offset with no register reads all-ones. A 4-byte write to
//! a DMA register replaces all 64 bits.
//!
//! Raising an interrupt sends an MSI when MSI is enabled (and only with bus
//! mastering on: QEMU's MSI write goes through the bus-master address space),
//! otherwise asserts INTx; INTx drops when the status reaches 0 with MSI off,
//! when the guest enables MSI, and stays low while Interrupt Disable is set
//! (the PCI status register's Interrupt Status bit shows it pending).
//!
//! A factorial and a DMA transfer finish in the background through
//! [`Deferred`]; until then the factorial register, or the DMA registers,
//! ignore writes. n! wraps to 32 bits, and is worked out in at most 64 steps
//! (the product is 0 for n >= 34). Transfers move between RAM and the
//! 4096-byte buffer at device address 0x40000; RAM addresses are masked to 28
//! bits (QEMU's `dma_mask`), buffer addresses are not. With bus mastering
//! off, QEMU's DMA reads as zeroes and writes go nowhere; so here too.
//!
//! Out-of-range transfers: the buffer range (start and count) must lie in
//! 0x40000..0x41000, and the RAM range in guest RAM ([`DmaMemory`] refuses
//! anything else). QEMU aborts on a bad buffer range (older versions, with
//! `hw_error`) or copies past its buffer (newer ones only log it). ktvmm
//! moves nothing, completes the command as usual (start bit cleared,
//! interrupt 0x100 if asked) and sets bit 31 of the command register,
//! [`DMA_ERROR`], our own addition. A count of 0 moves nothing and is no
//! error.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::access::{le_value, pieces, put_le};
use crate::bus_device::Action;
use crate::interrupt::{Deferred, DmaMemory, InterruptLine, MsiSender};
use crate::pci::{BarKind, MsiState, PciConfig, PciDevice, command};

/// PCI vendor ID (QEMU).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// Revision.
pub const REVISION: u8 = 0x10;
/// Class code as `0xCCSSPP`: QEMU's `PCI_CLASS_OTHERS` (0x00ff) is class
/// 0x00, subclass 0xff.
pub const CLASS: u32 = 0x00_ff_00;
/// The register BAR.
pub const BAR: usize = 0;
/// Its size.
pub const BAR_SIZE: u64 = 1 << 20;

/// Register offsets in BAR0.
pub mod reg {
    /// Identification.
    pub const ID: u64 = 0x00;
    /// Liveness check.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial.
    pub const FACTORIAL: u64 = 0x08;
    /// Status.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status.
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge.
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA transfer count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command.
    pub const DMA_CMD: u64 = 0x98;
}

/// What the identification register reads: version 1.0, 0xed.
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Status: a factorial is being computed.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise [`FACTORIAL_IRQ`] when a factorial is done.
pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
/// Interrupt status bit of a finished factorial.
pub const FACTORIAL_IRQ: u32 = 0x1;
/// Interrupt status bit of a finished DMA transfer.
pub const DMA_IRQ: u32 = 0x100;
/// DMA command: start (reads 1 until the transfer is done).
pub const DMA_START: u64 = 0x1;
/// DMA command: from the device buffer to RAM (clear: RAM to buffer).
pub const DMA_TO_RAM: u64 = 0x2;
/// DMA command: raise [`DMA_IRQ`] when done.
pub const DMA_RAISE_IRQ: u64 = 0x4;
/// DMA command, ktvmm only: set by the device when it refused the last
/// transfer because a range was out of bounds (nothing was moved).
pub const DMA_ERROR: u64 = 1 << 31;
/// Device address of the DMA buffer.
pub const DMA_BUFFER: u64 = 0x40000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: u64 = 4096;
/// RAM addresses are masked with this (QEMU's default `dma_mask`).
pub const DMA_MASK: u64 = (1 << 28) - 1;

/// QEMU's subsystem IDs for devices that declare none (Red Hat / QEMU).
const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
const SUBSYSTEM_ID: u16 = 0x1100;
/// Interrupt Status, bit 3 of the PCI status register.
const PCI_STATUS_INTERRUPT: u8 = 1 << 3;
/// First register that takes 8-byte accesses.
const WIDE_REGISTERS: u64 = 0x80;

/// How edu reaches the rest of the VM.
pub struct EduLinks {
    /// Its INTA# line (the VMM routes it to a GSI).
    pub intx: Arc<dyn InterruptLine>,
    /// Where its MSIs go.
    pub msi: Arc<dyn MsiSender>,
    /// Guest RAM, for DMA.
    pub dma: Arc<dyn DmaMemory>,
    /// Where factorials and transfers are finished, off the vCPU thread.
    pub deferred: Arc<dyn Deferred>,
}

/// The edu device.
pub struct Edu {
    config: PciConfig,
    shared: Arc<Shared>,
    deferred: Arc<dyn Deferred>,
}

/// What the vCPUs and the deferred work share. One lock guards all
/// registers, so a completion and a guest access never interleave; it is
/// never held while calling [`Deferred::defer`], so a `Deferred` that runs
/// work at once cannot deadlock.
struct Shared {
    regs: Mutex<Regs>,
    intx: Arc<dyn InterruptLine>,
    msi: Arc<dyn MsiSender>,
    dma: Arc<dyn DmaMemory>,
}

/// How interrupts and DMA leave the device, as configuration space says:
/// a copy, so that deferred work need not reach configuration space.
#[derive(Clone, Copy, Debug, Default)]
struct Delivery {
    /// The MSI message, when MSI is enabled.
    msi: Option<MsiState>,
    bus_master: bool,
    intx_disabled: bool,
}

impl Delivery {
    fn of(config: &PciConfig) -> Self {
        let command = config.command();
        Self {
            msi: config.msi().filter(|msi| msi.enabled),
            bus_master: command & command::BUS_MASTER != 0,
            intx_disabled: command & command::INTX_DISABLE != 0,
        }
    }
}

struct Regs {
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Box<[u8]>,
    /// The device asserts INTx (QEMU's `pci_irq_state`).
    intx_asserted: bool,
    /// The level last driven on the line.
    line_high: bool,
    delivery: Delivery,
}

/// Background work a register write started.
#[derive(Default)]
struct Work {
    factorial: bool,
    dma: bool,
}

impl Edu {
    /// An idle edu wired to `links`; its BAR still needs an address.
    pub fn new(links: EduLinks) -> Self {
        let config = PciConfig::new(VENDOR_ID, DEVICE_ID, CLASS, REVISION)
            .with_subsystem(SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID)
            .with_interrupt_pin(1)
            .with_bar(BAR, BarKind::Memory32, BAR_SIZE)
            .with_msi();
        let regs = Regs {
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: vec![0; DMA_BUFFER_SIZE as usize].into_boxed_slice(),
            intx_asserted: false,
            line_high: false,
            delivery: Delivery::of(&config),
        };
        Self {
            config,
            shared: Arc::new(Shared {
                regs: Mutex::new(regs),
                intx: links.intx,
                msi: links.msi,
                dma: links.dma,
            }),
            deferred: links.deferred,
        }
    }

    /// Brings the shared copy of the interrupt and DMA settings up to date
    /// with configuration space, and the INTx line with them. Called after
    /// every configuration write, and before every register access in case
    /// the VMM wrote configuration space behind our back.
    fn sync_config(&self) {
        let delivery = Delivery::of(&self.config);
        let mut regs = self.shared.lock();
        regs.delivery = delivery;
        if delivery.msi.is_some() {
            // QEMU's msi_write_config deasserts INTx once MSI is on.
            regs.intx_asserted = false;
        }
        self.shared.drive_line(&mut regs);
    }

    fn schedule(&self, work: Work) {
        if work.factorial {
            let shared = self.shared.clone();
            self.deferred
                .defer(Box::new(move || shared.finish_factorial()));
        }
        if work.dma {
            let shared = self.shared.clone();
            self.deferred.defer(Box::new(move || shared.finish_dma()));
        }
    }
}

/// QEMU's region takes 4- and 8-byte accesses; the pieces come aligned.
fn valid_width(len: usize) -> bool {
    len == 4 || len == 8
}

impl PciDevice for Edu {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
        let asserted = self.shared.lock().intx_asserted;
        for (i, byte) in data.iter_mut().enumerate() {
            if offset.checked_add(i) == Some(crate::pci::reg::STATUS) {
                if asserted {
                    *byte |= PCI_STATUS_INTERRUPT;
                } else {
                    *byte &= !PCI_STATUS_INTERRUPT;
                }
            }
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        self.sync_config();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != BAR {
            return;
        }
        self.sync_config();
        let regs = self.shared.lock();
        for piece in pieces(offset, data.len(), 8) {
            let Some(out) = data.get_mut(piece.range()) else {
                break;
            };
            if valid_width(piece.len) {
                put_le(out, regs.read(piece.offset, piece.len));
            } else {
                out.fill(0);
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> Action {
        if bar != BAR {
            return Action::Continue;
        }
        self.sync_config();
        let mut work = Work::default();
        {
            let mut regs = self.shared.lock();
            for piece in pieces(offset, data.len(), 8) {
                let Some(bytes) = data.get(piece.range()) else {
                    break;
                };
                if valid_width(piece.len) {
                    let value = le_value(bytes);
                    self.shared
                        .write(&mut regs, piece.offset, piece.len, value, &mut work);
                }
            }
        }
        self.schedule(work);
        Action::Continue
    }
}

impl Regs {
    /// edu.c's `edu_mmio_read` for one valid piece.
    fn read(&self, offset: u64, len: usize) -> u64 {
        if offset < WIDE_REGISTERS && len != 4 {
            return u64::MAX;
        }
        match offset {
            reg::ID => u64::from(ID_VALUE),
            reg::LIVENESS => u64::from(self.liveness),
            reg::FACTORIAL => u64::from(self.factorial),
            reg::STATUS => u64::from(self.status),
            reg::IRQ_STATUS => u64::from(self.irq_status),
            reg::DMA_SRC => self.dma_src,
            reg::DMA_DST => self.dma_dst,
            reg::DMA_COUNT => self.dma_count,
            reg::DMA_CMD => self.dma_cmd,
            _ => u64::MAX,
        }
    }

    fn dma_running(&self) -> bool {
        self.dma_cmd & DMA_START != 0
    }

    /// The buffer bytes a transfer covers, if they are all inside it.
    fn buffer_range(&self, device_addr: u64) -> Option<Range<usize>> {
        let end = device_addr.checked_add(self.dma_count)?;
        if device_addr < DMA_BUFFER || end > DMA_BUFFER + DMA_BUFFER_SIZE {
            return None;
        }
        let start = usize::try_from(device_addr - DMA_BUFFER).ok()?;
        let end = usize::try_from(end - DMA_BUFFER).ok()?;
        Some(start..end)
    }
}

/// Whether a transfer moved its data or was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    Done,
    Refused,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Regs> {
        // A panic elsewhere cannot leave the registers half-updated in a way
        // that matters to a guest; keep serving them.
        self.regs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// edu.c's `edu_mmio_write` for one valid piece.
    fn write(&self, regs: &mut Regs, offset: u64, len: usize, value: u64, work: &mut Work) {
        if offset < WIDE_REGISTERS && len != 4 {
            return;
        }
        // Registers below 0x80 are 32 bits wide: the piece is 4 bytes.
        let value32 = value as u32;
        match offset {
            reg::LIVENESS => regs.liveness = !value32,
            // Ignored while the previous factorial is computed.
            reg::FACTORIAL if regs.status & STATUS_COMPUTING == 0 => {
                regs.factorial = value32;
                regs.status |= STATUS_COMPUTING;
                work.factorial = true;
            }
            reg::STATUS => {
                if value32 & STATUS_IRQ_FACTORIAL != 0 {
                    regs.status |= STATUS_IRQ_FACTORIAL;
                } else {
                    regs.status &= !STATUS_IRQ_FACTORIAL;
                }
            }
            reg::IRQ_RAISE => self.raise(regs, value32),
            reg::IRQ_ACK => self.lower(regs, value32),
            reg::DMA_SRC if !regs.dma_running() => regs.dma_src = value,
            reg::DMA_DST if !regs.dma_running() => regs.dma_dst = value,
            reg::DMA_COUNT if !regs.dma_running() => regs.dma_count = value,
            // A command without the start bit is dropped whole, and so is
            // any command while a transfer runs.
            reg::DMA_CMD if value & DMA_START != 0 && !regs.dma_running() => {
                regs.dma_cmd = value;
                work.dma = true;
            }
            _ => {}
        }
    }

    /// ORs `bits` into the interrupt status and signals it: one MSI, or INTx
    /// asserted. O(1), so a guest raising in a loop costs one message each.
    fn raise(&self, regs: &mut Regs, bits: u32) {
        regs.irq_status |= bits;
        if regs.irq_status == 0 {
            return;
        }
        match regs.delivery.msi {
            Some(msi) => {
                if regs.delivery.bus_master {
                    self.msi.send(msi.address, u32::from(msi.data));
                }
            }
            None => {
                regs.intx_asserted = true;
                self.drive_line(regs);
            }
        }
    }

    /// Clears `bits`; INTx drops when nothing is left (with MSI off, as
    /// QEMU's `edu_lower_irq`).
    fn lower(&self, regs: &mut Regs, bits: u32) {
        regs.irq_status &= !bits;
        if regs.irq_status == 0 && regs.delivery.msi.is_none() {
            regs.intx_asserted = false;
            self.drive_line(regs);
        }
    }

    /// Drives the line to what the device asserts, unless Interrupt Disable
    /// holds it low; only changes reach the line, as in QEMU.
    fn drive_line(&self, regs: &mut Regs) {
        let level = regs.intx_asserted && !regs.delivery.intx_disabled;
        if level != regs.line_high {
            regs.line_high = level;
            self.intx.set_level(level);
        }
    }

    fn finish_factorial(&self) {
        let mut regs = self.lock();
        if regs.status & STATUS_COMPUTING == 0 {
            return;
        }
        regs.factorial = factorial(regs.factorial);
        regs.status &= !STATUS_COMPUTING;
        if regs.status & STATUS_IRQ_FACTORIAL != 0 {
            self.raise(&mut regs, FACTORIAL_IRQ);
        }
    }

    fn finish_dma(&self) {
        let mut regs = self.lock();
        if !regs.dma_running() {
            return;
        }
        let outcome = self.transfer(&mut regs);
        regs.dma_cmd &= !DMA_START;
        if outcome == Transfer::Refused {
            regs.dma_cmd |= DMA_ERROR;
        }
        if regs.dma_cmd & DMA_RAISE_IRQ != 0 {
            self.raise(&mut regs, DMA_IRQ);
        }
    }

    /// Moves the data of the programmed transfer, or nothing at all.
    fn transfer(&self, regs: &mut Regs) -> Transfer {
        let to_ram = regs.dma_cmd & DMA_TO_RAM != 0;
        let (device_addr, ram_addr) = if to_ram {
            (regs.dma_src, regs.dma_dst)
        } else {
            (regs.dma_dst, regs.dma_src)
        };
        let Some(range) = regs.buffer_range(device_addr) else {
            return Transfer::Refused;
        };
        let ram_addr = ram_addr & DMA_MASK;
        let bus_master = regs.delivery.bus_master;
        let Some(buffer) = regs.buffer.get_mut(range) else {
            return Transfer::Refused;
        };
        if buffer.is_empty() {
            return Transfer::Done;
        }
        if !bus_master {
            // QEMU's bus-master address space is empty: reads see zeroes.
            if !to_ram {
                buffer.fill(0);
            }
            return Transfer::Done;
        }
        let moved = if to_ram {
            self.dma.write(ram_addr, buffer)
        } else {
            // Stage the data so that a refused read cannot leave part of it
            // in the buffer, whatever the DmaMemory does with its argument.
            let mut staging = [0u8; DMA_BUFFER_SIZE as usize];
            let staging = &mut staging[..buffer.len()];
            self.dma
                .read(ram_addr, staging)
                .map(|()| buffer.copy_from_slice(staging))
        };
        match moved {
            Ok(()) => Transfer::Done,
            Err(_) => Transfer::Refused,
        }
    }
}

/// n! modulo 2^32, as QEMU's loop computes it, stopping once the product is
/// 0 (it stays 0; that takes at most 64 factors, as every other one is even).
fn factorial(n: u32) -> u32 {
    let mut product: u32 = 1;
    let mut k = n;
    while k > 0 && product != 0 {
        product = product.wrapping_mul(k);
        k -= 1;
    }
    product
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::DmaError;
    use crate::pci::reg as config_reg;
    use std::collections::VecDeque;

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);

    impl InterruptLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    #[derive(Default)]
    struct Msis(Mutex<Vec<(u64, u32)>>);

    impl MsiSender for Msis {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    /// Guest RAM of `len` bytes from address 0.
    struct Ram(Mutex<Vec<u8>>);

    impl Ram {
        fn range(&self, addr: u64, len: usize) -> Result<Range<usize>, DmaError> {
            let size = self.0.lock().unwrap().len();
            let start = usize::try_from(addr).ok();
            start
                .and_then(|s| Some(s..s.checked_add(len)?))
                .filter(|r| r.end <= size)
                .ok_or(DmaError { addr, len })
        }
    }

    impl DmaMemory for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
            let range = self.range(addr, buf.len())?;
            buf.copy_from_slice(&self.0.lock().unwrap()[range]);
            Ok(())
        }

        fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
            let range = self.range(addr, buf.len())?;
            self.0.lock().unwrap()[range].copy_from_slice(buf);
            Ok(())
        }
    }

    type Job = Box<dyn FnOnce() + Send>;

    /// Keeps deferred work until the test runs it.
    #[derive(Default)]
    struct Jobs(Mutex<VecDeque<Job>>);

    impl Deferred for Jobs {
        fn defer(&self, work: Job) {
            self.0.lock().unwrap().push_back(work);
        }
    }

    impl Jobs {
        fn pending(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        fn run(&self) -> usize {
            let mut ran = 0;
            loop {
                let job = self.0.lock().unwrap().pop_front();
                let Some(job) = job else { return ran };
                job();
                ran += 1;
            }
        }
    }

    /// Runs deferred work at once, inside `defer`.
    struct Inline;

    impl Deferred for Inline {
        fn defer(&self, work: Job) {
            work();
        }
    }

    const RAM_SIZE: usize = 1 << 20;
    const MSI_ADDRESS: u64 = 0xfee0_1000;
    const MSI_DATA: u16 = 0x4061;

    struct Rig {
        dev: Edu,
        line: Arc<Line>,
        msis: Arc<Msis>,
        ram: Arc<Ram>,
        jobs: Arc<Jobs>,
    }

    fn rig() -> Rig {
        let line = Arc::new(Line::default());
        let msis = Arc::new(Msis::default());
        let ram = Arc::new(Ram(Mutex::new(vec![0; RAM_SIZE])));
        let jobs = Arc::new(Jobs::default());
        let dev = Edu::new(EduLinks {
            intx: line.clone(),
            msi: msis.clone(),
            dma: ram.clone(),
            deferred: jobs.clone(),
        });
        Rig {
            dev,
            line,
            msis,
            ram,
            jobs,
        }
    }

    impl Rig {
        fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
            let mut data = vec![0xaa; len];
            self.dev.bar_read(BAR, offset, &mut data);
            data
        }

        fn r32(&mut self, offset: u64) -> u32 {
            le_value(&self.read(offset, 4)) as u32
        }

        fn r64(&mut self, offset: u64) -> u64 {
            le_value(&self.read(offset, 8))
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            assert_eq!(self.dev.bar_write(BAR, offset, data), Action::Continue);
        }

        fn w32(&mut self, offset: u64, value: u32) {
            self.write(offset, &value.to_le_bytes());
        }

        fn w64(&mut self, offset: u64, value: u64) {
            self.write(offset, &value.to_le_bytes());
        }

        fn levels(&self) -> Vec<bool> {
            self.line.0.lock().unwrap().clone()
        }

        fn sent(&self) -> Vec<(u64, u32)> {
            self.msis.0.lock().unwrap().clone()
        }

        fn command(&mut self, bits: u16) {
            self.dev
                .config_write(config_reg::COMMAND, &bits.to_le_bytes());
        }

        fn msi_at(&self) -> usize {
            let mut at = [0u8];
            self.dev.config_read(config_reg::CAPABILITIES, &mut at);
            usize::from(at[0])
        }

        fn enable_msi(&mut self) {
            let at = self.msi_at();
            self.dev
                .config_write(at + 4, &(MSI_ADDRESS as u32).to_le_bytes());
            self.dev.config_write(at + 8, &0u32.to_le_bytes());
            self.dev.config_write(at + 12, &MSI_DATA.to_le_bytes());
            self.dev.config_write(at + 2, &[0x01]);
        }

        fn interrupt_status_bit(&self) -> bool {
            let mut status = [0u8; 2];
            self.dev.config_read(config_reg::STATUS, &mut status);
            status[0] & PCI_STATUS_INTERRUPT != 0
        }

        fn ram(&self, at: usize, len: usize) -> Vec<u8> {
            self.ram.0.lock().unwrap()[at..at + len].to_vec()
        }

        fn fill_ram(&self, at: usize, bytes: &[u8]) {
            self.ram.0.lock().unwrap()[at..at + bytes.len()].copy_from_slice(bytes);
        }

        fn dma(&mut self, src: u64, dst: u64, count: u64, cmd: u64) {
            self.w64(reg::DMA_SRC, src);
            self.w64(reg::DMA_DST, dst);
            self.w64(reg::DMA_COUNT, count);
            self.w32(reg::DMA_CMD, cmd as u32);
        }

        /// Runs a transfer to completion; returns the command register.
        fn dma_done(&mut self, src: u64, dst: u64, count: u64, cmd: u64) -> u64 {
            self.dma(src, dst, count, cmd);
            assert_eq!(self.jobs.run(), 1);
            let cmd = self.r64(reg::DMA_CMD);
            assert_eq!(cmd & DMA_START, 0, "the transfer completed");
            cmd
        }

        fn buffer(&self) -> Vec<u8> {
            self.dev.shared.lock().buffer.to_vec()
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn configuration_space_is_qemus() {
        let rig = rig();
        let mut id = [0u8; 16];
        rig.dev.config_read(0, &mut id);
        assert_eq!(&id[..4], &[0x34, 0x12, 0xe8, 0x11]);
        assert_eq!(&id[8..12], &[0x10, 0x00, 0xff, 0x00], "rev and class");
        let mut pin = [0u8];
        rig.dev.config_read(config_reg::INTERRUPT_PIN, &mut pin);
        assert_eq!(pin, [1], "INTA#");
        let bar = rig.dev.config().bar(BAR).unwrap();
        assert_eq!((bar.kind, bar.size), (BarKind::Memory32, BAR_SIZE));
        let msi = rig.dev.config().msi().unwrap();
        assert!(!msi.enabled);
        let mut control = [0u8; 2];
        rig.dev.config_read(rig.msi_at() + 2, &mut control);
        assert_eq!(u16::from_le_bytes(control), 0x80, "64-bit, one vector");
    }

    #[test]
    fn identification_and_liveness() {
        let mut rig = rig();
        assert_eq!(rig.r32(reg::ID), ID_VALUE);
        rig.w32(reg::ID, 0);
        assert_eq!(rig.r32(reg::ID), ID_VALUE, "read-only");
        for v in [0, 1, 0x1234_5678, u32::MAX] {
            rig.w32(reg::LIVENESS, v);
            assert_eq!(rig.r32(reg::LIVENESS), !v);
        }
    }

    #[test]
    fn factorials_wrap_to_32_bits() {
        let mut rig = rig();
        for (n, want) in [
            (0, 1),
            (1, 1),
            (12, 479_001_600),
            (13, 1_932_053_504),
            (20, 2_192_834_560),
            (33, 0x8000_0000),
            (34, 0),
            (u32::MAX, 0),
        ] {
            rig.w32(reg::FACTORIAL, n);
            assert_eq!(rig.jobs.run(), 1);
            assert_eq!(rig.r32(reg::FACTORIAL), want, "{n}!");
            assert_eq!(rig.r32(reg::STATUS), 0);
        }
    }

    #[test]
    fn computing_is_visible_and_ignores_writes() {
        let mut rig = rig();
        rig.w32(reg::FACTORIAL, 5);
        assert_eq!(rig.r32(reg::STATUS), STATUS_COMPUTING);
        assert_eq!(rig.r32(reg::FACTORIAL), 5, "the argument until done");
        rig.w32(reg::FACTORIAL, 7);
        assert_eq!(rig.jobs.pending(), 1, "no second computation");
        // The status register only takes bit 7.
        rig.w32(reg::STATUS, 0);
        assert_eq!(rig.r32(reg::STATUS), STATUS_COMPUTING);
        rig.w32(reg::STATUS, u32::MAX);
        assert_eq!(
            rig.r32(reg::STATUS),
            STATUS_COMPUTING | STATUS_IRQ_FACTORIAL
        );
        rig.w32(reg::STATUS, 0);
        assert_eq!(rig.jobs.run(), 1);
        assert_eq!(rig.r32(reg::FACTORIAL), 120);
        assert_eq!(rig.r32(reg::STATUS), 0);
        assert!(rig.levels().is_empty(), "no interrupt without bit 7");
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0);
    }

    #[test]
    fn a_finished_factorial_interrupts_when_asked() {
        let mut rig = rig();
        rig.w32(reg::STATUS, STATUS_IRQ_FACTORIAL);
        rig.w32(reg::FACTORIAL, 4);
        assert!(rig.levels().is_empty());
        rig.jobs.run();
        assert_eq!(rig.r32(reg::FACTORIAL), 24);
        assert_eq!(rig.r32(reg::IRQ_STATUS), FACTORIAL_IRQ);
        assert_eq!(rig.levels(), [true]);
        rig.w32(reg::IRQ_ACK, FACTORIAL_IRQ);
        assert_eq!(rig.levels(), [true, false]);
    }

    #[test]
    fn intx_follows_the_interrupt_status() {
        let mut rig = rig();
        rig.w32(reg::IRQ_RAISE, 0);
        assert!(rig.levels().is_empty(), "nothing to raise");
        rig.w32(reg::IRQ_RAISE, 0x5);
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0x5);
        assert_eq!(rig.levels(), [true]);
        assert!(rig.interrupt_status_bit());
        rig.w32(reg::IRQ_RAISE, 0x8);
        assert_eq!(rig.levels(), [true], "already high: no new edge");
        rig.w32(reg::IRQ_ACK, 0x1);
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0xc);
        assert_eq!(rig.levels(), [true]);
        rig.w32(reg::IRQ_ACK, 0xc);
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0);
        assert_eq!(rig.levels(), [true, false]);
        assert!(!rig.interrupt_status_bit());
        rig.w32(reg::IRQ_ACK, u32::MAX);
        assert_eq!(rig.levels(), [true, false]);
        rig.w32(reg::IRQ_STATUS, 0x1);
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0, "read-only");
        assert!(rig.sent().is_empty());
    }

    #[test]
    fn interrupt_disable_holds_intx_low() {
        let mut rig = rig();
        rig.command(command::INTX_DISABLE);
        rig.w32(reg::IRQ_RAISE, 0x2);
        assert!(rig.levels().is_empty());
        assert!(rig.interrupt_status_bit(), "pending all the same");
        rig.command(0);
        assert_eq!(rig.levels(), [true]);
        rig.command(command::INTX_DISABLE);
        assert_eq!(rig.levels(), [true, false]);
        rig.w32(reg::IRQ_ACK, 0x2);
        rig.command(0);
        assert_eq!(rig.levels(), [true, false], "nothing pending any more");
    }

    #[test]
    fn msi_replaces_intx() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.enable_msi();
        rig.w32(reg::IRQ_RAISE, 0x10);
        assert_eq!(rig.sent(), [(MSI_ADDRESS, u32::from(MSI_DATA))]);
        // Every raise is a message, even of bits already set.
        rig.w32(reg::IRQ_RAISE, 0);
        assert_eq!(rig.sent().len(), 2);
        rig.w32(reg::IRQ_ACK, 0x10);
        rig.w32(reg::IRQ_RAISE, 0);
        assert_eq!(rig.sent().len(), 2, "nothing pending, nothing sent");
        assert!(rig.levels().is_empty(), "INTx stays quiet");
    }

    #[test]
    fn no_msi_without_bus_mastering() {
        let mut rig = rig();
        rig.enable_msi();
        rig.w32(reg::IRQ_RAISE, 0x1);
        assert!(rig.sent().is_empty());
        assert!(rig.levels().is_empty());
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0x1);
        rig.command(command::BUS_MASTER);
        rig.w32(reg::IRQ_RAISE, 0x2);
        assert_eq!(rig.sent().len(), 1);
    }

    #[test]
    fn enabling_msi_drops_an_asserted_intx() {
        let mut rig = rig();
        rig.w32(reg::IRQ_RAISE, 0x1);
        assert_eq!(rig.levels(), [true]);
        rig.enable_msi();
        assert_eq!(rig.levels(), [true, false]);
        assert!(!rig.interrupt_status_bit());
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0x1, "the status stays");
    }

    #[test]
    fn completions_use_the_delivery_configured_meanwhile() {
        let mut rig = rig();
        rig.w32(reg::STATUS, STATUS_IRQ_FACTORIAL);
        rig.w32(reg::FACTORIAL, 3);
        rig.command(command::BUS_MASTER);
        rig.enable_msi();
        rig.jobs.run();
        assert_eq!(rig.sent(), [(MSI_ADDRESS, u32::from(MSI_DATA))]);
        assert!(rig.levels().is_empty());
    }

    #[test]
    fn an_interrupt_storm_is_one_message_per_write() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.enable_msi();
        for _ in 0..10_000 {
            rig.w32(reg::IRQ_RAISE, 1);
        }
        assert_eq!(rig.sent().len(), 10_000);
        assert_eq!(rig.jobs.pending(), 0);
    }

    #[test]
    fn dma_round_trip() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        let data = pattern(4096, 0x5a);
        rig.fill_ram(0x1000, &data);
        rig.dma(0x1000, DMA_BUFFER, 4096, DMA_START);
        assert_eq!(rig.r64(reg::DMA_CMD), DMA_START, "running until done");
        assert_eq!(rig.jobs.run(), 1);
        assert_eq!(rig.r64(reg::DMA_CMD), 0);
        assert_eq!(rig.buffer(), data);
        let cmd = rig.dma_done(DMA_BUFFER, 0x3000, 4096, DMA_START | DMA_TO_RAM);
        assert_eq!(cmd, DMA_TO_RAM);
        assert_eq!(rig.ram(0x3000, 4096), data);
        assert!(rig.levels().is_empty(), "no interrupt unless asked");
    }

    #[test]
    fn dma_slices_touch_only_their_bytes() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        let data = pattern(100, 3);
        rig.fill_ram(0x1003, &data);
        rig.fill_ram(0x5000, &[0xcc; 0x200]);
        rig.dma_done(0x1003, DMA_BUFFER + 0x800, 100, DMA_START);
        assert_eq!(rig.buffer()[0x800..0x864], data[..]);
        assert_eq!(rig.buffer()[0x7ff], 0);
        assert_eq!(rig.buffer()[0x864], 0);
        rig.dma_done(DMA_BUFFER + 0x800, 0x5005, 100, DMA_START | DMA_TO_RAM);
        assert_eq!(rig.ram(0x5005, 100), data);
        assert_eq!(rig.ram(0x5000, 5), [0xcc; 5]);
        assert_eq!(rig.ram(0x5005 + 100, 8), [0xcc; 8]);
    }

    #[test]
    fn dma_interrupts_when_asked() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.dma_done(0, DMA_BUFFER, 16, DMA_START | DMA_RAISE_IRQ);
        assert_eq!(rig.r32(reg::IRQ_STATUS), DMA_IRQ);
        assert_eq!(rig.levels(), [true]);
        rig.enable_msi();
        rig.w32(reg::IRQ_ACK, DMA_IRQ);
        rig.dma_done(DMA_BUFFER, 0, 16, DMA_START | DMA_TO_RAM | DMA_RAISE_IRQ);
        assert_eq!(rig.sent(), [(MSI_ADDRESS, u32::from(MSI_DATA))]);
    }

    #[test]
    fn dma_registers_ignore_writes_while_running() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.dma(0x1000, DMA_BUFFER, 64, DMA_START | DMA_RAISE_IRQ);
        rig.w64(reg::DMA_SRC, 0x9000);
        rig.w64(reg::DMA_DST, 0x9000);
        rig.w64(reg::DMA_COUNT, 1);
        rig.w32(reg::DMA_CMD, (DMA_START | DMA_TO_RAM) as u32);
        assert_eq!(rig.r64(reg::DMA_SRC), 0x1000);
        assert_eq!(rig.r64(reg::DMA_DST), DMA_BUFFER);
        assert_eq!(rig.r64(reg::DMA_COUNT), 64);
        assert_eq!(rig.r64(reg::DMA_CMD), DMA_START | DMA_RAISE_IRQ);
        assert_eq!(rig.jobs.pending(), 1, "one transfer");
        rig.jobs.run();
        // A command without the start bit is dropped whole.
        rig.w32(reg::DMA_CMD, (DMA_TO_RAM | DMA_RAISE_IRQ) as u32);
        assert_eq!(rig.r64(reg::DMA_CMD), DMA_RAISE_IRQ);
        assert_eq!(rig.jobs.pending(), 0);
    }

    #[test]
    fn dma_ram_addresses_are_masked_to_28_bits() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.fill_ram(0x2000, b"masked");
        let cmd = rig.dma_done(0xabc0_0000_1000_2000, DMA_BUFFER, 6, DMA_START);
        assert_eq!(cmd & DMA_ERROR, 0);
        assert_eq!(&rig.buffer()[..6], b"masked");
        assert_eq!(
            rig.r64(reg::DMA_SRC),
            0xabc0_0000_1000_2000,
            "kept as written"
        );
        rig.dma_done(DMA_BUFFER, 0x1_0000_4000, 6, DMA_START | DMA_TO_RAM);
        assert_eq!(rig.ram(0x4000, 6), b"masked");
    }

    #[test]
    fn out_of_range_buffer_sides_are_refused() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.fill_ram(0, &[0x11; 0x3000]);
        for (device, count) in [
            (DMA_BUFFER + 4096, 1),       // starts past the end
            (DMA_BUFFER + 4000, 97),      // runs past the end
            (DMA_BUFFER, 4097),           // longer than the buffer
            (DMA_BUFFER - 1, 2),          // starts below
            (0, 16),                      // RAM-like address
            (DMA_BUFFER | (1 << 28), 16), // not masked on the device side
            (u64::MAX - 3, 8),            // wraps
            (DMA_BUFFER, u64::MAX),       // wraps
        ] {
            let cmd = rig.dma_done(0x1000, device, count, DMA_START | DMA_RAISE_IRQ);
            assert_eq!(cmd, DMA_ERROR | DMA_RAISE_IRQ, "{device:#x}+{count:#x}");
            assert_eq!(rig.buffer(), vec![0; 4096], "{device:#x}+{count:#x}");
            let cmd = rig.dma_done(device, 0x2000, count, DMA_START | DMA_TO_RAM);
            assert_eq!(cmd, DMA_ERROR | DMA_TO_RAM);
            assert_eq!(rig.ram(0x2000, 0x1000), vec![0x11; 0x1000]);
        }
        // Refused transfers still complete and interrupt when asked.
        assert_eq!(rig.r32(reg::IRQ_STATUS), DMA_IRQ);
        // The next good transfer clears the error (the command is rewritten).
        let cmd = rig.dma_done(0x1000, DMA_BUFFER + 4095, 1, DMA_START);
        assert_eq!(cmd, 0);
        assert_eq!(rig.buffer()[4095], 0x11);
    }

    #[test]
    fn out_of_range_ram_sides_are_refused() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.fill_ram(RAM_SIZE - 16, &[0x22; 16]);
        let end = RAM_SIZE as u64;
        // Reading past the end of RAM: the buffer stays as it was.
        let cmd = rig.dma_done(end - 8, DMA_BUFFER, 16, DMA_START);
        assert_eq!(cmd, DMA_ERROR);
        assert_eq!(rig.buffer(), vec![0; 4096]);
        let cmd = rig.dma_done(end, DMA_BUFFER, 1, DMA_START);
        assert_eq!(cmd, DMA_ERROR);
        // Writing past the end: no partial write.
        rig.fill_ram(0, &[0x33; 16]);
        rig.dma_done(0, DMA_BUFFER, 16, DMA_START);
        let cmd = rig.dma_done(DMA_BUFFER, end - 8, 16, DMA_START | DMA_TO_RAM);
        assert_eq!(cmd, DMA_ERROR | DMA_TO_RAM);
        assert_eq!(rig.ram(RAM_SIZE - 16, 16), vec![0x22; 16]);
        // The 28-bit mask applies before the check: 0x0fff_fff8 is beyond
        // this 1 MiB RAM too.
        let cmd = rig.dma_done(DMA_MASK - 7, DMA_BUFFER, 16, DMA_START);
        assert_eq!(cmd, DMA_ERROR);
    }

    #[test]
    fn a_zero_count_moves_nothing_and_completes() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        // Even where a byte would be out of range: nothing is touched.
        for (src, dst) in [(0x1000, DMA_BUFFER), (DMA_MASK, DMA_BUFFER + 4096)] {
            let cmd = rig.dma_done(src, dst, 0, DMA_START | DMA_RAISE_IRQ);
            assert_eq!(cmd, DMA_RAISE_IRQ);
        }
        assert_eq!(rig.r32(reg::IRQ_STATUS), DMA_IRQ);
    }

    #[test]
    fn dma_without_bus_mastering_is_qemus_empty_address_space() {
        let mut rig = rig();
        rig.command(command::BUS_MASTER);
        rig.fill_ram(0x1000, &[0x44; 64]);
        rig.dma_done(0x1000, DMA_BUFFER, 64, DMA_START);
        rig.command(0);
        rig.fill_ram(0x2000, &[0xcc; 64]);
        let cmd = rig.dma_done(DMA_BUFFER, 0x2000, 64, DMA_START | DMA_TO_RAM);
        assert_eq!(cmd, DMA_TO_RAM, "no error");
        assert_eq!(rig.ram(0x2000, 64), vec![0xcc; 64], "RAM left alone");
        rig.dma_done(0x1000, DMA_BUFFER + 8, 8, DMA_START);
        assert_eq!(
            rig.buffer()[..20],
            [
                0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0x44, 0x44,
                0x44, 0x44
            ]
        );
    }

    #[test]
    fn access_widths_as_in_qemu() {
        let mut rig = rig();
        rig.w32(reg::LIVENESS, 0x1111_1111);
        // 1- and 2-byte pieces are refused by QEMU's memory core: reads 0.
        assert_eq!(rig.read(reg::ID, 1), [0]);
        assert_eq!(rig.read(reg::ID, 2), [0, 0]);
        assert_eq!(rig.read(reg::DMA_SRC, 2), [0, 0]);
        // An 8-byte read below 0x80 reaches edu.c, which refuses it.
        assert_eq!(rig.r64(reg::ID), u64::MAX);
        // A misaligned dword is two refused words.
        assert_eq!(rig.read(reg::ID + 2, 4), [0; 4]);
        // No register there.
        assert_eq!(rig.r32(0x0c), u32::MAX);
        assert_eq!(rig.r32(reg::DMA_SRC + 4), u32::MAX);
        assert_eq!(rig.r32(BAR_SIZE - 4), u32::MAX);
        // Writes of refused widths change nothing.
        rig.write(reg::LIVENESS, &[0x22, 0x22]);
        rig.write(reg::LIVENESS, &[0x33]);
        rig.write(reg::LIVENESS + 1, &[0x44; 4]);
        rig.w64(0, 0x5555_5555_5555_5555);
        assert_eq!(rig.r32(reg::LIVENESS), !0x1111_1111);
        assert_eq!(rig.jobs.pending(), 0);
    }

    #[test]
    fn wide_registers_take_4_and_8_bytes() {
        let mut rig = rig();
        rig.w64(reg::DMA_SRC, 0x0123_4567_89ab_cdef);
        assert_eq!(rig.r64(reg::DMA_SRC), 0x0123_4567_89ab_cdef);
        assert_eq!(rig.r32(reg::DMA_SRC), 0x89ab_cdef);
        // A 4-byte write replaces the whole register.
        rig.w32(reg::DMA_SRC, 0x89ab_cdef);
        assert_eq!(rig.r64(reg::DMA_SRC), 0x89ab_cdef);
        rig.w64(reg::DMA_DST, 0x1122_3344_5566_7788);
        // An 8-byte access at 0x84 is cut into 0x84 (nothing) and 0x88.
        assert_eq!(rig.r64(reg::DMA_SRC + 4), 0x5566_7788_ffff_ffff);
        rig.w64(reg::DMA_SRC + 4, 0x0000_0042_0000_0000);
        assert_eq!(rig.r64(reg::DMA_DST), 0x42);
        assert_eq!(rig.r64(reg::DMA_SRC), 0x89ab_cdef);
    }

    #[test]
    fn an_8_byte_access_at_0x04_is_two_registers_in_qemu() {
        let mut rig = rig();
        rig.w32(reg::LIVENESS, 0x1111_1111);
        rig.w32(reg::FACTORIAL, 6);
        rig.jobs.run();
        assert_eq!(
            rig.r64(reg::LIVENESS),
            (720 << 32) | u64::from(!0x1111_1111u32)
        );
        // And a write there starts a factorial with its high half.
        rig.w64(reg::LIVENESS, 0x0000_0003_0000_0000);
        assert_eq!(rig.r32(reg::LIVENESS), u32::MAX);
        assert_eq!(rig.r32(reg::STATUS), STATUS_COMPUTING);
        rig.jobs.run();
        assert_eq!(rig.r32(reg::FACTORIAL), 6);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let mut rig = rig();
        for offset in [u64::MAX, u64::MAX - 3, u64::MAX - 7, BAR_SIZE, 1 << 40] {
            for len in 1..=8 {
                let mut data = vec![0; len];
                rig.dev.bar_read(BAR, offset, &mut data);
                rig.write(offset, &vec![0xff; len]);
            }
        }
        let mut data = [0u8; 8];
        rig.dev.bar_read(1, 0, &mut data);
        assert_eq!(data, [0; 8], "no BAR 1");
        assert_eq!(rig.dev.bar_write(5, 0x60, &[1; 4]), Action::Continue);
        rig.dev.config_write(usize::MAX, &[0xff; 8]);
        rig.dev.config_read(usize::MAX - 2, &mut data);
        assert_eq!(rig.r32(reg::IRQ_STATUS), 0);
        assert!(rig.levels().is_empty() && rig.sent().is_empty());
        assert_eq!(rig.jobs.pending(), 0);
    }

    #[test]
    fn an_inline_deferred_does_not_deadlock() {
        let line = Arc::new(Line::default());
        let mut dev = Edu::new(EduLinks {
            intx: line.clone(),
            msi: Arc::new(Msis::default()),
            dma: Arc::new(Ram(Mutex::new(vec![7; 64]))),
            deferred: Arc::new(Inline),
        });
        dev.config_write(config_reg::COMMAND, &command::BUS_MASTER.to_le_bytes());
        let write = |dev: &mut Edu, offset: u64, data: &[u8]| {
            assert_eq!(dev.bar_write(BAR, offset, data), Action::Continue);
        };
        write(&mut dev, reg::STATUS, &STATUS_IRQ_FACTORIAL.to_le_bytes());
        write(&mut dev, reg::FACTORIAL, &5u32.to_le_bytes());
        let mut data = [0u8; 4];
        dev.bar_read(BAR, reg::FACTORIAL, &mut data);
        assert_eq!(u32::from_le_bytes(data), 120);
        assert_eq!(*line.0.lock().unwrap(), [true]);
        for (offset, value) in [
            (reg::DMA_SRC, 0),
            (reg::DMA_DST, DMA_BUFFER),
            (reg::DMA_COUNT, 64),
            (reg::DMA_CMD, DMA_START),
        ] {
            write(&mut dev, offset, &value.to_le_bytes());
        }
        let mut cmd = [0u8; 8];
        dev.bar_read(BAR, reg::DMA_CMD, &mut cmd);
        assert_eq!(u64::from_le_bytes(cmd), 0);
    }

    #[test]
    fn completions_run_from_another_thread() {
        let mut rig = rig();
        rig.w32(reg::STATUS, STATUS_IRQ_FACTORIAL);
        rig.w32(reg::FACTORIAL, 10);
        let jobs = rig.jobs.clone();
        std::thread::spawn(move || jobs.run()).join().unwrap();
        assert_eq!(rig.r32(reg::FACTORIAL), 3_628_800);
        assert_eq!(rig.levels(), [true]);
    }
}
