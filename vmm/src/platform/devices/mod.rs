//! Platform devices: what the VMM itself provides besides the test devices.

pub mod fw_cfg;
pub mod links;
pub mod pm;
pub mod pm_timer;
pub mod rtc;
pub mod serial;
pub mod vtd;
