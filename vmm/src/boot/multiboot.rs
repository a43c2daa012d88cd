//! Multiboot (version 1) kernels, such as kvm-unit-tests' x86 `.flat`
//! files (ELF32 images with a multiboot header) and any file whose header
//! gives its load addresses (ktest's ELF64 guests), entered in 32-bit protected
//! mode with paging off, EAX = 0x2BADB002 and EBX = the multiboot
//! information (memory sizes and map, command line, the initrd as module 0).
//!
//! The information goes where the ELF64 protocol keeps its boot info (two
//! pages above page 0, which kvm-unit-tests overwrites with its AP
//! trampoline); the sizes follow QEMU's multiboot loader, which is what
//! kvm-unit-tests was written against (`mem_upper` counts RAM above 1 MiB).

use std::ops::Range;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header;
use goblin::elf::program_header::{PT_LOAD, ProgramHeader};
use ktvmm_abi::layout;
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::loader::LoadError;
use crate::boot::long_mode;
use crate::memory::{GuestMemory, RamLayout};

/// In the kernel image: the header's magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// In EAX at entry: a multiboot loader started this kernel.
pub const LOADER_MAGIC: u32 = 0x2bad_b002;
/// The header lies 4-byte aligned in this many bytes at the file's start.
const SEARCH_LEN: usize = 8192;
/// Header flags 0-15 are requirements; ktvmm meets these: page-aligned
/// modules (0) and memory information (1). Video mode (2) is a wish, not
/// met, which the spec allows.
const UNDERSTOOD_REQUIREMENTS: u32 = 0b111;
/// Header flag 16: load addresses in the header (a.out kludge).
const FLAG_ADDRESSES: u32 = 1 << 16;

// Multiboot information flags.
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

// Where the information goes (inside the reserved first MiB).
const INFO_ADDR: u64 = layout::BOOT_INFO_ADDR;
const INFO_SIZE: usize = 88;
const MMAP_ADDR: u64 = INFO_ADDR + 0x100;
const MODULE_ADDR: u64 = INFO_ADDR + 0x200;
const LOADER_NAME_ADDR: u64 = INFO_ADDR + 0x280;
const MODULE_NAME_ADDR: u64 = INFO_ADDR + 0x300;
const MODULE_NAME_MAX: usize = 0xc00;
const GDT_ADDR: u64 = INFO_ADDR + 0xf00;

/// What the VMM writes for a multiboot kernel: the information page and
/// the command line page. The rest of low memory is the kernel's, so that
/// real-mode tests can be linked at 0x8000.
pub const RESERVED: Range<u64> = INFO_ADDR..layout::CMDLINE_ADDR + layout::CMDLINE_MAX as u64;
const LOADER_NAME: &[u8] = b"ktvmm\0";

/// Start of the EBDA-like hole below 640 KiB that QEMU's map reports.
const LOW_MEM_END: u64 = 0x9fc00;
/// The BIOS area the ACPI tables live in.
const BIOS_AREA: Range<u64> = 0xe0000..0x10_0000;

/// A multiboot kernel that passed inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootImage {
    /// Entry point (32-bit, physical).
    pub entry: u32,
    /// Guest-physical ranges of the PT_LOAD segments (memory size).
    pub segments: Vec<Range<u64>>,
    loads: Vec<Load>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Load {
    paddr: u64,
    offset: usize,
    filesz: usize,
}

impl MultibootImage {
    /// First byte after the image, BSS included.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(|s| s.end).max().unwrap_or(0)
    }
}

/// The header flags, when `bytes` has a valid multiboot header.
pub fn header_flags(bytes: &[u8]) -> Option<u32> {
    find_header(bytes).map(|(_, flags)| flags)
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at.checked_add(4)?)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The header's file offset and flags.
fn find_header(bytes: &[u8]) -> Option<(usize, u32)> {
    (0..SEARCH_LEN.min(bytes.len())).step_by(4).find_map(|at| {
        let (magic, flags, checksum) =
            (word(bytes, at)?, word(bytes, at + 4)?, word(bytes, at + 8)?);
        (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(checksum) == 0)
            .then_some((at, flags))
    })
}

/// Why no header was found: none at all, or one whose checksum is wrong
/// (named, with the value that would be right).
fn no_header(bytes: &[u8]) -> String {
    let bad_checksum = (0..SEARCH_LEN.min(bytes.len())).step_by(4).find_map(|at| {
        (word(bytes, at)? == HEADER_MAGIC).then_some(())?;
        Some((at, word(bytes, at + 4)?, word(bytes, at + 8)?))
    });
    match bad_checksum {
        Some((at, flags, checksum)) => format!(
            "the multiboot header at file offset {at:#x} has a bad checksum {checksum:#x} (magic + flags + checksum must be 0: with flags {flags:#x} it must be {:#x})",
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)
        ),
        None => "no multiboot header in the first 8 KiB".into(),
    }
}

/// Checks a multiboot kernel: the header, then either the load addresses
/// it carries or, without them, an ELF32 i386 executable's segments.
pub fn inspect(bytes: &[u8]) -> Result<MultibootImage, LoadError> {
    let (at, flags) = find_header(bytes).ok_or_else(|| LoadError::Malformed(no_header(bytes)))?;
    let unknown = flags & 0xffff & !UNDERSTOOD_REQUIREMENTS;
    if unknown != 0 {
        return Err(LoadError::Malformed(format!(
            "the multiboot header requires features ktvmm lacks (flags {unknown:#x})"
        )));
    }
    if flags & FLAG_ADDRESSES != 0 {
        let image = from_header_addresses(bytes, at)?;
        if bytes.starts_with(b"\x7fELF") {
            check_elf_agrees(bytes, &image)?;
        }
        return Ok(image);
    }
    inspect_elf32(bytes)
}

/// The image the header's load addresses describe (the "a.out kludge",
/// read as QEMU's loader reads it): the file from the header's position
/// back to `load_addr`, up to `load_end_addr`, then zeroes to `bss_end_addr`.
fn from_header_addresses(bytes: &[u8], at: usize) -> Result<MultibootImage, LoadError> {
    let field = |index: usize| {
        word(bytes, at + 4 * index).ok_or_else(|| {
            LoadError::Truncated("the multiboot header's address fields are cut short".into())
        })
    };
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (field(3)?, field(4)?, field(5)?, field(6)?, field(7)?);
    let bad = |what: String| Err(LoadError::Malformed(format!("multiboot header: {what}")));
    let Some(header_offset) = header_addr.checked_sub(load_addr) else {
        return bad(format!(
            "header_addr {header_addr:#x} lies below load_addr {load_addr:#x}"
        ));
    };
    let Some(offset) = at.checked_sub(header_offset as usize) else {
        return bad(format!(
            "load_addr {load_addr:#x} lies before the start of the file"
        ));
    };
    let filesz = if load_end == 0 {
        bytes.len() - offset
    } else {
        match load_end.checked_sub(load_addr) {
            Some(len) => len as usize,
            None => {
                return bad(format!(
                    "load_end_addr {load_end:#x} lies below load_addr {load_addr:#x}"
                ));
            }
        }
    };
    if offset + filesz > bytes.len() {
        return Err(LoadError::Truncated(format!(
            "the multiboot header loads {filesz:#x} bytes from file offset {offset:#x}, the file has {:#x}",
            bytes.len()
        )));
    }
    let start = u64::from(load_addr);
    let loaded_end = start + filesz as u64;
    let end = if bss_end == 0 {
        loaded_end
    } else if u64::from(bss_end) < loaded_end {
        return bad(format!(
            "bss_end_addr {bss_end:#x} lies below the end of the loaded bytes {loaded_end:#x}"
        ));
    } else {
        u64::from(bss_end)
    };
    if !(start..end).contains(&u64::from(entry)) {
        return Err(LoadError::EntryOutsideImage(u64::from(entry)));
    }
    Ok(MultibootImage {
        entry,
        segments: std::iter::once(start..end).collect(),
        loads: vec![Load {
            paddr: start,
            offset,
            filesz,
        }],
    })
}

/// An ELF file whose multiboot header carries load addresses is loaded by
/// those, byte for byte from the file: its segments must be where the
/// header puts them, or a multiboot loader would run a scrambled image.
fn check_elf_agrees(bytes: &[u8], image: &MultibootImage) -> Result<(), LoadError> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| LoadError::Malformed(e.to_string()))?;
    let load = &image.loads[0];
    let span = &image.segments[0];
    for ph in elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let implied = ph
            .p_paddr
            .checked_sub(load.paddr)
            .map(|delta| load.offset as u64 + delta);
        let fits = ph.p_paddr >= span.start
            && ph.p_paddr.saturating_add(ph.p_memsz) <= span.end
            && (ph.p_filesz == 0
                || (implied == Some(ph.p_offset)
                    && ph.p_paddr + ph.p_filesz <= load.paddr + load.filesz as u64));
        if !fits {
            return Err(LoadError::Malformed(format!(
                "the multiboot header's load addresses disagree with the ELF program headers: \
                 the segment at {:#x} (file offset {:#x}, {:#x} bytes) is not where the header loads [{:#x}, {:#x}) from file offset {:#x}",
                ph.p_paddr, ph.p_offset, ph.p_memsz, span.start, span.end, load.offset
            )));
        }
    }
    Ok(())
}

/// An ELF32 i386 executable, loaded by its program headers.
fn inspect_elf32(bytes: &[u8]) -> Result<MultibootImage, LoadError> {
    let header =
        goblin::elf::Elf::parse_header(bytes).map_err(|e| LoadError::Malformed(e.to_string()))?;
    if header.e_machine != header::EM_386 {
        return Err(LoadError::WrongMachine {
            machine: header::machine_to_str(header.e_machine),
            code: header.e_machine,
        });
    }
    if header.e_type != header::ET_EXEC {
        return Err(LoadError::NotExecutable(header::et_to_str(header.e_type)));
    }
    let phnum = usize::from(header.e_phnum);
    let table_len = phnum * usize::from(header.e_phentsize);
    let phoff = usize::try_from(header.e_phoff).unwrap_or(usize::MAX);
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > bytes.len())
    {
        return Err(LoadError::Truncated(
            "the program header table is cut short".into(),
        ));
    }
    let ctx = Ctx::new(Container::Little, Endian::Little);
    let headers = ProgramHeader::parse(bytes, phoff, phnum, ctx)
        .map_err(|e| LoadError::Malformed(e.to_string()))?;
    let mut segments = Vec::new();
    let mut loads = Vec::new();
    for ph in headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD && ph.p_memsz > 0)
    {
        let offset = usize::try_from(ph.p_offset).unwrap_or(usize::MAX);
        let filesz = usize::try_from(ph.p_filesz).unwrap_or(usize::MAX);
        if offset
            .checked_add(filesz)
            .is_none_or(|end| end > bytes.len())
        {
            return Err(LoadError::Truncated(format!(
                "segment at file offset {offset:#x} needs {filesz:#x} bytes, the file has {:#x}",
                bytes.len()
            )));
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(LoadError::Malformed(format!(
                "segment at {:#x} has more file bytes than memory bytes",
                ph.p_paddr
            )));
        }
        let end = ph.p_paddr + ph.p_memsz;
        if end > 1 << 32 {
            return Err(LoadError::Malformed(format!(
                "segment at {:#x} runs past 4 GiB",
                ph.p_paddr
            )));
        }
        segments.push(ph.p_paddr..end);
        loads.push(Load {
            paddr: ph.p_paddr,
            offset,
            filesz,
        });
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let entry = header.e_entry;
    if !segments.iter().any(|s| s.contains(&entry)) {
        return Err(LoadError::EntryOutsideImage(entry));
    }
    Ok(MultibootImage {
        entry: entry as u32,
        segments,
        loads,
    })
}

/// Copies the segments into guest memory (BSS stays zero: memory is fresh).
/// Call [`crate::boot::loader::check_placement`] first.
pub fn load(
    memory: &GuestMemory,
    bytes: &[u8],
    image: &MultibootImage,
) -> Result<(), vm_memory::GuestMemoryError> {
    for load in &image.loads {
        memory.write_slice(
            &bytes[load.offset..load.offset + load.filesz],
            GuestAddress(load.paddr),
        )?;
    }
    Ok(())
}

/// Where the initrd (module 0) goes: the first page after the kernel, as
/// QEMU places modules.
pub fn module_range(image: &MultibootImage, len: u64) -> Range<u64> {
    let start = image.end().next_multiple_of(0x1000);
    start..start + len
}

/// The guest's command line: the kernel's name first, because
/// kvm-unit-tests takes argv[0] from it, as GRUB and QEMU pass it.
pub fn command_line(kernel_name: &str, append: &str) -> String {
    if append.is_empty() {
        kernel_name.to_string()
    } else {
        format!("{kernel_name} {append}")
    }
}

/// Writes the multiboot information; returns its address (for EBX).
pub fn write_info(
    memory: &GuestMemory,
    ram: &RamLayout,
    cmdline: &str,
    module: Option<(Range<u64>, &str)>,
) -> Result<u64, vm_memory::GuestMemoryError> {
    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.truncate(layout::CMDLINE_MAX - 1);
    cmdline_bytes.push(0);
    memory.write_slice(&cmdline_bytes, GuestAddress(layout::CMDLINE_ADDR))?;
    memory.write_slice(LOADER_NAME, GuestAddress(LOADER_NAME_ADDR))?;

    let mut map = vec![
        (0, LOW_MEM_END, 1u32),
        (LOW_MEM_END, 0xa0000 - LOW_MEM_END, 2),
        (BIOS_AREA.start, BIOS_AREA.end - BIOS_AREA.start, 2),
        (layout::RESERVED_END, ram.low_end - layout::RESERVED_END, 1),
    ];
    if let Some(high_end) = ram.high_end {
        map.push((layout::MMIO_HOLE_END, high_end - layout::MMIO_HOLE_END, 1));
    }
    let mut mmap = Vec::new();
    for (base, len, kind) in map {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    memory.write_slice(&mmap, GuestAddress(MMAP_ADDR))?;

    let mut flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    let mut mods_count = 0u32;
    if let Some((range, name)) = module {
        let mut name_bytes = name.as_bytes().to_vec();
        name_bytes.truncate(MODULE_NAME_MAX - 1);
        name_bytes.push(0);
        memory.write_slice(&name_bytes, GuestAddress(MODULE_NAME_ADDR))?;
        let entry: Vec<u8> = [
            range.start as u32,
            range.end as u32,
            MODULE_NAME_ADDR as u32,
            0,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
        memory.write_slice(&entry, GuestAddress(MODULE_ADDR))?;
        flags |= INFO_MODS;
        mods_count = 1;
    }

    let mut info = [0u8; INFO_SIZE];
    let mut put = |at: usize, value: u32| info[at..at + 4].copy_from_slice(&value.to_le_bytes());
    put(0, flags);
    put(4, (LOW_MEM_END / 1024) as u32);
    put(8, ((ram.low_end - layout::RESERVED_END) / 1024) as u32);
    put(16, layout::CMDLINE_ADDR as u32);
    put(20, mods_count);
    put(24, MODULE_ADDR as u32);
    put(44, mmap.len() as u32);
    put(48, MMAP_ADDR as u32);
    put(64, LOADER_NAME_ADDR as u32);
    memory.write_slice(&info, GuestAddress(INFO_ADDR))?;
    Ok(INFO_ADDR)
}

/// Writes the GDT the entry state's selectors refer to (null, 32-bit code,
/// data), for a kernel that reloads a segment before its own `lgdt`.
pub fn write_gdt(memory: &GuestMemory) -> Result<u16, vm_memory::GuestMemoryError> {
    let gdt: Vec<u8> = [
        0,
        long_mode::descriptor(&code32()),
        long_mode::descriptor(&long_mode::kernel_data()),
    ]
    .iter()
    .flat_map(|d: &u64| d.to_le_bytes())
    .collect();
    memory.write_slice(&gdt, GuestAddress(GDT_ADDR))?;
    Ok(gdt.len() as u16 - 1)
}

fn code32() -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        l: 0,
        db: 1,
        ..long_mode::kernel_code()
    }
}

/// The BSP's special registers at entry: flat 32-bit protected mode,
/// paging off.
pub fn sregs(mut sregs: kvm_sregs, gdt_limit: u16) -> kvm_sregs {
    let data = long_mode::kernel_data();
    sregs.cs = code32();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // PE and ET only, as a multiboot loader leaves them.
    sregs.cr0 = long_mode::CR0_PE | long_mode::CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// The BSP's general registers at entry.
pub fn regs(entry: u32, info: u64) -> kvm_regs {
    kvm_regs {
        rip: u64::from(entry),
        rax: u64::from(LOADER_MAGIC),
        rbx: info,
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::test_images::elf32_multiboot;

    #[test]
    fn the_header_is_found_only_when_valid() {
        let image = elf32_multiboot(0x40_0000, &[0xf4], 0);
        assert_eq!(header_flags(&image), Some(0));
        let mut bad = image.clone();
        let at = bad
            .windows(4)
            .position(|w| w == HEADER_MAGIC.to_le_bytes())
            .unwrap();
        bad[at + 8] ^= 1;
        assert_eq!(header_flags(&bad), None);
        assert_eq!(header_flags(b"short"), None);
    }

    #[test]
    fn an_image_loads_where_its_headers_say() {
        let bytes = elf32_multiboot(0x40_0000, &[0x90, 0xf4], 0x1000);
        let image = inspect(&bytes).unwrap();
        assert_eq!(image.entry, 0x40_0000);
        assert_eq!(image.end(), 0x40_0000 + 2 + 0x1000);
        let ram = RamLayout::new(16).unwrap();
        let memory = ram.allocate().unwrap();
        load(&memory, &bytes, &image).unwrap();
        let code: [u8; 2] = memory.read_obj(GuestAddress(0x40_0000)).unwrap();
        assert_eq!(code, [0x90, 0xf4]);
        assert_eq!(module_range(&image, 10), 0x40_2000..0x40_200a);
    }

    #[test]
    fn bad_images_are_refused() {
        let mut no_header = elf32_multiboot(0x40_0000, &[0xf4], 0);
        let at = no_header
            .windows(4)
            .position(|w| w == HEADER_MAGIC.to_le_bytes())
            .unwrap();
        no_header[at] = 0;
        assert!(inspect(&no_header).is_err());
        let truncated = &elf32_multiboot(0x40_0000, &[0xf4; 64], 0)[..0x60];
        assert!(inspect(truncated).is_err());
    }

    use crate::boot::test_images::{elf64, multiboot_header_with_addresses};
    use crate::boot::{Kernel, Protocol};

    const AT: u32 = 0x40_0000;

    #[test]
    fn a_flat_image_loads_by_its_header_addresses() {
        // Header at the start of the file; code right after it.
        let code = [0x90, 0xf4];
        let mut bytes = multiboot_header_with_addresses([AT, AT, 0, AT + 0x2000, AT + 32]);
        bytes.extend_from_slice(&code);
        let Ok(Kernel::Multiboot(image)) = Kernel::inspect(&bytes) else {
            panic!("a flat multiboot file boots the multiboot way");
        };
        assert_eq!(image.entry, AT + 32);
        assert_eq!(image.end(), u64::from(AT) + 0x2000);
        assert_eq!(image.segments.len(), 1);
        let ram = RamLayout::new(16).unwrap();
        let memory = ram.allocate().unwrap();
        load(&memory, &bytes, &image).unwrap();
        let loaded: [u8; 2] = memory.read_obj(GuestAddress(u64::from(AT) + 32)).unwrap();
        assert_eq!(loaded, code);
    }

    #[test]
    fn an_elf64_with_header_addresses_boots_either_way() {
        // The header opens the segment, as in ktest's images.
        let header = multiboot_header_with_addresses([AT, AT, AT + 34, AT + 0x1000, AT + 32]);
        let code: Vec<u8> = header.iter().copied().chain([0x90, 0xf4]).collect();
        let bytes = elf64(u64::from(AT), &code, 0x1000 - 34);
        assert!(matches!(Kernel::inspect(&bytes), Ok(Kernel::Elf64(_))));
        let Ok(Kernel::Multiboot(image)) = Kernel::inspect_as(&bytes, Some(Protocol::Multiboot))
        else {
            panic!("its multiboot header is usable");
        };
        assert_eq!(image.entry, AT + 32);

        // A header that puts itself 8 bytes into the image loads the file
        // 8 bytes off from where the ELF headers put it.
        let header = multiboot_header_with_addresses([AT + 8, AT, AT + 34, 0, AT + 32]);
        let code: Vec<u8> = header.iter().copied().chain([0x90, 0xf4]).collect();
        let bytes = elf64(u64::from(AT), &code, 0);
        let err = Kernel::inspect_as(&bytes, Some(Protocol::Multiboot)).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn bad_header_addresses_are_refused() {
        let flat = |addresses: [u32; 5]| {
            let mut bytes = multiboot_header_with_addresses(addresses);
            bytes.extend_from_slice(&[0xf4; 16]);
            inspect(&bytes).map(|_| ()).unwrap_err().to_string()
        };
        assert!(flat([AT, AT + 4, 0, 0, AT + 32]).contains("below load_addr"));
        assert!(flat([AT + 64, AT, 0, 0, AT + 32]).contains("before the start"));
        assert!(flat([AT, AT, AT - 1, 0, AT + 32]).contains("load_end_addr"));
        assert!(flat([AT, AT, AT + 4096, 0, AT + 32]).contains("truncated"));
        assert!(flat([AT, AT, AT + 40, AT + 8, AT + 32]).contains("bss_end_addr"));
        assert!(flat([AT, AT, 0, 0, AT + 4096]).contains("entry"));
        let cut = &multiboot_header_with_addresses([AT, AT, 0, 0, AT])[..24];
        assert!(inspect(cut).is_err());
    }

    #[test]
    fn the_information_matches_qemus() {
        let ram = RamLayout::new(128).unwrap();
        let memory = ram.allocate().unwrap();
        let info = write_info(
            &memory,
            &ram,
            "x86/msr.flat -v",
            Some((0x50_0000..0x50_0010, "env")),
        )
        .unwrap();
        let word = |addr: u64| memory.read_obj::<u32>(GuestAddress(addr)).unwrap();
        let flags = word(info);
        assert_eq!(
            flags & (INFO_MEM | INFO_CMDLINE | INFO_MODS | INFO_MMAP),
            0x4d
        );
        assert_eq!(word(info + 4), 639);
        assert_eq!(word(info + 8), 127 * 1024);
        assert_eq!(word(info + 20), 1);
        let module = u64::from(word(info + 24));
        assert_eq!((word(module), word(module + 4)), (0x50_0000, 0x50_0010));
        let mut cmdline = [0u8; 16];
        memory
            .read_slice(&mut cmdline, GuestAddress(u64::from(word(info + 16))))
            .unwrap();
        assert_eq!(&cmdline, b"x86/msr.flat -v\0");
        let mmap_len = word(info + 44);
        assert_eq!(mmap_len, 4 * 24);
        let last = u64::from(word(info + 48)) + 3 * 24;
        assert_eq!(
            memory.read_obj::<u64>(GuestAddress(last + 4)).unwrap(),
            1 << 20
        );
        assert_eq!(
            memory.read_obj::<u64>(GuestAddress(last + 12)).unwrap(),
            127 << 20
        );
    }

    #[test]
    fn kut_names_itself_first() {
        assert_eq!(command_line("msr.flat", ""), "msr.flat");
        assert_eq!(command_line("msr.flat", "a b"), "msr.flat a b");
    }
}
