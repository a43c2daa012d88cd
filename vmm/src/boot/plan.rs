//! Where everything goes in guest memory for the ELF64 protocol, and the
//! boot information the guest reads.
//!
//! Low RAM, bottom to top: the reserved first MiB (boot info, command line,
//! page tables, GDT, TSSs), the kernel image, free memory, the initrd, then
//! one boot stack per CPU at the very top.

use std::ops::Range;

use ktvmm_abi::{BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo, layout};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::boot::loader::{Elf64Image, ReservedRange};
use crate::memory::{GuestMemory, RamLayout};

const PAGE: u64 = 0x1000;

/// Why the guest's pieces do not fit.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The command line is longer than its page.
    #[error("command line is {len} bytes; at most {} fit", layout::CMDLINE_MAX - 1)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// The command line has a NUL byte, which would cut it short.
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    /// Stacks and initrd do not fit in low RAM.
    #[error(
        "{mib} MiB of RAM is too small for {cpus} vCPU stacks of {} KiB and a {initrd_len}-byte initrd; raise -m",
        layout::STACK_SIZE / 1024
    )]
    TooSmall {
        /// RAM size.
        mib: u64,
        /// vCPU count.
        cpus: u32,
        /// initrd size.
        initrd_len: u64,
    },
}

/// Placement of the guest's boot-time data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// The RAM layout.
    pub ram: RamLayout,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Start of CPU 0's stack; CPU i's stack follows at `i * STACK_SIZE`.
    pub stacks_base: u64,
    /// Where the initrd goes, if there is one.
    pub initrd: Option<Range<u64>>,
}

impl BootPlan {
    /// Places the stacks at the top of low RAM and the initrd below them.
    pub fn new(ram: RamLayout, cpus: u32, initrd_len: u64) -> Result<Self, PlanError> {
        let too_small = PlanError::TooSmall {
            mib: ram.size >> 20,
            cpus,
            initrd_len,
        };
        let stacks_base = ram
            .low_end
            .checked_sub(u64::from(cpus) * layout::STACK_SIZE)
            .filter(|&base| base >= layout::RESERVED_END)
            .ok_or(too_small.clone())?;
        let initrd = match initrd_len {
            0 => None,
            len => {
                let start = stacks_base
                    .checked_sub(len)
                    .map(|s| s & !(PAGE - 1))
                    .filter(|&s| s >= layout::RESERVED_END)
                    .ok_or(too_small)?;
                Some(start..start + len)
            }
        };
        Ok(Self {
            ram,
            cpus,
            stacks_base,
            initrd,
        })
    }

    /// Top of CPU `cpu`'s stack (16-byte aligned): its initial RSP.
    pub fn stack_top(&self, cpu: u32) -> u64 {
        self.stacks_base + (u64::from(cpu) + 1) * layout::STACK_SIZE
    }

    /// Memory the image must not overlap.
    pub fn reserved(&self) -> Vec<ReservedRange> {
        let mut reserved = vec![
            ReservedRange {
                range: 0..layout::RESERVED_END,
                what: "boot info, page tables, GDT",
            },
            ReservedRange {
                range: self.stacks_base..self.ram.low_end,
                what: "vCPU boot stacks",
            },
        ];
        if let Some(initrd) = &self.initrd {
            reserved.push(ReservedRange {
                range: initrd.clone(),
                what: "initrd",
            });
        }
        reserved
    }

    /// The boot information for an image that passed `check_placement`.
    pub fn boot_info(&self, image: &Elf64Image, cmdline_len: usize) -> BootInfo {
        let free_start = image.end().next_multiple_of(PAGE);
        let free_end = self
            .initrd
            .as_ref()
            .map_or(self.stacks_base, |initrd| initrd.start);
        let initrd = self.initrd.clone().unwrap_or(0..0);
        BootInfo {
            magic: BOOT_INFO_MAGIC,
            version: BOOT_INFO_VERSION,
            size: size_of::<BootInfo>() as u32,
            cpu_count: self.cpus,
            reserved: 0,
            mem_size: self.ram.size,
            low_mem_end: self.ram.low_end,
            high_mem_end: self.ram.high_end.unwrap_or(0),
            cmdline_addr: layout::CMDLINE_ADDR,
            cmdline_len: cmdline_len as u64,
            initrd_addr: initrd.start,
            initrd_len: initrd.end - initrd.start,
            kernel_start: image.start(),
            kernel_end: image.end(),
            free_start,
            free_end: free_end.max(free_start),
            stacks_base: self.stacks_base,
            stack_size: layout::STACK_SIZE,
            gdt_addr: layout::GDT_ADDR,
            tss_addr: layout::TSS_ADDR,
            tss_stride: layout::TSS_STRIDE,
            page_table_root: layout::PML4_ADDR,
            identity_map_end: self.ram.identity_map_end(),
        }
    }
}

/// Checks that `cmdline` fits its page.
pub fn check_cmdline(cmdline: &str) -> Result<(), PlanError> {
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(PlanError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.contains('\0') {
        return Err(PlanError::CmdlineNul);
    }
    Ok(())
}

/// `BootInfo` as plain bytes for guest memory.
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
struct BootInfoBytes(BootInfo);

// SAFETY: BootInfo is repr(C), made only of integers, with no padding (its
// layout is pinned by a test in ktvmm-abi), so every byte pattern is valid.
unsafe impl ByteValued for BootInfoBytes {}

/// Writes the boot information and the NUL-terminated command line.
pub fn write_boot_info(
    memory: &GuestMemory,
    info: &BootInfo,
    cmdline: &str,
) -> Result<(), vm_memory::GuestMemoryError> {
    memory.write_obj(BootInfoBytes(*info), GuestAddress(layout::BOOT_INFO_ADDR))?;
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    memory.write_slice(&bytes, GuestAddress(layout::CMDLINE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::loader::{check_placement, inspect_elf64};
    use crate::boot::test_images::elf64;

    const MIB: u64 = 1 << 20;

    #[test]
    fn stacks_sit_at_the_top_and_the_initrd_below() {
        let plan = BootPlan::new(RamLayout::new(64).unwrap(), 4, 5000).unwrap();
        assert_eq!(plan.stacks_base, 64 * MIB - 4 * layout::STACK_SIZE);
        assert_eq!(plan.stack_top(3), 64 * MIB);
        assert_eq!(plan.stack_top(0) % 16, 0);
        let initrd = plan.initrd.clone().unwrap();
        assert_eq!(initrd.start % PAGE, 0);
        assert!(initrd.end <= plan.stacks_base);
        assert_eq!(initrd.end - initrd.start, 5000);
    }

    #[test]
    fn too_many_cpus_for_the_memory_is_an_error() {
        let err = BootPlan::new(RamLayout::new(8).unwrap(), 1024, 0).unwrap_err();
        assert!(
            err.to_string().contains("too small for 1024 vCPU stacks"),
            "{err}"
        );
        assert!(BootPlan::new(RamLayout::new(8).unwrap(), 1, 8 * MIB).is_err());
    }

    #[test]
    fn boot_info_describes_the_plan() {
        let plan = BootPlan::new(RamLayout::new(32).unwrap(), 2, 100).unwrap();
        let image = inspect_elf64(&elf64(0x10_0000, &[0; 16], 0x2000)).unwrap();
        check_placement(&image.segments, plan.ram.low_end, &plan.reserved()).unwrap();
        let info = plan.boot_info(&image, 11);
        assert_eq!(info.cpu_count, 2);
        assert_eq!(info.mem_size, 32 * MIB);
        assert_eq!(info.free_start, 0x10_3000);
        assert_eq!(info.free_end, plan.initrd.as_ref().unwrap().start);
        assert_eq!(info.initrd_len, 100);
        assert_eq!(info.cmdline_len, 11);
        assert_eq!(info.identity_map_end, 4 << 30);

        let memory = plan.ram.allocate().unwrap();
        write_boot_info(&memory, &info, "hello world").unwrap();
        let back: BootInfoBytes = memory
            .read_obj(GuestAddress(layout::BOOT_INFO_ADDR))
            .unwrap();
        assert_eq!(back.0, info);
        let mut cmdline = [0u8; 12];
        memory
            .read_slice(&mut cmdline, GuestAddress(layout::CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmdline, b"hello world\0");
    }

    #[test]
    fn command_lines_must_fit_and_have_no_nul() {
        check_cmdline("a b c").unwrap();
        assert!(check_cmdline(&"x".repeat(layout::CMDLINE_MAX)).is_err());
        assert_eq!(check_cmdline("a\0b"), Err(PlanError::CmdlineNul));
    }
}
