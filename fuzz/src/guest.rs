//! The guest side of a fuzz VM: its memory layout below the program (GDT,
//! TSS, page tables for every paging mode, a real-mode interrupt table)
//! and the special registers of each starting mode.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap};

use super::input::VcpuSetup;
use super::program::{CODE_ADDR, Mode, RAM_SIZE, STACK_TOP};
use ktvmm_vmm::boot::long_mode::{
    CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, descriptor,
};
use ktvmm_vmm::memory::GuestMemory;

// Guest memory layout of a fuzz VM, below the code at CODE_ADDR.
const GDT_ADDR: u64 = 0x1000;
const TSS_ADDR: u64 = 0x2000;
const PML4_ADDR: u64 = 0x3000;
const PDPT_ADDR: u64 = 0x4000;
/// 2 MiB pages for 0-1 GiB (long mode and PAE).
const PD_LOW_ADDR: u64 = 0x5000;
/// 2 MiB pages for 3-4 GiB, uncached: the MMIO hole.
const PD_HIGH_ADDR: u64 = 0x6000;
/// 4 MiB pages for all 4 GiB (32-bit paging with PSE).
const PD32_ADDR: u64 = 0x7000;
const PAE_PDPT_ADDR: u64 = 0x8000;
/// The real-mode interrupt handler (segment 0).
const REAL_MODE_HANDLER: u64 = 0x0f00;

// GDT selectors.
const SEL_CODE64: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE32: u16 = 0x18;
const SEL_CODE16: u16 = 0x20;
const SEL_USER_CODE64: u16 = 0x28;
const SEL_USER_DATA: u16 = 0x30;
const SEL_USER_CODE32: u16 = 0x38;
const SEL_TSS: u16 = 0x40;
const GDT_LIMIT: u16 = 0x4f;

/// A segment with the privilege its selector asks for.
fn segment(selector: u16, type_: u8, base: u64, limit: u32, bits: u8) -> kvm_segment {
    ktvmm_vmm::boot::long_mode::segment(selector, type_, (selector & 3) as u8, base, limit, bits)
}

const CODE: u8 = 0xb;
const DATA: u8 = 0x3;
const FLAT: u32 = 0xffff_ffff;

fn tss() -> kvm_segment {
    kvm_segment {
        base: TSS_ADDR,
        limit: 0x67,
        selector: SEL_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    }
}

/// GDT, TSS and every page table the modes use (identity maps, user
/// accessible, so CPL 3 code runs too).
pub fn write_tables(memory: &GuestMemory) -> Result<(), vm_memory::GuestMemoryError> {
    let gdt = [
        0,
        descriptor(&segment(SEL_CODE64, CODE, 0, FLAT, 64)),
        descriptor(&segment(SEL_DATA, DATA, 0, FLAT, 32)),
        descriptor(&segment(SEL_CODE32, CODE, 0, FLAT, 32)),
        descriptor(&segment(SEL_CODE16, CODE, CODE_ADDR, 0xffff, 16)),
        descriptor(&segment(SEL_USER_CODE64 | 3, CODE, 0, FLAT, 64)),
        descriptor(&segment(SEL_USER_DATA | 3, DATA, 0, FLAT, 32)),
        descriptor(&segment(SEL_USER_CODE32 | 3, CODE, 0, FLAT, 32)),
        descriptor(&tss()),
        0,
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    memory.write_slice(&bytes, GuestAddress(GDT_ADDR))?;
    let mut tss = [0u8; 0x68];
    tss[4..12].copy_from_slice(&STACK_TOP.to_le_bytes());
    tss[8..10].copy_from_slice(&SEL_DATA.to_le_bytes());
    tss[102..104].copy_from_slice(&0x68u16.to_le_bytes());
    memory.write_slice(&tss, GuestAddress(TSS_ADDR))?;

    const PRESENT_RW_USER: u64 = 0x7;
    const HUGE: u64 = 0x80;
    const UNCACHED: u64 = 0x18;
    let entry = |v: u64| v.to_le_bytes();
    memory.write_slice(&entry(PDPT_ADDR | PRESENT_RW_USER), GuestAddress(PML4_ADDR))?;
    memory.write_slice(
        &entry(PD_LOW_ADDR | PRESENT_RW_USER),
        GuestAddress(PDPT_ADDR),
    )?;
    memory.write_slice(
        &entry(PD_HIGH_ADDR | PRESENT_RW_USER),
        GuestAddress(PDPT_ADDR + 3 * 8),
    )?;
    let low: Vec<u8> = (0..512u64)
        .flat_map(|i| entry(i << 21 | PRESENT_RW_USER | HUGE))
        .collect();
    memory.write_slice(&low, GuestAddress(PD_LOW_ADDR))?;
    let high: Vec<u8> = (0..512u64)
        .flat_map(|i| entry(((3 << 30) + (i << 21)) | PRESENT_RW_USER | HUGE | UNCACHED))
        .collect();
    memory.write_slice(&high, GuestAddress(PD_HIGH_ADDR))?;
    let pd32: Vec<u8> = (0..1024u32)
        .flat_map(|i| (i << 22 | PRESENT_RW_USER as u32 | HUGE as u32).to_le_bytes())
        .collect();
    memory.write_slice(&pd32, GuestAddress(PD32_ADDR))?;
    // Real mode: every interrupt vector leads to `out 0xf4, al; hlt`, so a
    // fault ends the run at once instead of running whatever is at 0:0.
    let ivt: Vec<u8> = (0..256u32)
        .flat_map(|_| (REAL_MODE_HANDLER as u32).to_le_bytes())
        .collect();
    memory.write_slice(&ivt, GuestAddress(0))?;
    memory.write_slice(&[0xe6, 0xf4, 0xf4], GuestAddress(REAL_MODE_HANDLER))?;
    // PAE page-directory-pointer entries hold only the present bit.
    memory.write_slice(&entry(PD_LOW_ADDR | 1), GuestAddress(PAE_PDPT_ADDR))?;
    memory.write_slice(
        &entry(PD_HIGH_ADDR | 1),
        GuestAddress(PAE_PDPT_ADDR + 3 * 8),
    )
}

/// 4 MiB pages in 32-bit paging.
const CR4_PSE: u64 = 1 << 4;

/// The special registers of a vCPU starting in `setup.mode`.
pub fn mode_sregs(mut s: kvm_sregs, setup: &VcpuSetup) -> kvm_sregs {
    let user = setup.user && setup.mode != Mode::Real;
    let data_sel = if user { SEL_USER_DATA | 3 } else { SEL_DATA };
    let data = segment(data_sel, DATA, 0, FLAT, 32);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = GDT_LIMIT;
    s.idt.base = 0;
    s.idt.limit = 0;
    let (cr0, cr4, efer, cr3) = match setup.mode {
        Mode::Real => {
            let real = |selector: u16, type_| kvm_segment {
                base: u64::from(selector) << 4,
                limit: 0xffff,
                selector,
                type_,
                present: 1,
                s: 1,
                ..Default::default()
            };
            s.cs = real((CODE_ADDR >> 4) as u16, CODE);
            s.ss = real((CODE_ADDR >> 4) as u16, DATA);
            s.ds = real(0, DATA);
            s.es = s.ds;
            s.fs = s.ds;
            s.gs = s.ds;
            (CR0_ET, 0, 0, 0)
        }
        mode => {
            s.cs = match (mode, user) {
                (Mode::Protected16, _) => segment(SEL_CODE16, CODE, CODE_ADDR, 0xffff, 16),
                (Mode::Long64, false) => segment(SEL_CODE64, CODE, 0, FLAT, 64),
                (Mode::Long64, true) => segment(SEL_USER_CODE64 | 3, CODE, 0, FLAT, 64),
                (_, false) => segment(SEL_CODE32, CODE, 0, FLAT, 32),
                (_, true) => segment(SEL_USER_CODE32 | 3, CODE, 0, FLAT, 32),
            };
            s.ds = data;
            s.es = data;
            s.fs = data;
            s.gs = data;
            s.ss = if mode == Mode::Protected16 {
                segment(SEL_DATA, DATA, 0, FLAT, 32)
            } else {
                data
            };
            s.tr = tss();
            let pm = CR0_PE | CR0_ET | CR0_NE;
            match mode {
                Mode::Paged32 => (pm | CR0_PG | CR0_WP, CR4_PSE, 0, PD32_ADDR),
                Mode::PagedPae => (pm | CR0_PG | CR0_WP, CR4_PAE, 0, PAE_PDPT_ADDR),
                Mode::Long64 => (
                    pm | CR0_PG | CR0_WP,
                    CR4_PAE,
                    EFER_LME | EFER_LMA,
                    PML4_ADDR,
                ),
                _ => (pm, 0, 0, 0),
            }
        }
    };
    s.cr0 = cr0 ^ u64::from(setup.cr0_flip);
    s.cr4 = cr4 ^ u64::from(setup.cr4_flip);
    s.efer = efer ^ u64::from(setup.efer_flip);
    s.cr3 = cr3;
    s
}

/// Guest RAM as every fuzz VM starts with it (tables, interrupt table,
/// `hlt` everywhere else), kept in a memory file. Each VM maps it
/// copy-on-write: nothing is copied or cleared per VM, and a jump to any
/// address in RAM lands on `hlt` instead of a long run of zero bytes.
pub struct RamTemplate(Arc<File>);

impl RamTemplate {
    /// Builds the template.
    pub fn new() -> io::Result<Self> {
        // SAFETY: a valid NUL-terminated name; the fd is checked and owned below.
        let fd = unsafe { libc::memfd_create(c"ktvmm-fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let staging = GuestMemory::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
            .map_err(io::Error::other)?;
        let fill = vec![0xf4u8; RAM_SIZE as usize];
        staging
            .write_slice(&fill, GuestAddress(0))
            .map_err(io::Error::other)?;
        write_tables(&staging).map_err(io::Error::other)?;
        let mut bytes = vec![0u8; RAM_SIZE as usize];
        staging
            .read_slice(&mut bytes, GuestAddress(0))
            .map_err(io::Error::other)?;
        file.write_all(&bytes)?;
        Ok(RamTemplate(Arc::new(file)))
    }

    /// A private copy-on-write mapping of the template, as one VM's RAM.
    pub fn instance(&self) -> io::Result<GuestMemory> {
        let region = MmapRegionBuilder::<()>::new(RAM_SIZE as usize)
            .with_file_offset(FileOffset::from_arc(self.0.clone(), 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(io::Error::other)?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| io::Error::other("RAM region overflows"))?;
        GuestMemory::from_regions(vec![region]).map_err(io::Error::other)
    }
}
