//! The guests built into the binary, and the bundled suite that runs them.

use crate::suite::{ExitCodes, GuestTest, TestKind, TestSpec};

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
    /// Its group (`-g`).
    pub group: &'static str,
}

const fn test(
    name: &'static str,
    guest: &'static str,
    smp: u32,
    args: &'static str,
    group: &'static str,
) -> BundledTest {
    BundledTest {
        name,
        guest,
        smp,
        mem_mib: 128,
        args,
        group,
    }
}

/// What `ktvmm test` runs with no arguments.
pub const SUITE: &[BundledTest] = &[
    test(
        "selftest",
        "selftest",
        2,
        "smp=2 mem=128 alpha beta",
        "core",
    ),
    test("selftest-smp1", "selftest", 1, "smp=1 mem=128", "core"),
    test("smp", "smp", 4, "", "core"),
    test("exceptions", "exceptions", 1, "", "core"),
    test("lapic-timer", "lapic-timer", 1, "", "core"),
    test("exitcode-pass", "exitcode", 1, "pass", "core"),
    test(
        "isa-debug-exit",
        "debug-exit",
        1,
        "code=0 width=1",
        "devices",
    ),
    test("serial-testdev", "serial-testdev", 1, "code=0", "devices"),
    test("pci-enum", "pci-enum", 1, "", "devices"),
    test("pci-hostile", "pci-hostile", 1, "", "devices"),
    test("pci-testdev", "pci-testdev", 1, "", "devices"),
    test("pc-testdev", "pc-testdev", 2, "", "devices"),
    test("edu", "edu", 2, "", "devices"),
    test("edu-driver", "edu-driver", 2, "", "devices"),
];

/// The bundled suite as tests to schedule.
pub fn suite() -> Vec<TestSpec> {
    SUITE
        .iter()
        .map(|t| TestSpec {
            name: t.name.to_string(),
            kind: TestKind::Guest(GuestTest {
                guest: format!("{PREFIX}{}", t.guest),
                smp: t.smp,
                mem_mib: t.mem_mib,
                append: t.args.to_string(),
                initrd: None,
                cpu: None,
                no_pit: false,
                vmm: Default::default(),
                exit_codes: ExitCodes::Ktvmm,
            }),
            timeout: None,
            groups: vec![t.group.to_string()],
            source: "bundled".into(),
        })
        .collect()
}
