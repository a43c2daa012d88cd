//! pci-testdev (PCI 1b36:0005): the six tests of kvm-unit-tests'
//! `pci_testdev()`, over BAR0 (MMIO: mmio-no-eventfd, mmio-wildcard-eventfd,
//! mmio-datamatch-eventfd) and BAR1 (port I/O: the portio-* three).
//!
//! For each BAR, as kvm-unit-tests does: select test t by writing t to byte
//! 0; the count must read 0; the width must be 1, 2 or 4; write the test's
//! data 16 times at its offset; the count must then be 0 (the writes were
//! eaten by an ioeventfd) or 16. Selecting test 3 ends the list, so each BAR
//! yields 3 tests and the total is 6. Beyond that, each header is checked
//! against QEMU's table (offset, data, name), the no-eventfd tests must
//! count exactly 16, and a datamatch test must not count writes of other
//! data.
//!
//! Run: `ktvmm run pci-testdev` (no arguments).
#![no_std]
#![no_main]

use ktest::driver::pci_testdev::{self, TESTS_PER_BAR, Window, hdr};
use ktest::pci;
use ktest::{report, report_info};

ktest::main!(main);

/// Writes per test, as in kvm-unit-tests.
const NR_WRITES: u32 = 16;
/// What every test in the table expects.
const TESTS: usize = 6;

/// QEMU's table: (name, offset, data) for test index type * 3 + t.
const EXPECTED: [(&str, u32, u8); TESTS] = [
    ("mmio-no-eventfd", 2048, 0xfa),
    ("mmio-wildcard-eventfd", 2049, 0xce),
    ("mmio-datamatch-eventfd", 2050, 0xfa),
    ("portio-no-eventfd", 131, 0xfa),
    ("portio-wildcard-eventfd", 132, 0xce),
    ("portio-datamatch-eventfd", 133, 0xfa),
];

fn main() -> u8 {
    ktest::report_prefix_push("pci-testdev");
    let Some(device) = pci::find(pci_testdev::VENDOR_ID, pci_testdev::DEVICE_ID) else {
        report!(false, "pci-testdev (1b36:0005) is on bus 0");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    report_info!("{}", device);
    device.enable_decoding();
    let Some((mem, io)) = pci_testdev::windows(&device) else {
        report!(false, "BAR0 is memory and BAR1 is I/O");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    let mut total = 0;
    for (kind, window) in [(0, mem), (1, io)] {
        total += run_all(kind, window);
    }
    report!(
        total == TESTS,
        "{} tests found ({} expected, as kvm-unit-tests' pci_testdev() counts them)",
        total,
        TESTS
    );
    ktest::report_prefix_pop();
    ktest::report_summary()
}

/// kvm-unit-tests' `pci_testdev_all()`: runs tests 0, 1, ... until one
/// fails; returns how many passed.
fn run_all(kind: usize, window: Window) -> usize {
    let name = if kind == 0 { "mem" } else { "io" };
    ktest::report_prefix_push(name);
    let mut passed = 0;
    for t in 0..=TESTS_PER_BAR {
        let ok = run_one(kind, t, window);
        if t == TESTS_PER_BAR {
            report!(!ok, "selecting test {} ends the list", t);
        }
        if !ok {
            break;
        }
        passed += 1;
    }
    window.select(TESTS_PER_BAR);
    ktest::report_prefix_pop();
    passed
}

/// kvm-unit-tests' `pci_testdev_one()` plus the header checks; reports the
/// test's result when it exists.
fn run_one(kind: usize, t: u8, window: Window) -> bool {
    window.select(t);
    let count = window.read32(hdr::COUNT);
    let width = window.read8(hdr::WIDTH);
    if count != 0 || !matches!(width, 1 | 2 | 4) {
        return false;
    }
    let data = window.read32(hdr::DATA);
    let offset = window.read32(hdr::OFFSET);
    let index = window.read8(hdr::TEST);
    let mut buf = [0u8; 32];
    let name = window.name(&mut buf);

    let (expected_name, expected_offset, expected_data) = EXPECTED[kind * 3 + usize::from(t)];
    report!(
        name == expected_name
            && usize::from(index) == kind * 3 + usize::from(t)
            && offset == expected_offset
            && data == u32::from(expected_data)
            && width == 1,
        "{}: header (test {}, width {}, offset {}, data {:#x})",
        name,
        index,
        width,
        offset,
        data
    );

    for _ in 0..NR_WRITES {
        // Width 1 (checked above): a byte write of the data.
        window.write8(u64::from(offset), data as u8);
    }
    let count = window.read32(hdr::COUNT);
    let eventfd = t != 0;
    let ok = if eventfd {
        count == 0 || count == NR_WRITES
    } else {
        count == NR_WRITES
    };
    report!(
        ok,
        "{}: {} writes counted {} ({})",
        name,
        NR_WRITES,
        count,
        if eventfd {
            "0 or 16: an ioeventfd may eat them"
        } else {
            "every write reaches the device"
        }
    );
    if t == 2 {
        // Datamatch: other data is not what the test counts.
        window.select(t);
        window.write8(u64::from(offset), !(data as u8));
        let other = window.read32(hdr::COUNT);
        report!(
            other == 0,
            "{}: a write of other data is not counted ({})",
            name,
            other
        );
        window.select(t);
    }
    ok
}
