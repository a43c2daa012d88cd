//! Platform devices: what the VMM itself provides besides the test devices.

pub mod links;
pub mod serial;
