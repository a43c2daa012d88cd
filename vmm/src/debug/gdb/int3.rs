//! Whether this host can stop a guest at an `int3` for the debugger
//! (`KVM_GUESTDBG_USE_SW_BP`). Most KVM hosts can; on some backends
//! (kvm_pvm) an `int3` in a 64-bit guest ends in a KVM internal error
//! whatever the debug flags say, and a breakpoint written there would kill
//! the guest. So it is tried once, in a scratch VM, before the stub writes
//! its first `int3` into a guest.

use std::sync::OnceLock;

use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug};
use kvm_ioctls::VcpuExit;

use crate::floor::{Mode, run_code};

/// `int3; hlt`.
const CODE: [u8; 2] = [0xcc, 0xf4];

/// `Ok` when an `int3` stops a 64-bit guest with `KVM_EXIT_DEBUG` (#BP);
/// otherwise what happened instead. Asked once per process.
pub fn usable() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP,
        ..Default::default()
    };
    run_code(
        &CODE,
        Mode::Long,
        |fd| {
            fd.set_guest_debug(&debug)
                .map_err(|e| format!("KVM_SET_GUEST_DEBUG: {e}"))
        },
        |exit| match exit {
            Ok(VcpuExit::Debug(arch)) if arch.exception == 3 => Ok(()),
            Ok(VcpuExit::InternalError) => {
                Err("an int3 ends in a KVM internal error on this host".to_string())
            }
            Ok(other) => Err(format!("an int3 gave {other:?}, not a debug exit")),
            Err(e) => Err(format!("an int3 failed KVM_RUN: {e}")),
        },
    )?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe gives an answer, the same one twice; either answer is a
    /// host's truth (kvm_pvm says no, VMX and SVM say yes).
    #[test]
    fn the_probe_answers_and_its_answer_holds() {
        let first = usable();
        assert_eq!(first, probe());
        if let Err(why) = &first {
            assert!(why.starts_with("an int3"), "{why}");
        }
    }
}
