//! The two boot protocols, chosen from the kernel file itself unless the
//! user names one: ELF64 guests start every vCPU in long mode (ktvmm's
//! protocol, `docs/boot-protocol.md`); multiboot kernels (ELF32 with a
//! multiboot header, or any file whose header carries load addresses)
//! start the BSP in 32-bit protected mode and leave the APs waiting for
//! INIT/SIPI, as kvm-unit-tests expects. An ELF64 file can speak both (ktest
//! guests do); it boots as ELF64 unless multiboot is asked for.

pub mod loader;
pub mod long_mode;
pub mod multiboot;
pub mod plan;
pub mod test_images;

use std::ops::Range;

use ktvmm_abi::layout;
use kvm_bindings::{KVM_MP_STATE_RUNNABLE, kvm_fpu, kvm_mp_state};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{GuestWriteError, KvmCallError, kvm_err, mem_err};
use crate::memory::{GuestMemory, RamLayout};
use crate::platform::acpi;
use loader::{Elf64Image, LoadError, ReservedRange};
use multiboot::MultibootImage;
use plan::{BootPlan, PlanError};

/// Why a kernel could not be placed, loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image is unusable.
    #[error("{name}: {source}")]
    Image {
        /// The image's name.
        name: String,
        /// What is wrong.
        source: LoadError,
    },
    /// The boot data does not fit.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A KVM call setting up a vCPU failed.
    #[error(transparent)]
    Kvm(#[from] KvmCallError),
    /// Boot data could not be written.
    #[error(transparent)]
    GuestWrite(#[from] GuestWriteError),
}

/// A kernel that passed inspection, by protocol.
#[derive(Debug)]
pub enum Kernel {
    /// ktvmm's long-mode protocol.
    Elf64(Elf64Image),
    /// Multiboot v1.
    Multiboot(MultibootImage),
}

/// A boot protocol (`ktvmm run --boot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// ktvmm's long-mode protocol.
    Elf64,
    /// Multiboot v1.
    Multiboot,
}

impl Protocol {
    /// How `--boot` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Elf64 => "elf64",
            Protocol::Multiboot => "multiboot",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            _ if text == Protocol::Elf64.name() => Ok(Protocol::Elf64),
            _ if text == Protocol::Multiboot.name() => Ok(Protocol::Multiboot),
            _ => Err(format!(
                "'{text}' is not a boot protocol (elf64, multiboot)"
            )),
        }
    }
}

impl Kernel {
    /// Recognises the protocol and checks the image.
    pub fn inspect(bytes: &[u8]) -> Result<Self, LoadError> {
        Self::inspect_as(bytes, None)
    }

    /// Checks the image for `protocol`, or for the one the file calls for.
    pub fn inspect_as(bytes: &[u8], protocol: Option<Protocol>) -> Result<Self, LoadError> {
        let elf64 = bytes.starts_with(b"\x7fELF") && bytes.get(4) == Some(&2);
        let protocol = protocol.unwrap_or(if !elf64 && multiboot::header_flags(bytes).is_some() {
            Protocol::Multiboot
        } else {
            Protocol::Elf64
        });
        match protocol {
            Protocol::Multiboot => multiboot::inspect(bytes).map(Kernel::Multiboot),
            Protocol::Elf64 => loader::inspect_elf64(bytes).map(Kernel::Elf64),
        }
    }
}

/// Where everything goes, decided before KVM is touched.
#[derive(Debug)]
pub enum Placement {
    /// ELF64: stacks, initrd and boot info per [`BootPlan`].
    Elf64 {
        /// The image.
        image: Elf64Image,
        /// The plan.
        plan: BootPlan,
        /// The command line.
        cmdline: String,
    },
    /// Multiboot: the image, module 0 after it.
    Multiboot {
        /// The image.
        image: MultibootImage,
        /// Where the initrd goes, if there is one.
        module: Option<Range<u64>>,
        /// The command line the kernel gets (its name first).
        cmdline: String,
        /// The RAM layout, for the memory map.
        ram: RamLayout,
    },
}

/// What the vCPUs' entry state refers to.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    gdt_limit: u16,
    info: u64,
}

/// Checks that the kernel, initrd and boot data fit in `ram`.
pub fn place(
    kernel: Kernel,
    ram: RamLayout,
    cpus: u32,
    initrd_len: u64,
    kernel_name: &str,
    append: &str,
) -> Result<Placement, BootError> {
    let image_err = |source| BootError::Image {
        name: kernel_name.to_string(),
        source,
    };
    match kernel {
        Kernel::Elf64(image) => {
            plan::check_cmdline(append)?;
            let plan = BootPlan::new(ram, cpus, initrd_len)?;
            loader::check_placement(&image.segments, ram.low_end, &plan.reserved())
                .map_err(image_err)?;
            Ok(Placement::Elf64 {
                image,
                plan,
                cmdline: append.to_string(),
            })
        }
        Kernel::Multiboot(image) => {
            let cmdline = multiboot::command_line(kernel_name, append);
            plan::check_cmdline(&cmdline)?;
            let reserved = [
                ReservedRange {
                    range: multiboot::RESERVED,
                    what: "multiboot information",
                },
                ReservedRange {
                    range: acpi::BASE..acpi::END,
                    what: "ACPI tables",
                },
            ];
            loader::check_placement(&image.segments, ram.low_end, &reserved).map_err(image_err)?;
            let module = (initrd_len > 0).then(|| multiboot::module_range(&image, initrd_len));
            if module.as_ref().is_some_and(|m| m.end > ram.low_end) {
                return Err(PlanError::TooSmall {
                    mib: ram.size >> 20,
                    cpus,
                    initrd_len,
                }
                .into());
            }
            Ok(Placement::Multiboot {
                image,
                module,
                cmdline,
                ram,
            })
        }
    }
}

impl Placement {
    /// Loads the kernel and initrd and writes the boot structures.
    pub fn write(
        &self,
        memory: &GuestMemory,
        kernel: &[u8],
        initrd: Option<(&[u8], &str)>,
        cpus: u32,
        iommu: bool,
    ) -> Result<Entry, BootError> {
        let image_err = |source| BootError::Image {
            name: "the kernel".into(),
            source,
        };
        let initrd_at = match self {
            Placement::Elf64 { plan, .. } => plan.initrd.as_ref().map(|r| r.start),
            Placement::Multiboot { module, .. } => module.as_ref().map(|r| r.start),
        };
        match self {
            Placement::Elf64 { .. } => loader::load_elf64(memory, kernel).map_err(image_err)?,
            Placement::Multiboot { image, .. } => {
                multiboot::load(memory, kernel, image).map_err(mem_err("the kernel"))?
            }
        }
        if let (Some((bytes, _)), Some(at)) = (initrd, initrd_at) {
            memory
                .write_slice(bytes, GuestAddress(at))
                .map_err(mem_err("the initrd"))?;
        }
        acpi::write_tables(memory, cpus, iommu).map_err(mem_err("ACPI tables"))?;
        match self {
            Placement::Elf64 {
                image,
                plan,
                cmdline,
            } => {
                long_mode::write_page_tables(memory, plan.ram.identity_map_end())
                    .map_err(mem_err("page tables"))?;
                let gdt_limit =
                    long_mode::write_gdt_and_tss(memory, cpus, |cpu| plan.stack_top(cpu))
                        .map_err(mem_err("the GDT"))?;
                let info = plan.boot_info(image, cmdline.len());
                plan::write_boot_info(memory, &info, cmdline).map_err(mem_err("boot info"))?;
                Ok(Entry {
                    gdt_limit,
                    info: layout::BOOT_INFO_ADDR,
                })
            }
            Placement::Multiboot {
                module,
                cmdline,
                ram,
                ..
            } => {
                let module = module
                    .clone()
                    .map(|range| (range, initrd.map_or("", |(_, name)| name)));
                let info = multiboot::write_info(memory, ram, cmdline, module)
                    .map_err(mem_err("multiboot information"))?;
                let gdt_limit = multiboot::write_gdt(memory).map_err(mem_err("the GDT"))?;
                Ok(Entry { gdt_limit, info })
            }
        }
    }

    /// Puts vCPU `cpu` in its entry state.
    pub fn set_up_vcpu(&self, fd: &VcpuFd, cpu: u32, entry: Entry) -> Result<(), BootError> {
        fd.set_fpu(&kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_SET_FPU"))?;
        match self {
            Placement::Elf64 { image, plan, .. } => {
                let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
                fd.set_sregs(&long_mode::sregs(sregs, cpu, entry.gdt_limit))
                    .map_err(kvm_err("KVM_SET_SREGS"))?;
                fd.set_regs(&long_mode::regs(image.entry, cpu, plan.stack_top(cpu)))
                    .map_err(kvm_err("KVM_SET_REGS"))?;
                if cpu != 0 {
                    // With an in-kernel LAPIC, APs wait for INIT/SIPI; in
                    // this protocol every CPU starts at the entry point.
                    fd.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
                }
            }
            Placement::Multiboot { image, .. } => {
                // APs keep KVM's reset state and wait for INIT/SIPI.
                if cpu == 0 {
                    let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
                    fd.set_sregs(&multiboot::sregs(sregs, entry.gdt_limit))
                        .map_err(kvm_err("KVM_SET_SREGS"))?;
                    fd.set_regs(&multiboot::regs(image.entry, entry.info))
                        .map_err(kvm_err("KVM_SET_REGS"))?;
                }
            }
        }
        Ok(())
    }
}
