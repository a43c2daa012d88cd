//! The rules of KVM's that the round-trip oracles rely on, with where KVM
//! states them, and the normalisations KVM documents or deliberately
//! makes (a value it stores differently from what was written, by the
//! guest's CPU vendor). A round-trip finding names the rule it believes
//! broken, so that whoever reads it can check the claim against KVM's
//! sources instead of against the harness's guess.

use kvm_bindings::kvm_cpuid_entry2;

/// One rule: what KVM promises, and where it says so.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// A short name, part of a finding's signature.
    pub id: &'static str,
    /// What KVM does.
    pub says: &'static str,
    /// Where (KVM's sources or `Documentation/virt/kvm/api.rst`).
    pub source: &'static str,
}

/// `KVM_SET_REGS` stores what it is given.
pub const REGS: Rule = Rule {
    id: "regs-as-written",
    says: "KVM_SET_REGS stores the general registers and RIP as given, and RFLAGS with bit 1 \
           set, less RF and VM (which KVM drops where the mode cannot hold them) and TF while \
           KVM single-steps the guest",
    source: "arch/x86/kvm/x86.c (regs.c in newer kernels, e.g. 7.2), __set_regs()",
};

/// `KVM_SET_SREGS` stores CR2 and the descriptor-table registers.
pub const SREGS: Rule = Rule {
    id: "sregs-cr2-dt-as-written",
    says: "KVM_SET_SREGS stores CR2, GDTR and IDTR as given",
    source: "arch/x86/kvm/x86.c (regs.c in newer kernels, e.g. 7.2), __set_sregs_common()",
};

/// MSRs KVM keeps exactly as an accepted host write gave them.
pub const MSR_AS_WRITTEN: Rule = Rule {
    id: "msr-as-written",
    says: "a KVM_SET_MSRS write KVM accepts to STAR, LSTAR or KERNEL_GS_BASE is stored as \
           written (KVM refuses a non-canonical LSTAR or KERNEL_GS_BASE instead of changing it)",
    source: "arch/x86/kvm/x86.c, __kvm_set_msr() and the vendor modules' set_msr",
};

/// TSC_AUX of an AMD-compatible guest: bits 31:0 only.
pub const TSC_AUX_AMD: Rule = Rule {
    id: "tsc-aux-amd-bits-31-0",
    says: "for a guest whose CPUID vendor is AMD-compatible (AuthenticAMD, AMDisbetter!, \
           HygonGenuine), KVM stores bits 31:0 of a TSC_AUX write and drops bits 63:32, \
           as AMD CPUs do",
    source: "arch/x86/kvm/x86.c, __kvm_set_msr(), case MSR_TSC_AUX: `data = (u32)data`",
};

/// TSC_AUX of an Intel-compatible guest: bits 63:32 reserved.
pub const TSC_AUX_INTEL: Rule = Rule {
    id: "tsc-aux-intel-reserved-63-32",
    says: "for a guest whose CPUID vendor is GenuineIntel, bits 63:32 of TSC_AUX are \
           reserved: KVM refuses a write that sets them and stores any other as written",
    source: "arch/x86/kvm/x86.c, __kvm_set_msr(), case MSR_TSC_AUX: \
             `if (guest_cpuid_is_intel_compatible(vcpu) && (data >> 32) != 0) return 1`",
};

/// TSC_AUX of a guest of another vendor: either of the two above.
pub const TSC_AUX_OTHER: Rule = Rule {
    id: "tsc-aux-other-vendor",
    says: "for a guest whose CPUID vendor is neither Intel's nor AMD-compatible (or that has \
           no CPUID), current KVM counts it as Intel-compatible and refuses bits 63:32, older \
           KVM (which tested for GenuineIntel only) drops them: either way an accepted write \
           reads back as its bits 31:0",
    source: "arch/x86/kvm/x86.c, __kvm_set_msr(), case MSR_TSC_AUX; \
             arch/x86/kvm/cpuid.h, guest_cpuid_is_intel_compatible()",
};

/// The LAPIC's TPR.
pub const LAPIC_TPR: Rule = Rule {
    id: "lapic-tpr-as-written",
    says: "KVM_SET_LAPIC stores TPR bits 7:0 as given",
    source: "arch/x86/kvm/lapic.c, kvm_apic_set_state()",
};

/// XCR0.
pub const XCR0: Rule = Rule {
    id: "xcr0-as-written",
    says: "a KVM_SET_XCRS that KVM accepts stores XCR0 as given",
    source: "arch/x86/kvm/x86.c, kvm_vcpu_ioctl_x86_set_xcrs() and __kvm_set_xcr()",
};

/// DR0-3.
pub const DR0_3: Rule = Rule {
    id: "dr0-3-as-written",
    says: "KVM_SET_DEBUGREGS stores DR0-DR3 as given",
    source: "arch/x86/kvm/x86.c (regs.c in newer kernels, e.g. 7.2), kvm_vcpu_ioctl_x86_set_debugregs()",
};

/// `MP_STATE` runnable.
pub const MP_STATE_RUNNABLE: Rule = Rule {
    id: "mp-state-runnable",
    says: "after a successful KVM_SET_MP_STATE(RUNNABLE), KVM_GET_MP_STATE reports RUNNABLE",
    source: "Documentation/virt/kvm/api.rst, 4.38 KVM_SET_MP_STATE",
};

/// Every rule, for looking one up by its id.
pub const RULES: [&Rule; 10] = [
    &REGS,
    &SREGS,
    &MSR_AS_WRITTEN,
    &TSC_AUX_AMD,
    &TSC_AUX_INTEL,
    &TSC_AUX_OTHER,
    &LAPIC_TPR,
    &XCR0,
    &DR0_3,
    &MP_STATE_RUNNABLE,
];

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|rule| rule.id == id)
}

/// A guest's CPU vendor as KVM classes it, from the CPUID leaf 0 the VMM
/// set (`KVM_SET_CPUID2`): KVM's behaviour differs by it, whatever the
/// host's vendor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestVendor {
    /// `GenuineIntel`.
    Intel,
    /// What KVM calls AMD-compatible: `AuthenticAMD`, `AMDisbetter!`,
    /// `HygonGenuine` (arch/x86/kvm/kvm_emulate.h, is_guest_vendor_amd()
    /// and is_guest_vendor_hygon()).
    AmdCompatible,
    /// Another vendor string, or no CPUID set at all.
    Other,
}

impl GuestVendor {
    /// The vendor of a leaf 0 (the string is EBX, EDX, ECX).
    pub fn from_leaf0(ebx: u32, edx: u32, ecx: u32) -> Self {
        let mut name = [0u8; 12];
        for (chunk, word) in name.chunks_mut(4).zip([ebx, edx, ecx]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        match &name {
            b"GenuineIntel" => GuestVendor::Intel,
            b"AuthenticAMD" | b"AMDisbetter!" | b"HygonGenuine" => GuestVendor::AmdCompatible,
            _ => GuestVendor::Other,
        }
    }

    /// The vendor of a vCPU whose CPUID KVM holds as `entries` (empty:
    /// none was set).
    pub fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        entries
            .iter()
            .find(|e| e.function == 0 && e.index == 0)
            .map_or(GuestVendor::Other, |e| {
                GuestVendor::from_leaf0(e.ebx, e.edx, e.ecx)
            })
    }
}

/// A rule KVM's answer broke, and how.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// The rule.
    pub rule: &'static Rule,
    /// What KVM did.
    pub detail: String,
}

/// MSR indices the MSR rules cover.
pub const STAR: u32 = 0xc000_0081;
/// LSTAR.
pub const LSTAR: u32 = 0xc000_0082;
/// KERNEL_GS_BASE.
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
/// TSC_AUX.
pub const TSC_AUX: u32 = 0xc000_0103;

/// An MSR's name, for findings.
pub fn msr_name(msr: u32) -> Option<&'static str> {
    match msr {
        STAR => Some("STAR"),
        LSTAR => Some("LSTAR"),
        KERNEL_GS_BASE => Some("KERNEL_GS_BASE"),
        TSC_AUX => Some("TSC_AUX"),
        _ => None,
    }
}

/// Whether the rules say anything about host writes to `msr`.
pub fn covers_msr(msr: u32) -> bool {
    msr_name(msr).is_some()
}

/// Checks what KVM did with a host-initiated `KVM_SET_MSRS` of `value`
/// to `msr` for a guest of `vendor`: whether it `accepted` the write and,
/// if so, what `KVM_GET_MSRS` then `read_back` (`None`: not read).
/// KVM may refuse any write (the MSR may not exist on this host); what it
/// accepts it must store by the rules.
pub fn check_msr_write(
    msr: u32,
    value: u64,
    vendor: GuestVendor,
    accepted: bool,
    read_back: Option<u64>,
) -> Option<Broken> {
    let name = msr_name(msr)?;
    let what = |got: u64| format!("MSR {msr:#x} ({name}): set {value:#x}, read back {got:#x}");
    let low = value & 0xffff_ffff;
    if msr != TSC_AUX {
        let got = read_back.filter(|_| accepted)?;
        return (got != value).then(|| Broken {
            rule: &MSR_AS_WRITTEN,
            detail: what(got),
        });
    }
    let vendor_says = match vendor {
        GuestVendor::Intel => "GenuineIntel",
        GuestVendor::AmdCompatible => "AMD-compatible",
        GuestVendor::Other => "neither Intel nor AMD",
    };
    let rule = match vendor {
        GuestVendor::Intel => &TSC_AUX_INTEL,
        GuestVendor::AmdCompatible => &TSC_AUX_AMD,
        GuestVendor::Other => &TSC_AUX_OTHER,
    };
    if !accepted {
        return None;
    }
    if vendor == GuestVendor::Intel && value != low {
        return Some(Broken {
            rule,
            detail: format!(
                "MSR {msr:#x} ({name}), guest vendor {vendor_says}: KVM_SET_MSRS accepted \
                 {value:#x}, which sets reserved bits 63:32"
            ),
        });
    }
    // Whatever the vendor, an accepted write reads back as its low half:
    // the whole value when bits 63:32 are clear.
    let got = read_back?;
    (got != low).then(|| Broken {
        rule,
        detail: format!("{}, guest vendor {vendor_says}", what(got)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf0(vendor: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    #[test]
    fn vendors_are_classed_as_kvm_classes_them() {
        let of = |v: &[u8; 12]| GuestVendor::of(&[leaf0(v)]);
        assert_eq!(of(b"GenuineIntel"), GuestVendor::Intel);
        assert_eq!(of(b"AuthenticAMD"), GuestVendor::AmdCompatible);
        assert_eq!(of(b"AMDisbetter!"), GuestVendor::AmdCompatible);
        assert_eq!(of(b"HygonGenuine"), GuestVendor::AmdCompatible);
        assert_eq!(of(b"CentaurHauls"), GuestVendor::Other);
        // A fuzz input flips one bit of the vendor string.
        assert_eq!(of(b"GenuineIntem"), GuestVendor::Other);
        assert_eq!(GuestVendor::of(&[]), GuestVendor::Other);
    }

    const HIGH: u64 = 0x0000_0800_0000_0000;

    #[test]
    fn tsc_aux_of_an_amd_compatible_guest_keeps_bits_31_0() {
        let amd = GuestVendor::AmdCompatible;
        // What AMD hosts report (the false finding) is KVM's rule.
        assert_eq!(check_msr_write(TSC_AUX, HIGH, amd, true, Some(0)), None);
        assert_eq!(
            check_msr_write(TSC_AUX, 0x614a_d021_2b17_dc64, amd, true, Some(0x2b17_dc64)),
            None
        );
        // The whole value read back is not the rule: a finding naming it.
        let broken = check_msr_write(TSC_AUX, HIGH | 5, amd, true, Some(HIGH | 5)).unwrap();
        assert_eq!(broken.rule, &TSC_AUX_AMD);
        assert!(broken.detail.contains("TSC_AUX"), "{}", broken.detail);
        assert!(check_msr_write(TSC_AUX, 7, amd, true, Some(0)).is_some());
    }

    #[test]
    fn tsc_aux_of_an_intel_guest_refuses_bits_63_32() {
        let intel = GuestVendor::Intel;
        // Refused: what KVM must do.
        assert_eq!(check_msr_write(TSC_AUX, HIGH, intel, false, None), None);
        // Accepted: a finding, even if it then read back truncated.
        let broken = check_msr_write(TSC_AUX, HIGH, intel, true, Some(0)).unwrap();
        assert_eq!(broken.rule, &TSC_AUX_INTEL);
        assert!(broken.detail.contains("reserved"), "{}", broken.detail);
        // Bits 31:0 only: stored whole.
        assert_eq!(
            check_msr_write(TSC_AUX, 0xffff_ffff, intel, true, Some(0xffff_ffff)),
            None
        );
        assert!(check_msr_write(TSC_AUX, 0xffff_ffff, intel, true, Some(0xffff)).is_some());
    }

    #[test]
    fn tsc_aux_of_another_vendor_is_either_rule() {
        let other = GuestVendor::Other;
        assert_eq!(check_msr_write(TSC_AUX, HIGH | 1, other, false, None), None);
        assert_eq!(
            check_msr_write(TSC_AUX, HIGH | 1, other, true, Some(1)),
            None
        );
        let broken = check_msr_write(TSC_AUX, HIGH | 1, other, true, Some(HIGH | 1)).unwrap();
        assert_eq!(broken.rule, &TSC_AUX_OTHER);
    }

    #[test]
    fn other_msrs_are_stored_as_written_whatever_the_vendor() {
        for vendor in [GuestVendor::Intel, GuestVendor::AmdCompatible] {
            let v = 0xffff_8000_0000_1000;
            assert_eq!(check_msr_write(LSTAR, v, vendor, true, Some(v)), None);
            assert_eq!(check_msr_write(LSTAR, v, vendor, false, None), None);
            let broken = check_msr_write(STAR, v, vendor, true, Some(v & 0xffff_ffff)).unwrap();
            assert_eq!(broken.rule, &MSR_AS_WRITTEN);
        }
        // MSRs without a rule are not checked.
        assert!(!covers_msr(0x10));
        assert_eq!(
            check_msr_write(0x10, 5, GuestVendor::Intel, true, Some(9)),
            None
        );
    }

    #[test]
    fn every_rule_is_found_by_its_id() {
        for r in RULES {
            assert_eq!(rule(r.id), Some(r));
        }
        assert_eq!(rule("no-such-rule"), None);
    }
}
