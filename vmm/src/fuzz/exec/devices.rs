//! The device buses of a VM without an in-kernel irqchip.

use std::sync::{Arc, Mutex};

use ktvmm_abi::ports;
use ktvmm_testdevs::PciTestdev;
use ktvmm_testdevs::debug_exit::{self, DebugExit};
use ktvmm_testdevs::pc_testdev::{self, PcTestdevIomem, PcTestdevPorts};
use kvm_ioctls::VmFd;

use crate::bus::Bus;
use crate::devices::fw_cfg::{self, FwCfg};
use crate::devices::links::GuestPages;
use crate::devices::pm_timer::{self, PmTimer};
use crate::fuzz::program::RAM_SIZE;
use crate::memory::GuestMemory;
use crate::pci::{self, HostBridge, PciConfigIo, PciRoot};
use crate::vcpu::Buses;

/// The devices that need no interrupt controller: isa-debug-exit, fw_cfg,
/// the PM timer, pc-testdev's ports and memory window, PCI with the host
/// bridge and pci-testdev.
pub(super) fn bare_buses(vm: &Arc<VmFd>, memory: &GuestMemory, cpus: u16) -> Option<Arc<Buses>> {
    let buses = Arc::new(Buses::default());
    let place = |bus: &Bus, device: crate::bus::SharedDevice, base: u64, len: u64| {
        bus.insert(device, base, len).ok()
    };
    place(
        &buses.pio,
        Arc::new(Mutex::new(DebugExit)),
        u64::from(ports::DEBUG_EXIT),
        debug_exit::LEN,
    )?;
    place(
        &buses.pio,
        Arc::new(Mutex::new(FwCfg::new(RAM_SIZE, cpus))),
        u64::from(ports::FW_CFG),
        fw_cfg::LEN,
    )?;
    place(
        &buses.pio,
        Arc::new(Mutex::new(PmTimer::new())),
        u64::from(ports::PM_TIMER),
        pm_timer::LEN,
    )?;
    let pages = Arc::new(GuestPages::new(memory.clone()));
    place(
        &buses.pio,
        Arc::new(Mutex::new(PcTestdevPorts::new(pages))),
        u64::from(ports::PC_TESTDEV_REGISTER),
        pc_testdev::PORTS_LEN,
    )?;
    place(
        &buses.mmio,
        Arc::new(Mutex::new(PcTestdevIomem::default())),
        ktvmm_abi::layout::PC_TESTDEV_IOMEM,
        ktvmm_abi::layout::PC_TESTDEV_IOMEM_SIZE,
    )?;
    let root = PciRoot::new(Arc::downgrade(&buses), vm.clone());
    let mut testdev = PciTestdev::new();
    pci::assign_bars(
        ktvmm_testdevs::PciDevice::config_mut(&mut testdev),
        ktvmm_abi::pci::MMIO_WINDOW_START,
        u64::from(ktvmm_abi::pci::IO_WINDOW_START),
    );
    {
        let mut root = crate::bus::lock(&root);
        root.add(
            ktvmm_abi::pci::HOST_BRIDGE_SLOT,
            Arc::new(Mutex::new(HostBridge::default())),
        );
        root.add(
            ktvmm_abi::pci::PCI_TESTDEV_SLOT,
            Arc::new(Mutex::new(testdev)),
        );
    }
    place(
        &buses.pio,
        Arc::new(Mutex::new(PciConfigIo::new(root))),
        u64::from(ports::PCI_CONFIG_ADDRESS),
        pci::CONFIG_IO_PORTS,
    )?;
    Some(buses)
}
