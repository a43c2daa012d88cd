//! An Intel VT-d remapping unit, as QEMU's `-device intel-iommu,intremap=on`
//! gives a q35 guest: its registers at `0xfed90000`, DMA remapping through
//! second-level page tables (3 or 4 levels, 2 MiB and 1 GiB pages), and
//! remapping of MSIs through the interrupt remapping table.
//!
//! What it leaves out, and why that is safe for the guests it serves
//! (kvm-unit-tests' `intel_iommu`, a simple driver): no IOTLB or context
//! cache (every access walks the guest's tables, so invalidations have
//! nothing to drop and complete at once); no fault recording (a DMA the
//! tables refuse fails, which edu reports in its status); queued
//! invalidation only completes wait descriptors; no x2APIC mode (EIM), no
//! PASID, no posted interrupts; and no IOAPIC remapping: the IOAPIC is
//! KVM's in-kernel one, which reads a remappable entry as a compatibility
//! one.
//!
//! Every table the guest points at is read through bounds-checked DMA: a
//! bad pointer makes the access fail, never the VMM.

use std::sync::{Arc, Mutex};

use ktvmm_testdevs::{Action, BusDevice, DmaError, DmaMemory, MsiSender};

/// Where the registers are (q35's DMAR unit).
pub const BASE: u64 = 0xfed9_0000;
/// Size of the register window.
pub const LEN: u64 = 0x1000;

mod reg {
    pub const VER: u64 = 0x00;
    pub const CAP: u64 = 0x08;
    pub const ECAP: u64 = 0x10;
    pub const GCMD: u64 = 0x18;
    pub const RTADDR: u64 = 0x20;
    pub const CCMD: u64 = 0x28;
    /// The word holding FSTS (0x34), which reads 0: faults are not recorded.
    pub const FSTS_WORD: u64 = 0x30;
    pub const FECTL: u64 = 0x38;
    pub const IQH: u64 = 0x80;
    pub const IQT: u64 = 0x88;
    pub const IQA: u64 = 0x90;
    /// The word holding ICS (0x9c).
    pub const ICS_WORD: u64 = 0x98;
    pub const IRTA: u64 = 0xb8;
    /// Where ECAP.IRO puts the IOTLB registers.
    pub const IOTLB: u64 = 0x208;
}

/// Global command and status bits.
mod gcmd {
    pub const TE: u32 = 1 << 31;
    pub const SRTP: u32 = 1 << 30;
    pub const QIE: u32 = 1 << 26;
    pub const IRE: u32 = 1 << 25;
    pub const SIRTP: u32 = 1 << 24;
    /// Commands whose status bit follows the command bit.
    pub const LEVELS: u32 = TE | QIE | IRE;
}

const VERSION: u64 = 0x10;
/// 8 domain-ID bits (ND=2), 39- and 48-bit guest address widths, MGAW 39,
/// the fault register at 0x220 (FRO, one of them), 2 MiB and 1 GiB pages.
const CAPABILITIES: u64 = 2 | (0b0110 << 8) | (38 << 16) | (0x22 << 24) | (0b11 << 34);
/// Queued invalidation, interrupt remapping, the IOTLB registers at 0x200.
const EXTENDED_CAPABILITIES: u64 = (1 << 1) | (1 << 3) | (0x20 << 8);
/// Fault event control: the interrupt starts masked.
const FECTL_IM: u32 = 1 << 31;
/// Context and IOTLB invalidation "go" bits, cleared as soon as written.
const INVALIDATE: u64 = 1 << 63;

const PAGE: u64 = 4096;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// What the DMA and MSI paths need, as the last global commands left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Remapping {
    /// DMA remapping is on, through the root table here.
    translation: Option<u64>,
    /// Interrupt remapping is on, through this table of `2^n` entries.
    interrupts: Option<(u64, u32)>,
}

/// The register file.
pub struct Vtd {
    memory: Arc<dyn DmaMemory>,
    shared: Arc<Mutex<Remapping>>,
    gsts: u32,
    rtaddr: u64,
    root: u64,
    irta: u64,
    ir_table: u64,
    ccmd: u64,
    iotlb: u64,
    fectl: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
}

impl Vtd {
    /// A unit that reads the guest's tables through `memory` (untranslated
    /// guest RAM); DMA and MSI paths made by [`Vtd::dma`] and [`Vtd::msi`]
    /// follow it.
    pub fn new(memory: Arc<dyn DmaMemory>) -> Self {
        Self {
            memory,
            shared: Arc::default(),
            gsts: 0,
            rtaddr: 0,
            root: 0,
            irta: 0,
            ir_table: 0,
            ccmd: 0,
            iotlb: 0,
            fectl: FECTL_IM,
            iqa: 0,
            iqh: 0,
            iqt: 0,
            ics: 0,
        }
    }

    /// DMA of the device `source_id` (bus << 8 | devfn), remapped when the
    /// guest turns translation on.
    pub fn dma(&self, source_id: u16) -> Arc<dyn DmaMemory> {
        Arc::new(RemappedDma {
            memory: self.memory.clone(),
            shared: self.shared.clone(),
            source_id,
        })
    }

    /// MSIs, remapped when the guest turns interrupt remapping on.
    pub fn msi(&self, inner: Arc<dyn MsiSender>) -> Arc<dyn MsiSender> {
        Arc::new(RemappedMsi {
            memory: self.memory.clone(),
            shared: self.shared.clone(),
            inner,
        })
    }

    fn publish(&self) {
        let remapping = Remapping {
            translation: (self.gsts & gcmd::TE != 0).then_some(self.root),
            interrupts: (self.gsts & gcmd::IRE != 0)
                .then_some((self.ir_table & ADDRESS, (self.ir_table & 0xf) as u32 + 1)),
        };
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = remapping;
    }

    fn global_command(&mut self, command: u32) {
        if command & gcmd::SRTP != 0 {
            self.root = self.rtaddr & ADDRESS;
            self.gsts |= gcmd::SRTP;
        }
        if command & gcmd::SIRTP != 0 {
            self.ir_table = self.irta;
            self.gsts |= gcmd::SIRTP;
        }
        self.gsts = (self.gsts & !gcmd::LEVELS) | (command & gcmd::LEVELS);
        if self.gsts & gcmd::QIE == 0 {
            self.iqh = 0;
        }
        self.publish();
    }

    /// Runs the invalidation queue up to the new tail: with no caches
    /// there is nothing to invalidate, but a wait descriptor's status write
    /// is what a driver polls for.
    fn run_queue(&mut self) {
        let base = self.iqa & ADDRESS;
        let entries = 256u64 << (self.iqa & 0x7);
        let tail = (self.iqt >> 4) % entries;
        let mut head = (self.iqh >> 4) % entries;
        while head != tail {
            let mut descriptor = [0u8; 16];
            if self.memory.read(base + head * 16, &mut descriptor).is_err() {
                break;
            }
            let low = u64::from_le_bytes(descriptor[..8].try_into().unwrap_or_default());
            let high = u64::from_le_bytes(descriptor[8..].try_into().unwrap_or_default());
            const WAIT: u64 = 5;
            const STATUS_WRITE: u64 = 1 << 5;
            const INTERRUPT: u64 = 1 << 4;
            if low & 0xf == WAIT {
                if low & STATUS_WRITE != 0 {
                    let data = ((low >> 32) as u32).to_le_bytes();
                    let _ = self.memory.write(high & !3, &data);
                }
                if low & INTERRUPT != 0 {
                    self.ics |= 1;
                }
            }
            head = (head + 1) % entries;
        }
        self.iqh = head << 4;
    }

    fn read64(&self, at: u64) -> u64 {
        match at {
            reg::VER => VERSION,
            reg::CAP => CAPABILITIES,
            reg::ECAP => EXTENDED_CAPABILITIES,
            // GCMD reads 0; GSTS is its upper half.
            reg::GCMD => u64::from(self.gsts) << 32,
            reg::RTADDR => self.rtaddr,
            reg::CCMD => self.ccmd,
            reg::FSTS_WORD => 0,
            reg::FECTL => u64::from(self.fectl),
            reg::IQH => self.iqh,
            reg::IQT => self.iqt,
            reg::IQA => self.iqa,
            reg::ICS_WORD => u64::from(self.ics) << 32,
            reg::IRTA => self.irta,
            reg::IOTLB => self.iotlb,
            _ => 0,
        }
    }

    fn write64(&mut self, at: u64, value: u64, mask: u64) {
        let merge = |old: u64| (old & !mask) | (value & mask);
        match at {
            // GCMD is the low half; GSTS (the high half) is read-only.
            reg::GCMD if mask as u32 != 0 => self.global_command(value as u32),
            reg::RTADDR => self.rtaddr = merge(self.rtaddr) & ADDRESS,
            reg::CCMD => self.ccmd = merge(self.ccmd) & !INVALIDATE,
            reg::FECTL if mask as u32 != 0 => self.fectl = value as u32 & FECTL_IM,
            reg::IQT => {
                self.iqt = merge(self.iqt) & 0x7fff0;
                if self.gsts & gcmd::QIE != 0 {
                    self.run_queue();
                }
            }
            reg::IQA => self.iqa = merge(self.iqa) & (ADDRESS | 0x7),
            // ICS: write 1 to clear.
            reg::ICS_WORD if mask >> 32 != 0 => self.ics &= !((value >> 32) as u32),
            reg::IRTA => self.irta = merge(self.irta) & (ADDRESS | 0xf),
            reg::IOTLB => self.iotlb = merge(self.iotlb) & !INVALIDATE,
            _ => {}
        }
    }
}

// Registers are 32 or 64 bits wide; any aligned 4- or 8-byte access works
// on the 64-bit word that holds it, anything else is ignored (reads 0).
impl BusDevice for Vtd {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let shift = (offset & 7) * 8;
        if !matches!((data.len(), offset & 7), (4, 0 | 4) | (8, 0)) {
            return;
        }
        let value = self.read64(offset & !7) >> shift;
        let len = data.len();
        data.copy_from_slice(&value.to_le_bytes()[..len]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let shift = (offset & 7) * 8;
        let mask = match (data.len(), offset & 7) {
            (4, 0 | 4) => 0xffff_ffffu64 << shift,
            (8, 0) => u64::MAX,
            _ => return Action::Continue,
        };
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes) << shift;
        self.write64(offset & !7, value, mask);
        Action::Continue
    }
}

fn read_u64(memory: &dyn DmaMemory, addr: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    memory.read(addr, &mut bytes).ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A device's DMA through the unit.
struct RemappedDma {
    memory: Arc<dyn DmaMemory>,
    shared: Arc<Mutex<Remapping>>,
    source_id: u16,
}

impl RemappedDma {
    /// The guest-physical address for `iova`, and how many bytes from it
    /// the same translation covers; `None` when the tables refuse it.
    fn translate(&self, root: u64, iova: u64, write: bool) -> Option<(u64, u64)> {
        let memory = &*self.memory;
        let [bus, devfn] = self.source_id.to_be_bytes();
        let root_entry = read_u64(memory, root + u64::from(bus) * 16)?;
        if root_entry & 1 == 0 {
            return None;
        }
        let context = (root_entry & ADDRESS) + u64::from(devfn) * 16;
        let (low, high) = (read_u64(memory, context)?, read_u64(memory, context + 8)?);
        const PASS_THROUGH: u64 = 2;
        match (low & 1, (low >> 2) & 3) {
            (0, _) => return None,
            (_, PASS_THROUGH) => return Some((iova, PAGE - iova % PAGE)),
            (_, 0) => {}
            _ => return None,
        }
        // AW 1: 39 bits in 3 levels; AW 2: 48 bits in 4.
        let levels = match high & 7 {
            1 => 3,
            2 => 4,
            _ => return None,
        };
        if iova >> (12 + 9 * levels) != 0 {
            return None;
        }
        let needed = if write { 2 } else { 1 };
        let mut table = low & ADDRESS;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let entry = read_u64(memory, table + ((iova >> shift) & 0x1ff) * 8)?;
            if entry & needed != needed {
                return None;
            }
            const SUPERPAGE: u64 = 1 << 7;
            if level == 1 || (entry & SUPERPAGE != 0 && level <= 3) {
                let size = 1u64 << shift;
                let offset = iova & (size - 1);
                return Some(((entry & ADDRESS & !(size - 1)) + offset, size - offset));
            }
            table = entry & ADDRESS;
        }
        None
    }

    /// Runs `access` over each translated piece of `[addr, addr + len)`.
    fn each_piece(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        mut access: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let error = DmaError { addr, len };
        let Some(root) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .translation
        else {
            return access(addr, 0..len);
        };
        // Translate everything first: a refused page leaves memory alone.
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < len {
            let iova = addr.checked_add(done as u64).ok_or(error)?;
            let (gpa, room) = self.translate(root, iova, write).ok_or(error)?;
            let take = (len - done).min(usize::try_from(room).unwrap_or(usize::MAX));
            pieces.push((gpa, done..done + take));
            done += take;
        }
        for (gpa, range) in pieces {
            access(gpa, range).map_err(|_| error)?;
        }
        Ok(())
    }
}

impl DmaMemory for RemappedDma {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        self.each_piece(addr, len, false, |gpa, range| {
            self.memory.read(gpa, &mut buf[range])
        })
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.each_piece(addr, buf.len(), true, |gpa, range| {
            self.memory.write(gpa, &buf[range])
        })
    }
}

/// MSIs through the unit.
struct RemappedMsi {
    memory: Arc<dyn DmaMemory>,
    shared: Arc<Mutex<Remapping>>,
    inner: Arc<dyn MsiSender>,
}

impl MsiSender for RemappedMsi {
    fn send(&self, address: u64, data: u32) {
        const REMAPPABLE: u64 = 1 << 4;
        const SUBHANDLE_VALID: u64 = 1 << 3;
        let interrupts = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interrupts;
        let Some((table, size_log2)) = interrupts else {
            return self.inner.send(address, data);
        };
        if address >> 20 != 0xfee || address & REMAPPABLE == 0 {
            // Compatibility format passes through, as QEMU lets it.
            return self.inner.send(address, data);
        }
        let mut index = ((address >> 5) & 0x7fff) | ((address >> 2) & 1) << 15;
        if address & SUBHANDLE_VALID != 0 {
            index += u64::from(data & 0xffff);
        }
        if index >> size_log2 != 0 {
            log::debug!("remapped MSI index {index} is past the table");
            return;
        }
        let mut entry = [0u8; 16];
        if self.memory.read(table + index * 16, &mut entry).is_err() {
            log::debug!("remapped MSI index {index}: its entry is not in RAM");
            return;
        }
        let low = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
        const PRESENT: u64 = 1;
        const POSTED: u64 = 1 << 15;
        if low & PRESENT == 0 || low & POSTED != 0 {
            log::debug!("remapped MSI index {index}: entry not present or posted");
            return;
        }
        // xAPIC mode: the destination APIC ID is bits 47:40 of the entry.
        let destination = (low >> 40) & 0xff;
        let dest_mode = (low >> 2) & 1;
        let redirection_hint = (low >> 3) & 1;
        let trigger = (low >> 4) & 1;
        let delivery = (low >> 5) & 7;
        let vector = (low >> 16) & 0xff;
        let address = 0xfee0_0000 | destination << 12 | redirection_hint << 3 | dest_mode << 2;
        let data = vector | delivery << 8 | trigger << 15 | (trigger << 14);
        self.inner.send(address, data as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 MiB of fake RAM.
    struct Ram(Mutex<Vec<u8>>);

    impl DmaMemory for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
            let ram = self.0.lock().unwrap();
            let start = usize::try_from(addr).map_err(|_| DmaError {
                addr,
                len: buf.len(),
            })?;
            let bytes = ram.get(start..start + buf.len()).ok_or(DmaError {
                addr,
                len: buf.len(),
            })?;
            buf.copy_from_slice(bytes);
            Ok(())
        }

        fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
            let mut ram = self.0.lock().unwrap();
            let start = usize::try_from(addr).map_err(|_| DmaError {
                addr,
                len: buf.len(),
            })?;
            ram.get_mut(start..start + buf.len())
                .ok_or(DmaError {
                    addr,
                    len: buf.len(),
                })?
                .copy_from_slice(buf);
            Ok(())
        }
    }

    fn ram() -> Arc<Ram> {
        Arc::new(Ram(Mutex::new(vec![0; 1 << 20])))
    }

    fn poke(ram: &Ram, addr: u64, value: u64) {
        ram.write(addr, &value.to_le_bytes()).unwrap();
    }

    fn write32(vtd: &mut Vtd, offset: u64, value: u32) {
        let _ = BusDevice::write(vtd, offset, &value.to_le_bytes());
    }

    fn write64(vtd: &mut Vtd, offset: u64, value: u64) {
        let _ = BusDevice::write(vtd, offset, &value.to_le_bytes());
    }

    fn read32(vtd: &mut Vtd, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        BusDevice::read(vtd, offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// What kvm-unit-tests' `vtd_gcmd_or` does.
    fn command(vtd: &mut Vtd, bit: u32) {
        let status = read32(vtd, 0x1c);
        write32(vtd, 0x18, status | bit);
    }

    #[test]
    fn global_commands_show_in_the_status() {
        let mut vtd = Vtd::new(ram());
        assert_eq!(read32(&mut vtd, 0x0), 0x10);
        let mut cap = [0u8; 8];
        BusDevice::read(&mut vtd, 0x8, &mut cap);
        let cap = u64::from_le_bytes(cap);
        assert_ne!(cap & (2 << 8), 0, "39-bit AGAW");
        assert_eq!(cap & (3 << 34), 3 << 34, "2 MiB and 1 GiB pages");
        for bit in [gcmd::QIE, gcmd::SRTP, gcmd::SIRTP, gcmd::TE, gcmd::IRE] {
            command(&mut vtd, bit);
            assert_ne!(read32(&mut vtd, 0x1c) & bit, 0, "{bit:#x}");
        }
        assert_eq!(read32(&mut vtd, reg::FSTS_WORD + 4), 0);
        // Turning one off keeps the others.
        let status = read32(&mut vtd, 0x1c);
        write32(&mut vtd, 0x18, status & !gcmd::TE);
        assert_eq!(read32(&mut vtd, 0x1c) & (gcmd::TE | gcmd::IRE), gcmd::IRE);
        // Bad widths and offsets are ignored.
        let _ = BusDevice::write(&mut vtd, 0x19, &[0xff]);
        let mut odd = [0u8; 2];
        BusDevice::read(&mut vtd, 0x1c, &mut odd);
        assert_eq!(odd, [0, 0]);
    }

    /// Root table at 0x10000, context table at 0x11000, a 3-level table
    /// at 0x12000.. mapping IOVA 0 to 0x40000 and IOVA 2 MiB as a 2 MiB page
    /// at 0 (read-only), for device 00:02.0.
    fn mapped() -> (Arc<Ram>, Vtd, Arc<dyn DmaMemory>) {
        let ram = ram();
        let devfn = 2 << 3;
        poke(&ram, 0x10000, 0x11000 | 1);
        poke(&ram, 0x11000 + devfn * 16, 0x12000 | 1);
        poke(&ram, 0x11000 + devfn * 16 + 8, 1 | (2 << 8));
        poke(&ram, 0x12000, 0x13000 | 3);
        poke(&ram, 0x13000, 0x14000 | 3);
        poke(&ram, 0x13000 + 8, 1 | (1 << 7));
        poke(&ram, 0x14000, 0x40000 | 3);
        let mut vtd = Vtd::new(ram.clone());
        write64(&mut vtd, reg::RTADDR, 0x10000);
        command(&mut vtd, gcmd::SRTP);
        let dma = vtd.dma(devfn as u16);
        // Off until translation is enabled: IOVA = guest-physical.
        dma.write(0x40000, b"raw").unwrap();
        command(&mut vtd, gcmd::TE);
        (ram, vtd, dma)
    }

    #[test]
    fn dma_walks_the_guest_tables() {
        let (ram, _vtd, dma) = mapped();
        let mut buf = [0u8; 3];
        dma.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"raw");
        dma.write(4, b"xyz").unwrap();
        let mut at = [0u8; 3];
        ram.read(0x40004, &mut at).unwrap();
        assert_eq!(&at, b"xyz");
        // The 2 MiB page: IOVA 2 MiB + 0x40000 is guest 0x40000; read-only.
        dma.read(0x20_0000 + 0x40000, &mut buf).unwrap();
        assert_eq!(&buf, b"raw");
        assert!(dma.write(0x20_0000, b"no").is_err());
        // Unmapped IOVAs, a crossing into one, and past the address width.
        assert!(dma.read(0x1000, &mut buf).is_err());
        assert!(dma.write(0xffe, b"abcd").is_err());
        assert_eq!(
            &{
                let mut b = [0u8; 2];
                ram.read(0x40ffe, &mut b).unwrap();
                b
            },
            &[0, 0]
        );
        assert!(dma.read(1 << 39, &mut buf).is_err());
    }

    #[test]
    fn hostile_tables_fail_the_access_only() {
        let ram = ram();
        // The root table points far outside RAM; then a context entry loops
        // back onto the root table.
        poke(&ram, 0x10000, 0xfff_ffff_f000 | 1);
        let mut vtd = Vtd::new(ram.clone());
        write64(&mut vtd, reg::RTADDR, 0x10000);
        command(&mut vtd, gcmd::SRTP);
        command(&mut vtd, gcmd::TE);
        let dma = vtd.dma(0);
        assert!(dma.read(0, &mut [0u8; 4]).is_err());
        // Every level is the root table itself: the walk still ends after
        // three levels (here with a read of the table, which is RAM).
        poke(&ram, 0x10000, 0x10000 | 1);
        poke(&ram, 0x10008, 1);
        let mut buf = [0u8; 4];
        dma.read(0, &mut buf).unwrap();
        assert_eq!(buf, [1, 0, 1, 0]);
        // A root table at the very top of the address space.
        write64(&mut vtd, reg::RTADDR, u64::MAX);
        command(&mut vtd, gcmd::SRTP);
        assert!(dma.read(0, &mut [0u8; 4]).is_err());
    }

    struct Sent(Mutex<Vec<(u64, u32)>>);

    impl MsiSender for Sent {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    #[test]
    fn msis_are_remapped_through_the_table() {
        let ram = ram();
        // Entry 2: present, vector 0xee, destination APIC 1 (bits 47:40).
        poke(&ram, 0x20000 + 2 * 16, 1 | (0xee << 16) | (1 << 40));
        let mut vtd = Vtd::new(ram.clone());
        let sent = Arc::new(Sent(Mutex::new(Vec::new())));
        let msi = vtd.msi(sent.clone());
        msi.send(0xfee0_0000, 0x41);
        write64(&mut vtd, reg::IRTA, 0x20000 | 0xf);
        command(&mut vtd, gcmd::SIRTP);
        command(&mut vtd, gcmd::IRE);
        // kvm-unit-tests' handle 2: bit 4 (remappable), index in 19:5.
        msi.send(0xfee0_0000 | (1 << 4) | (2 << 5), 0);
        // Compatibility format passes; a missing entry and an index past
        // the table deliver nothing.
        msi.send(0xfee0_1000, 0x42);
        msi.send(0xfee0_0000 | (1 << 4) | (3 << 5), 0);
        write64(&mut vtd, reg::IRTA, 0x20000);
        command(&mut vtd, gcmd::SIRTP);
        msi.send(0xfee0_0000 | (1 << 4) | (2 << 5), 0);
        assert_eq!(
            *sent.0.lock().unwrap(),
            [
                (0xfee0_0000, 0x41),
                (0xfee0_1000, 0xee),
                (0xfee0_1000, 0x42)
            ]
        );
    }

    #[test]
    fn wait_descriptors_complete() {
        let ram = ram();
        // A wait descriptor with a status write of 7 to 0x30000.
        poke(&ram, 0x28000, 5 | (1 << 5) | (7 << 32));
        poke(&ram, 0x28008, 0x30000);
        let mut vtd = Vtd::new(ram.clone());
        write64(&mut vtd, reg::IQA, 0x28000);
        command(&mut vtd, gcmd::QIE);
        write64(&mut vtd, reg::IQT, 1 << 4);
        let mut status = [0u8; 4];
        ram.read(0x30000, &mut status).unwrap();
        assert_eq!(u32::from_le_bytes(status), 7);
        let mut head = [0u8; 8];
        BusDevice::read(&mut vtd, reg::IQH, &mut head);
        assert_eq!(u64::from_le_bytes(head), 1 << 4);
        // Context and IOTLB invalidations complete at once.
        write64(&mut vtd, reg::CCMD, 1 << 63);
        write64(&mut vtd, reg::IOTLB, 1 << 63);
        assert_eq!(vtd.read64(reg::CCMD) >> 63, 0);
        assert_eq!(vtd.read64(reg::IOTLB) >> 63, 0);
        assert_eq!(vtd.read64(reg::ICS_WORD) >> 32, 0);
    }
}
