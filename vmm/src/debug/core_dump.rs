//! An ELF core file of a guest, as QEMU's `dump-guest-memory` writes one
//! (target/i386/arch_dump.c): every vCPU's registers as an `NT_PRSTATUS`
//! note (x86-64 `user_regs_struct`) followed by a `QEMU` note
//! (`QEMUCPUState`: segments, descriptor tables, control registers), and
//! all guest RAM as `PT_LOAD` segments. GDB and `crash` read it.
//!
//! One difference from QEMU: QEMU without `-p` gives each segment virtual
//! address 0; ktvmm gives the guest-physical address, so that GDB can read
//! an identity-mapped guest (ktvmm's own, kvm-unit-tests' below 4 GiB) at
//! its symbols' addresses. Pages of zeroes are left as holes, so a core
//! takes the disk space of the RAM the guest touched.

use std::io::{self, Seek, SeekFrom, Write};

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

const PAGE: usize = 4096;
const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
/// `struct elf_prstatus` on x86-64.
const PRSTATUS_LEN: usize = 336;
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
/// `QEMUCPUState`, version 1.
const QEMU_STATE_LEN: usize = 440;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// One vCPU's registers at the end of the run.
#[derive(Clone, Debug, Default)]
pub struct CpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers.
    pub sregs: kvm_sregs,
    /// `MSR_KERNEL_GS_BASE` (`swapgs`'s other half), 0 when unreadable.
    pub kernel_gs_base: u64,
}

impl CpuState {
    /// Reads `fd`'s registers; `None` when KVM refuses.
    pub fn read(fd: &VcpuFd) -> Option<Self> {
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            ..Default::default()
        }])
        .ok()?;
        let kernel_gs_base = match fd.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice()[0].data,
            _ => 0,
        };
        Some(CpuState {
            regs: fd.get_regs().ok()?,
            sregs: fd.get_sregs().ok()?,
            kernel_gs_base,
        })
    }
}

/// A stretch of guest RAM: its guest-physical address and contents.
pub struct RamRange<'a> {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Writes the core of a guest with `ram` and `cpus` to `out`.
pub fn write<W: Write + Seek>(out: &mut W, ram: &[RamRange], cpus: &[CpuState]) -> io::Result<()> {
    let notes = notes(cpus);
    let phnum = 1 + ram.len() as u64;
    let notes_at = EHDR_LEN + phnum * PHDR_LEN;
    let mut data_at = (notes_at + notes.len() as u64).next_multiple_of(PAGE as u64);

    let mut head = elf_header(u16::try_from(phnum).map_err(|_| io::ErrorKind::InvalidInput)?);
    head.extend(phdr(PT_NOTE, notes_at, 0, notes.len() as u64, 0));
    let mut loads = Vec::with_capacity(ram.len());
    for range in ram {
        let len = range.bytes.len() as u64;
        head.extend(phdr(PT_LOAD, data_at, range.gpa, len, 0b111));
        loads.push((data_at, range.bytes));
        data_at += len.next_multiple_of(PAGE as u64);
    }
    head.extend(&notes);
    out.write_all(&head)?;
    static ZEROES: [u8; PAGE] = [0; PAGE];
    for (at, bytes) in loads {
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            // Zero pages stay holes: the file reads them back as zeroes.
            // (A slice comparison is a memcmp: fast even in a debug build.)
            if page != &ZEROES[..page.len()] {
                out.seek(SeekFrom::Start(at + (i * PAGE) as u64))?;
                out.write_all(page)?;
            }
        }
    }
    // The file ends where the last segment does, holes and all.
    let end = out.seek(SeekFrom::End(0))?;
    if end < data_at {
        out.seek(SeekFrom::Start(data_at - 1))?;
        out.write_all(&[0])?;
    }
    out.flush()
}

fn elf_header(phnum: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(EHDR_LEN as usize);
    h.extend(b"\x7fELF");
    h.extend([2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    h.extend([0; 8]);
    h.extend(4u16.to_le_bytes()); // ET_CORE
    h.extend(62u16.to_le_bytes()); // EM_X86_64
    h.extend(1u32.to_le_bytes());
    h.extend(0u64.to_le_bytes()); // entry
    h.extend(EHDR_LEN.to_le_bytes()); // program headers follow
    h.extend(0u64.to_le_bytes()); // no section headers
    h.extend(0u32.to_le_bytes());
    h.extend((EHDR_LEN as u16).to_le_bytes());
    h.extend((PHDR_LEN as u16).to_le_bytes());
    h.extend(phnum.to_le_bytes());
    h.extend([0; 6]); // no sections
    h
}

fn phdr(kind: u32, offset: u64, addr: u64, len: u64, flags: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(PHDR_LEN as usize);
    p.extend(kind.to_le_bytes());
    p.extend(flags.to_le_bytes());
    p.extend(offset.to_le_bytes());
    p.extend(addr.to_le_bytes()); // vaddr: see the module's note
    p.extend(addr.to_le_bytes()); // paddr
    p.extend(len.to_le_bytes()); // filesz
    p.extend(len.to_le_bytes()); // memsz
    p.extend(if kind == PT_LOAD { PAGE as u64 } else { 4 }.to_le_bytes());
    p
}

/// Per vCPU, as QEMU orders them: `CORE`/`NT_PRSTATUS`, then `QEMU`.
fn notes(cpus: &[CpuState]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, cpu) in cpus.iter().enumerate() {
        note(&mut out, b"CORE\0", NT_PRSTATUS, &prstatus(index, cpu));
        note(&mut out, b"QEMU\0", 0, &qemu_state(cpu));
    }
    out
}

fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    out.extend((name.len() as u32).to_le_bytes());
    out.extend((desc.len() as u32).to_le_bytes());
    out.extend(kind.to_le_bytes());
    out.extend(name);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn prstatus(index: usize, cpu: &CpuState) -> Vec<u8> {
    let (r, s) = (&cpu.regs, &cpu.sregs);
    let mut p = vec![0u8; PRSTATUS_LEN];
    // QEMU numbers threads from 1, as GDB shows them.
    p[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&(index as u32 + 1).to_le_bytes());
    let user_regs: [u64; 27] = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rax, // orig_rax, as QEMU fills it
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for (i, value) in user_regs.iter().enumerate() {
        let at = PRSTATUS_REGS + i * 8;
        p[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    p
}

fn qemu_state(cpu: &CpuState) -> Vec<u8> {
    let (r, s) = (&cpu.regs, &cpu.sregs);
    let mut q = Vec::with_capacity(QEMU_STATE_LEN);
    q.extend(1u32.to_le_bytes());
    q.extend((QEMU_STATE_LEN as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        q.extend(v.to_le_bytes());
    }
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        q.extend(segment(seg));
    }
    for table in [&s.gdt, &s.idt] {
        q.extend(dtable(table));
    }
    for cr in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        q.extend(cr.to_le_bytes());
    }
    q.extend(cpu.kernel_gs_base.to_le_bytes());
    q
}

/// A segment as QEMU stores it: selector, limit, descriptor flags (the
/// attribute bits where a descriptor's second word keeps them), base.
fn segment(seg: &kvm_segment) -> Vec<u8> {
    let flags = u32::from(seg.type_) << 8
        | u32::from(seg.s) << 12
        | u32::from(seg.dpl) << 13
        | u32::from(seg.present) << 15
        | u32::from(seg.avl) << 20
        | u32::from(seg.l) << 21
        | u32::from(seg.db) << 22
        | u32::from(seg.g) << 23;
    let mut out = Vec::with_capacity(24);
    out.extend(u32::from(seg.selector).to_le_bytes());
    out.extend(seg.limit.to_le_bytes());
    out.extend(flags.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(seg.base.to_le_bytes());
    out
}

fn dtable(table: &kvm_dtable) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend(0u32.to_le_bytes());
    out.extend(u32::from(table.limit).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(table.base.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::Elf;

    #[test]
    fn a_core_has_registers_as_notes_and_ram_as_loads() {
        let mut low = vec![0u8; 3 * PAGE];
        low[PAGE + 5] = 0xaa;
        let high = vec![0x55u8; PAGE];
        let ram = [
            RamRange {
                gpa: 0,
                bytes: &low,
            },
            RamRange {
                gpa: 0x1_0000_0000,
                bytes: &high,
            },
        ];
        let mut cpu = CpuState::default();
        cpu.regs.rip = 0x10_1234;
        cpu.regs.rax = 77;
        cpu.sregs.cs.selector = 8;
        let cpus = [cpu.clone(), cpu];
        let mut file = io::Cursor::new(Vec::new());
        write(&mut file, &ram, &cpus).unwrap();
        let bytes = file.into_inner();

        let elf = Elf::parse(&bytes).unwrap();
        assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
        assert_eq!(elf.header.e_machine, goblin::elf::header::EM_X86_64);
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 2);
        assert_eq!(
            (loads[1].p_paddr, loads[1].p_vaddr),
            (0x1_0000_0000, 0x1_0000_0000)
        );
        let at = loads[0].p_offset as usize;
        assert_eq!(
            &bytes[at..at + 3 * PAGE],
            &low[..],
            "holes read back as zeroes"
        );
        let at = loads[1].p_offset as usize;
        assert_eq!(&bytes[at..at + PAGE], &high[..]);
        assert_eq!(bytes.len() as u64, loads[1].p_offset + PAGE as u64);

        let notes: Vec<_> = elf
            .iter_note_headers(&bytes)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(notes.len(), 4);
        let prstatus = &notes[0];
        assert_eq!((prstatus.name, prstatus.n_type), ("CORE", NT_PRSTATUS));
        assert_eq!(prstatus.desc.len(), PRSTATUS_LEN);
        let reg = |i: usize| {
            u64::from_le_bytes(
                prstatus.desc[PRSTATUS_REGS + i * 8..][..8]
                    .try_into()
                    .unwrap(),
            )
        };
        assert_eq!(
            (reg(16), reg(10), reg(17)),
            (0x10_1234, 77, 8),
            "rip, rax, cs"
        );
        assert_eq!(
            (notes[1].name, notes[1].desc.len()),
            ("QEMU", QEMU_STATE_LEN)
        );
    }
}
