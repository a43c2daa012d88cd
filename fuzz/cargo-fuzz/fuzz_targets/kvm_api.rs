//! KVM's API through the ktvmm harness: libFuzzer's bytes become a typed
//! input (VM shape, vCPU state, guest program, KVM calls) by `arbitrary`;
//! a finding about the input (not the host at large) is a crash.
#![no_main]

use std::cell::RefCell;

use ktvmm_fuzz::{ExecOptions, Executor, Input};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static EXECUTOR: RefCell<Option<Executor>> = const { RefCell::new(None) };
}

fuzz_target!(|input: Input| {
    EXECUTOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let executor = cell.get_or_insert_with(|| {
            Executor::new(ExecOptions::default()).expect("the fuzz harness needs /dev/kvm")
        });
        let execution = executor.execute(&input);
        if let Some(finding) = execution.findings.iter().find(|f| !f.is_host_wide()) {
            panic!("{finding}");
        }
    });
});
