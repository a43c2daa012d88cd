//! A small PCI driver framework, modelled on the Linux VFIO selftests'
//! (`tools/testing/selftests/vfio/lib`): each driver implements [`Driver`]
//! (probe, init, remove, memcpy, send an MSI), the registry [`DRIVERS`]
//! lists them, and a test written against the trait runs on any device that
//! has a driver:
//!
//! ```ignore
//! for device in ktest::pci::devices() {
//!     ktest::driver::with_driver(&device, |driver| {
//!         driver.init(&device, MsiTarget { vector: 0x60, apic_id: 0 })?;
//!         // SAFETY: both buffers are ours and idle.
//!         unsafe { driver.memcpy_start(src, dst, len)? };
//!         driver.memcpy_wait()?;
//!         driver.remove();
//!         Ok(())
//!     });
//! }
//! ```
//!
//! A driver value is created fresh for each probe (`Default`), lives on the
//! caller's stack and holds its own state; there is no allocator.

use core::fmt;

use crate::pci::PciDevice;

pub mod edu;
pub mod pci_testdev;

/// Why a driver operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The driver (or device) cannot do this.
    Unsupported,
    /// `init` has not succeeded (or `remove` was called).
    NotBound,
    /// The transfer is larger than [`Driver::max_memcpy_size`].
    TooLarge,
    /// A previous operation is still running.
    Busy,
    /// The device did not finish in time.
    Timeout,
    /// The device misbehaved (what was wrong).
    Device(&'static str),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Unsupported => f.write_str("unsupported"),
            DriverError::NotBound => f.write_str("driver not bound"),
            DriverError::TooLarge => f.write_str("transfer too large"),
            DriverError::Busy => f.write_str("device busy"),
            DriverError::Timeout => f.write_str("timed out"),
            DriverError::Device(what) => write!(f, "device error: {what}"),
        }
    }
}

/// Where a driver's MSI goes: a fixed, edge-triggered vector on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiTarget {
    /// The vector (the test registers its handler).
    pub vector: u8,
    /// APIC ID (= CPU index) of the CPU it goes to.
    pub apic_id: u32,
}

/// What a test can ask of a device driver (VFIO's `vfio_pci_driver_ops`).
///
/// The optional operations default to [`DriverError::Unsupported`].
pub trait Driver {
    /// The driver's name.
    fn name(&self) -> &'static str;

    /// Whether this driver handles `device` (by vendor and device ID).
    fn probe(&self, device: &PciDevice) -> bool;

    /// Binds to `device`: enables what it needs (decoding, bus mastering,
    /// MSI to `msi` if the device has MSI) and checks that it answers.
    fn init(&mut self, device: &PciDevice, msi: MsiTarget) -> Result<(), DriverError>;

    /// Unbinds: quiets the device and undoes what `init` enabled. Harmless
    /// when not bound.
    fn remove(&mut self);

    /// The largest `len` [`memcpy_start`](Self::memcpy_start) accepts
    /// (0: no memcpy).
    fn max_memcpy_size(&self) -> usize {
        0
    }

    /// Starts copying `len` bytes from guest-physical `src` to `dst` with
    /// the device's DMA engine; [`memcpy_wait`](Self::memcpy_wait)
    /// finishes it.
    ///
    /// # Safety
    ///
    /// `src` must be readable and `dst` writable RAM for `len` bytes, and
    /// nothing else may use `dst` until `memcpy_wait` has returned.
    unsafe fn memcpy_start(&mut self, src: u64, dst: u64, len: usize) -> Result<(), DriverError> {
        let _ = (src, dst, len);
        Err(DriverError::Unsupported)
    }

    /// Waits for the copy started by `memcpy_start` to complete.
    fn memcpy_wait(&mut self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported)
    }

    /// Makes the device send its MSI (to the target given to `init`).
    fn send_msi(&mut self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported)
    }
}

/// A registered driver: makes a fresh instance and, if it claims `device`,
/// runs the callback with it; returns whether it claimed the device.
pub type Registration = fn(&PciDevice, &mut dyn FnMut(&mut dyn Driver)) -> bool;

fn registration<D: Driver + Default>(
    device: &PciDevice,
    f: &mut dyn FnMut(&mut dyn Driver),
) -> bool {
    let mut driver = D::default();
    if !driver.probe(device) {
        return false;
    }
    f(&mut driver);
    true
}

/// Every driver ktest has, tried in this order.
pub static DRIVERS: [Registration; 2] = [
    registration::<edu::EduDriver>,
    registration::<pci_testdev::PciTestdevDriver>,
];

/// Finds the first driver that claims `device` and runs `f` with it
/// (unbound: `f` calls [`Driver::init`]); returns `None` when no driver
/// claims the device.
pub fn with_driver<R>(device: &PciDevice, f: impl FnOnce(&mut dyn Driver) -> R) -> Option<R> {
    let mut f = Some(f);
    let mut result = None;
    for register in DRIVERS {
        let claimed = register(device, &mut |driver| {
            if let Some(f) = f.take() {
                result = Some(f(driver));
            }
        });
        if claimed {
            break;
        }
    }
    result
}
