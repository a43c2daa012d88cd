//! The CPU model a guest sees, in QEMU's `-cpu` spelling: `max` or `host`
//! (everything KVM supports), or `qemu64` (QEMU's default model as it looks
//! under KVM), each followed by edits: `+flag`/`-flag`, `flag=on|off`,
//! `vendor=...`. Everything starts from `KVM_GET_SUPPORTED_CPUID`; a flag
//! the host cannot provide is an error naming it, never silently dropped.

use std::fmt;

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// A parsed `-cpu` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSpec {
    /// The base model.
    pub model: Model,
    /// Edits, in order.
    pub edits: Vec<Edit>,
}

/// Base models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// All KVM supports (QEMU's `max` and `host` under KVM).
    Max,
    /// QEMU's `qemu64`.
    Qemu64,
}

/// One edit after the model name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Turn a feature flag on or off.
    Flag(&'static str, bool),
    /// The 12-character vendor string.
    Vendor(String),
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            model: Model::Max,
            edits: Vec::new(),
        }
    }
}

impl fmt::Display for CpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.model {
            Model::Max => "max",
            Model::Qemu64 => "qemu64",
        })?;
        for edit in &self.edits {
            match edit {
                Edit::Flag(name, on) => write!(f, ",{}{name}", if *on { '+' } else { '-' })?,
                Edit::Vendor(v) => write!(f, ",vendor={v}")?,
            }
        }
        Ok(())
    }
}

/// Why a CPU model cannot be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuModelError {
    /// Not a model ktvmm knows.
    #[error("CPU model '{0}' is not supported (ktvmm has: max, host, qemu64)")]
    UnknownModel(String),
    /// Not a flag ktvmm knows.
    #[error("CPU flag '{0}' is not known to ktvmm")]
    UnknownFlag(String),
    /// A property ktvmm does not implement.
    #[error("CPU property '{0}' is not supported by ktvmm")]
    UnknownProperty(String),
    /// A vendor string of the wrong length.
    #[error("vendor '{0}' must be 12 characters, like GenuineIntel")]
    BadVendor(String),
    /// The host cannot give the guest this flag.
    #[error("the host cannot provide CPU flag '{0}' (KVM does not support it here)")]
    Unsupported(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A flag: QEMU's name, where it lives (leaf, subleaf, register, bit).
struct Flag {
    name: &'static str,
    leaf: u32,
    index: u32,
    reg: Reg,
    bit: u8,
}

const fn flag(name: &'static str, leaf: u32, index: u32, reg: Reg, bit: u8) -> Flag {
    Flag {
        name,
        leaf,
        index,
        reg,
        bit,
    }
}

/// The flags kvm-unit-tests' configurations use, and their neighbours.
const FLAGS: &[Flag] = &[
    flag("sse3", 1, 0, Reg::Ecx, 0),
    flag("pclmulqdq", 1, 0, Reg::Ecx, 1),
    flag("monitor", 1, 0, Reg::Ecx, 3),
    flag("vmx", 1, 0, Reg::Ecx, 5),
    flag("ssse3", 1, 0, Reg::Ecx, 9),
    flag("fma", 1, 0, Reg::Ecx, 12),
    flag("cx16", 1, 0, Reg::Ecx, 13),
    flag("pdcm", 1, 0, Reg::Ecx, 15),
    flag("pcid", 1, 0, Reg::Ecx, 17),
    flag("sse4.1", 1, 0, Reg::Ecx, 19),
    flag("sse4.2", 1, 0, Reg::Ecx, 20),
    flag("x2apic", 1, 0, Reg::Ecx, 21),
    flag("movbe", 1, 0, Reg::Ecx, 22),
    flag("popcnt", 1, 0, Reg::Ecx, 23),
    flag("tsc-deadline", 1, 0, Reg::Ecx, 24),
    flag("aes", 1, 0, Reg::Ecx, 25),
    flag("xsave", 1, 0, Reg::Ecx, 26),
    flag("avx", 1, 0, Reg::Ecx, 28),
    flag("f16c", 1, 0, Reg::Ecx, 29),
    flag("rdrand", 1, 0, Reg::Ecx, 30),
    flag("hypervisor", 1, 0, Reg::Ecx, 31),
    flag("tsc", 1, 0, Reg::Edx, 4),
    flag("apic", 1, 0, Reg::Edx, 9),
    flag("pge", 1, 0, Reg::Edx, 13),
    flag("pse36", 1, 0, Reg::Edx, 17),
    flag("clflush", 1, 0, Reg::Edx, 19),
    flag("ss", 1, 0, Reg::Edx, 27),
    flag("fsgsbase", 7, 0, Reg::Ebx, 0),
    flag("tsc-adjust", 7, 0, Reg::Ebx, 1),
    flag("bmi1", 7, 0, Reg::Ebx, 3),
    flag("hle", 7, 0, Reg::Ebx, 4),
    flag("avx2", 7, 0, Reg::Ebx, 5),
    flag("smep", 7, 0, Reg::Ebx, 7),
    flag("bmi2", 7, 0, Reg::Ebx, 8),
    flag("erms", 7, 0, Reg::Ebx, 9),
    flag("invpcid", 7, 0, Reg::Ebx, 10),
    flag("rtm", 7, 0, Reg::Ebx, 11),
    flag("mpx", 7, 0, Reg::Ebx, 14),
    flag("rdseed", 7, 0, Reg::Ebx, 18),
    flag("adx", 7, 0, Reg::Ebx, 19),
    flag("smap", 7, 0, Reg::Ebx, 20),
    flag("clflushopt", 7, 0, Reg::Ebx, 23),
    flag("clwb", 7, 0, Reg::Ebx, 24),
    flag("sha-ni", 7, 0, Reg::Ebx, 29),
    flag("umip", 7, 0, Reg::Ecx, 2),
    flag("pku", 7, 0, Reg::Ecx, 3),
    flag("la57", 7, 0, Reg::Ecx, 16),
    flag("rdpid", 7, 0, Reg::Ecx, 22),
    flag("pks", 7, 0, Reg::Ecx, 31),
    flag("md-clear", 7, 0, Reg::Edx, 10),
    flag("spec-ctrl", 7, 0, Reg::Edx, 26),
    flag("stibp", 7, 0, Reg::Edx, 27),
    flag("arch-capabilities", 7, 0, Reg::Edx, 29),
    flag("ssbd", 7, 0, Reg::Edx, 31),
    flag("lam", 7, 1, Reg::Eax, 26),
    flag("lahf-lm", 0x8000_0001, 0, Reg::Ecx, 0),
    flag("svm", 0x8000_0001, 0, Reg::Ecx, 2),
    flag("abm", 0x8000_0001, 0, Reg::Ecx, 5),
    flag("sse4a", 0x8000_0001, 0, Reg::Ecx, 6),
    flag("skinit", 0x8000_0001, 0, Reg::Ecx, 12),
    flag("syscall", 0x8000_0001, 0, Reg::Edx, 11),
    flag("nx", 0x8000_0001, 0, Reg::Edx, 20),
    flag("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    flag("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    flag("lm", 0x8000_0001, 0, Reg::Edx, 29),
    flag("npt", 0x8000_000a, 0, Reg::Edx, 0),
];

/// Flags KVM provides without listing them in `KVM_GET_SUPPORTED_CPUID`
/// (the TSC deadline timer is a capability of its in-kernel LAPIC).
pub fn extra_flags(tsc_deadline: bool) -> Vec<&'static str> {
    if tsc_deadline {
        vec!["tsc-deadline"]
    } else {
        Vec::new()
    }
}

/// What this host's KVM can give guests.
#[derive(Clone, Debug)]
pub struct HostCpu {
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub supported: CpuId,
    /// Flags KVM provides beyond it.
    pub extra: Vec<&'static str>,
}

impl HostCpu {
    /// Asks KVM (opens `/dev/kvm` and a scratch VM for the capabilities).
    pub fn probe() -> Result<Self, kvm_ioctls::Error> {
        let kvm = kvm_ioctls::Kvm::new()?;
        let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        Ok(HostCpu {
            supported,
            extra: extra_flags(tsc_deadline),
        })
    }

    /// Whether `spec` can be given here.
    pub fn check(&self, spec: &CpuSpec) -> Result<(), CpuModelError> {
        build(spec, &self.supported, &self.extra).map(|_| ())
    }
}

/// Parses QEMU's `-cpu` spelling.
pub fn parse(text: &str) -> Result<CpuSpec, CpuModelError> {
    let mut parts = text.split(',');
    let model = match parts.next().unwrap_or("") {
        "max" | "host" => Model::Max,
        "qemu64" => Model::Qemu64,
        other => return Err(CpuModelError::UnknownModel(other.to_string())),
    };
    let mut edits = Vec::new();
    for part in parts {
        let (name, on) = if let Some(name) = part.strip_prefix('+') {
            (name, true)
        } else if let Some(name) = part.strip_prefix('-') {
            (name, false)
        } else if let Some(vendor) = part.strip_prefix("vendor=") {
            if vendor.len() != 12 || !vendor.is_ascii() {
                return Err(CpuModelError::BadVendor(vendor.to_string()));
            }
            edits.push(Edit::Vendor(vendor.to_string()));
            continue;
        } else if matches!(
            part,
            "host-phys-bits" | "host-phys-bits=on" | "migratable=no" | "migratable=off"
        ) {
            // What ktvmm does anyway: the host's address widths, and no
            // migration to be compatible with.
            continue;
        } else if let Some((name, value)) = part.split_once('=') {
            match value {
                "on" | "true" => (name, true),
                "off" | "false" => (name, false),
                _ => return Err(CpuModelError::UnknownProperty(part.to_string())),
            }
        } else {
            return Err(CpuModelError::UnknownProperty(part.to_string()));
        };
        let name = name.replace('_', "-");
        let flag = find_flag(&name).ok_or_else(|| CpuModelError::UnknownFlag(name.clone()))?;
        edits.push(Edit::Flag(flag.name, on));
    }
    Ok(CpuSpec { model, edits })
}

/// The CPUID template for `spec` (before per-vCPU APIC IDs), from what KVM
/// supports plus `extra` flags it provides otherwise.
pub fn build(spec: &CpuSpec, supported: &CpuId, extra: &[&str]) -> Result<CpuId, CpuModelError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let host_has = |f: &Flag| {
        extra.contains(&f.name)
            || entries_get(supported.as_slice(), f.leaf, f.index)
                .is_some_and(|e| reg(e, f.reg) & (1 << f.bit) != 0)
    };
    match spec.model {
        Model::Max => {
            for name in extra {
                set_flag(&mut entries, name, true);
            }
        }
        Model::Qemu64 => qemu64(&mut entries, extra),
    }
    for edit in &spec.edits {
        match edit {
            Edit::Flag(name, on) => {
                let flag = find_flag(name).ok_or(CpuModelError::UnknownFlag(name.to_string()))?;
                if *on && !host_has(flag) {
                    return Err(CpuModelError::Unsupported(flag.name));
                }
                set_flag(&mut entries, name, *on);
            }
            Edit::Vendor(vendor) => set_vendor(&mut entries, vendor),
        }
    }
    CpuId::from_entries(&entries)
        .map_err(|_| CpuModelError::UnknownProperty("too many CPUID entries".into()))
}

fn find_flag(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Whether `e` is leaf `leaf`, subleaf `index` (any subleaf, for leaves
/// whose index KVM marks as not significant).
fn is_leaf(e: &kvm_cpuid_entry2, leaf: u32, index: u32) -> bool {
    e.function == leaf
        && (e.index == index || e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
}

fn entries_get(entries: &[kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| is_leaf(e, leaf, index))
}

fn reg(e: &kvm_cpuid_entry2, r: Reg) -> u32 {
    match r {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn set_flag(entries: &mut [kvm_cpuid_entry2], name: &str, on: bool) {
    let Some(flag) = find_flag(name) else {
        return;
    };
    for e in entries
        .iter_mut()
        .filter(|e| is_leaf(e, flag.leaf, flag.index))
    {
        let r = reg_mut(e, flag.reg);
        if on {
            *r |= 1 << flag.bit;
        } else {
            *r &= !(1 << flag.bit);
        }
    }
}

fn set_vendor(entries: &mut [kvm_cpuid_entry2], vendor: &str) {
    let b = vendor.as_bytes();
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    for e in entries
        .iter_mut()
        .filter(|e| e.function == 0 || e.function == 0x8000_0000)
    {
        e.ebx = word(0);
        e.edx = word(4);
        e.ecx = word(8);
    }
}

/// QEMU's `qemu64` under KVM: family 15 model 107 stepping 1, vendor
/// AuthenticAMD, basic leaves to 0xd and extended to 0x8000000a, the
/// model's features (those the host has) plus what QEMU's KVM defaults add
/// (x2apic, the hypervisor bit; SVM off), nothing from leaf 7.
fn qemu64(entries: &mut Vec<kvm_cpuid_entry2>, extra: &[&str]) {
    // FPU DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36
    // CLFLUSH MMX FXSR SSE SSE2.
    const EDX_1: u32 = 0x0789_fbff;
    // SSE3 CX16, with x2apic and hypervisor from QEMU's KVM defaults.
    const ECX_1: u32 = (1 << 0) | (1 << 13) | (1 << 21) | (1 << 31);
    // SYSCALL NX LM (and FPU...PAT mirrored from leaf 1 on AMD).
    const EDX_80000001: u32 = (1 << 11) | (1 << 20) | (1 << 29) | (EDX_1 & 0x0183_f3ff);
    // LAHF_LM (SVM is off under KVM by QEMU's default).
    const ECX_80000001: u32 = 1 << 0;
    const BRAND: &[u8; 48] = b"QEMU Virtual CPU version 2.5+\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

    entries.retain(|e| {
        e.function <= 0xd
            || (0x4000_0000..0x5000_0000).contains(&e.function)
            || (0x8000_0000..=0x8000_000a).contains(&e.function)
    });
    for e in entries.iter_mut() {
        match e.function {
            0 => e.eax = e.eax.min(0xd),
            1 => {
                e.eax = 0x0006_0fb1;
                e.ecx &= ECX_1;
                e.edx &= EDX_1;
            }
            7 => {
                e.eax = if e.index == 0 { e.eax.min(1) } else { 0 };
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0000 => e.eax = e.eax.min(0x8000_000a),
            0x8000_0001 => {
                e.ecx &= ECX_80000001;
                e.edx &= EDX_80000001;
            }
            f @ 0x8000_0002..=0x8000_0004 => {
                let at = ((f - 0x8000_0002) * 16) as usize;
                let w = |i: usize| {
                    u32::from_le_bytes(BRAND[at + i..at + i + 4].try_into().unwrap_or([0; 4]))
                };
                e.eax = w(0);
                e.ebx = w(4);
                e.ecx = w(8);
                e.edx = w(12);
            }
            _ => {}
        }
    }
    for name in extra {
        if name.ne(&"tsc-deadline") {
            set_flag(entries, name, true);
        }
    }
    set_vendor(entries, "AuthenticAMD");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 7 {
                kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A host with everything in leaves 1, 7 and 0x80000001 but VMX and the
    /// TSC deadline timer (which KVM reports as a capability instead).
    fn host() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0, 0x000a_06a4, 0, !((1 << 5) | (1 << 24)), !0),
            entry(7, 0, 1, !0, !0, !0),
            entry(7, 1, !0, 0, 0, 0),
            entry(0x14, 0, 1, 0, 0, 0),
            entry(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, !0, !0),
            entry(0x8000_0008, 0, 0x3030, 0, 0, 0),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, leaf: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries_get(cpuid.as_slice(), leaf, index).unwrap()
    }

    #[test]
    fn spellings() {
        assert_eq!(parse("max").unwrap(), CpuSpec::default());
        assert_eq!(
            parse("host,migratable=no,host-phys-bits").unwrap(),
            CpuSpec::default()
        );
        let spec = parse("qemu64,+x2apic,-pcid,tsc_deadline=on,vendor=GenuineIntel").unwrap();
        assert_eq!(spec.model, Model::Qemu64);
        assert_eq!(
            spec.edits,
            [
                Edit::Flag("x2apic", true),
                Edit::Flag("pcid", false),
                Edit::Flag("tsc-deadline", true),
                Edit::Vendor("GenuineIntel".into())
            ]
        );
        assert_eq!(
            spec.to_string(),
            "qemu64,+x2apic,-pcid,+tsc-deadline,vendor=GenuineIntel"
        );
        assert!(matches!(
            parse("Skylake-Server"),
            Err(CpuModelError::UnknownModel(_))
        ));
        assert!(matches!(
            parse("max,+warp-drive"),
            Err(CpuModelError::UnknownFlag(_))
        ));
        assert!(matches!(
            parse("max,phys-bits=36"),
            Err(CpuModelError::UnknownProperty(_))
        ));
        assert!(matches!(
            parse("max,vendor=Intel"),
            Err(CpuModelError::BadVendor(_))
        ));
    }

    #[test]
    fn max_is_what_the_host_supports_plus_kvm_extras() {
        let cpuid = build(&CpuSpec::default(), &host(), &["tsc-deadline"]).unwrap();
        assert_eq!(get(&cpuid, 7, 0).ebx, !0);
        assert_ne!(get(&cpuid, 1, 0).ecx & (1 << 24), 0);
    }

    #[test]
    fn qemu64_looks_like_qemus() {
        let cpuid = build(&parse("qemu64").unwrap(), &host(), &[]).unwrap();
        let leaf0 = get(&cpuid, 0, 0);
        assert_eq!(leaf0.eax, 0xd);
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(vendor, b"AuthenticAMD");
        let leaf1 = get(&cpuid, 1, 0);
        assert_eq!(leaf1.eax, 0x0006_0fb1);
        assert_eq!(leaf1.ecx & (1 << 17), 0, "no pcid");
        assert_ne!(
            leaf1.ecx & (1 << 21),
            0,
            "x2apic, as QEMU turns it on under KVM"
        );
        assert_eq!(get(&cpuid, 7, 0).ebx, 0);
        assert!(entries_get(cpuid.as_slice(), 0x14, 0).is_none());
        assert_eq!(get(&cpuid, 0x8000_0001, 0).ecx & (1 << 2), 0, "no svm");
        assert_eq!(
            get(&cpuid, 0x8000_0008, 0).eax,
            0x3030,
            "host address widths"
        );
    }

    #[test]
    fn edits_apply_and_unsupported_flags_are_errors() {
        let spec = parse("qemu64,+pcid,+invpcid,-x2apic,vendor=GenuineIntel").unwrap();
        let cpuid = build(&spec, &host(), &[]).unwrap();
        assert_ne!(get(&cpuid, 1, 0).ecx & (1 << 17), 0);
        assert_ne!(get(&cpuid, 7, 0).ebx & (1 << 10), 0);
        assert_eq!(get(&cpuid, 1, 0).ecx & (1 << 21), 0);
        assert_eq!(get(&cpuid, 0, 0).ebx, u32::from_le_bytes(*b"Genu"));
        assert_eq!(
            build(&parse("max,+vmx").unwrap(), &host(), &[]),
            Err(CpuModelError::Unsupported("vmx"))
        );
        assert_eq!(
            build(&parse("qemu64,+tsc-deadline").unwrap(), &host(), &[]),
            Err(CpuModelError::Unsupported("tsc-deadline"))
        );
        assert!(
            build(
                &parse("qemu64,+tsc-deadline").unwrap(),
                &host(),
                &["tsc-deadline"]
            )
            .is_ok()
        );
    }
}
