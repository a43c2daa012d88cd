//! A bug planted on purpose, for checking that the harness finds what it
//! should: in front of pc-testdev's register port, a wrapper that panics
//! when the guest writes one byte value there. Only `--plant-bug` (the
//! harness's self-test) puts it on the bus; ordinary runs never have it.

use std::sync::{Arc, Mutex};

use ktvmm_testdevs::{Action, BusDevice};

use ktvmm_vmm::platform::bus::{SharedDevice, lock};

/// The port the planted bug watches (pc-testdev's register).
pub const PORT: u16 = ktvmm_abi::ports::PC_TESTDEV_REGISTER;
/// The value that sets it off, written at any width.
pub const VALUE: u8 = 13;
/// The panic message, which a finding's signature starts with.
pub const MESSAGE: &str = "planted bug: pc-testdev register written with 13";

/// The wrapper: the real device behind it does all the work.
pub struct PlantedBug(SharedDevice);

impl PlantedBug {
    /// Wraps `device`.
    pub fn wrap(device: SharedDevice) -> SharedDevice {
        Arc::new(Mutex::new(PlantedBug(device)))
    }
}

impl BusDevice for PlantedBug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if offset == 0 && data.first() == Some(&VALUE) && data[1..].iter().all(|&b| b == 0) {
            panic!("{MESSAGE}");
        }
        lock(&self.0).write(offset, data)
    }
}
