//! `ktvmm envs`: whether each environment can boot a guest here, and how.

use crate::cli::EnvsArgs;
use crate::envs::{Env, which};
use crate::qemu_cmd::QEMU;
use crate::qemu_probe::{ProbeKernel, Usability, probe_with_workaround};

/// `ktvmm envs`: whether each environment can boot a guest here, and how.
pub fn envs(args: &EnvsArgs) -> anyhow::Result<u8> {
    let envs = if args.envs.is_empty() {
        &Env::ALL[..]
    } else {
        &args.envs
    };
    let kernel = ProbeKernel::write()?;
    let mut all_usable = true;
    for &env in envs {
        let line = match env {
            Env::Ktvmm => match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                Ok(_) => "usable".to_string(),
                Err(e) => {
                    all_usable = false;
                    format!("unavailable: /dev/kvm: {e}")
                }
            },
            Env::QemuKvm | Env::QemuTcg if !which(QEMU) => {
                all_usable = false;
                format!(
                    "unavailable: {QEMU} is not installed (Debian: apt-get install qemu-system-x86)"
                )
            }
            Env::QemuKvm | Env::QemuTcg => {
                match probe_with_workaround(kernel.path(), env == Env::QemuTcg, &args.cpu) {
                    Usability::Usable => format!("usable with -cpu {}", args.cpu),
                    Usability::Workaround { model, why } => format!(
                        "usable with -cpu {model} (-cpu {} cannot start a VM here: {why})",
                        args.cpu
                    ),
                    Usability::Unavailable(why) => {
                        all_usable = false;
                        format!("unavailable with -cpu {}: {why}", args.cpu)
                    }
                }
            }
        };
        outln!("{:<9} {line}", env.name());
    }
    Ok(u8::from(!all_usable))
}
