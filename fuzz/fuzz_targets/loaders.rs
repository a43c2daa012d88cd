//! The ELF64 and multiboot loaders on arbitrary files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ktvmm_vmm::fuzz::targets::loaders(data);
});
