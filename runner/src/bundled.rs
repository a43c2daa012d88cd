//! The guests built into the binary, and the bundled suite that runs them.

use ktvmm_vmm::boot::Protocol;

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
    /// The guest's command line (`{smp}` and `{memory}` stand for the VM's
    /// own, so the guest checks the shape of every sweep variant).
    pub args: &'static str,
    /// Its group (`-g`).
    pub group: &'static str,
    /// Boot it the multiboot way (through its 32-bit entry, as QEMU would)
    /// instead of ktvmm's ELF64 protocol.
    pub multiboot: bool,
    /// With a VT-d unit in front of edu (`ktvmm run --iommu`).
    pub iommu: bool,
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
        multiboot: false,
        iommu: false,
    }
}

/// [`test`], booted through the guest's multiboot entry.
const fn multiboot(
    name: &'static str,
    guest: &'static str,
    smp: u32,
    args: &'static str,
) -> BundledTest {
    BundledTest {
        multiboot: true,
        ..test(name, guest, smp, args, "multiboot")
    }
}

/// What `ktvmm test` runs with no arguments.
pub const SUITE: &[BundledTest] = &[
    test(
        "selftest",
        "selftest",
        2,
        "smp={smp} mem={memory} alpha beta",
        "core",
    ),
    test(
        "selftest-smp1",
        "selftest",
        1,
        "smp={smp} mem={memory}",
        "core",
    ),
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
    BundledTest {
        iommu: true,
        ..test("iommu", "iommu", 2, "", "devices")
    },
    // ktest's multiboot entry under ktvmm's multiboot loader: the 32-bit
    // entry, the multiboot information, fw_cfg, the MADT, INIT/SIPI.
    multiboot(
        "selftest-multiboot",
        "selftest",
        2,
        "smp={smp} mem={memory} alpha beta",
    ),
    multiboot("smp-multiboot", "smp", 4, ""),
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
                boot: t.multiboot.then_some(Protocol::Multiboot),
                iommu: t.iommu,
                vmm: Default::default(),
                exit_codes: ExitCodes::Ktvmm,
            }),
            timeout: None,
            groups: vec![t.group.to_string()],
            source: "bundled".into(),
            exclusive: false,
            variant: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ktvmm_vmm::boot::{Kernel, Protocol};

    use super::*;

    /// Every bundled guest boots both ways: as ELF64 by default, and
    /// through its multiboot header (how QEMU loads it), whose load
    /// addresses must match the ELF layout byte for byte.
    #[test]
    fn every_bundled_guest_speaks_both_protocols() {
        assert!(!GUESTS.is_empty());
        for (name, bytes) in GUESTS {
            assert!(
                matches!(Kernel::inspect(bytes), Ok(Kernel::Elf64(_))),
                "{name} boots as ELF64 by default"
            );
            if let Err(e) = Kernel::inspect_as(bytes, Some(Protocol::Multiboot)) {
                panic!("{name}: its multiboot header is unusable: {e}");
            }
        }
    }
}
