//! The devices of a ktvmm VM, placed on its buses: the platform (COM1,
//! isa-debug-exit, the PCI host bridge and configuration ports) and, unless
//! left out, the test devices.

pub mod acpi;
pub mod bus;
pub mod devices;
pub mod irq_routing;
pub mod pci;

use std::io::Write;
use std::sync::{Arc, Mutex};

use ktvmm_abi::{layout, pci as slots, ports};
use ktvmm_testdevs::debug_exit::{self, DebugExit};
use ktvmm_testdevs::edu::{Edu, EduLinks};
use ktvmm_testdevs::pc_testdev::{self, PcTestdevIomem, PcTestdevIrqs, PcTestdevPorts};
use ktvmm_testdevs::pci::reg::INTERRUPT_LINE;
use ktvmm_testdevs::pci_testdev::PciTestdev;
use ktvmm_testdevs::{DmaMemory, InterruptLine, MsiSender, PciDevice};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{KvmCallError, kvm_err};
use crate::memory::GuestMemory;
use bus::BusError;
use bus::Buses;
use bus::{Bus, SharedDevice};
use devices::fw_cfg::{self, FwCfg};
use devices::links::{DeviceThread, GuestDma, GuestPages, KvmIrqLine, KvmMsi};
use devices::pm::{self, Pm1, Power, SleepRequest};
use devices::pm_timer::{self, PmTimer};
use devices::rtc::{self, Rtc};
use devices::serial::{Console, IrqLine, PostfixOutput, SerialDevice, UART_PORTS};
use devices::vtd::{self, Vtd};
use pci::{HostBridge, PciConfigIo, PciRoot};

/// Everything the vCPUs can reach besides RAM.
pub struct Platform {
    /// The port and memory buses.
    pub buses: Arc<Buses>,
    /// COM1, whose buffered output is written out when the VM ends.
    pub console: Arc<Mutex<SerialDevice>>,
    /// ACPI sleep requests and the events that wake the machine.
    pub power: Arc<Power>,
}

/// Why the machine's devices could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmCallError),
    /// A device could not be placed.
    #[error("placing {what}: {source}")]
    Bus {
        /// The device.
        what: &'static str,
        /// The error.
        source: BusError,
    },
    /// A host resource (thread, eventfd) was refused.
    #[error("{what}: {source}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> PlatformError {
    move |source| PlatformError::Host { what, source }
}

/// A UART's interrupt: an eventfd KVM turns into an edge on ISA IRQ `irq`.
fn uart_irq(vm: &VmFd, irq: u32) -> Result<IrqLine, PlatformError> {
    let fd =
        EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("creating a UART interrupt eventfd"))?;
    vm.register_irqfd(&fd, irq)
        .map_err(kvm_err("KVM_IRQFD for a UART"))?;
    Ok(IrqLine(fd))
}

/// What the firmware interfaces (fw_cfg) describe.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    /// RAM in bytes.
    pub ram_bytes: u64,
    /// vCPUs.
    pub cpus: u16,
    /// Whether there is a VT-d unit in front of the test devices.
    pub iommu: bool,
}

impl Platform {
    /// Creates the devices and places them.
    pub fn attach(
        vm: &Arc<VmFd>,
        memory: &GuestMemory,
        console: Box<dyn Write + Send>,
        testdevs: bool,
        machine: Machine,
    ) -> Result<Self, PlatformError> {
        let buses = Arc::new(Buses::default());

        let serial = Arc::new(Mutex::new(SerialDevice::new(
            uart_irq(vm, ports::COM1_IRQ)?,
            Console::new(console),
        )));
        place(
            &buses.pio,
            "COM1",
            serial.clone(),
            u64::from(ports::COM1),
            UART_PORTS,
        )?;
        let pci = place_platform_devices(&buses, vm, machine)?;
        let power = Arc::new(place_power_devices(&buses)?);

        if testdevs {
            // Only edu defers work; a bare platform has no use for the thread.
            let device_thread =
                DeviceThread::start().map_err(host_err("starting the device thread"))?;
            let testdev =
                SerialDevice::new(uart_irq(vm, ports::COM2_IRQ)?, PostfixOutput::default());
            place(
                &buses.pio,
                "COM2 (serial testdev)",
                Arc::new(Mutex::new(testdev)),
                u64::from(ports::COM2),
                UART_PORTS,
            )?;

            place_pc_testdev(&buses, memory)?;
            let lines = (0..u32::from(ports::PC_TESTDEV_IRQS))
                .map(|irq| Box::new(KvmIrqLine::new(vm.clone(), irq)) as Box<dyn InterruptLine>)
                .collect();
            place(
                &buses.pio,
                "pc-testdev IRQ ports",
                Arc::new(Mutex::new(PcTestdevIrqs::new(lines))),
                u64::from(ports::PC_TESTDEV_IRQ_BASE),
                u64::from(ports::PC_TESTDEV_IRQS),
            )?;

            let edu_gsi = slots::intx_gsi(slots::EDU_SLOT, 1);
            let ram: Arc<dyn DmaMemory> = Arc::new(GuestDma::new(memory.clone()));
            let msi: Arc<dyn MsiSender> = Arc::new(KvmMsi::new(vm.clone()));
            let (dma, msi) = if machine.iommu {
                let vtd = Vtd::new(ram);
                // Bus 0: the source ID is the device and function number.
                let edu_source = u16::from(slots::EDU_SLOT) << 3;
                let links = (vtd.dma(edu_source), vtd.msi(msi));
                place(
                    &buses.mmio,
                    "VT-d registers",
                    Arc::new(Mutex::new(vtd)),
                    vtd::BASE,
                    vtd::LEN,
                )?;
                links
            } else {
                (ram, msi)
            };
            let mut edu = Edu::new(EduLinks {
                intx: Arc::new(KvmIrqLine::new(vm.clone(), edu_gsi)),
                msi,
                dma,
                deferred: device_thread,
            });
            edu.config_mut().write(INTERRUPT_LINE, &[edu_gsi as u8]);
            add_pci_testdevs(&pci, edu);
        }
        Ok(Self {
            buses,
            console: serial,
            power,
        })
    }
}

/// Puts a device on a bus, or says which one did not fit.
fn place(
    bus: &Bus,
    what: &'static str,
    device: SharedDevice,
    base: u64,
    len: u64,
) -> Result<(), PlatformError> {
    bus.insert(device, base, len)
        .map_err(|source| PlatformError::Bus { what, source })
}

/// The devices every VM has that need no interrupt controller:
/// isa-debug-exit, fw_cfg, the ACPI PM timer, and PCI (the host bridge and
/// the configuration ports). Returns the PCI root.
pub fn place_platform_devices(
    buses: &Arc<Buses>,
    vm: &Arc<VmFd>,
    machine: Machine,
) -> Result<Arc<Mutex<PciRoot>>, PlatformError> {
    place(
        &buses.pio,
        "isa-debug-exit",
        Arc::new(Mutex::new(DebugExit)),
        u64::from(ports::DEBUG_EXIT),
        debug_exit::LEN,
    )?;
    place(
        &buses.pio,
        "fw_cfg",
        Arc::new(Mutex::new(FwCfg::new(machine.ram_bytes, machine.cpus))),
        u64::from(ports::FW_CFG),
        fw_cfg::LEN,
    )?;
    place(
        &buses.pio,
        "ACPI PM timer",
        Arc::new(Mutex::new(PmTimer::new())),
        u64::from(ports::PM_TIMER),
        pm_timer::LEN,
    )?;
    let pci = PciRoot::new(Arc::downgrade(buses), vm.clone());
    crate::platform::bus::lock(&pci).add(
        slots::HOST_BRIDGE_SLOT,
        Arc::new(Mutex::new(HostBridge::default())),
    );
    place(
        &buses.pio,
        "PCI configuration ports",
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        u64::from(ports::PCI_CONFIG_ADDRESS),
        pci::CONFIG_IO_PORTS,
    )?;
    Ok(pci)
}

/// The ACPI PM1 registers and the CMOS clock, whose alarm wakes the
/// machine from S3.
fn place_power_devices(buses: &Buses) -> Result<Power, PlatformError> {
    let request = Arc::new(SleepRequest::new());
    let pm1 = Arc::new(Mutex::new(Pm1::new(request.clone())));
    place(
        &buses.pio,
        "ACPI PM1 registers",
        pm1.clone(),
        u64::from(ports::PM_BASE),
        pm::LEN,
    )?;
    let rtc = Arc::new(Mutex::new(Rtc::new()));
    place(
        &buses.pio,
        "CMOS RTC",
        rtc.clone(),
        u64::from(ports::RTC),
        rtc::LEN,
    )?;
    Ok(Power::new(request, pm1, rtc))
}

/// pc-testdev's register ports and memory window (its IRQ ports need an
/// interrupt controller and are placed apart).
pub fn place_pc_testdev(buses: &Buses, memory: &GuestMemory) -> Result<(), PlatformError> {
    let pages = Arc::new(GuestPages::new(memory.clone()));
    place(
        &buses.pio,
        "pc-testdev ports",
        Arc::new(Mutex::new(PcTestdevPorts::new(pages))),
        u64::from(ports::PC_TESTDEV_REGISTER),
        pc_testdev::PORTS_LEN,
    )?;
    place(
        &buses.mmio,
        "pc-testdev iomem",
        Arc::new(Mutex::new(PcTestdevIomem::default())),
        layout::PC_TESTDEV_IOMEM,
        layout::PC_TESTDEV_IOMEM_SIZE,
    )
}

/// Puts pci-testdev in its slot, its BARs assigned as firmware would;
/// returns the next free memory and I/O addresses.
pub fn add_pci_testdev(root: &Mutex<PciRoot>) -> (u64, u64) {
    let mut pci_testdev = PciTestdev::new();
    let next = pci::assign_bars(
        pci_testdev.config_mut(),
        slots::MMIO_WINDOW_START,
        u64::from(slots::IO_WINDOW_START),
    );
    crate::platform::bus::lock(root)
        .add(slots::PCI_TESTDEV_SLOT, Arc::new(Mutex::new(pci_testdev)));
    next
}

/// Puts pci-testdev and `edu` in their slots, their BARs assigned as
/// firmware would.
fn add_pci_testdevs(root: &Mutex<PciRoot>, mut edu: Edu) {
    let (mmio, io) = add_pci_testdev(root);
    pci::assign_bars(edu.config_mut(), mmio, io);
    crate::platform::bus::lock(root).add(slots::EDU_SLOT, Arc::new(Mutex::new(edu)));
}
