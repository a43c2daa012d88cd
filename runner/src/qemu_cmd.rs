//! How ktvmm starts QEMU for a guest test (`--env qemu-kvm|qemu-tcg`, and
//! the probe that checks QEMU can run a VM here): the binary, a command
//! line with the devices ktvmm has, the CPU model, and what QEMU's exit
//! status says about the guest's.

use std::process::Command;

use crate::suite::{GuestTest, Vmm};

/// The QEMU binary `--env qemu-*` runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// The CPU model a QEMU guest test asks for (ktvmm's default is `max`).
pub fn model_of(guest: &GuestTest) -> &str {
    guest.cpu.as_deref().unwrap_or("max")
}

/// QEMU with the devices ktvmm has, as kvm-unit-tests' scripts start it,
/// and ktvmm's default CPU model (`max`) unless the test names one.
pub fn qemu_command(g: &GuestTest) -> Command {
    let mut cmd = Command::new(QEMU);
    let accel = match g.vmm {
        Vmm::Qemu { tcg: true } => "accel=tcg",
        _ => "accel=kvm",
    };
    // COM2 is QEMU's testdev chardev, the postfix serial testdev ktvmm has.
    cmd.args(["-nodefaults", "-vnc", "none", "-serial", "stdio"])
        .args([
            "-chardev",
            "testdev,id=testdev",
            "-serial",
            "chardev:testdev",
        ])
        .args([
            "-device",
            "pc-testdev",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x4",
        ])
        .args(["-device", "pci-testdev", "-device", "edu"])
        .args(["-machine", accel])
        .args(["-smp", &g.smp.to_string(), "-m", &g.mem_mib.to_string()])
        .args(["-cpu", model_of(g)])
        .arg("-kernel")
        .arg(&g.guest);
    if !g.append.is_empty() {
        cmd.args(["-append", &g.append]);
    }
    if let Some(initrd) = &g.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    if g.no_pit {
        cmd.args(["-machine", "pit=off"]);
    }
    if g.iommu {
        cmd.args(["-machine", "q35,kernel-irqchip=split"])
            .args(["-device", "intel-iommu,intremap=on,eim=off"]);
    }
    cmd
}

/// QEMU's isa-debug-exit reports `(code << 1) | 1`; an even status means
/// QEMU itself ended (0: the guest never wrote the port).
pub fn qemu_exit(status: i32) -> Result<i32, String> {
    if status & 1 == 1 {
        Ok(status >> 1)
    } else {
        Err(format!(
            "QEMU exited with {status} without the guest writing isa-debug-exit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(qemu_exit(1), Ok(0));
        assert_eq!(qemu_exit(3), Ok(1));
        assert_eq!(qemu_exit(77 << 1 | 1), Ok(77));
        assert!(qemu_exit(0).is_err());
    }
}
