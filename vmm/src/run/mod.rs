//! Running a built VM: each vCPU's loop, the watch for a guest that no
//! longer makes progress, and the outcome with the forensics of a guest
//! that did not exit by itself.

pub mod forensics;
pub mod liveness;
pub mod outcome;
pub mod sleep;
pub mod vcpu;
