//! The device buses of a VM without an in-kernel irqchip.

use std::sync::Arc;

use kvm_ioctls::VmFd;

use crate::program::RAM_SIZE;
use ktvmm_vmm::memory::GuestMemory;
use ktvmm_vmm::platform::bus::Buses;
use ktvmm_vmm::platform::{self, Machine};

/// The devices that need no interrupt controller: isa-debug-exit, fw_cfg,
/// the PM timer, pc-testdev's ports and memory window, PCI with the host
/// bridge and pci-testdev.
pub(super) fn bare_buses(vm: &Arc<VmFd>, memory: &GuestMemory, cpus: u16) -> Option<Arc<Buses>> {
    let buses = Arc::new(Buses::default());
    let machine = Machine {
        ram_bytes: RAM_SIZE,
        cpus,
        iommu: false,
    };
    let root = platform::place_platform_devices(&buses, vm, machine).ok()?;
    platform::place_pc_testdev(&buses, memory).ok()?;
    platform::add_pci_testdev(&root);
    Some(buses)
}
