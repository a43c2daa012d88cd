//! The ELF64 and multiboot loaders: any bytes are refused with an error or
//! accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|image: &[u8]| {
    ktvmm_fuzz::parsers::loaders(image);
});
