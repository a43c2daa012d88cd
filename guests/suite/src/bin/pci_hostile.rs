//! A hostile guest against ktvmm's PCI devices (issue 3): whatever a guest
//! programs, the VMM must neither crash, nor hang, nor touch memory it
//! should not, and the devices must keep working afterwards.
//!
//! - read-only: writes of all-ones and zeros to the read-only fields of the
//!   host bridge, pci-testdev and edu (IDs, revision and class, header type,
//!   status, subsystem IDs, capability pointer, interrupt pin, expansion
//!   ROM, unimplemented BARs, the flag bits of implemented BARs, reserved
//!   command bits, edu's MSI capability header, control and address bits)
//!   change nothing;
//! - bar-on-ram: edu's BAR0 moved onto RAM the guest owns: RAM wins (it
//!   reads and writes as RAM, register offsets included, and edu sees none
//!   of it), and moving the BAR back restores the device;
//! - overlap: edu's BAR0 moved onto pci-testdev's BAR0 does not decode
//!   while they overlap (pci-testdev keeps its window), decodes once
//!   pci-testdev moves away, and the same the other way round; a BAR moved
//!   onto pc-testdev's MMIO buffer, or pci-testdev's I/O BAR moved onto
//!   COM1 or onto the PCI configuration ports, does not decode and the
//!   device it covers keeps working; an I/O BAR past 64 KiB decodes nowhere
//!   (in particular not at its address modulo 64 KiB);
//! - enormous: edu's BAR0 left at all-ones decodes at the top of 4 GiB;
//!   moved over the IOAPIC or the LAPIC, the in-kernel device keeps
//!   answering there;
//! - msi: MSIs programmed to addresses outside the 0xfee00000 window (RAM,
//!   other MMIO, above 4 GiB) deliver nothing and write nothing; a valid
//!   MSI afterwards is delivered once;
//! - storm: edu's raise register (0x60) written in a tight loop with MSI,
//!   then with INTx (the handler acknowledging each), and pc-testdev's IRQ
//!   port toggled in a loop: interrupts arrive, none are invented, the
//!   guest goes on and the devices still work.
//!
//! Arguments: `storm=N` (default 5000) sets the iterations of each storm;
//! `storm=forever` skips all of the above and writes 0x60 in a loop that
//! never ends, with an INTx that is never acknowledged: only the VMM's
//! timeout can end that run (the runner's tests check that it does).
//!
//! Run: `ktvmm run pci-hostile` (one CPU is enough).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktest::abi::layout::{IOAPIC_ADDR, LAPIC_ADDR, PC_TESTDEV_IOMEM};
use ktest::abi::pci::{HOST_BRIDGE_SLOT, MMIO_WINDOW_END};
use ktest::abi::ports::{COM1, PC_TESTDEV_IRQ_BASE};
use ktest::driver::edu::{self, Edu};
use ktest::driver::pci_testdev::{self, Window, hdr};
use ktest::ioapic::{self, Route};
use ktest::lapic::{self, Destination};
use ktest::pci::{self, PciAddress, PciDevice, reg};
use ktest::{
    InterruptFrame, alloc_pages, delay_ms, mmio, report, report_info, report_skip,
    wait_until_timeout, x86,
};

ktest::main!(main);

const INTX_VECTOR: u8 = 0x60;
const MSI_VECTOR: u8 = 0x61;
/// The vector bogus MSIs carry: it must never arrive.
const BOGUS_VECTOR: u8 = 0x62;
const PC_IRQ_VECTOR: u8 = 0x63;
const IPI_VECTOR: u8 = 0x64;
/// The vector of `storm=forever`'s INTx, whose handler never quiets edu.
const STUCK_VECTOR: u8 = 0x65;
const VECTORS: usize = 6;
/// ISA IRQ the pc-testdev storm toggles (no device of ours uses it).
const STORM_ISA_IRQ: u16 = 14;
const TIMEOUT_MS: u32 = 1000;
/// How long to watch for an interrupt that must not come.
const QUIET_MS: u32 = 10;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const ALL_ONES: u32 = 0xffff_ffff;
/// pci-testdev's first MMIO test, as its table names it.
const MMIO_TEST_NAME: &[u8] = b"mmio-no-eventfd";

static COUNTS: [AtomicU32; VECTORS] = [const { AtomicU32::new(0) }; VECTORS];
/// Where edu's registers are, for the INTx handler.
static EDU_BASE: AtomicU64 = AtomicU64::new(0);

fn count(vector: u8) -> u32 {
    COUNTS[usize::from(vector - INTX_VECTOR)].load(Ordering::Acquire)
}

/// Counts every interrupt; for INTx also quiets edu, which is level-triggered
/// (except on [`STUCK_VECTOR`]).
fn handler(frame: &InterruptFrame) {
    if frame.vector() == INTX_VECTOR {
        // SAFETY: set from edu's BAR0 before INTx is routed here.
        let edu = unsafe { Edu::new(EDU_BASE.load(Ordering::Relaxed)) };
        edu.ack_irq(edu.irq_status());
    }
    COUNTS[usize::from(frame.vector() - INTX_VECTOR)].fetch_add(1, Ordering::Release);
}

/// The devices under test and where ktvmm put their BARs.
struct Devices {
    edu: PciDevice,
    /// edu's BAR0 as assigned.
    edu_bar: u64,
    testdev: PciDevice,
    /// pci-testdev's BAR0 (4 KiB MMIO) and BAR1 (256 ports) as assigned.
    testdev_mmio: u64,
    testdev_io: u16,
    /// 1 MiB of RAM, 1 MiB-aligned, that only this test uses.
    ram: u64,
}

fn main() -> u8 {
    ktest::report_prefix_push("pci-hostile");
    let Some(devices) = find_devices() else {
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    for vector in INTX_VECTOR..INTX_VECTOR + VECTORS as u8 {
        ktest::set_irq_handler(vector, handler);
    }
    let storm = ktest::arg_value("storm");
    if storm == Some("forever") {
        endless_storm(&devices);
    }
    let storm = storm.and_then(|n| n.parse().ok()).unwrap_or(5_000);

    read_only(&devices);
    bar_on_ram(&devices);
    overlap(&devices);
    enormous(&devices);
    bogus_msi(&devices);
    storms(&devices, storm);

    ktest::report_prefix_pop();
    ktest::report_summary()
}

fn find_devices() -> Option<Devices> {
    let edu = pci::find(edu::VENDOR_ID, edu::DEVICE_ID);
    let testdev = pci::find(pci_testdev::VENDOR_ID, pci_testdev::DEVICE_ID);
    report!(
        edu.is_some() && testdev.is_some(),
        "edu and pci-testdev are on bus 0"
    );
    let (edu, testdev) = (edu?, testdev?);
    let edu_bar = edu.bar(0)?.address;
    let (Window::Mmio(testdev_mmio), Window::Pio(testdev_io)) = pci_testdev::windows(&testdev)?
    else {
        return None;
    };
    let edu_ok = edu_id_at(edu_bar) == edu::ID_VALUE;
    report!(edu_ok, "edu answers at BAR0 {:#x} before the test", edu_bar);
    EDU_BASE.store(edu_bar, Ordering::Relaxed);
    let region = alloc_pages(2 * MIB / PAGE);
    Some(Devices {
        edu,
        edu_bar,
        testdev,
        testdev_mmio,
        testdev_io,
        ram: region.next_multiple_of(MIB),
    })
    .filter(|_| edu_ok)
}

fn edu_id_at(address: u64) -> u32 {
    // SAFETY: an MMIO-window or test-owned address; reading edu's ID
    // register (or whatever is there) has no side effect.
    unsafe { mmio::read32(address) }
}

/// Programs BAR `index` of `device` with decoding left on, as a careless
/// or hostile guest would.
fn put_bar(device: &PciDevice, index: u8, address: u64) {
    // SAFETY: what this test is about: the VMM must cope with any address.
    unsafe { device.set_bar_address(index, address) }
}

/// Whether pci-testdev's table answers at `window` (its first test of that
/// kind selected: width 1 and, for MMIO, the expected name).
fn testdev_answers(window: Window) -> bool {
    window.select(0);
    let width = window.read8(hdr::WIDTH);
    let name_ok = match window {
        Window::Mmio(_) => MMIO_TEST_NAME
            .iter()
            .enumerate()
            .all(|(i, &c)| window.read8(hdr::NAME + i as u64) == c),
        Window::Pio(_) => true,
    };
    window.select(pci_testdev::TESTS_PER_BAR);
    width == 1 && name_ok
}

// ---------------------------------------------------------------- read-only

/// Registers whose values must survive writes: (offset, width in bytes, name).
const READ_ONLY: [(u8, u8, &str); 8] = [
    (reg::VENDOR_ID, 4, "vendor/device ID"),
    (reg::REVISION, 4, "revision and class"),
    (reg::HEADER_TYPE, 1, "header type"),
    (reg::STATUS, 2, "status"),
    (0x2c, 4, "subsystem IDs"),
    (reg::CAPABILITIES, 1, "capability pointer"),
    (reg::INTERRUPT_PIN, 1, "interrupt pin"),
    (0x30, 4, "expansion ROM BAR"),
];

fn config_read(device: &PciDevice, offset: u8, width: u8) -> u32 {
    match width {
        1 => u32::from(device.read8(offset)),
        2 => u32::from(device.read16(offset)),
        _ => device.read32(offset),
    }
}

fn config_write(device: &PciDevice, offset: u8, width: u8, value: u32) {
    // SAFETY: hostile writes are the point; the callers restore what is
    // writable.
    unsafe {
        match width {
            1 => device.write8(offset, value as u8),
            2 => device.write16(offset, value as u16),
            _ => device.write32(offset, value),
        }
    }
}

/// A register that read back other than expected after a write.
#[derive(Clone, Copy)]
struct Mismatch {
    what: &'static str,
    offset: u8,
    wrote: u32,
    read: u32,
}

/// Formats the first mismatch, if any, as " (what at offset reads ...)".
struct First(Option<Mismatch>);

impl core::fmt::Display for First {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(m) => write!(
                f,
                " ({} at {:#04x} reads {:#x} after writing {:#x})",
                m.what, m.offset, m.read, m.wrote
            ),
            None => Ok(()),
        }
    }
}

/// The first of `fields` that a write of all-ones or zeros changes.
fn changed_field(device: &PciDevice, fields: &[(u8, u8, &'static str)]) -> Option<Mismatch> {
    for &(offset, width, what) in fields {
        let before = config_read(device, offset, width);
        for wrote in [ALL_ONES, 0] {
            config_write(device, offset, width, wrote);
            let read = config_read(device, offset, width);
            if read != before {
                return Some(Mismatch {
                    what,
                    offset,
                    wrote,
                    read,
                });
            }
        }
    }
    None
}

fn read_only(devices: &Devices) {
    ktest::report_prefix_push("read-only");
    let Some(bridge) = PciDevice::probe(PciAddress::slot(HOST_BRIDGE_SLOT)) else {
        report!(false, "host bridge at 00.0");
        ktest::report_prefix_pop();
        return;
    };
    for (name, device) in [
        ("host bridge", &bridge),
        ("pci-testdev", &devices.testdev),
        ("edu", &devices.edu),
    ] {
        let changed = changed_field(device, &READ_ONLY);
        report!(
            changed.is_none(),
            "{}: IDs, class, header type, status, subsystem, capability pointer, pin and ROM BAR ignore writes{}",
            name,
            First(changed)
        );

        // BARs: unimplemented ones stay 0; implemented ones keep their flag
        // bits, and the address bits below their size stay 0.
        let bars = device.bars();
        let mut bad = None;
        for index in 0..6u8 {
            let offset = reg::BAR0 + 4 * index;
            let before = device.read32(offset);
            let implemented = bars[usize::from(index)].is_some();
            for value in [ALL_ONES, 0] {
                config_write(device, offset, 4, value);
                let after = device.read32(offset);
                let ok = if implemented {
                    let flags = if before & 1 != 0 { 0x3 } else { 0xf };
                    let size = bars[usize::from(index)].map_or(0, |bar| bar.size);
                    let below_size = (size as u32).wrapping_sub(1) & !flags;
                    after & flags == before & flags && after & below_size == 0
                } else {
                    after == 0
                };
                if !ok && bad.is_none() {
                    bad = Some(Mismatch {
                        what: "BAR",
                        offset,
                        wrote: value,
                        read: after,
                    });
                }
            }
            config_write(device, offset, 4, before);
        }
        report!(
            bad.is_none(),
            "{}: BAR flag and size bits are read-only, unimplemented BARs read 0{}",
            name,
            First(bad)
        );

        // Reserved command bits 11-15 stay 0.
        let before = device.command();
        config_write(device, reg::COMMAND, 2, 0xffff);
        let after = device.command();
        config_write(device, reg::COMMAND, 2, u32::from(before));
        report!(
            after & 0xf800 == 0 && device.command() == before,
            "{}: reserved command bits stay 0 ({:#06x} after writing 0xffff)",
            name,
            after
        );
    }
    edu_msi_read_only(&devices.edu);
    let edu_ok = edu_id_at(devices.edu_bar) == edu::ID_VALUE;
    let testdev_ok = testdev_answers(Window::Mmio(devices.testdev_mmio))
        && testdev_answers(Window::Pio(devices.testdev_io));
    report!(
        edu_ok && testdev_ok,
        "the devices still answer at their BARs (edu {}, pci-testdev {})",
        edu_ok,
        testdev_ok
    );
    ktest::report_prefix_pop();
}

/// edu's MSI capability: its header and the read-only bits of control,
/// address and data.
fn edu_msi_read_only(device: &PciDevice) {
    let Some(msi) = device.msi() else {
        report!(false, "edu: has an MSI capability");
        return;
    };
    let at = msi.offset();
    let header = changed_field(device, &[(at, 2, "capability ID and next pointer")]);
    // Control: only Enable (bit 0) and Multiple Message Enable (bits 6:4)
    // are writable; 64-bit, Multiple Message Capable and the rest are not.
    let control = msi.control();
    config_write(device, at + 2, 2, 0xffff);
    let set = msi.control();
    config_write(device, at + 2, 2, 0);
    let cleared = msi.control();
    config_write(device, at + 2, 2, u32::from(control));
    const WRITABLE: u16 = 0x0071;
    report!(
        header.is_none()
            && set & !WRITABLE == control & !WRITABLE
            && cleared & !WRITABLE == control & !WRITABLE,
        "edu: MSI capability header and control's read-only bits ignore writes (control {:#06x}: {:#06x} after all-ones, {:#06x} after zeros){}",
        control,
        set,
        cleared,
        First(header)
    );
    // Address bits 1:0 read 0; the upper half of the data dword is not ours.
    let registers = [
        (at + 4, 0xffff_fffc_u32),
        (at + 8, ALL_ONES),
        (at + 12, 0xffff),
    ];
    let mut bad = None;
    for (offset, expected) in registers {
        let before = device.read32(offset);
        config_write(device, offset, 4, ALL_ONES);
        let after = device.read32(offset);
        config_write(device, offset, 4, before);
        if after != expected && bad.is_none() {
            bad = Some(Mismatch {
                what: "MSI register",
                offset,
                wrote: ALL_ONES,
                read: after,
            });
        }
    }
    report!(
        bad.is_none(),
        "edu: MSI address bits 1:0 and the bytes past the message data read 0 after all-ones{}",
        First(bad)
    );
}

// --------------------------------------------------------------- bar-on-ram

/// A value for RAM at `address`, unlike anything edu would return.
fn marker(address: u64) -> u32 {
    (address as u32) ^ 0x5a5a_0000
}

fn bar_on_ram(devices: &Devices) {
    ktest::report_prefix_push("bar-on-ram");
    let Devices {
        edu: device,
        edu_bar,
        ram,
        ..
    } = *devices;
    // SAFETY: edu's BAR0 as ktvmm assigned it.
    let edu = unsafe { Edu::new(edu_bar) };
    // Markers in edu's register block and at the start of every page.
    let register_block = (0..0x100u64).step_by(4);
    let pages = (0..MIB).step_by(PAGE as usize).skip(1);
    for offset in register_block.clone().chain(pages.clone()) {
        // SAFETY: test-owned RAM.
        unsafe { mmio::write32(ram + offset, marker(ram + offset)) };
    }
    let factorial = edu.factorial();

    put_bar(&device, 0, ram);
    let programmed = device.bar_register(0) & !0xf;
    let block_is_ram = register_block
        .clone()
        .all(|offset| edu_id_at(ram + offset) == marker(ram + offset));
    report!(
        u64::from(programmed) == ram && block_is_ram,
        "BAR0 programmed to RAM at {:#x} (reads {:#x}): edu's registers there read as RAM",
        ram,
        programmed
    );
    // Writes to edu's register offsets (liveness, factorial, raise, DMA)
    // must land in RAM and nowhere else.
    let writes = [
        (edu::reg::ALIVE, 0x1234_5678),
        (edu::reg::FACTORIAL, 5),
        (edu::reg::IRQ_RAISE, 0x8000),
        (edu::reg::DMA_CMD, edu::DMA_START),
    ];
    for (offset, value) in writes {
        // SAFETY: test-owned RAM (edu's registers only if the VMM let the
        // BAR shadow RAM, which is what this checks).
        unsafe { mmio::write32(ram + offset, value) };
    }
    let written = writes
        .iter()
        .all(|&(offset, value)| edu_id_at(ram + offset) == value);
    report!(
        written,
        "writes at edu's register offsets read back as written (RAM, not the device)"
    );
    let gone = edu_id_at(edu_bar);
    report!(
        gone == ALL_ONES,
        "edu no longer answers at its old address {:#x} ({:#x})",
        edu_bar,
        gone
    );

    put_bar(&device, 0, edu_bar);
    let back = edu.id();
    let alive = edu.liveness(0x0f0f_1234);
    report!(
        back == edu::ID_VALUE && alive == !0x0f0f_1234,
        "BAR0 moved back: edu answers (ID {:#x}, liveness {:#x})",
        back,
        alive
    );
    let untouched = edu.irq_status() == 0 && edu.factorial() == factorial && !edu.dma_busy();
    report!(
        untouched,
        "edu saw none of the writes to RAM (interrupt status {:#x}, factorial {} -> {}, DMA command {:#x})",
        edu.irq_status(),
        factorial,
        edu.factorial(),
        edu.read32(edu::reg::DMA_CMD)
    );
    let pages_intact = pages
        .clone()
        .all(|offset| edu_id_at(ram + offset) == marker(ram + offset));
    let kept = writes
        .iter()
        .all(|&(offset, value)| edu_id_at(ram + offset) == value);
    report!(
        pages_intact && kept,
        "the 1 MiB of RAM kept its contents (page markers {}, register offsets {})",
        pages_intact,
        kept
    );
    ktest::report_prefix_pop();
}

// ------------------------------------------------------------------ overlap

/// The 1 MiB-aligned range holding `address`.
fn mib_of(address: u64) -> u64 {
    address & !(MIB - 1)
}

fn overlap(devices: &Devices) {
    ktest::report_prefix_push("overlap");
    let Devices {
        edu,
        edu_bar,
        testdev,
        testdev_mmio,
        testdev_io,
        ..
    } = *devices;
    let mmio = Window::Mmio(testdev_mmio);
    let parked = mib_of(testdev_mmio);
    // A free 4 KiB range for pci-testdev: the last MiB of the BAR window.
    let free = MMIO_WINDOW_END - MIB;
    if parked == edu_bar || mib_of(edu_bar) == free || parked == free {
        report_skip!("BAR layout leaves no room for the overlap checks");
        ktest::report_prefix_pop();
        return;
    }

    // edu onto pci-testdev: refused while they overlap.
    put_bar(&edu, 0, parked);
    let testdev_ok = testdev_answers(mmio);
    let old = edu_id_at(edu_bar);
    report!(
        testdev_ok && old == ALL_ONES,
        "edu BAR0 moved onto pci-testdev's BAR0 ({:#x}): pci-testdev keeps its window ({}), edu left {:#x} ({:#x})",
        parked,
        testdev_ok,
        edu_bar,
        old
    );
    // pci-testdev leaves: the parked edu BAR decodes.
    put_bar(&testdev, 0, free);
    let edu_there = edu_id_at(parked);
    let testdev_moved = testdev_answers(Window::Mmio(free));
    report!(
        edu_there == edu::ID_VALUE && testdev_moved,
        "pci-testdev BAR0 moved away to {:#x} (answers there: {}): edu now decodes at {:#x} ({:#x})",
        free,
        testdev_moved,
        parked,
        edu_there
    );
    // pci-testdev comes back onto edu: refused, edu keeps the range.
    put_bar(&testdev, 0, testdev_mmio);
    let edu_kept = edu_id_at(parked);
    let left = edu_id_at(free);
    let io_ok = testdev_answers(Window::Pio(testdev_io));
    report!(
        edu_kept == edu::ID_VALUE && left == ALL_ONES && io_ok,
        "pci-testdev BAR0 moved back onto edu: edu keeps answering ({:#x}), nothing at {:#x} ({:#x}), pci-testdev's I/O BAR still works ({})",
        edu_kept,
        free,
        left,
        io_ok
    );
    // edu goes home: pci-testdev's BAR0 decodes again.
    put_bar(&edu, 0, edu_bar);
    let edu_home = edu_id_at(edu_bar);
    let testdev_home = testdev_answers(mmio);
    report!(
        edu_home == edu::ID_VALUE && testdev_home,
        "edu BAR0 moved back to {:#x} ({:#x}): pci-testdev's BAR0 decodes again ({})",
        edu_bar,
        edu_home,
        testdev_home
    );

    // edu onto pc-testdev's MMIO buffer: refused, the buffer keeps working.
    put_bar(&edu, 0, PC_TESTDEV_IOMEM);
    let at = PC_TESTDEV_IOMEM + 0x10;
    // SAFETY: pc-testdev's buffer, plain bytes.
    let value = unsafe {
        mmio::write32(at, 0x600d_f00d);
        mmio::read32(at)
    };
    let old = edu_id_at(edu_bar);
    put_bar(&edu, 0, edu_bar);
    report!(
        value == 0x600d_f00d && old == ALL_ONES && edu_id_at(edu_bar) == edu::ID_VALUE,
        "edu BAR0 moved onto pc-testdev's buffer: the buffer keeps working ({:#x}), edu left ({:#x}) and comes back",
        value,
        old
    );

    io_bar_overlaps(&testdev, testdev_io);
    ktest::report_prefix_pop();
}

/// pci-testdev's I/O BAR moved onto COM1, onto the PCI configuration
/// ports and past 64 KiB.
fn io_bar_overlaps(testdev: &PciDevice, home: u16) {
    let bridge = PciAddress::slot(HOST_BRIDGE_SLOT);
    let bridge_id = pci::read32(bridge, reg::VENDOR_ID);
    // Select a test, so that a decoding BAR would show width 1 at offset 1.
    let io = Window::Pio(home);
    io.select(0);

    put_bar(testdev, 1, u64::from(COM1 & !0xff));
    // SAFETY: COM1's line status register; reading it has no side effect.
    let lsr = unsafe { x86::inb(COM1 + 5) };
    // SAFETY: no device there (pci-testdev's table if the BAR decoded).
    let width = unsafe { x86::inb((COM1 & !0xff) + 1) };
    report!(
        lsr & 0x60 == 0x60 && width == 0xff,
        "pci-testdev I/O BAR moved onto COM1 ({:#x}): COM1 keeps its ports (LSR {:#x}), the BAR does not decode ({:#x})",
        COM1 & !0xff,
        lsr,
        width
    );

    let config_ports = ktest::abi::ports::PCI_CONFIG_ADDRESS & !0xff;
    put_bar(testdev, 1, u64::from(config_ports));
    let id = pci::read32(bridge, reg::VENDOR_ID);
    // SAFETY: no device there (pci-testdev's table if the BAR decoded).
    let width = unsafe { x86::inb(config_ports + 1) };
    report!(
        id == bridge_id && width == 0xff,
        "pci-testdev I/O BAR moved onto the configuration ports ({:#x}): configuration cycles still work ({:#x}), the BAR does not decode ({:#x})",
        config_ports,
        id,
        width
    );

    for (address, alias) in [(0x1_0000u64, 0x0000u16), (0xffff_ff00, 0xff00)] {
        put_bar(testdev, 1, address);
        let register = testdev.bar_register(1);
        // SAFETY: nothing decodes at the alias (pci-testdev's table if the
        // VMM cut the BAR's address to 16 bits).
        let width = unsafe { x86::inb(alias + 1) };
        report!(
            u64::from(register & !3) == address && width == 0xff,
            "pci-testdev I/O BAR at {:#x} (reads {:#x}) decodes nowhere, not at {:#x} either ({:#x})",
            address,
            register,
            alias,
            width
        );
    }

    put_bar(testdev, 1, u64::from(home));
    let back = testdev_answers(io);
    report!(
        back,
        "pci-testdev I/O BAR moved back to {:#x} answers",
        home
    );
}

// ---------------------------------------------------------------- enormous

fn enormous(devices: &Devices) {
    ktest::report_prefix_push("enormous");
    let Devices { edu, edu_bar, .. } = *devices;

    // All-ones left in the BAR with decoding on: the highest address a
    // 1 MiB BAR can hold, ending exactly at 4 GiB.
    // SAFETY: hostile on purpose.
    unsafe { edu.write32(reg::BAR0, ALL_ONES) };
    let register = edu.bar_register(0);
    let top = u64::from(register & !0xf);
    let there = edu_id_at(top);
    report!(
        top + MIB == 1 << 32 && there == edu::ID_VALUE,
        "BAR0 left at all-ones reads {:#x}: edu decodes at the top of 4 GiB ({:#x})",
        register,
        there
    );

    // Over the IOAPIC: the in-kernel IOAPIC keeps answering there.
    let version = ioapic::version();
    let pin = 10;
    let entry = ioapic::redirection(pin);
    put_bar(&edu, 0, IOAPIC_ADDR);
    let during = ioapic::version();
    ioapic::route(pin, Route::edge(0x70, 0).masked());
    let routed = ioapic::redirection(pin);
    // SAFETY: the entry as it was.
    unsafe { ioapic::set_redirection(pin, entry) };
    report!(
        during == version && routed == Route::edge(0x70, 0).masked().entry(),
        "BAR0 over the IOAPIC ({:#x}): the IOAPIC still answers (version {:#x}, was {:#x}; entry {:#x})",
        IOAPIC_ADDR,
        during,
        version,
        routed
    );

    // Over the LAPIC: registers and IPIs still work.
    let (id, version) = (
        lapic::read(lapic::reg::ID),
        lapic::read(lapic::reg::VERSION),
    );
    put_bar(&edu, 0, LAPIC_ADDR);
    let same = lapic::read(lapic::reg::ID) == id && lapic::read(lapic::reg::VERSION) == version;
    let before = count(IPI_VECTOR);
    lapic::send_ipi(Destination::ToSelf, IPI_VECTOR);
    let ipi = wait_until_timeout(TIMEOUT_MS, || count(IPI_VECTOR) > before);
    report!(
        same && ipi,
        "BAR0 over the LAPIC ({:#x}): the LAPIC still answers (ID and version unchanged: {}) and delivers a self-IPI ({})",
        LAPIC_ADDR,
        same,
        ipi
    );

    put_bar(&edu, 0, edu_bar);
    let home = edu_id_at(edu_bar);
    let gone = edu_id_at(top);
    report!(
        home == edu::ID_VALUE && gone == ALL_ONES,
        "BAR0 moved back to {:#x}: edu answers ({:#x}), nothing left at {:#x} ({:#x})",
        edu_bar,
        home,
        top,
        gone
    );
    ktest::report_prefix_pop();
}

// --------------------------------------------------------------------- msi

fn bogus_msi(devices: &Devices) {
    ktest::report_prefix_push("msi");
    let Devices {
        edu: device,
        edu_bar,
        ram,
        ..
    } = *devices;
    let Some(msi) = device.msi() else {
        report!(false, "edu has an MSI capability");
        ktest::report_prefix_pop();
        return;
    };
    // SAFETY: edu's BAR0; it raises interrupts, no DMA is started.
    let edu = unsafe { Edu::new(edu_bar) };
    // SAFETY: edu only sends MSIs here (no DMA is programmed).
    unsafe { device.enable_bus_master() };
    // Address bits 19:12 of each are 0: KVM, given the message as it is,
    // would deliver it to APIC ID 0.
    let canary = ram + 0x400;
    let bogus: [(u64, &str); 4] = [
        (canary, "guest RAM"),
        (0xfed0_0000, "MMIO below the LAPIC"),
        (0xfef0_0000, "just past the MSI window"),
        (0x1_fee0_0000, "the MSI window plus 4 GiB"),
    ];
    // SAFETY: test-owned RAM.
    unsafe { mmio::write32(canary, 0xcafe_f00d) };
    for (address, what) in bogus {
        let at = msi.offset();
        // SAFETY: a bogus message address is the point; bus mastering only
        // lets edu send this message.
        unsafe {
            device.write32(at + 4, address as u32);
            device.write32(at + 8, (address >> 32) as u32);
            device.write16(at + 12, u16::from(BOGUS_VECTOR));
        }
        msi.enable();
        let before = count(BOGUS_VECTOR);
        edu.raise_irq(0x1);
        delay_ms(QUIET_MS);
        edu.ack_irq(u32::MAX);
        msi.disable();
        // SAFETY: test-owned RAM.
        let kept = unsafe { mmio::read32(canary) } == 0xcafe_f00d;
        report!(
            count(BOGUS_VECTOR) == before && kept,
            "MSI to {:#x} ({}): nothing delivered ({}), RAM untouched ({})",
            address,
            what,
            count(BOGUS_VECTOR) - before,
            kept
        );
    }
    msi.configure(0, MSI_VECTOR);
    msi.enable();
    let before = count(MSI_VECTOR);
    edu.raise_irq(0x2);
    let arrived = wait_until_timeout(TIMEOUT_MS, || count(MSI_VECTOR) > before);
    delay_ms(QUIET_MS);
    edu.ack_irq(u32::MAX);
    msi.disable();
    device.disable_bus_master();
    report!(
        arrived && count(MSI_VECTOR) == before + 1 && count(BOGUS_VECTOR) == 0,
        "then a valid MSI is delivered once ({})",
        count(MSI_VECTOR) - before
    );
    ktest::report_prefix_pop();
}

// ------------------------------------------------------------------- storm

fn storms(devices: &Devices, iterations: u32) {
    ktest::report_prefix_push("storm");
    let device = devices.edu;
    // SAFETY: edu's BAR0; only interrupts are raised.
    let edu = unsafe { Edu::new(devices.edu_bar) };
    report_info!("{} iterations per storm", iterations);

    // MSI: every write to 0x60 sends a message.
    if let Some(msi) = device.msi() {
        // SAFETY: edu only sends MSIs (no DMA is programmed).
        unsafe { device.enable_bus_master() };
        msi.configure(0, MSI_VECTOR);
        msi.enable();
        let before = count(MSI_VECTOR);
        x86::enable_interrupts();
        for _ in 0..iterations {
            edu.raise_irq(0x1);
        }
        x86::disable_interrupts();
        delay_ms(QUIET_MS);
        let delivered = count(MSI_VECTOR) - before;
        report!(
            (1..=iterations).contains(&delivered),
            "MSI storm: {} writes to 0x60 delivered {} interrupts",
            iterations,
            delivered
        );
        edu.ack_irq(u32::MAX);
        let before = count(MSI_VECTOR);
        edu.raise_irq(0x2);
        let after = wait_until_timeout(TIMEOUT_MS, || count(MSI_VECTOR) > before);
        report!(after, "an MSI after the storm is delivered");
        edu.ack_irq(u32::MAX);
        msi.disable();
        device.disable_bus_master();
    } else {
        report!(false, "edu has an MSI capability");
    }

    // INTx: level-triggered, the handler acknowledges every one.
    let gsi = u32::from(device.interrupt_line());
    if gsi < ioapic::pins() {
        ioapic::route(gsi, Route::level(INTX_VECTOR, 0));
        let before = count(INTX_VECTOR);
        // An interrupt may be delivered once more when the LAPIC ends it
        // at delivery (see ktest::lapic::eoi_at_delivery).
        let most = if lapic::eoi_at_delivery() { 2 } else { 1 } * iterations;
        x86::enable_interrupts();
        for _ in 0..iterations {
            edu.raise_irq(0x1);
        }
        x86::disable_interrupts();
        delay_ms(QUIET_MS);
        let delivered = count(INTX_VECTOR) - before;
        let quiet = edu.irq_status() == 0 && !ioapic::remote_irr(gsi);
        ioapic::mask(gsi);
        report!(
            (1..=most).contains(&delivered) && quiet,
            "INTx storm: {} writes to 0x60 delivered {} interrupts, then the line is quiet ({})",
            iterations,
            delivered,
            quiet
        );
    } else {
        report_skip!("edu's interrupt line {} is not an IOAPIC pin", gsi);
    }

    // pc-testdev's IRQ port, toggled as fast as the guest can (the legacy
    // PIC, which sees ISA IRQs too, stays out of it).
    ioapic::mask_legacy_pic();
    let pin = u32::from(STORM_ISA_IRQ);
    ioapic::route(pin, Route::edge(PC_IRQ_VECTOR, 0));
    let port = PC_TESTDEV_IRQ_BASE + STORM_ISA_IRQ;
    let before = count(PC_IRQ_VECTOR);
    x86::enable_interrupts();
    for _ in 0..iterations {
        // SAFETY: pc-testdev's IRQ port: raises and lowers an ISA IRQ line.
        unsafe {
            x86::outb(port, 1);
            x86::outb(port, 0);
        }
    }
    x86::disable_interrupts();
    delay_ms(QUIET_MS);
    ioapic::mask(pin);
    let delivered = count(PC_IRQ_VECTOR) - before;
    report!(
        (1..=iterations).contains(&delivered),
        "pc-testdev IRQ {} storm: {} pulses delivered {} interrupts",
        STORM_ISA_IRQ,
        iterations,
        delivered
    );

    let id = edu.id();
    let alive = edu.liveness(0x1357_9bdf);
    report!(
        id == edu::ID_VALUE && alive == !0x1357_9bdf,
        "edu still works after the storms (ID {:#x}, liveness {:#x})",
        id,
        alive
    );
    ktest::report_prefix_pop();
}

/// `storm=forever`: edu's INTx asserted and never acknowledged (its
/// level-triggered interrupt fires again after every EOI), and edu's raise
/// register written in a loop that never ends.
fn endless_storm(devices: &Devices) -> ! {
    let gsi = u32::from(devices.edu.interrupt_line());
    ioapic::route(gsi, Route::level(STUCK_VECTOR, 0));
    // SAFETY: edu's BAR0; only interrupts are raised.
    let edu = unsafe { Edu::new(devices.edu_bar) };
    report_info!("raising edu's INTx forever: only the VMM's timeout ends this");
    x86::enable_interrupts();
    loop {
        edu.raise_irq(0x1);
    }
}
