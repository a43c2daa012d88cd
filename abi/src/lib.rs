//! The contract between ktvmm and the guests it boots with the ELF64 protocol.
//!
//! This crate is `no_std` and dependency-free so that both sides use the same
//! definitions: the VMM writes these structures and the guest library reads
//! them. `docs/boot-protocol.md` describes the same contract for people.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

/// Guest-physical memory layout set up by the VMM before the first instruction.
pub mod layout {
    /// Everything below this address belongs to the VMM; ELF segments must
    /// load at or above it.
    pub const RESERVED_END: u64 = 0x10_0000;
    /// The [`BootInfo`](crate::BootInfo) page.
    pub const BOOT_INFO_ADDR: u64 = 0x1000;
    /// The NUL-terminated command line.
    pub const CMDLINE_ADDR: u64 = 0x2000;
    /// Room for the command line including its NUL.
    pub const CMDLINE_MAX: usize = 0x1000;
    /// Level-4 page table (CR3).
    pub const PML4_ADDR: u64 = 0x3000;
    /// The one page-directory-pointer table (covers 512 GiB).
    pub const PDPT_ADDR: u64 = 0x4000;
    /// Page directories of 2 MiB pages, one page per GiB mapped.
    pub const PD_ADDR: u64 = 0x5000;
    /// Most GiB the identity map can cover (limits the PD area).
    pub const MAX_MAPPED_GIB: u64 = 64;
    /// The GDT shared by all CPUs (see [`gdt`](crate::gdt)).
    pub const GDT_ADDR: u64 = PD_ADDR + MAX_MAPPED_GIB * 0x1000;
    /// Room reserved for the GDT.
    pub const GDT_SIZE: u64 = 0x5000;
    /// Per-CPU 64-bit TSSs, `TSS_STRIDE` apart, CPU 0 first.
    pub const TSS_ADDR: u64 = GDT_ADDR + GDT_SIZE;
    /// Distance between two CPUs' TSSs.
    pub const TSS_STRIDE: u64 = 128;
    /// Most CPUs this layout has GDT and TSS room for.
    pub const MAX_CPUS: u32 = 1024;
    /// Start of the PCI/MMIO hole: RAM beyond it continues at 4 GiB.
    pub const MMIO_HOLE_START: u64 = 0xc000_0000;
    /// End of the MMIO hole.
    pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
    /// Size of each CPU's boot stack at the top of low RAM.
    pub const STACK_SIZE: u64 = 0x1_0000;
    /// Local APIC MMIO base (the architectural default).
    pub const LAPIC_ADDR: u64 = 0xfee0_0000;
    /// IOAPIC MMIO base (the architectural default).
    pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
    /// pc-testdev's 64 KiB MMIO buffer (no memory slot behind it: every
    /// access exits, which is what the emulator tests need).
    pub const PC_TESTDEV_IOMEM: u64 = 0xff00_0000;
    /// Size of that buffer.
    pub const PC_TESTDEV_IOMEM_SIZE: u64 = 0x1_0000;

    const _: () = assert!(TSS_ADDR + MAX_CPUS as u64 * TSS_STRIDE <= RESERVED_END);
    const _: () = assert!((crate::gdt::TSS_BASE as u64) + 16 * MAX_CPUS as u64 <= GDT_SIZE);
}

/// Selectors of the GDT at [`layout::GDT_ADDR`].
pub mod gdt {
    /// 64-bit kernel code, DPL 0.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data and stack, DPL 0.
    pub const KERNEL_DATA: u16 = 0x10;
    /// 32-bit user code, DPL 3 (present for the SYSRET layout).
    pub const USER_CODE32: u16 = 0x18;
    /// User data and stack, DPL 3 (use with RPL 3: `USER_DATA | 3`).
    pub const USER_DATA: u16 = 0x20;
    /// 64-bit user code, DPL 3 (use with RPL 3: `USER_CODE | 3`).
    pub const USER_CODE: u16 = 0x28;
    /// First TSS descriptor; CPU `i` uses `TSS_BASE + 16 * i`.
    pub const TSS_BASE: u16 = 0x30;

    /// The TSS selector of CPU `cpu` (what TR holds at entry).
    pub const fn tss_selector(cpu: u32) -> u16 {
        TSS_BASE + 16 * cpu as u16
    }
}

/// Fixed I/O ports and interrupt lines of the platform.
pub mod ports {
    /// COM1 16550 UART: the console.
    pub const COM1: u16 = 0x3f8;
    /// ISA IRQ of COM1.
    pub const COM1_IRQ: u32 = 4;
    /// isa-debug-exit: a write of `v` ends the VM with exit code `v`.
    pub const DEBUG_EXIT: u16 = 0xf4;
    /// COM2 16550 UART: the postfix serial testdev (`"<code>q"` exits).
    pub const COM2: u16 = 0x2f8;
    /// ISA IRQ of COM2.
    pub const COM2_IRQ: u32 = 3;
    /// pc-testdev: one 32-bit register, byte lanes at 0xe0-0xe3.
    pub const PC_TESTDEV_REGISTER: u16 = 0xe0;
    /// pc-testdev: 4-byte write of a guest-physical address flushes that page.
    pub const PC_TESTDEV_FLUSH_PAGE: u16 = 0xe4;
    /// pc-testdev: the same register again, for byte accesses, 0xe8-0xeb.
    pub const PC_TESTDEV_REGISTER_BYTES: u16 = 0xe8;
    /// pc-testdev: port `0x2000 + n` sets ISA IRQ `n` to (value != 0).
    pub const PC_TESTDEV_IRQ_BASE: u16 = 0x2000;
    /// Number of pc-testdev IRQ ports (IRQ 0 to 23).
    pub const PC_TESTDEV_IRQS: u16 = 24;
    /// PCI configuration mechanism #1: address register.
    pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
    /// fw_cfg selector (16-bit); the data port follows at +1.
    pub const FW_CFG: u16 = 0x510;
    /// ACPI PM1a event block (PIIX4's base, as QEMU places it).
    pub const PM_BASE: u16 = 0x600;
    /// ACPI PM timer.
    pub const PM_TIMER: u16 = PM_BASE + 8;
    /// CMOS RTC index port; the data port follows at +1.
    pub const RTC: u16 = 0x70;
    /// PCI configuration mechanism #1: data window (0xcfc-0xcff).
    pub const PCI_CONFIG_DATA: u16 = 0xcfc;
}

/// Where ktvmm puts PCI devices, and how their interrupts are routed.
pub mod pci {
    /// Slot (device number) of the host bridge on bus 0.
    pub const HOST_BRIDGE_SLOT: u8 = 0;
    /// Slot of pci-testdev.
    pub const PCI_TESTDEV_SLOT: u8 = 1;
    /// Slot of edu.
    pub const EDU_SLOT: u8 = 2;
    /// Memory BARs are assigned upwards from here...
    pub const MMIO_WINDOW_START: u64 = 0xc000_0000;
    /// ...up to here (the IOAPIC, LAPIC and pc-testdev follow).
    pub const MMIO_WINDOW_END: u64 = 0xfec0_0000;
    /// I/O BARs are assigned upwards from here...
    pub const IO_WINDOW_START: u16 = 0xc000;
    /// ...to the end of the port space.
    pub const IO_WINDOW_END: u32 = 0x1_0000;

    /// The IOAPIC input (GSI) that INTx pin `pin` (1 = INTA#) of the device
    /// in `slot` drives: level-triggered, active-high, swizzled over GSIs
    /// 16-19 like a PCI bridge does. ktvmm writes it to the device's
    /// Interrupt Line register too.
    pub const fn intx_gsi(slot: u8, pin: u8) -> u32 {
        16 + ((slot as u32 + pin as u32 - 1) % 4)
    }
}

/// `BootInfo::magic`: "KTVMMBI1" as a little-endian u64.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"KTVMMBI1");
/// `BootInfo::version` of this layout.
pub const BOOT_INFO_VERSION: u32 = 1;

/// What the VMM tells the guest, at [`layout::BOOT_INFO_ADDR`]; RDI points
/// here at entry. Addresses are guest-physical (identity-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`BOOT_INFO_VERSION`].
    pub version: u32,
    /// `size_of::<BootInfo>()` as written by the VMM.
    pub size: u32,
    /// Number of vCPUs; CPU indices are `0..cpu_count`, APIC ID = index.
    pub cpu_count: u32,
    /// Zero.
    pub reserved: u32,
    /// Total RAM in bytes.
    pub mem_size: u64,
    /// RAM is `[0, low_mem_end)`...
    pub low_mem_end: u64,
    /// ...plus `[4 GiB, high_mem_end)` when `high_mem_end` is non-zero.
    pub high_mem_end: u64,
    /// The command line (NUL-terminated; `cmdline_len` excludes the NUL).
    pub cmdline_addr: u64,
    /// Length of the command line in bytes.
    pub cmdline_len: u64,
    /// The initrd, if any (`initrd_len == 0` when none).
    pub initrd_addr: u64,
    /// Length of the initrd in bytes.
    pub initrd_len: u64,
    /// Lowest address the ELF image occupies.
    pub kernel_start: u64,
    /// First byte after the ELF image (including its BSS).
    pub kernel_end: u64,
    /// Start of RAM that nothing uses (page-aligned, after the image).
    pub free_start: u64,
    /// End of that free RAM (below the initrd and the stacks).
    pub free_end: u64,
    /// CPU `i`'s boot stack is `[stacks_base + i * stack_size, + stack_size)`.
    pub stacks_base: u64,
    /// Size of each boot stack.
    pub stack_size: u64,
    /// Address of the GDT.
    pub gdt_addr: u64,
    /// CPU `i`'s TSS is at `tss_addr + i * tss_stride`.
    pub tss_addr: u64,
    /// Distance between TSSs.
    pub tss_stride: u64,
    /// Physical address of the PML4 (the value in CR3).
    pub page_table_root: u64,
    /// Addresses `[0, identity_map_end)` are identity-mapped with 2 MiB pages.
    pub identity_map_end: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_layout_is_stable() {
        // The guest reads this at fixed offsets: moving a field is an ABI break.
        assert_eq!(core::mem::size_of::<BootInfo>(), 168);
        assert_eq!(core::mem::offset_of!(BootInfo, cpu_count), 16);
        assert_eq!(core::mem::offset_of!(BootInfo, mem_size), 24);
        assert_eq!(core::mem::offset_of!(BootInfo, cmdline_addr), 48);
        assert_eq!(core::mem::offset_of!(BootInfo, identity_map_end), 160);
        assert_eq!(&BOOT_INFO_MAGIC.to_le_bytes(), b"KTVMMBI1");
    }

    #[test]
    fn tss_selectors_follow_the_fixed_descriptors() {
        assert_eq!(gdt::tss_selector(0), 0x30);
        assert_eq!(gdt::tss_selector(2), 0x50);
    }

    #[test]
    fn intx_routing_swizzles_over_gsi_16_to_19() {
        assert_eq!(pci::intx_gsi(0, 1), 16);
        assert_eq!(pci::intx_gsi(pci::EDU_SLOT, 1), 18);
        assert_eq!(pci::intx_gsi(3, 2), 16);
    }
}
