//! A hostile guest against the PCI devices: everything here is something a
//! buggy or malicious guest may do, and the VMM must neither crash, nor
//! hang, nor let a device touch memory it should not. After each abuse the
//! devices are checked to still work.
//!
//! - writes to read-only configuration fields (IDs, class, header type, the
//!   BAR type bits, the capabilities list, the MSI capability's layout,
//!   the interrupt pin) change nothing;
//! - edu's BAR0 moved onto guest RAM: RAM wins (KVM's memory slots decode
//!   before any device), the RAM keeps its contents, and moved back, edu
//!   answers again;
//! - edu's BAR0 moved onto pci-testdev's memory BAR, and pci-testdev's I/O
//!   BAR onto the PCI configuration ports: the VMM refuses the overlap,
//!   the other device and the configuration mechanism go on working;
//! - BARs at the edges: edu's BAR0 on the LAPIC page (the in-kernel LAPIC
//!   keeps answering) and in the last MiB below 4 GiB;
//! - MSI to a bogus address and with an illegal vector: nothing arrives,
//!   and a valid MSI afterwards does;
//! - an interrupt storm: edu's raise register (0x60) written in a tight
//!   loop, with MSI and with INTx, handlers acknowledging.
//!
//! Run: `ktvmm run pci-hostile` (no arguments).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktest::driver::edu::{self, Edu};
use ktest::driver::pci_testdev::{self, Window};
use ktest::ioapic::{self, Route};
use ktest::pci::{self, ABSENT, PciAddress, PciDevice, command, reg};
use ktest::{InterruptFrame, alloc_pages, delay_ms, lapic, mmio, report, wait_until_timeout, x86};

ktest::main!(main);

const MSI_VECTOR: u8 = 0x61;
const INTX_VECTOR: u8 = 0x62;
/// Writes to edu's raise register in each storm.
const STORM: u32 = 5_000;
const MIB: u64 = 1 << 20;

static EDU_BASE: AtomicU64 = AtomicU64::new(0);
static IRQS: AtomicU32 = AtomicU32::new(0);

fn edu_irq(_frame: &InterruptFrame) {
    // SAFETY: set before any interrupt is routed here.
    let edu = unsafe { Edu::new(EDU_BASE.load(Ordering::Relaxed)) };
    edu.ack_irq(edu.irq_status());
    IRQS.fetch_add(1, Ordering::Release);
}

fn main() -> u8 {
    ktest::report_prefix_push("pci-hostile");
    let (Some(edu_dev), Some(testdev)) = (
        pci::find(edu::VENDOR_ID, edu::DEVICE_ID),
        pci::find(pci_testdev::VENDOR_ID, pci_testdev::DEVICE_ID),
    ) else {
        report!(false, "edu and pci-testdev are on bus 0");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    edu_dev.enable_decoding();
    testdev.enable_decoding();
    let Some(edu) = Edu::from_device(&edu_dev) else {
        report!(false, "edu's BAR0 is a memory BAR");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    EDU_BASE.store(edu.base(), Ordering::Relaxed);
    ktest::set_irq_handler(MSI_VECTOR, edu_irq);
    ktest::set_irq_handler(INTX_VECTOR, edu_irq);

    read_only_fields(&edu_dev);
    read_only_fields(&testdev);
    report!(
        edu_alive(&edu),
        "edu still answers after the read-only writes"
    );
    bar_on_ram(&edu_dev, &edu);
    bar_on_other_device(&edu_dev, &edu, &testdev);
    bars_at_edges(&edu_dev, &edu);
    // SAFETY: edu DMAs nowhere in this test; bus mastering lets MSIs out.
    unsafe { edu_dev.enable_bus_master() };
    bogus_msi(&edu_dev, &edu);
    storms(&edu_dev, &edu);
    edu_dev.disable_bus_master();

    ktest::report_prefix_pop();
    ktest::report_summary()
}

fn edu_alive(edu: &Edu) -> bool {
    edu.read32(edu::reg::ID) == edu::ID_VALUE && {
        // SAFETY: the liveness register starts nothing.
        unsafe { edu.write32(edu::reg::ALIVE, 0x1234_5678) };
        edu.read32(edu::reg::ALIVE) == !0x1234_5678
    }
}

fn read32_at(address: u64) -> u32 {
    // SAFETY: a read of RAM or of the MMIO window; all-ones when nothing
    // decodes there.
    unsafe { mmio::read32(address) }
}

/// Writes every bit of each read-only field and checks nothing changed.
fn read_only_fields(device: &PciDevice) {
    let name = if device.vendor_id == edu::VENDOR_ID {
        "edu"
    } else {
        "pci-testdev"
    };
    let fields: [(u8, u32, &str); 6] = [
        (reg::VENDOR_ID, 0xffff_ffff, "vendor and device ID"),
        (reg::REVISION, 0xffff_ffff, "revision and class code"),
        (reg::HEADER_TYPE & !3, 0x00ff_0000, "header type"),
        (reg::CAPABILITIES, 0xff, "capabilities pointer"),
        (reg::INTERRUPT_LINE, 0xff00, "interrupt pin"),
        (
            reg::COMMAND,
            (u32::from(pci::STATUS_CAPABILITIES)) << 16,
            "status: capabilities bit",
        ),
    ];
    // The MSI capability's ID, next pointer, and the multiple-message
    // capable and 64-bit bits of its control word.
    let msi = device.msi().map(|msi| {
        (
            msi.offset(),
            0x008e_ffff,
            "MSI capability ID, next pointer, layout bits",
        )
    });
    for (offset, bits, what) in fields.into_iter().chain(msi) {
        let before = device.read32(offset);
        // Writes only the field's bits on top of what is there, so that
        // writable neighbours (command, interrupt line) keep their values.
        // SAFETY: the bits written are read-only, or the values already set.
        unsafe { device.write32(offset, before ^ bits) };
        let after = device.read32(offset);
        let writable = (after ^ before) & bits;
        // SAFETY: puts back whatever did change.
        unsafe { device.write32(offset, before) };
        report!(
            writable == 0,
            "{}: {} is read-only ({:#010x} -> {:#010x})",
            name,
            what,
            before,
            after
        );
    }
    let bar0 = device.bar_register(0);
    // SAFETY: sizing-style write of all ones, then the value restored.
    unsafe { device.write32(reg::BAR0, 0xffff_ffff) };
    let sized = device.bar_register(0);
    // SAFETY: as above.
    unsafe { device.write32(reg::BAR0, bar0) };
    let low = if bar0 & 1 != 0 { 3 } else { 0xf };
    report!(
        sized & low == bar0 & low && device.bar_register(0) == bar0,
        "{}: BAR0 type bits are read-only ({:#x} -> {:#x}) and the BAR is restored",
        name,
        bar0 & low,
        sized & low
    );
}

/// Moves edu's BAR0 onto a MiB of RAM the test owns.
fn bar_on_ram(device: &PciDevice, edu: &Edu) {
    let old = edu.base();
    // 2 MiB of pages hold a 1 MiB-aligned MiB.
    let pages = alloc_pages(2 * MIB / 4096);
    let ram = pages.next_multiple_of(MIB);
    for i in (0..MIB).step_by(4096) {
        // SAFETY: the test's own pages.
        unsafe { mmio::write32(ram + i, 0x5a5a_0000 | (i >> 12) as u32) };
    }
    move_bar(device, 0, ram);
    let reads = read32_at(ram);
    // SAFETY: RAM, or (should RAM lose) edu's ALIVE register, which is harmless.
    unsafe { mmio::write32(ram + 4, 0xdead_beef) };
    let written = read32_at(ram + 4);
    move_bar(device, 0, old);
    let intact = (1..MIB / 4096).all(|p| read32_at(ram + p * 4096) == 0x5a5a_0000 | p as u32);
    report!(
        reads == 0x5a5a_0000 && written == 0xdead_beef,
        "edu BAR0 on guest RAM at {:#x}: RAM wins (reads {:#x}, write read back {:#x})",
        ram,
        reads,
        written
    );
    report!(intact, "the RAM under the BAR kept its contents");
    report!(
        edu_alive(edu),
        "edu answers again at {:#x} after moving back",
        old
    );
}

/// Overlaps with another device's BAR and with the configuration ports.
fn bar_on_other_device(edu_dev: &PciDevice, edu: &Edu, testdev: &PciDevice) {
    let Some((Window::Mmio(mem), Window::Pio(port))) = pci_testdev::windows(testdev) else {
        report!(false, "pci-testdev has a memory and an I/O BAR");
        return;
    };
    let old = edu.base();
    let target = mem & !(MIB - 1);
    move_bar(edu_dev, 0, target);
    let testdev_ok = testdev_answers(Window::Mmio(mem));
    let edu_here = read32_at(target + (mem - target)) == edu::ID_VALUE;
    move_bar(edu_dev, 0, old);
    report!(
        testdev_ok && !edu_here,
        "edu BAR0 moved onto pci-testdev's BAR at {:#x}: refused, pci-testdev still answers",
        mem
    );
    report!(edu_alive(edu), "edu answers again after moving back");

    let io_size = testdev.bar(1).map_or(0, |b| b.size);
    let config = 0xcf8 & !(io_size.max(4) as u32 - 1);
    move_bar(testdev, 1, u64::from(config));
    let host = pci::read32(PciAddress::slot(0), reg::VENDOR_ID);
    let edu_id = pci::read32(edu_dev.address, reg::VENDOR_ID);
    move_bar(testdev, 1, u64::from(port));
    report!(
        host != ABSENT && edu_id == u32::from(edu::DEVICE_ID) << 16 | u32::from(edu::VENDOR_ID),
        "pci-testdev's I/O BAR moved onto 0xcf8: configuration ports keep working ({:#x}, {:#x})",
        host,
        edu_id
    );
    report!(
        testdev_answers(Window::Pio(port)),
        "pci-testdev's I/O BAR answers again at {:#x}",
        port
    );
}

fn testdev_answers(window: Window) -> bool {
    window.select(0);
    let mut buf = [0u8; 32];
    !window.name(&mut buf).is_empty()
}

fn bars_at_edges(device: &PciDevice, edu: &Edu) {
    let old = edu.base();
    let version = lapic::read(lapic::reg::VERSION);
    move_bar(device, 0, ktest::abi::layout::LAPIC_ADDR);
    let shadowed = lapic::read(lapic::reg::VERSION);
    move_bar(device, 0, old);
    report!(
        shadowed == version && version != ABSENT,
        "edu BAR0 on the LAPIC page: the LAPIC keeps answering (version {:#x})",
        shadowed
    );

    let top = (1u64 << 32) - MIB;
    move_bar(device, 0, top);
    let at_top = read32_at(top);
    move_bar(device, 0, old);
    report!(
        at_top == edu::ID_VALUE || at_top == ABSENT,
        "edu BAR0 in the last MiB below 4 GiB: decodes or not, the VMM goes on ({:#x})",
        at_top
    );
    report!(edu_alive(edu), "edu answers after the edge placements");
}

fn move_bar(device: &PciDevice, index: u8, address: u64) {
    let command = device.command();
    let decode = command::IO | command::MEMORY;
    // SAFETY: a hostile placement is this test's purpose; decoding is off
    // while the BAR changes, as a careful guest would do it.
    unsafe {
        device.set_command(command & !decode);
        device.set_bar_address(index, address);
        device.set_command(command | decode);
    }
}

fn bogus_msi(device: &PciDevice, edu: &Edu) {
    let Some(msi) = device.msi() else {
        report!(false, "edu has an MSI capability");
        return;
    };
    let data = msi.offset() + if msi.is_64bit() { 12 } else { 8 };
    msi.configure(0, MSI_VECTOR);
    msi.enable();
    for (address, vector, what) in [
        (0xdea0_0000u32, MSI_VECTOR, "a bogus address (0xdea00000)"),
        (0xfee0_0000, 0x02, "the illegal vector 2"),
    ] {
        // SAFETY: the hostile message this check is about.
        unsafe {
            device.write32(msi.offset() + 4, address);
            device.write16(data, u16::from(vector));
        }
        let before = IRQS.load(Ordering::Acquire);
        edu.raise_irq(0x100_0000);
        delay_ms(20);
        let arrived = IRQS.load(Ordering::Acquire) - before;
        edu.ack_irq(0x100_0000);
        report!(
            arrived == 0,
            "MSI with {} delivers nothing ({} arrived)",
            what,
            arrived
        );
    }
    msi.configure(0, MSI_VECTOR);
    let before = IRQS.load(Ordering::Acquire);
    edu.raise_irq(0x200_0000);
    let arrived = wait_until_timeout(1000, || IRQS.load(Ordering::Acquire) > before);
    report!(arrived, "a valid MSI afterwards arrives");
    msi.disable();
}

fn storms(device: &PciDevice, edu: &Edu) {
    let Some(msi) = device.msi() else {
        return;
    };
    msi.configure(0, MSI_VECTOR);
    msi.enable();
    let (arrived, settled) = storm(edu);
    report!(
        settled && arrived > 0 && arrived <= STORM,
        "MSI storm: {} writes to edu's 0x60, {} interrupts handled, status drained",
        STORM,
        arrived
    );
    msi.disable();

    let gsi = u32::from(device.interrupt_line());
    if gsi >= ioapic::pins() {
        report!(false, "edu's interrupt line {} is an IOAPIC pin", gsi);
        return;
    }
    ioapic::route(gsi, Route::level(INTX_VECTOR, 0));
    let (arrived, settled) = storm(edu);
    ioapic::mask(gsi);
    report!(
        settled && arrived > 0,
        "INTx storm: {} writes to edu's 0x60, {} interrupts handled, line dropped",
        STORM,
        arrived
    );
    report!(edu_alive(edu), "edu answers after the storms");
}

/// Raises edu's interrupt `STORM` times with interrupts enabled, so the
/// handler runs in between; returns how many interrupts were handled and
/// whether the status drained.
fn storm(edu: &Edu) -> (u32, bool) {
    let before = IRQS.load(Ordering::Acquire);
    let was_enabled = x86::interrupts_enabled();
    x86::enable_interrupts();
    for i in 0..STORM {
        edu.raise_irq(1 << (i % 24));
    }
    let settled = wait_until_timeout(1000, || edu.irq_status() == 0);
    if !was_enabled {
        x86::disable_interrupts();
    }
    (IRQS.load(Ordering::Acquire) - before, settled)
}
