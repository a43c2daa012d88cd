//! ktvmm's own parsers driven by fuzz input: every entry point a kernel
//! image goes through before a VM exists. A parser may accept or refuse
//! the bytes; it may not panic.

use ktvmm_vmm::boot::Kernel;
use ktvmm_vmm::boot::loader::{check_placement, is_guest_kernel, is_host_program};
use ktvmm_vmm::boot::multiboot;

/// RAM the placement checks assume.
const RAM: u64 = 128 << 20;

/// Runs `image` through the loaders; says whether it was accepted.
pub fn loaders(image: &[u8]) -> bool {
    let _ = is_guest_kernel(image);
    let _ = is_host_program(image);
    let _ = multiboot::header_flags(image);
    match Kernel::inspect(image) {
        Ok(Kernel::Elf64(elf)) => {
            let _ = check_placement(&elf.segments, RAM, &[]);
            true
        }
        Ok(Kernel::Multiboot(mb)) => {
            let _ = check_placement(&mb.segments, RAM, &[]);
            let _ = multiboot::module_range(&mb, 4096);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error says what is wrong");
            false
        }
    }
}
