//! Every test device's register interface: random access sequences, no
//! panic, identity registers unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    ktvmm_testdevs::fuzzing::play(bytes);
});
