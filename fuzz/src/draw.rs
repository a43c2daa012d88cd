//! What the generators draw from: values with the edges KVM's checks sit
//! on, and the MSRs worth writing. Both the input generator and the guest
//! program generator use them.

use super::rng::SplitMix64;

/// MSRs worth writing: the ones guests and KVM care about, and their
/// neighbours. KVM's clock MSRs are not among them (see [`is_clock_msr`]).
pub const INTERESTING_MSRS: [u32; 23] = [
    0x10,        // TSC
    0x1b,        // APIC_BASE
    0x3a,        // FEATURE_CONTROL
    0x48,        // SPEC_CTRL
    0x8b,        // microcode revision
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x1d9,       // DEBUGCTL
    0x277,       // PAT
    0x2ff,       // MTRRdefType
    0x6e0,       // TSC_DEADLINE
    0x802,       // x2APIC ID
    0x808,       // x2APIC TPR
    0x830,       // x2APIC ICR
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// KVM's paravirtual clock MSRs: writing one makes KVM write the host's
/// time into guest memory, and the run would not repeat. Inputs keep
/// them, the executor leaves them out.
pub fn is_clock_msr(index: u32) -> bool {
    matches!(index, 0x11 | 0x12 | 0x4b56_4d00 | 0x4b56_4d01)
}

/// A value from a mix of edges, small numbers and noise.
pub fn value(rng: &mut SplitMix64) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => rng.below(16) as u64,
        2 => rng.pick(&[0xff, 0xffff, 0xffff_ffff, u64::MAX, 1 << 63, 0x8000_0000]),
        3 => 1 << rng.below(64),
        4 => rng.next() & 0xff,
        5 => rng.next() & 0xffff_ffff,
        _ => rng.next(),
    }
}

/// An MSR index: mostly interesting ones, sometimes a neighbour or noise.
pub fn msr(rng: &mut SplitMix64) -> u32 {
    let base = rng.pick(&INTERESTING_MSRS);
    let index = match rng.below(6) {
        0 => base.wrapping_add(rng.below(4) as u32),
        1 => rng.next() as u32,
        _ => base,
    };
    if is_clock_msr(index) { base } else { index }
}
