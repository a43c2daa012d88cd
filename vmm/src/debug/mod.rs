//! Looking into a guest: the GDB remote-protocol stub and ELF cores.

pub mod core_dump;
pub mod gdb;
