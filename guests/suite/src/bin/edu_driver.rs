//! The driver framework (`ktest::driver`, after the Linux VFIO selftests'
//! `vfio_pci_driver_test`), on every function of bus 0 that a registered
//! driver claims (edu and pci-testdev here):
//!
//! - init binds; memcpy of 1, 8, 100 and the maximum size copies the data
//!   and nothing past it; a copy larger than the maximum is refused;
//!   waiting with no copy started is an error;
//! - send_msi delivers the MSI to the vector and CPU given at init (the
//!   last CPU);
//! - remove unbinds (operations then fail with NotBound) and a second
//!   init/remove cycle works.
//!
//! A driver without memcpy or MSI (pci-testdev) reports Unsupported, and
//! those checks SKIP for it. At least one device must support memcpy.
//!
//! Run: `ktvmm run edu-driver -smp 2`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use ktest::driver::{self, Driver, DriverError, MsiTarget};
use ktest::pci::{self, PciDevice};
use ktest::{
    InterruptFrame, alloc_pages, cpu_count, cpu_id, mmio, report, report_info, report_skip,
    wait_until_timeout,
};

ktest::main!(main);

const MSI_VECTOR: u8 = 0x62;
const TIMEOUT_MS: u32 = 1000;
const PAGE: u64 = 4096;
const CANARY: u8 = 0xcc;
/// Copy sizes tried besides the driver's maximum.
const SIZES: [usize; 3] = [1, 8, 100];

static MSIS: AtomicU32 = AtomicU32::new(0);
static MSI_CPU: AtomicU32 = AtomicU32::new(u32::MAX);

fn msi_handler(_frame: &InterruptFrame) {
    MSI_CPU.store(cpu_id(), Ordering::Relaxed);
    MSIS.fetch_add(1, Ordering::Release);
    if cpu_id() != 0 {
        ktest::wake(0);
    }
}

fn main() -> u8 {
    ktest::report_prefix_push("driver");
    ktest::set_irq_handler(MSI_VECTOR, msi_handler);
    let src = alloc_pages(1);
    let dst = alloc_pages(2);
    let mut claimed = 0;
    let mut copied = 0;
    for device in pci::devices() {
        let result = driver::with_driver(&device, |driver| test_device(&device, driver, src, dst));
        match result {
            Some(memcpy_ok) => {
                claimed += 1;
                if memcpy_ok {
                    copied += 1;
                }
            }
            None => report_info!("{}: no driver", device),
        }
    }
    report!(claimed >= 2, "{} devices claimed by a driver", claimed);
    report!(
        copied >= 1,
        "{} devices copied memory through their driver",
        copied
    );
    ktest::report_prefix_pop();
    ktest::report_summary()
}

/// Runs every check on `device` with its driver; returns whether memcpy
/// worked.
fn test_device(device: &PciDevice, driver: &mut dyn Driver, src: u64, dst: u64) -> bool {
    ktest::report_prefix_push(driver.name());
    report_info!("{} claimed by driver {}", device, driver.name());
    let target = MsiTarget {
        vector: MSI_VECTOR,
        apic_id: cpu_count() - 1,
    };
    let bound = driver.init(device, target);
    report!(bound.is_ok(), "init: {:?}", bound);
    if bound.is_err() {
        ktest::report_prefix_pop();
        return false;
    }

    let memcpy_ok = memcpy(driver, src, dst);
    send_msi(driver, target);

    driver.remove();
    // SAFETY: the driver is unbound: nothing may be copied.
    let after = unsafe { driver.memcpy_start(src, dst, 1) };
    let msi_after = driver.send_msi();
    report!(
        matches!(after, Err(DriverError::NotBound | DriverError::Unsupported))
            && matches!(
                msi_after,
                Err(DriverError::NotBound | DriverError::Unsupported)
            ),
        "remove unbinds (memcpy {:?}, send_msi {:?})",
        after,
        msi_after
    );
    let again = driver.init(device, target);
    driver.remove();
    report!(again.is_ok(), "init after remove: {:?}", again);
    ktest::report_prefix_pop();
    memcpy_ok
}

/// Byte `i` of the source pattern.
fn source_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8 ^ 0x5a
}

fn memcpy(driver: &mut dyn Driver, src: u64, dst: u64) -> bool {
    let max = driver.max_memcpy_size();
    // SAFETY: `src` and `dst` are this test's pages; `dst` has room for
    // two pages.
    let probe = unsafe { driver.memcpy_start(src, dst, 1) };
    if probe == Err(DriverError::Unsupported) || max == 0 {
        report_skip!("memcpy: unsupported by this driver ({:?})", probe);
        let wait = driver.memcpy_wait();
        report!(
            wait.is_err(),
            "memcpy_wait reports an error without memcpy ({:?})",
            wait
        );
        return false;
    }
    let first = driver.memcpy_wait();
    report!(
        probe.is_ok() && first.is_ok(),
        "memcpy of 1 byte starts ({:?}) and completes ({:?})",
        probe,
        first
    );

    for i in 0..PAGE {
        // SAFETY: this test's page.
        unsafe { mmio::write8(src + i, source_byte(i)) };
    }
    let mut all_ok = probe.is_ok() && first.is_ok();
    for len in SIZES.into_iter().chain([max]) {
        let len = len.min(PAGE as usize);
        // SAFETY: this test's pages, idle.
        unsafe { ktest::mem::memset(dst as *mut u8, i32::from(CANARY), 2 * PAGE as usize) };
        // SAFETY: as above; `dst` is untouched until memcpy_wait returns.
        let started = unsafe { driver.memcpy_start(src, dst, len) };
        let waited = if started.is_ok() {
            driver.memcpy_wait()
        } else {
            started
        };
        let len = len as u64;
        // SAFETY: this test's pages; the device is done with them.
        let wrong = (0..len).find(|&i| unsafe { mmio::read8(dst + i) } != source_byte(i));
        // SAFETY: as above.
        let past = (len..len + 64).find(|&i| unsafe { mmio::read8(dst + i) } != CANARY);
        let ok = waited.is_ok() && wrong.is_none() && past.is_none();
        all_ok &= ok;
        report!(
            ok,
            "memcpy of {} bytes: {:?}, data {}, bytes past the end {}",
            len,
            waited,
            match wrong {
                None => "intact",
                Some(_) => "WRONG",
            },
            match past {
                None => "untouched",
                Some(_) => "WRITTEN",
            }
        );
    }

    // SAFETY: refused before anything is copied (or it copies within our
    // two pages, which the check then reports).
    let too_large = unsafe { driver.memcpy_start(src, dst, max + 1) };
    if too_large.is_ok() {
        let _ = driver.memcpy_wait();
    }
    report!(
        too_large == Err(DriverError::TooLarge),
        "memcpy of {} bytes (over the maximum {}) is refused: {:?}",
        max + 1,
        max,
        too_large
    );
    let idle = driver.memcpy_wait();
    report!(
        idle.is_err(),
        "memcpy_wait with no copy started is an error ({:?})",
        idle
    );
    all_ok
}

fn send_msi(driver: &mut dyn Driver, target: MsiTarget) {
    MSI_CPU.store(u32::MAX, Ordering::Relaxed);
    let before = MSIS.load(Ordering::Acquire);
    match driver.send_msi() {
        Err(DriverError::Unsupported) => report_skip!("send_msi: unsupported by this driver"),
        result => {
            let arrived = wait_until_timeout(TIMEOUT_MS, || MSIS.load(Ordering::Acquire) > before);
            let cpu = MSI_CPU.load(Ordering::Relaxed);
            report!(
                result.is_ok() && arrived && cpu == target.apic_id,
                "send_msi ({:?}): vector {:#x} arrives on CPU {} (on CPU {})",
                result,
                target.vector,
                target.apic_id,
                cpu as i32
            );
        }
    }
}
