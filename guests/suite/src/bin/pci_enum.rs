//! PCI bus 0 through configuration mechanism #1: lists the functions and
//! checks the host bridge, the slots ktvmm documents (pci-testdev in slot
//! 1, edu in slot 2), absent slots, functions and buses (all-ones), byte and
//! word accesses, read-only IDs, the command register, BAR sizing (kinds,
//! sizes, placement inside the windows, no overlap, values restored),
//! capabilities (edu's MSI), decoding on/off, and moving edu's BAR0 to
//! another free address (the device answers there and no longer at the old
//! one) and back.
//!
//! Run: `ktvmm run pci-enum` (any -smp; no arguments).
#![no_std]
#![no_main]

use ktest::abi::pci::{
    EDU_SLOT, HOST_BRIDGE_SLOT, IO_WINDOW_END, IO_WINDOW_START, MMIO_WINDOW_END, MMIO_WINDOW_START,
    PCI_TESTDEV_SLOT, intx_gsi,
};
use ktest::driver::{edu, pci_testdev};
use ktest::pci::{self, ABSENT, Bar, BarKind, PciAddress, PciDevice, command, reg};
use ktest::{mmio, report, report_info, report_skip};

ktest::main!(main);

/// Class code of "other" devices (base class 0x00, subclass 0xff).
const CLASS_OTHER: u32 = 0x00ff00;
/// Base class / subclass of a host bridge.
const CLASS_HOST_BRIDGE: u32 = 0x0600;
/// Most BARs bus 0 can hold in this test (6 per function, a few functions).
const MAX_BARS: usize = 32;

fn main() -> u8 {
    ktest::report_prefix_push("pci-enum");
    config_mechanism();
    let (bars, count) = list_bus();
    let bars = &bars[..count];
    host_bridge();
    absent();
    let testdev = pci_testdev_identity();
    let edu = edu_identity();
    if let Some(testdev) = testdev {
        pci_testdev_bars(&testdev, bars);
    }
    if let Some(edu) = edu {
        edu_bars_and_capabilities(&edu, bars);
        move_edu_bar(&edu, bars);
    }
    ktest::report_prefix_pop();
    ktest::report_summary()
}

/// The address register holds what was written; sub-dword data accesses
/// see the right bytes.
fn config_mechanism() {
    let value = PciAddress::new(0, 3, 5).config_address(0x44);
    pci::set_config_address_register(value);
    let read = pci::config_address_register();
    report!(
        read == value,
        "config address register reads back {:#010x} ({:#010x})",
        value,
        read
    );
    let host = PciAddress::slot(HOST_BRIDGE_SLOT);
    let id = pci::read32(host, reg::VENDOR_ID);
    let words = [pci::read16(host, 0), pci::read16(host, 2)];
    let bytes = [0, 1, 2, 3].map(|offset| pci::read8(host, offset));
    report!(
        u32::from(words[0]) | u32::from(words[1]) << 16 == id && u32::from_le_bytes(bytes) == id,
        "byte and word reads at 0xcfc-0xcff match the dword ({:#010x}: words {:#06x} {:#06x}, bytes {:02x?})",
        id,
        words[0],
        words[1],
        bytes
    );
}

/// Lists every function with its BARs; returns all BARs found.
fn list_bus() -> ([Option<(PciAddress, Bar)>; MAX_BARS], usize) {
    let mut all = [None; MAX_BARS];
    let mut count = 0;
    let mut functions = 0;
    for device in pci::devices() {
        functions += 1;
        report_info!(
            "{} header type {} pin {} line {}",
            device,
            device.header_type,
            device.interrupt_pin(),
            device.interrupt_line()
        );
        for bar in device.bars().into_iter().flatten() {
            report_info!("  {}", bar);
            if count < MAX_BARS {
                all[count] = Some((device.address, bar));
                count += 1;
            }
        }
    }
    report!(functions >= 1, "bus 0 has {} functions", functions);
    (all, count)
}

fn host_bridge() {
    match PciDevice::probe(PciAddress::slot(HOST_BRIDGE_SLOT)) {
        Some(bridge) => {
            report!(
                bridge.class >> 8 == CLASS_HOST_BRIDGE && bridge.header_type == 0,
                "host bridge at 00.0 ({:04x}:{:04x}, class {:06x}, header type {})",
                bridge.vendor_id,
                bridge.device_id,
                bridge.class,
                bridge.header_type
            );
        }
        None => {
            report!(false, "host bridge at 00.0 (vendor reads 0xffff)");
        }
    }
}

/// Absent slots, functions and buses read all-ones and ignore writes.
fn absent() {
    let slot = (0..32u8).find(|&slot| PciDevice::probe(PciAddress::slot(slot)).is_none());
    match slot {
        Some(slot) => {
            let address = PciAddress::slot(slot);
            let vendor = pci::read16(address, reg::VENDOR_ID);
            let dwords = [0u8, 0x08, 0x10, 0x3c].map(|offset| pci::read32(address, offset));
            report!(
                vendor == 0xffff && dwords.iter().all(|&d| d == ABSENT),
                "absent slot {} reads vendor {:#06x} and all-ones ({:08x?})",
                address,
                vendor,
                dwords
            );
            // SAFETY: nothing decodes there; the write must go nowhere.
            unsafe { pci::write32(address, reg::COMMAND, 0x7) };
            report!(
                pci::read32(address, reg::COMMAND) == ABSENT && PciDevice::probe(address).is_none(),
                "a write to absent slot {} changes nothing",
                address
            );
        }
        None => report_skip!("no absent slot on bus 0"),
    }
    for address in [
        PciAddress::new(0, PCI_TESTDEV_SLOT, 1),
        PciAddress::new(1, 0, 0),
    ] {
        let id = pci::read32(address, reg::VENDOR_ID);
        report!(
            id == ABSENT,
            "absent {} reads all-ones ({:#010x})",
            address,
            id
        );
    }
}

/// Checks identification of the device expected in `slot`.
fn identity(slot: u8, name: &str, ids: (u16, u16), revision: u8, pin: u8) -> Option<PciDevice> {
    let Some(device) = PciDevice::probe(PciAddress::slot(slot)) else {
        report!(
            false,
            "{}: present in slot {} (vendor reads 0xffff)",
            name,
            slot
        );
        return None;
    };
    report!(
        (device.vendor_id, device.device_id) == ids,
        "{}: slot {} holds {:04x}:{:04x} ({:04x}:{:04x})",
        name,
        slot,
        ids.0,
        ids.1,
        device.vendor_id,
        device.device_id
    );
    report!(
        device.revision == revision && device.class == CLASS_OTHER && device.header_type == 0,
        "{}: revision {:#04x}, class {:06x}, header type 0 (rev {:#04x}, class {:06x}, type {})",
        name,
        revision,
        CLASS_OTHER,
        device.revision,
        device.class,
        device.header_type
    );
    let before = device.read32(reg::VENDOR_ID);
    let class_before = device.read32(reg::REVISION);
    // SAFETY: IDs and class are read-only; the write must be ignored.
    unsafe {
        device.write32(reg::VENDOR_ID, 0x5555_aaaa);
        device.write32(reg::REVISION, 0x1234_5678);
    }
    report!(
        device.read32(reg::VENDOR_ID) == before && device.read32(reg::REVISION) == class_before,
        "{}: vendor/device ID and class are read-only",
        name
    );
    let line = device.interrupt_line();
    let device_pin = device.interrupt_pin();
    if pin == 0 {
        report!(
            device_pin == 0,
            "{}: no interrupt pin ({})",
            name,
            device_pin
        );
    } else {
        let gsi = intx_gsi(slot, pin);
        report!(
            device_pin == pin && u32::from(line) == gsi,
            "{}: interrupt pin {} on line (GSI) {} (pin {}, line {})",
            name,
            pin,
            gsi,
            device_pin,
            line
        );
    }
    Some(device)
}

fn pci_testdev_identity() -> Option<PciDevice> {
    identity(
        PCI_TESTDEV_SLOT,
        "pci-testdev",
        (pci_testdev::VENDOR_ID, pci_testdev::DEVICE_ID),
        0,
        0,
    )
}

fn edu_identity() -> Option<PciDevice> {
    identity(EDU_SLOT, "edu", (edu::VENDOR_ID, edu::DEVICE_ID), 0x10, 1)
}

/// A BAR lies inside its window, is aligned to its size, and overlaps no
/// other BAR.
fn check_placement(name: &str, owner: PciAddress, bar: &Bar, all: &[Option<(PciAddress, Bar)>]) {
    let (start, end) = if bar.is_io() {
        (u64::from(IO_WINDOW_START), u64::from(IO_WINDOW_END))
    } else {
        (MMIO_WINDOW_START, MMIO_WINDOW_END)
    };
    report!(
        bar.address >= start && bar.end() <= end && bar.address % bar.size == 0,
        "{}: BAR{} [{:#x}-{:#x}] is size-aligned inside the window [{:#x}-{:#x}]",
        name,
        bar.index,
        bar.address,
        bar.end() - 1,
        start,
        end - 1
    );
    let overlap = all.iter().flatten().find(|(address, other)| {
        (*address, other.index) != (owner, bar.index)
            && other.is_io() == bar.is_io()
            && other.address < bar.end()
            && bar.address < other.end()
    });
    report!(
        overlap.is_none(),
        "{}: BAR{} overlaps no other BAR{}",
        name,
        bar.index,
        match overlap {
            Some(_) => " (it does)",
            None => "",
        }
    );
}

/// BAR `index` has the expected kind and size, sizing restored the
/// register, and the device decodes it.
fn check_bar(
    name: &str,
    device: &PciDevice,
    index: u8,
    kind: BarKind,
    size: u64,
    all: &[Option<(PciAddress, Bar)>],
) -> Option<Bar> {
    let before = device.bar_register(index);
    let bar = device.bar(index);
    let after = device.bar_register(index);
    report!(
        before == after,
        "{}: BAR{} register restored after sizing ({:#010x}, now {:#010x})",
        name,
        index,
        before,
        after
    );
    let Some(bar) = bar else {
        report!(false, "{}: BAR{} is implemented", name, index);
        return None;
    };
    report!(
        bar.kind == kind && bar.size == size,
        "{}: BAR{} is {:?} of {:#x} bytes ({:?} of {:#x})",
        name,
        index,
        kind,
        size,
        bar.kind,
        bar.size
    );
    check_placement(name, device.address, &bar, all);
    Some(bar)
}

fn pci_testdev_bars(device: &PciDevice, all: &[Option<(PciAddress, Bar)>]) {
    let name = "pci-testdev";
    let command = device.command();
    report!(
        command & (command::IO | command::MEMORY) == command::IO | command::MEMORY
            && command & command::BUS_MASTER == 0,
        "{}: I/O and memory decoding on, bus mastering off ({:#06x})",
        name,
        command
    );
    let mem = check_bar(name, device, 0, BarKind::Memory32, 4096, all);
    let io = check_bar(name, device, 1, BarKind::Io, 256, all);
    let unused = (2..6).all(|index| device.bar(index).is_none());
    report!(unused, "{}: BAR2-5 are unimplemented", name);
    report!(
        device.status() & pci::STATUS_CAPABILITIES == 0 && device.capabilities().count() == 0,
        "{}: no capability list",
        name
    );
    if let (Some(_), Some(io)) = (mem, io) {
        let window = pci_testdev::Window::Pio(io.address as u16);
        window.select(0);
        let decoding = window.read8(pci_testdev::hdr::WIDTH);
        // SAFETY: only I/O decoding goes off, and comes back.
        unsafe { device.set_command(command & !command::IO) };
        let off = window.read8(pci_testdev::hdr::WIDTH);
        // SAFETY: restores the command register.
        unsafe { device.set_command(command) };
        let again = window.read8(pci_testdev::hdr::WIDTH);
        window.select(pci_testdev::TESTS_PER_BAR);
        report!(
            decoding == 1 && off == 0xff && again == 1,
            "{}: I/O BAR answers only while I/O decoding is on (on {:#x}, off {:#x}, on again {:#x})",
            name,
            decoding,
            off,
            again
        );
    }
}

fn edu_bars_and_capabilities(device: &PciDevice, all: &[Option<(PciAddress, Bar)>]) {
    let name = "edu";
    let command = device.command();
    report!(
        command & command::MEMORY != 0 && command & command::BUS_MASTER == 0,
        "{}: memory decoding on, bus mastering off ({:#06x})",
        name,
        command
    );
    check_bar(name, device, 0, BarKind::Memory32, 1 << 20, all);
    let unused = (1..6).all(|index| device.bar(index).is_none());
    report!(unused, "{}: BAR1-5 are unimplemented", name);

    let mut caps = [0u8; 8];
    let mut count = 0;
    for (_, id) in device.capabilities() {
        if count < caps.len() {
            caps[count] = id;
        }
        count += 1;
    }
    report_info!(
        "{}: capabilities {:02x?}",
        name,
        &caps[..count.min(caps.len())]
    );
    match device.msi() {
        Some(msi) => {
            report!(
                msi.is_64bit() && msi.vectors_capable() == 1 && !msi.enabled(),
                "{}: MSI capability at {:#x}: 64-bit, 1 vector, disabled (control {:#06x})",
                name,
                msi.offset(),
                msi.control()
            );
        }
        None => {
            report!(false, "{}: has an MSI capability", name);
        }
    }
}

fn edu_id_at(address: u64) -> u32 {
    // SAFETY: a 32-bit read in the MMIO window: edu's ID register, or
    // nothing (all-ones).
    unsafe { mmio::read32(address) }
}

/// A 1 MiB-aligned MMIO range in the window that no BAR uses.
fn free_mmio_range(size: u64, all: &[Option<(PciAddress, Bar)>]) -> Option<u64> {
    let mut candidate = (MMIO_WINDOW_END - size) & !(size - 1);
    while candidate >= MMIO_WINDOW_START {
        let busy = all.iter().flatten().any(|(_, bar)| {
            !bar.is_io() && bar.address < candidate + size && candidate < bar.end()
        });
        if !busy {
            return Some(candidate);
        }
        candidate -= size;
    }
    None
}

fn move_edu_bar(device: &PciDevice, all: &[Option<(PciAddress, Bar)>]) {
    let Some(bar) = device.bar(0) else {
        return;
    };
    let old = bar.address;
    let command = device.command();

    // SAFETY: memory decoding goes off and back on; nothing else changes.
    unsafe { device.set_command(command & !command::MEMORY) };
    let off = edu_id_at(old);
    // SAFETY: as above.
    unsafe { device.set_command(command | command::MEMORY) };
    let on = edu_id_at(old);
    report!(
        off == 0xffff_ffff && on == edu::ID_VALUE,
        "edu: BAR0 answers only while memory decoding is on (off {:#x}, on {:#x})",
        off,
        on
    );

    let Some(new) = free_mmio_range(bar.size, all) else {
        report_skip!("edu: no free 1 MiB range in the MMIO window to move BAR0 to");
        return;
    };
    // SAFETY: the new range is in the MMIO window and no BAR uses it;
    // decoding is off while the BAR changes.
    unsafe {
        device.set_command(command & !command::MEMORY);
        device.set_bar_address(0, new);
        device.set_command(command | command::MEMORY);
    }
    let moved = device.bar(0).map(|bar| bar.address);
    let at_new = edu_id_at(new);
    let at_old = edu_id_at(old);
    report!(
        moved == Some(new),
        "edu: BAR0 moved from {:#x} to {:#x} (reads {:x?})",
        old,
        new,
        moved
    );
    report!(
        at_new == edu::ID_VALUE,
        "edu: answers at the new address {:#x} ({:#x})",
        new,
        at_new
    );
    report!(
        at_old == 0xffff_ffff,
        "edu: no longer answers at the old address {:#x} ({:#x})",
        old,
        at_old
    );
    // SAFETY: the original placement, as the VMM assigned it.
    unsafe {
        device.set_command(command & !command::MEMORY);
        device.set_bar_address(0, old);
        device.set_command(command);
    }
    let back = edu_id_at(old);
    let gone = edu_id_at(new);
    report!(
        back == edu::ID_VALUE && gone == 0xffff_ffff,
        "edu: BAR0 moved back to {:#x} answers there ({:#x}) and not at {:#x} ({:#x})",
        old,
        back,
        new,
        gone
    );
}
