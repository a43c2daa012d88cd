//! What the `cargo fuzz` targets in `fuzz/` do with one input, here so that
//! the tests replaying the checked-in corpus (`vmm/tests/fuzz_corpus.rs`)
//! run exactly the same code.

use std::cell::RefCell;

use super::{Budget, Execution, Executor, HostWatch, Input};
use crate::boot::{Kernel, Protocol};

/// Every loader entry point on `data`: each must return, never panic.
pub fn loaders(data: &[u8]) {
    let _ = Kernel::inspect(data);
    let _ = Kernel::inspect_as(data, Some(Protocol::Multiboot));
    let _ = Kernel::inspect_as(data, Some(Protocol::Elf64));
    let _ = crate::loader::is_guest_kernel(data);
    let _ = crate::loader::is_host_program(data);
}

thread_local! {
    static EXECUTOR: RefCell<Option<(Executor, HostWatch)>> = const { RefCell::new(None) };
}

/// `data` read as an [`Input`] (by `arbitrary`) and run in a fresh VM on
/// this thread's executor; `None` when the bytes make no input.
pub fn kvm_api(data: &[u8]) -> Option<Execution> {
    let input: Input =
        arbitrary::Arbitrary::arbitrary(&mut arbitrary::Unstructured::new(data)).ok()?;
    EXECUTOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let executor = Executor::new(Budget::default(), false).ok()?;
            *cell = Some((executor, HostWatch::start()));
        }
        let (executor, watch) = cell.as_mut()?;
        Some(super::check(executor, watch, &input))
    })
}
