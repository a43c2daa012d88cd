//! The 64-bit state every vCPU starts in with the ELF64 protocol: identity
//! page tables, a flat GDT with one TSS per CPU, and the control registers.
//!
//! Segments are described once as `kvm_segment` values; the GDT entries are
//! encoded from the same values, so what KVM caches and what the guest finds
//! in memory cannot disagree.

use ktvmm_abi::{gdt, layout};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// CR0: protected mode.
pub const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
/// CR0: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0: write-protect honoured at CPL0.
pub const CR0_WP: u64 = 1 << 16;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4: FXSAVE/FXRSTOR and SSE enabled by the OS.
pub const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// CR0 at entry: protected mode, paging, write-protect honoured at CPL0.
pub const CR0: u64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
/// CR4 at entry: PAE paging, and SSE enabled because Rust's precompiled
/// `core` uses SSE moves.
pub const CR4: u64 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
/// EFER at entry: long mode enabled and active.
pub const EFER: u64 = EFER_LME | EFER_LMA;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_HUGE: u64 = 1 << 7;
const PAGE_2M: u64 = 1 << 21;
const ENTRIES: u64 = 512;

/// Writes identity page tables covering `[0, map_end)` with 2 MiB pages;
/// `map_end` is a multiple of 1 GiB, at most `MAX_MAPPED_GIB` GiB. The MMIO
/// hole is mapped uncached.
pub fn write_page_tables(
    memory: &GuestMemory,
    map_end: u64,
) -> Result<(), vm_memory::GuestMemoryError> {
    let gibs = map_end >> 30;
    debug_assert!(map_end.is_multiple_of(1 << 30) && gibs <= layout::MAX_MAPPED_GIB);
    let entry = |addr: u64| (addr | PTE_PRESENT | PTE_WRITABLE).to_le_bytes();

    memory.write_slice(&entry(layout::PDPT_ADDR), GuestAddress(layout::PML4_ADDR))?;
    let pdpt: Vec<u8> = (0..gibs)
        .flat_map(|gib| entry(layout::PD_ADDR + gib * 0x1000))
        .collect();
    memory.write_slice(&pdpt, GuestAddress(layout::PDPT_ADDR))?;
    let pds: Vec<u8> = (0..gibs * ENTRIES)
        .flat_map(|i| {
            let addr = i * PAGE_2M;
            let mut pde = addr | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
            if (layout::MMIO_HOLE_START..layout::MMIO_HOLE_END).contains(&addr) {
                pde |= PTE_PCD | PTE_PWT;
            }
            pde.to_le_bytes()
        })
        .collect();
    memory.write_slice(&pds, GuestAddress(layout::PD_ADDR))
}

/// A code or data segment: `bits` 16, 32 or 64 picks the D/B and L bits,
/// and a limit past 1 MiB is counted in pages.
pub fn segment(selector: u16, type_: u8, dpl: u8, base: u64, limit: u32, bits: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(bits == 32),
        s: 1,
        l: u8::from(bits == 64),
        g: u8::from(limit > 0xf_ffff),
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A flat segment (base 0, 4 GiB) of 64 or 32 bits.
fn flat(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    segment(
        selector,
        type_,
        dpl,
        0,
        FLAT_LIMIT,
        if long { 64 } else { 32 },
    )
}

// Types with the accessed bit set: that is what KVM and the CPU hold after a load.
const CODE_TYPE: u8 = 0xb;
const DATA_TYPE: u8 = 0x3;
const TSS_BUSY_TYPE: u8 = 0xb;
const TSS_LIMIT: u32 = 0x67;
const FLAT_LIMIT: u32 = 0xffff_ffff;

/// The 64-bit kernel code segment.
pub fn kernel_code() -> kvm_segment {
    flat(gdt::KERNEL_CODE, CODE_TYPE, 0, true)
}

/// The kernel data segment (also the stack segment).
pub fn kernel_data() -> kvm_segment {
    flat(gdt::KERNEL_DATA, DATA_TYPE, 0, false)
}

/// CPU `cpu`'s TSS, as loaded in TR (busy).
pub fn tss(cpu: u32) -> kvm_segment {
    kvm_segment {
        base: layout::TSS_ADDR + u64::from(cpu) * layout::TSS_STRIDE,
        limit: TSS_LIMIT,
        selector: gdt::tss_selector(cpu),
        type_: TSS_BUSY_TYPE,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The low 8 bytes of the GDT descriptor for `seg` (a system descriptor's
/// high 8 bytes hold `base >> 32`).
pub fn descriptor(seg: &kvm_segment) -> u64 {
    let limit = if seg.g == 1 {
        seg.limit >> 12
    } else {
        seg.limit
    } as u64;
    let base = seg.base;
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(seg.type_ & 0xf) << 40
        | u64::from(seg.s & 1) << 44
        | u64::from(seg.dpl & 3) << 45
        | u64::from(seg.present & 1) << 47
        | (limit >> 16 & 0xf) << 48
        | u64::from(seg.avl & 1) << 52
        | u64::from(seg.l & 1) << 53
        | u64::from(seg.db & 1) << 54
        | u64::from(seg.g & 1) << 55
        | (base >> 24 & 0xff) << 56
}

/// The GDT for `cpus` CPUs, as bytes, and its limit.
pub fn gdt_bytes(cpus: u32) -> (Vec<u8>, u16) {
    let user_code32 = flat(gdt::USER_CODE32, CODE_TYPE, 3, false);
    let user_data = flat(gdt::USER_DATA, DATA_TYPE, 3, false);
    let user_code = flat(gdt::USER_CODE, CODE_TYPE, 3, true);
    let mut table: Vec<u64> = vec![
        0,
        descriptor(&kernel_code()),
        descriptor(&kernel_data()),
        descriptor(&user_code32),
        descriptor(&user_data),
        descriptor(&user_code),
    ];
    debug_assert_eq!(table.len() * 8, usize::from(gdt::TSS_BASE));
    for cpu in 0..cpus {
        let tss = tss(cpu);
        table.push(descriptor(&tss));
        table.push(tss.base >> 32);
    }
    let bytes: Vec<u8> = table.iter().flat_map(|d| d.to_le_bytes()).collect();
    let limit = (bytes.len() - 1) as u16;
    (bytes, limit)
}

/// Writes the GDT and one TSS per CPU; `stack_top(cpu)` becomes its RSP0, so
/// an interrupt taken at CPL3 lands on the CPU's boot stack.
pub fn write_gdt_and_tss(
    memory: &GuestMemory,
    cpus: u32,
    stack_top: impl Fn(u32) -> u64,
) -> Result<u16, vm_memory::GuestMemoryError> {
    let (bytes, limit) = gdt_bytes(cpus);
    memory.write_slice(&bytes, GuestAddress(layout::GDT_ADDR))?;
    for cpu in 0..cpus {
        let mut bytes = [0u8; TSS_LIMIT as usize + 1];
        bytes[4..12].copy_from_slice(&stack_top(cpu).to_le_bytes());
        // No I/O permission bitmap: its offset points past the limit.
        bytes[102..104].copy_from_slice(&(TSS_LIMIT as u16 + 1).to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(tss(cpu).base))?;
    }
    Ok(limit)
}

/// The special registers of CPU `cpu` at entry, on top of what KVM gave the
/// fresh vCPU (which keeps its APIC base and the like).
pub fn sregs(mut sregs: kvm_sregs, cpu: u32, gdt_limit: u16) -> kvm_sregs {
    let data = kernel_data();
    sregs.cs = kernel_code();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss(cpu);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0;
    sregs.cr3 = layout::PML4_ADDR;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
    sregs
}

/// The general registers of CPU `cpu` at entry.
pub fn regs(entry: u64, cpu: u32, stack_top: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rdi: layout::BOOT_INFO_ADDR,
        rsi: u64::from(cpu),
        rflags: 0x2,
        ..Default::default()
    }
}

/// The mode a vCPU runs in, by its control registers and code segment's
/// L bit: what forensics and the debugger show.
pub fn mode(cr0: u64, efer: u64, cs_long: u8) -> &'static str {
    match (
        cr0 & CR0_PE != 0,
        cr0 & CR0_PG != 0,
        efer & EFER_LMA != 0,
        cs_long != 0,
    ) {
        (false, ..) => "real",
        (true, true, true, true) => "long",
        (true, true, true, false) => "compat",
        (true, true, false, _) => "protected+paging",
        (true, false, ..) => "protected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamLayout;

    fn read_u64(memory: &GuestMemory, addr: u64) -> u64 {
        memory.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(memory: &GuestMemory, va: u64) -> Option<u64> {
        let pml4e = read_u64(memory, layout::PML4_ADDR + (va >> 39 & 0x1ff) * 8);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read_u64(memory, (pml4e & !0xfff) + (va >> 30 & 0x1ff) * 8);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read_u64(memory, (pdpte & !0xfff) + (va >> 21 & 0x1ff) * 8);
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & PTE_HUGE, 0);
        Some((pde & !(PAGE_2M - 1) & 0x000f_ffff_ffff_ffff) | (va & (PAGE_2M - 1)))
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib_only() {
        let memory = RamLayout::new(16).unwrap().allocate().unwrap();
        write_page_tables(&memory, 4 << 30).unwrap();
        for va in [
            0u64,
            0x10_0000,
            0x1234_5678,
            layout::LAPIC_ADDR,
            (4 << 30) - 1,
        ] {
            assert_eq!(translate(&memory, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&memory, 4 << 30), None);
        assert_eq!(translate(&memory, 0x80_0000_0000), None);
        let hole_pde = read_u64(&memory, layout::PD_ADDR + 3 * 0x1000 + 8 * 0x1f7);
        assert_ne!(hole_pde & PTE_PCD, 0, "MMIO hole is uncached");
        let ram_pde = read_u64(&memory, layout::PD_ADDR);
        assert_eq!(ram_pde & PTE_PCD, 0, "RAM is cached");
    }

    #[test]
    fn descriptors_match_the_architectural_encodings() {
        assert_eq!(descriptor(&kernel_code()), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(&kernel_data()), 0x00cf_9300_0000_ffff);
        let tss0 = descriptor(&tss(0));
        assert_eq!(tss0 & 0xffff, 0x67);
        assert_eq!(tss0 >> 40 & 0xff, 0x8b, "present, busy 64-bit TSS");
        let base = (tss0 >> 16 & 0xff_ffff) | (tss0 >> 56) << 24;
        assert_eq!(base, layout::TSS_ADDR);
    }

    #[test]
    fn gdt_has_one_tss_per_cpu_at_its_selector() {
        let (bytes, limit) = gdt_bytes(3);
        assert_eq!(usize::from(limit) + 1, bytes.len());
        assert_eq!(bytes.len(), usize::from(gdt::tss_selector(3)));
        let at = |sel: u16| {
            let i = usize::from(sel);
            u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap())
        };
        assert_eq!(at(gdt::tss_selector(2)), descriptor(&tss(2)));
        assert_eq!(at(gdt::USER_CODE) >> 45 & 3, 3, "user code is DPL 3");
    }

    #[test]
    fn registers_follow_the_boot_protocol() {
        let r = regs(0x10_0000, 2, 0x7ff_0000);
        assert_eq!(
            (r.rip, r.rsp, r.rdi, r.rsi, r.rflags),
            (0x10_0000, 0x7ff_0000, layout::BOOT_INFO_ADDR, 2, 2)
        );
        let s = sregs(kvm_sregs::default(), 2, 0x57);
        assert_eq!(s.tr.selector, gdt::tss_selector(2));
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, layout::PML4_ADDR);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
    }
}
