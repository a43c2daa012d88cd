//! The guests built into the binary, and the bundled suite that runs them.

include!(concat!(env!("OUT_DIR"), "/bundled_guests.rs"));

/// How `ktvmm run` names a bundled guest instead of a file.
pub const PREFIX: &str = "bundled:";

/// The ELF image of the bundled guest `name`.
pub fn guest(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|(n, _)| *n == name).map(|(_, elf)| *elf)
}

/// One entry of the bundled suite.
#[derive(Clone, Copy, Debug)]
pub struct BundledTest {
    /// Test name (what the summary shows).
    pub name: &'static str,
    /// Which bundled guest it boots.
    pub guest: &'static str,
    /// vCPUs.
    pub smp: u32,
    /// RAM in MiB.
    pub mem_mib: u64,
    /// The guest's command line.
    pub args: &'static str,
}

const fn test(
    name: &'static str,
    guest: &'static str,
    smp: u32,
    args: &'static str,
) -> BundledTest {
    BundledTest {
        name,
        guest,
        smp,
        mem_mib: 128,
        args,
    }
}

/// What `ktvmm test` runs with no arguments.
pub const SUITE: &[BundledTest] = &[
    test("selftest", "selftest", 2, "smp=2 mem=128 alpha beta"),
    test("selftest-smp1", "selftest", 1, "smp=1 mem=128"),
    test("smp", "smp", 4, ""),
    test("exceptions", "exceptions", 1, ""),
    test("lapic-timer", "lapic-timer", 1, ""),
    test("exitcode-pass", "exitcode", 1, "pass"),
    test("isa-debug-exit", "debug-exit", 1, "code=0 width=1"),
    test("serial-testdev", "serial-testdev", 1, "code=0"),
    test("pci-enum", "pci-enum", 1, ""),
    test("pci-testdev", "pci-testdev", 1, ""),
    test("pc-testdev", "pc-testdev", 2, ""),
    test("edu", "edu", 2, ""),
    test("edu-driver", "edu-driver", 2, ""),
];
