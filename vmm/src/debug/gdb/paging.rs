//! Guest-virtual to guest-physical addresses, through the guest's own page
//! tables as a vCPU's control registers describe them: no paging, 32-bit
//! (with 4 MiB pages), PAE, and 4- or 5-level long mode. GDB speaks
//! virtual addresses (symbols); guest RAM is indexed physically.

use vm_memory::{Bytes, GuestAddress};

use crate::boot::long_mode::{CR0_PG, CR4_PAE, EFER_LMA};
use crate::memory::GuestMemory;

const CR4_PSE: u64 = 1 << 4;
const CR4_LA57: u64 = 1 << 12;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical address bits an entry can hold (bits 51:12).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The registers that say how a vCPU translates addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl Paging {
    /// The physical address of `gva`, and how many bytes from it lie in the
    /// same page; `None` when it is not mapped (or a table is not in RAM).
    pub fn translate(&self, memory: &GuestMemory, gva: u64) -> Option<(u64, u64)> {
        if self.cr0 & CR0_PG == 0 {
            return Some((gva & 0xffff_ffff, 0x1000 - (gva & 0xfff)));
        }
        let read = |gpa: u64, wide: bool| -> Option<u64> {
            if wide {
                memory.read_obj::<u64>(GuestAddress(gpa)).ok()
            } else {
                memory
                    .read_obj::<u32>(GuestAddress(gpa))
                    .ok()
                    .map(u64::from)
            }
        };
        // (index shift, entry size wide?) per level, from the top.
        let (levels, mut table, wide): (&[u32], u64, bool) = if self.efer & EFER_LMA != 0 {
            let levels: &[u32] = if self.cr4 & CR4_LA57 != 0 {
                &[48, 39, 30, 21, 12]
            } else {
                &[39, 30, 21, 12]
            };
            (levels, self.cr3 & ADDR_MASK, true)
        } else if self.cr4 & CR4_PAE != 0 {
            // The PDPT: four entries at CR3 bits 31:5.
            let pdpte = read((self.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8, true)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            (&[21, 12], pdpte & ADDR_MASK, true)
        } else {
            (&[22, 12], self.cr3 & 0xffff_f000, false)
        };
        let entry_size = if wide { 8 } else { 4 };
        let index_mask = if wide { 0x1ff } else { 0x3ff };
        for (i, &shift) in levels.iter().enumerate() {
            let entry = read(table + ((gva >> shift) & index_mask) * entry_size, wide)?;
            if entry & PRESENT == 0 {
                return None;
            }
            let last = i + 1 == levels.len();
            let large = !last && shift <= 30 && entry & PAGE_SIZE_BIT != 0;
            // 32-bit paging has 4 MiB pages only with CR4.PSE.
            let large = large && (wide || self.cr4 & CR4_PSE != 0);
            if last || large {
                let page = 1u64 << shift;
                let base = if wide {
                    entry & ADDR_MASK & !(page - 1)
                } else if large {
                    // PSE-36: bits 20:13 hold physical bits 39:32.
                    (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32
                } else {
                    entry & 0xffff_f000
                };
                let offset = gva & (page - 1);
                return Some((base + offset, page - offset));
            }
            table = if wide {
                entry & ADDR_MASK
            } else {
                entry & 0xffff_f000
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn long_mode_4k_and_2m_pages_and_holes() {
        let m = memory();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000: 2 MiB page at 0 for
        // VA 0; PT at 0x4000 for VA 2 MiB, whose page 1 maps to 0x9000.
        m.write_obj(0x2000u64 | 3, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x3000u64 | 3, GuestAddress(0x2000)).unwrap();
        m.write_obj(0x83u64, GuestAddress(0x3000)).unwrap();
        m.write_obj(0x4000u64 | 3, GuestAddress(0x3008)).unwrap();
        m.write_obj(0x9000u64 | 3, GuestAddress(0x4008)).unwrap();
        let paging = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        };
        assert_eq!(
            paging.translate(&m, 0x1234),
            Some((0x1234, 0x20_0000 - 0x1234))
        );
        assert_eq!(paging.translate(&m, 0x20_1010), Some((0x9010, 0xff0)));
        assert_eq!(paging.translate(&m, 0x20_2000), None, "not present");
        assert_eq!(paging.translate(&m, 0x40_0000), None, "no PD entry");
        // A table pointer outside RAM is not followed.
        m.write_obj(0x7fff_f000u64 | 3, GuestAddress(0x1008))
            .unwrap();
        assert_eq!(paging.translate(&m, 1 << 39), None);
    }

    #[test]
    fn no_paging_and_32_bit_paging() {
        let m = memory();
        let flat = Paging::default();
        assert_eq!(flat.translate(&m, 0x12_3456), Some((0x12_3456, 0xbaa)));
        // Page directory at 0x1000: a 4 MiB page for VA 0 (PSE), a table at
        // 0x2000 for VA 4 MiB mapping its page 2 at 0x5000.
        m.write_obj(0x83u32, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x2003u32, GuestAddress(0x1004)).unwrap();
        m.write_obj(0x5003u32, GuestAddress(0x2008)).unwrap();
        let paging = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(paging.translate(&m, 0x1000), Some((0x1000, 0x3f_f000)));
        assert_eq!(paging.translate(&m, 0x40_2004), Some((0x5004, 0xffc)));
    }
}
