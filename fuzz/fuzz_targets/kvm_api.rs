//! KVM's API through ktvmm: each input is a fresh VM; any finding (a VMM
//! panic, an undocumented errno, a failed entry, a hang, a broken round
//! trip, a kernel warning) stops the fuzzer with its description.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(execution) = ktvmm_vmm::fuzz::targets::kvm_api(data) {
        if let Some(finding) = execution.findings.first() {
            panic!("{finding}");
        }
    }
});
