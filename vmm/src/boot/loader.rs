//! Kernel images: recognising the boot protocol, validating, loading.
//!
//! ELF64 x86-64 images boot with ktvmm's long-mode protocol and are loaded by
//! linux-loader. Before that, the image is inspected here so that a bad file
//! gets one precise message instead of a generic load failure, and so that no
//! segment lands outside RAM or on memory the VMM has reserved.

use std::io::Cursor;
use std::ops::Range;

use goblin::container::{Container, Ctx};
use goblin::elf::header;
use goblin::elf::program_header::{PT_GNU_STACK, PT_INTERP, PT_LOAD, PT_TLS, ProgramHeader};
use linux_loader::loader::{Elf, KernelLoader};

use crate::memory::GuestMemory;

/// A kernel image as read from a file (or from the binary, for bundled guests).
#[derive(Clone, Debug)]
pub struct KernelImage {
    /// What to call the image in messages: its path or `bundled:NAME`.
    pub name: String,
    /// The whole file.
    pub bytes: Vec<u8>,
}

/// Why an image cannot be booted. Messages do not repeat the file name: the
/// caller puts it in front.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// No ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// The file ends before something its headers describe.
    #[error("truncated ELF file: {0}")]
    Truncated(String),
    /// Headers that make no sense.
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    /// Built for another architecture.
    #[error("built for {machine} (e_machine {code}), but ktvmm boots x86-64 guests")]
    WrongMachine {
        /// Human name of the architecture.
        machine: &'static str,
        /// Raw `e_machine`.
        code: u16,
    },
    /// A 32-bit x86 image where an ELF64 one is needed.
    #[error(
        "32-bit ELF image: ktvmm boots ELF64 guests, and 32-bit kernels only with a multiboot header (by the multiboot protocol)"
    )]
    Elf32Unsupported,
    /// Not an executable (a relocatable object or shared library).
    #[error("ELF type {0} is not an executable (ET_EXEC)")]
    NotExecutable(&'static str),
    /// Nothing to load.
    #[error("no loadable (PT_LOAD) segments")]
    NoSegments,
    /// A segment overlaps the memory the VMM keeps for itself.
    #[error(
        "segment {start:#x}..{end:#x} overlaps VMM-reserved memory {reserved_start:#x}..{reserved_end:#x} ({what}); {advice}"
    )]
    Reserved {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// Start of the reserved range.
        reserved_start: u64,
        /// End of the reserved range.
        reserved_end: u64,
        /// What is reserved there.
        what: &'static str,
        /// What to do about it, for where the range is.
        advice: String,
    },
    /// A segment does not fit in guest RAM.
    #[error("segment {start:#x}..{end:#x} lies outside guest RAM (0..{ram_end:#x}); {advice}")]
    OutsideRam {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// End of RAM below the MMIO hole.
        ram_end: u64,
        /// What to do about it.
        advice: String,
    },
    /// The entry point is not inside a loaded segment.
    #[error("entry point {0:#x} is not inside any loadable segment")]
    EntryOutsideImage(u64),
    /// linux-loader refused the image.
    #[error("cannot load: {0}")]
    Load(String),
}

/// An ELF64 image that passed inspection.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf64Image {
    /// The entry point.
    pub entry: u64,
    /// Guest-physical ranges of the PT_LOAD segments (memory size, not file size).
    pub segments: Vec<Range<u64>>,
}

impl Elf64Image {
    /// Lowest address the image occupies.
    pub fn start(&self) -> u64 {
        self.segments.iter().map(|s| s.start).min().unwrap_or(0)
    }

    /// First byte after the image, BSS included.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(|s| s.end).max().unwrap_or(0)
    }
}

/// A range the VMM keeps for itself and that segments must avoid.
#[derive(Clone, Debug)]
pub struct ReservedRange {
    /// The addresses.
    pub range: Range<u64>,
    /// What lives there, for the message.
    pub what: &'static str,
}

/// Whether `bytes` is an ELF program for the host (a kselftest binary, say)
/// rather than a guest kernel: dynamically linked or position-independent,
/// or carrying the stack and TLS headers that only user-space toolchains
/// emit. Guest kernels, ktvmm's and kvm-unit-tests' alike, have none.
pub fn is_host_program(bytes: &[u8]) -> bool {
    let Ok(elf) = goblin::elf::Elf::parse(bytes) else {
        return false;
    };
    elf.header.e_type == header::ET_DYN
        || elf
            .program_headers
            .iter()
            .any(|ph| matches!(ph.p_type, PT_INTERP | PT_GNU_STACK | PT_TLS))
}

/// Whether `bytes` looks like a kernel ktvmm can boot: an executable ELF
/// file (any class; the loader has the final word) that is not a host
/// program.
pub fn is_guest_kernel(bytes: &[u8]) -> bool {
    goblin::elf::Elf::parse_header(bytes).is_ok_and(|h| h.e_type == header::ET_EXEC)
        && !is_host_program(bytes)
}

/// Reads the ELF headers and checks what can be checked without guest memory.
pub fn inspect_elf64(bytes: &[u8]) -> Result<Elf64Image, LoadError> {
    if bytes.len() < 4 || &bytes[..4] != header::ELFMAG {
        return Err(LoadError::NotElf);
    }
    if bytes.len() < header::SIZEOF_IDENT {
        return Err(LoadError::Truncated(
            "the ELF identification is cut short".into(),
        ));
    }
    let header = goblin::elf::Elf::parse_header(bytes).map_err(|e| {
        if bytes.len() < header::header64::SIZEOF_EHDR {
            LoadError::Truncated("the ELF header is cut short".into())
        } else {
            LoadError::Malformed(e.to_string())
        }
    })?;
    if header.e_machine != header::EM_X86_64 {
        if header.e_machine == header::EM_386 {
            return Err(LoadError::Elf32Unsupported);
        }
        return Err(LoadError::WrongMachine {
            machine: header::machine_to_str(header.e_machine),
            code: header.e_machine,
        });
    }
    let container = header
        .container()
        .map_err(|e| LoadError::Malformed(e.to_string()))?;
    let endian = header
        .endianness()
        .map_err(|e| LoadError::Malformed(e.to_string()))?;
    if container != Container::Big || !endian.is_little() {
        return Err(LoadError::Malformed(
            "an x86-64 image must be 64-bit little-endian".into(),
        ));
    }
    if header.e_type != header::ET_EXEC {
        return Err(LoadError::NotExecutable(header::et_to_str(header.e_type)));
    }

    let phnum = usize::from(header.e_phnum);
    let table_end = (header.e_phoff as usize)
        .checked_add(phnum * usize::from(header.e_phentsize))
        .filter(|&end| header.e_phoff <= bytes.len() as u64 && end <= bytes.len())
        .ok_or_else(|| LoadError::Truncated("the program header table is cut short".into()))?;
    if phnum > 0 && usize::from(header.e_phentsize) != goblin::elf64::program_header::SIZEOF_PHDR {
        return Err(LoadError::Malformed(format!(
            "program header entry size {} (expected {})",
            header.e_phentsize,
            goblin::elf64::program_header::SIZEOF_PHDR
        )));
    }
    debug_assert!(table_end <= bytes.len());
    let headers = ProgramHeader::parse(
        bytes,
        header.e_phoff as usize,
        phnum,
        Ctx::new(container, endian),
    )
    .map_err(|e| LoadError::Malformed(e.to_string()))?;

    let mut segments = Vec::new();
    for ph in headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let file_end = ph.p_offset.checked_add(ph.p_filesz);
        if file_end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(LoadError::Truncated(format!(
                "segment at file offset {:#x} needs {:#x} bytes, the file has {:#x}",
                ph.p_offset,
                ph.p_filesz,
                bytes.len()
            )));
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(LoadError::Malformed(format!(
                "segment at {:#x} has more file bytes than memory bytes",
                ph.p_paddr
            )));
        }
        let end = ph.p_paddr.checked_add(ph.p_memsz).ok_or_else(|| {
            LoadError::Malformed(format!("segment at {:#x} wraps around", ph.p_paddr))
        })?;
        if ph.p_memsz > 0 {
            segments.push(ph.p_paddr..end);
        }
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let entry = header.e_entry;
    if !segments.iter().any(|s| s.contains(&entry)) {
        return Err(LoadError::EntryOutsideImage(entry));
    }
    Ok(Elf64Image { entry, segments })
}

/// Checks the segments against RAM `[0, ram_end)` and the reserved ranges.
pub fn check_placement(
    segments: &[Range<u64>],
    ram_end: u64,
    reserved: &[ReservedRange],
) -> Result<(), LoadError> {
    for segment in segments {
        // Outside RAM first: a segment too large for any RAM also overlaps
        // something, and moving it would not help.
        if segment.end > ram_end {
            let size = segment.end - segment.start;
            let advice = if size > crate::memory::MAX_MEM_MIB << 20 {
                format!(
                    "its {size} bytes (p_memsz) are more than any guest's RAM ({} MiB at most): check how the guest is linked",
                    crate::memory::MAX_MEM_MIB
                )
            } else {
                "give the guest more memory with -m or link it lower".to_string()
            };
            return Err(LoadError::OutsideRam {
                start: segment.start,
                end: segment.end,
                ram_end,
                advice,
            });
        }
        if let Some(r) = reserved
            .iter()
            .find(|r| segment.start < r.range.end && r.range.start < segment.end)
        {
            let advice = if r.range.start == 0 {
                format!("link the guest at or above {:#x}", r.range.end)
            } else if r.range.end >= ram_end {
                "give the guest more memory with -m or link it lower".to_string()
            } else {
                format!(
                    "link the guest below {:#x} or at or above {:#x}",
                    r.range.start, r.range.end
                )
            };
            return Err(LoadError::Reserved {
                start: segment.start,
                end: segment.end,
                reserved_start: r.range.start,
                reserved_end: r.range.end,
                what: r.what,
                advice,
            });
        }
    }
    Ok(())
}

/// Copies the image's segments into guest memory (BSS stays zero: the memory
/// is fresh). Call [`check_placement`] first.
pub fn load_elf64(memory: &GuestMemory, bytes: &[u8]) -> Result<(), LoadError> {
    Elf::load(memory, None, &mut Cursor::new(bytes), None)
        .map(|_| ())
        .map_err(|e| LoadError::Load(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::test_images::elf64;

    #[test]
    fn host_programs_are_told_from_guests() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_host_program(&exe), "this test binary is a host program");
        assert!(!is_host_program(&elf64(0x10_0000, &[0xf4], 0)));
        assert!(!is_host_program(b"#!/bin/sh\nexit 0\n"));
        assert!(is_guest_kernel(&elf64(0x10_0000, &[0xf4], 0)));
        assert!(!is_guest_kernel(&exe));
        assert!(!is_guest_kernel(b"\x7fELF"));
    }

    #[test]
    fn accepts_a_minimal_executable() {
        let image = inspect_elf64(&elf64(0x10_0000, &[0xf4; 16], 0x100)).unwrap();
        assert_eq!(image.entry, 0x10_0000);
        assert_eq!(image.segments, vec![0x10_0000..0x10_0110]);
    }

    #[test]
    fn rejects_non_elf_and_truncation() {
        assert_eq!(inspect_elf64(b"#!/bin/sh\n"), Err(LoadError::NotElf));
        assert_eq!(inspect_elf64(b""), Err(LoadError::NotElf));
        let full = elf64(0x10_0000, &[0x90; 64], 0);
        for cut in [8, 40, 0x50, 0x80] {
            assert!(
                matches!(inspect_elf64(&full[..cut]), Err(LoadError::Truncated(_))),
                "cut at {cut}: {:?}",
                inspect_elf64(&full[..cut])
            );
        }
    }

    #[test]
    fn rejects_other_machines_and_types() {
        let mut aarch64 = elf64(0x10_0000, &[0; 4], 0);
        aarch64[18..20].copy_from_slice(&183u16.to_le_bytes());
        let err = inspect_elf64(&aarch64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "built for AARCH64 (e_machine 183), but ktvmm boots x86-64 guests"
        );
        let mut object = elf64(0x10_0000, &[0; 4], 0);
        object[16] = 1; // ET_REL
        assert_eq!(inspect_elf64(&object), Err(LoadError::NotExecutable("REL")));
        let mut i386 = elf64(0x10_0000, &[0; 4], 0);
        i386[18..20].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(inspect_elf64(&i386), Err(LoadError::Elf32Unsupported));
    }

    #[test]
    fn rejects_an_entry_outside_the_image() {
        let mut f = elf64(0x10_0000, &[0; 4], 0);
        f[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        assert_eq!(
            inspect_elf64(&f),
            Err(LoadError::EntryOutsideImage(0x20_0000))
        );
    }

    #[test]
    fn placement_respects_ram_and_reserved_ranges() {
        let reserved = [
            ReservedRange {
                range: 0..0x10_0000,
                what: "boot structures",
            },
            ReservedRange {
                range: 0x7f0_0000..0x800_0000,
                what: "boot stacks",
            },
        ];
        let ok = inspect_elf64(&elf64(0x10_0000, &[0; 4], 0x1000)).unwrap();
        check_placement(&ok.segments, 0x800_0000, &reserved).unwrap();

        let low = inspect_elf64(&elf64(0x8000, &[0; 4], 0)).unwrap();
        let err = check_placement(&low.segments, 0x800_0000, &reserved).unwrap_err();
        assert!(
            err.to_string()
                .contains("link the guest at or above 0x100000"),
            "{err}"
        );

        let stacks = inspect_elf64(&elf64(0x7f0_0000, &[0; 4], 0)).unwrap();
        assert!(matches!(
            check_placement(&stacks.segments, 0x800_0000, &reserved),
            Err(LoadError::Reserved {
                what: "boot stacks",
                ..
            })
        ));

        let high = inspect_elf64(&elf64(0x4000_0000, &[0; 4], 0)).unwrap();
        assert!(matches!(
            check_placement(&high.segments, 0x800_0000, &reserved),
            Err(LoadError::OutsideRam { .. })
        ));
    }
}
