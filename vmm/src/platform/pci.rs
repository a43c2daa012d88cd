//! PCI bus 0: configuration mechanism #1, the host bridge, and BAR windows
//! that follow whatever the guest programs.
//!
//! After every configuration write and every BAR access, the slot's BAR
//! windows on the port and memory buses, and its KVM ioeventfds, are made to
//! match the device's configuration space again. A BAR the guest moves onto
//! another device's window, an I/O BAR past 64 KiB, or one with decoding off
//! simply stops decoding; a BAR refused for an overlap is tried again after
//! every configuration write, so it decodes once the other window has gone.
//! One moved onto RAM is left to KVM, where the RAM slot wins: the window is
//! there but no access ever reaches it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use ktvmm_testdevs::pci::{BarKind, IoEventFd, PciConfig, PciDevice};
use ktvmm_testdevs::{Action, BusDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::platform::bus::Buses;
use crate::platform::bus::{Bus, lock};

/// A PCI device shared between the root and its BAR windows.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Intel 440FX host bridge IDs, as QEMU's default PC machine shows them.
const HOST_BRIDGE_VENDOR: u16 = 0x8086;
const HOST_BRIDGE_DEVICE: u16 = 0x1237;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// The host bridge at 00.0: a configuration space and nothing else.
pub struct HostBridge(PciConfig);

impl Default for HostBridge {
    fn default() -> Self {
        Self(PciConfig::new(
            HOST_BRIDGE_VENDOR,
            HOST_BRIDGE_DEVICE,
            CLASS_HOST_BRIDGE,
            2,
        ))
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.0
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, _data: &mut [u8]) {}
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) -> Action {
        Action::Continue
    }
}

/// Where a BAR decodes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    io: bool,
    base: u64,
    len: u64,
}

struct Slot {
    device: SharedPciDevice,
    mapped: [Option<Mapping>; 6],
    /// Registered ioeventfds by (request, absolute address), with whether
    /// the address is a port: needed to unregister after the BAR is gone.
    ioeventfds: HashMap<(IoEventFd, u64), (EventFd, bool)>,
}

/// Bus 0 and its devices.
pub struct PciRoot {
    slots: BTreeMap<u8, Slot>,
    buses: Weak<Buses>,
    vm: Arc<VmFd>,
    this: Weak<Mutex<PciRoot>>,
}

impl PciRoot {
    /// An empty bus whose BARs decode on `buses`, with ioeventfds on `vm`.
    pub fn new(buses: Weak<Buses>, vm: Arc<VmFd>) -> Arc<Mutex<Self>> {
        Arc::new_cyclic(|this| {
            Mutex::new(Self {
                slots: BTreeMap::new(),
                buses,
                vm,
                this: this.clone(),
            })
        })
    }

    /// Plugs `device` into `slot` and maps its BARs as programmed.
    pub fn add(&mut self, slot: u8, device: SharedPciDevice) {
        self.slots.insert(
            slot,
            Slot {
                device,
                mapped: [None; 6],
                ioeventfds: HashMap::new(),
            },
        );
        self.sync(slot);
    }

    fn config_read(&self, address: ConfigAddress, data: &mut [u8]) {
        match address.slot().and_then(|slot| self.slots.get(&slot)) {
            Some(slot) => lock(&slot.device).config_read(address.offset(), data),
            None => data.fill(0xff),
        }
    }

    fn config_write(&mut self, address: ConfigAddress, data: &[u8]) {
        let Some(number) = address.slot() else {
            return;
        };
        let Some(slot) = self.slots.get(&number) else {
            return;
        };
        // Through the device, which may have to react (edu's interrupt
        // delivery follows its command register and MSI capability).
        lock(&slot.device).config_write(address.offset(), data);
        self.sync(number);
        // A BAR that moved away may have been keeping another slot's BAR
        // from decoding; that one decodes now, as it would on a real bus.
        let others: Vec<u8> = self
            .slots
            .keys()
            .copied()
            .filter(|&n| n != number)
            .collect();
        for other in others {
            self.sync(other);
        }
    }

    /// Makes the slot's BAR windows and ioeventfds match its configuration.
    fn sync(&mut self, number: u8) {
        let Some(buses) = self.buses.upgrade() else {
            return;
        };
        let this = self.this.clone();
        let Some(slot) = self.slots.get_mut(&number) else {
            return;
        };
        let wanted: [Option<Mapping>; 6] = {
            let device = lock(&slot.device);
            std::array::from_fn(|bar| wanted_mapping(device.config(), bar))
        };
        for (bar, wanted) in wanted.into_iter().enumerate() {
            if slot.mapped[bar] == wanted {
                continue;
            }
            if let Some(old) = slot.mapped[bar].take() {
                bus_of(&buses, old.io).remove(old.base);
            }
            if let Some(new) = wanted {
                let window = Arc::new(Mutex::new(BarWindow {
                    device: slot.device.clone(),
                    bar,
                    root: this.clone(),
                    slot: number,
                }));
                match bus_of(&buses, new.io).insert(window, new.base, new.len) {
                    Ok(()) => slot.mapped[bar] = Some(new),
                    Err(e) => log::debug!("PCI 00:{number:02x}.0 BAR{bar} does not decode: {e}"),
                }
            }
        }
        self.sync_ioeventfds(number);
    }

    /// Makes the slot's ioeventfds match what its device wants now.
    fn sync_ioeventfds(&mut self, number: u8) {
        let Some(slot) = self.slots.get_mut(&number) else {
            return;
        };
        let wanted = lock(&slot.device).ioeventfds();
        sync_ioeventfds(&self.vm, slot, &wanted);
    }
}

fn bus_of(buses: &Buses, io: bool) -> &Bus {
    if io { &buses.pio } else { &buses.mmio }
}

fn wanted_mapping(config: &PciConfig, bar: usize) -> Option<Mapping> {
    if !config.bar_enabled(bar) {
        return None;
    }
    let kind = config.bar(bar)?.kind;
    let base = config.bar_address(bar)?;
    let len = config.bar(bar)?.size;
    let io = kind == BarKind::Io;
    // Address 0 is where an unprogrammed BAR sits: never decode it there.
    (base != 0 && (!io || base + len <= 0x1_0000)).then_some(Mapping { io, base, len })
}

/// Registers the ioeventfds the device wants at its BARs' current places
/// and drops the ones it no longer wants (or whose BAR moved).
fn sync_ioeventfds(vm: &VmFd, slot: &mut Slot, wanted: &[IoEventFd]) {
    let wanted: Vec<(IoEventFd, u64)> = wanted
        .iter()
        .filter_map(|ev| slot.mapped.get(ev.bar).copied().flatten().map(|m| (*ev, m)))
        .filter(|(ev, m)| ev.offset < m.len)
        .map(|(ev, m)| (ev, m.base + ev.offset))
        .collect();
    let mapped = slot.mapped;
    slot.ioeventfds.retain(|(ev, addr), (fd, io)| {
        let keep = wanted.contains(&(*ev, *addr));
        if !keep && let Err(e) = ioeventfd(vm, fd, ev, *addr, *io, false) {
            log::warn!("unregistering ioeventfd at {addr:#x}: {e}");
        }
        keep
    });
    for (ev, addr) in wanted {
        if slot.ioeventfds.contains_key(&(ev, addr)) {
            continue;
        }
        let io = mapped[ev.bar].is_some_and(|m| m.io);
        let registered = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(kvm_ioctls::Error::from)
            .and_then(|fd| ioeventfd(vm, &fd, &ev, addr, io, true).map(|()| fd));
        match registered {
            Ok(fd) => {
                slot.ioeventfds.insert((ev, addr), (fd, io));
            }
            Err(e) => log::warn!("registering ioeventfd at {addr:#x}: {e}"),
        }
    }
}

fn ioeventfd(
    vm: &VmFd,
    fd: &EventFd,
    ev: &IoEventFd,
    addr: u64,
    io: bool,
    register: bool,
) -> Result<(), kvm_ioctls::Error> {
    let address = if io {
        IoEventAddress::Pio(addr)
    } else {
        IoEventAddress::Mmio(addr)
    };
    // kvm-ioctls takes the match width from the datamatch type; without a
    // datamatch the registration matches writes of any width.
    macro_rules! call {
        ($datamatch:expr) => {
            if register {
                vm.register_ioevent(fd, &address, $datamatch)
            } else {
                vm.unregister_ioevent(fd, &address, $datamatch)
            }
        };
    }
    match (ev.datamatch, ev.len) {
        (None, _) => call!(NoDatamatch),
        (Some(v), 1) => call!(v as u8),
        (Some(v), 2) => call!(v as u16),
        (Some(v), 4) => call!(v as u32),
        (Some(v), _) => call!(v),
    }
}

/// A BAR's window on a bus: accesses go to the device with the BAR index.
struct BarWindow {
    device: SharedPciDevice,
    bar: usize,
    root: Weak<Mutex<PciRoot>>,
    slot: u8,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let action = lock(&self.device).bar_write(self.bar, offset, data);
        // A write can change what the device wants absorbed by ioeventfds
        // (pci-testdev selecting a test), never where its BARs are.
        if let Some(root) = self.root.upgrade() {
            lock(&root).sync_ioeventfds(self.slot);
        }
        action
    }
}

/// The value of the 0xcf8 address register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ConfigAddress(u32);

impl ConfigAddress {
    const ENABLE: u32 = 1 << 31;

    /// The slot addressed on bus 0 function 0, if that is what it addresses.
    fn slot(self) -> Option<u8> {
        let bus = (self.0 >> 16) & 0xff;
        let device = (self.0 >> 11) & 0x1f;
        let function = (self.0 >> 8) & 0x7;
        (self.0 & Self::ENABLE != 0 && bus == 0 && function == 0).then_some(device as u8)
    }

    /// The register offset.
    fn offset(self) -> usize {
        (self.0 & 0xff) as usize
    }

    /// The address an access to data port `0xcfc + byte` reaches: the port's
    /// low bits ORed into the address register's, as QEMU's host bridges
    /// do. kvm-unit-tests relies on it: it reads the device ID by putting
    /// register 2 in 0xcf8 and reading 0xcfc.
    fn plus(self, byte: u64) -> Self {
        Self(self.0 | byte as u32)
    }
}

/// Ports 0xcf8-0xcff: the address register and the data window.
pub struct PciConfigIo {
    address: ConfigAddress,
    root: Arc<Mutex<PciRoot>>,
}

/// Width of the configuration mechanism's port window.
pub const CONFIG_IO_PORTS: u64 = 8;

impl PciConfigIo {
    /// The mechanism for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self {
            address: ConfigAddress::default(),
            root,
        }
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..4 => {
                let bytes = self.address.0.to_le_bytes();
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            _ if offset as usize + data.len() <= CONFIG_IO_PORTS as usize => {
                let address = self.address.plus(offset - 4);
                lock(&self.root).config_read(address, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        match (offset, data.len()) {
            // Only a full 32-bit write sets the address (byte writes to
            // 0xcf8-0xcfb are other chipset registers on a real PC).
            (0, 4) => {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(data);
                self.address = ConfigAddress(u32::from_le_bytes(bytes));
            }
            (4..8, _) if offset as usize + data.len() <= CONFIG_IO_PORTS as usize => {
                let address = self.address.plus(offset - 4);
                lock(&self.root).config_write(address, data);
            }
            _ => {}
        }
        Action::Continue
    }
}

/// Assigns BAR addresses like firmware would: memory BARs upwards from
/// `mmio`, I/O BARs upwards from `io`, each aligned to its size; then
/// enables decoding. Returns the next free addresses.
pub fn assign_bars(config: &mut PciConfig, mut mmio: u64, mut io: u64) -> (u64, u64) {
    use ktvmm_testdevs::pci::command;
    let mut enable = 0;
    for bar in 0..6 {
        let Some(declared) = config.bar(bar) else {
            continue;
        };
        let next = if declared.kind == BarKind::Io {
            &mut io
        } else {
            &mut mmio
        };
        let base = next.next_multiple_of(declared.size);
        config.set_bar_address(bar, base);
        *next = base + declared.size;
        enable |= if declared.kind == BarKind::Io {
            command::IO
        } else {
            command::MEMORY
        };
    }
    let command = config.command() | enable;
    config.write(ktvmm_testdevs::pci::reg::COMMAND, &command.to_le_bytes());
    (mmio, io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_addresses_decode_bus_0_function_0_only() {
        let addr = |bus: u32, dev: u32, func: u32, reg: u32| {
            ConfigAddress(1 << 31 | bus << 16 | dev << 11 | func << 8 | reg)
        };
        assert_eq!(addr(0, 3, 0, 0x10).slot(), Some(3));
        // QEMU keeps bits 1:0 of 0xcf8 and ORs the data port's in (the PCI
        // spec has them read-only 0); kvm-unit-tests reads the device ID
        // with register 2 in 0xcf8.
        assert_eq!(addr(0, 3, 0, 0x12).plus(0).offset(), 0x12);
        assert_eq!(addr(0, 3, 0, 0x12).plus(1).offset(), 0x13);
        assert_eq!(
            addr(0, 3, 0, 0x10).plus(2).offset(),
            0x12,
            "byte lane of 0xcfe"
        );
        assert_eq!(addr(1, 3, 0, 0).slot(), None);
        assert_eq!(addr(0, 3, 1, 0).slot(), None);
        assert_eq!(ConfigAddress(3 << 11).slot(), None, "enable bit clear");
    }

    #[test]
    fn bars_are_assigned_aligned_and_enabled() {
        let mut config = PciConfig::new(1, 2, 0, 0)
            .with_bar(0, BarKind::Memory32, 0x1000)
            .with_bar(1, BarKind::Io, 0x100)
            .with_bar(2, BarKind::Memory32, 0x10_0000);
        let (mmio, io) = assign_bars(&mut config, 0xc000_0000, 0xc000);
        assert_eq!(config.bar_address(0), Some(0xc000_0000));
        assert_eq!(
            config.bar_address(2),
            Some(0xc010_0000),
            "aligned to its 1 MiB size"
        );
        assert_eq!(config.bar_address(1), Some(0xc000));
        assert_eq!((mmio, io), (0xc020_0000, 0xc100));
        assert!(config.bar_enabled(0) && config.bar_enabled(1) && config.bar_enabled(2));
    }

    #[test]
    fn ioeventfds_of_a_disabled_io_bar_are_removed_and_come_back() {
        use ktvmm_testdevs::pci::{command, reg};
        use ktvmm_testdevs::pci_testdev::PciTestdev;

        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: this test needs KVM"
        );
        let vm = Arc::new(kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap());
        let buses = Arc::new(Buses::default());
        let root = PciRoot::new(Arc::downgrade(&buses), vm);
        let mut device = PciTestdev::new();
        assign_bars(device.config_mut(), 0xc000_0000, 0xc000);
        let io_base = device.config().bar_address(1).unwrap();
        lock(&root).add(1, Arc::new(Mutex::new(device)));
        let registered = |root: &Arc<Mutex<PciRoot>>| {
            let root = lock(root);
            let slot = &root.slots[&1];
            slot.ioeventfds.values().filter(|(_, io)| *io).count()
        };
        // Select portio-wildcard-eventfd (index 1 of the I/O BAR's tests).
        let _ = buses.pio.write(io_base, &[1]);
        assert_eq!(registered(&root), 1);

        let config_write = |value: u16| {
            lock(&root).config_write(
                ConfigAddress(1 << 31 | 1 << 11 | reg::COMMAND as u32),
                &value.to_le_bytes(),
            );
        };
        config_write(command::MEMORY);
        assert_eq!(
            registered(&root),
            0,
            "I/O decoding off drops the port ioeventfd"
        );
        // Registering again only works if the old one really left KVM.
        config_write(command::MEMORY | command::IO);
        assert_eq!(
            registered(&root),
            1,
            "the port ioeventfd is registered again"
        );
    }

    #[test]
    fn io_bars_past_64k_never_decode() {
        let mut config = PciConfig::new(1, 2, 0, 0).with_bar(1, BarKind::Io, 0x100);
        assign_bars(&mut config, 0, 0xc000);
        assert!(wanted_mapping(&config, 1).is_some());
        config.set_bar_address(1, 0xff00);
        assert!(
            wanted_mapping(&config, 1).is_some(),
            "ends exactly at 64 KiB"
        );
        config.set_bar_address(1, 0x1_0000);
        assert_eq!(wanted_mapping(&config, 1), None);
    }

    /// A device with the BARs of `config`, whose BARs read as `marker`.
    struct Marker(PciConfig, u8);

    impl PciDevice for Marker {
        fn config(&self) -> &PciConfig {
            &self.0
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.0
        }
        fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(self.1);
        }
        fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) -> Action {
            Action::Continue
        }
    }

    /// A root on fresh buses with `devices` plugged in by slot, their BARs
    /// assigned as the platform does.
    fn root_with(devices: Vec<(u8, PciConfig)>) -> (Arc<Buses>, Arc<Mutex<PciRoot>>) {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: this test needs KVM"
        );
        let vm = Arc::new(kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap());
        let buses = Arc::new(Buses::default());
        let root = PciRoot::new(Arc::downgrade(&buses), vm);
        let (mut mmio, mut io) = (0xc000_0000, 0xc000);
        for (slot, mut config) in devices {
            (mmio, io) = assign_bars(&mut config, mmio, io);
            lock(&root).add(slot, Arc::new(Mutex::new(Marker(config, slot))));
        }
        (buses, root)
    }

    fn write_bar(root: &Arc<Mutex<PciRoot>>, slot: u8, bar: u32, value: u32) {
        use ktvmm_testdevs::pci::reg;
        let offset = reg::BAR0 as u32 + 4 * bar;
        lock(root).config_write(
            ConfigAddress(1 << 31 | u32::from(slot) << 11 | offset),
            &value.to_le_bytes(),
        );
    }

    /// Which slot's BAR answers a 4-byte read at `addr` (None: nobody).
    fn answers(bus: &Bus, addr: u64) -> Option<u8> {
        let mut data = [0u8; 4];
        bus.read(addr, &mut data).then_some(data[0])
    }

    #[test]
    fn a_bar_moved_onto_another_does_not_decode_until_that_one_leaves() {
        let (buses, root) = root_with(vec![
            (
                1,
                PciConfig::new(1, 1, 0, 0).with_bar(0, BarKind::Memory32, 0x1000),
            ),
            (
                2,
                PciConfig::new(1, 2, 0, 0).with_bar(0, BarKind::Memory32, 1 << 20),
            ),
        ]);
        let mmio = &buses.mmio;
        assert_eq!(answers(mmio, 0xc000_0000), Some(1));
        assert_eq!(answers(mmio, 0xc010_0000), Some(2));

        // Slot 2 onto slot 1: refused as a whole, slot 1 keeps its window.
        write_bar(&root, 2, 0, 0xc000_0000);
        assert_eq!(answers(mmio, 0xc000_0000), Some(1));
        assert_eq!(
            answers(mmio, 0xc000_2000),
            None,
            "no part of slot 2 decodes"
        );
        assert_eq!(
            answers(mmio, 0xc010_0000),
            None,
            "slot 2 left its old place"
        );

        // Slot 1 leaves: slot 2 decodes where it was put.
        write_bar(&root, 1, 0, 0xd000_0000);
        assert_eq!(answers(mmio, 0xd000_0000), Some(1));
        assert_eq!(answers(mmio, 0xc000_0000), Some(2));

        // Slot 1 comes back onto slot 2: refused in turn.
        write_bar(&root, 1, 0, 0xc000_0000);
        assert_eq!(answers(mmio, 0xc000_0000), Some(2));
        assert_eq!(answers(mmio, 0xd000_0000), None);

        // Slot 2 goes home: slot 1 decodes again.
        write_bar(&root, 2, 0, 0xc010_0000);
        assert_eq!(answers(mmio, 0xc000_0000), Some(1));
        assert_eq!(answers(mmio, 0xc010_0000), Some(2));
    }

    #[test]
    fn bars_at_the_top_of_the_address_space_decode_there_and_never_wrap() {
        let (buses, root) = root_with(vec![(
            3,
            PciConfig::new(1, 3, 0, 0)
                .with_bar(0, BarKind::Memory32, 1 << 20)
                .with_bar(2, BarKind::Memory64, 1 << 20),
        )]);
        let mmio = &buses.mmio;
        // All-ones left in a 32-bit BAR: the last MiB below 4 GiB.
        write_bar(&root, 3, 0, u32::MAX);
        assert_eq!(answers(mmio, 0xffff_fffc), Some(3));
        assert_eq!(answers(mmio, 0x1_0000_0000), None);
        // All-ones in both halves of a 64-bit BAR: the last MiB of the
        // address space, and nothing wraps around to 0.
        write_bar(&root, 3, 2, u32::MAX);
        write_bar(&root, 3, 3, u32::MAX);
        assert_eq!(answers(mmio, u64::MAX - 3), Some(3));
        let mut data = [0u8; 8];
        assert!(mmio.read(u64::MAX - 3, &mut data));
        assert_eq!(data, [3, 3, 3, 3, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(answers(mmio, 0), None);
    }

    #[test]
    fn an_io_bar_over_the_configuration_ports_does_not_decode() {
        let (buses, root) = root_with(vec![(
            4,
            PciConfig::new(0x1234, 4, 0, 0).with_bar(1, BarKind::Io, 0x100),
        )]);
        buses
            .pio
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
                0xcf8,
                CONFIG_IO_PORTS,
            )
            .unwrap();
        assert_eq!(answers(&buses.pio, 0xc000), Some(4));
        write_bar(&root, 4, 1, 0xc00);
        assert_eq!(answers(&buses.pio, 0xc00), None);
        assert_eq!(answers(&buses.pio, 0xc000), None);
        // Configuration cycles still work, so the guest can move it back.
        let _ = buses
            .pio
            .write(0xcf8, &(1u32 << 31 | 4 << 11).to_le_bytes());
        let mut id = [0u8; 4];
        assert!(buses.pio.read(0xcfc, &mut id));
        assert_eq!(u32::from_le_bytes(id), 0x0004_1234);
        write_bar(&root, 4, 1, 0xc000);
        assert_eq!(answers(&buses.pio, 0xc000), Some(4));
    }

    #[test]
    fn a_bar_over_ram_is_mapped_and_left_to_kvm() {
        // RAM wins by KVM's rules (a memory slot is never an MMIO exit), so
        // the VMM does not need to know where RAM is: the window is simply
        // unreachable while it sits there.
        let mut config = PciConfig::new(1, 2, 0, 0).with_bar(0, BarKind::Memory32, 1 << 20);
        assign_bars(&mut config, 0xc000_0000, 0xc000);
        config.set_bar_address(0, 0x20_0000);
        assert_eq!(
            wanted_mapping(&config, 0),
            Some(Mapping {
                io: false,
                base: 0x20_0000,
                len: 1 << 20
            })
        );
    }
}
