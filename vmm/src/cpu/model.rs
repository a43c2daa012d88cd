//! The CPU model a guest sees, in QEMU's `-cpu` spelling: `max` or `host`
//! (everything KVM supports), `qemu64` (QEMU's default model as it looks
//! under KVM), or one of QEMU's named models (`Opteron_G1`, `IvyBridge`,
//! `Skylake-Server`), each followed by edits: `+flag`/`-flag`,
//! `flag=on|off`, `vendor=...`, `phys-bits=N`. Everything starts from
//! `KVM_GET_SUPPORTED_CPUID`: a named model's features the host lacks are
//! left out (QEMU warns and does the same), while a flag asked for with
//! `+flag` that the host cannot provide is an error naming it.

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
    /// One of QEMU's named models.
    Named(&'static NamedModel),
}

/// A model of QEMU's table (`builtin_x86_defs` in `target/i386/cpu.c`,
/// version 1, which is what the plain name means on current machine
/// types): its identity and the features it asks for by QEMU's names.
#[derive(Debug, PartialEq, Eq)]
pub struct NamedModel {
    /// QEMU's name.
    pub name: &'static str,
    /// CPUID.0 vendor string.
    pub vendor: &'static str,
    /// Family, model, stepping as QEMU gives them (before encoding).
    pub family: u32,
    /// See `family`.
    pub model: u32,
    /// See `family`.
    pub stepping: u32,
    /// Highest basic leaf.
    pub level: u32,
    /// Highest extended leaf.
    pub xlevel: u32,
    /// The brand string (CPUID.80000002-4).
    pub model_id: &'static str,
    /// Features, by the names of `FLAGS`.
    pub features: &'static [&'static str],
}

/// The leaf-1 EDX features every model since the Pentium Pro has.
macro_rules! p6_edx {
    () => {
        [
            "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr",
            "pge", "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2",
        ]
    };
}

const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

const OPTERON_G1_FEATURES: [&str; 26] = concat(p6_edx!(), ["sse3", "lm", "nx", "syscall"]);

const IVYBRIDGE_FEATURES: [&str; 45] = concat(
    p6_edx!(),
    [
        "avx",
        "xsave",
        "aes",
        "tsc-deadline",
        "popcnt",
        "x2apic",
        "sse4.2",
        "sse4.1",
        "cx16",
        "ssse3",
        "pclmulqdq",
        "sse3",
        "f16c",
        "rdrand",
        "fsgsbase",
        "smep",
        "erms",
        "lm",
        "rdtscp",
        "nx",
        "syscall",
        "lahf-lm",
        "xsaveopt",
        "arat",
    ],
);

const SKYLAKE_SERVER_FEATURES: [&str; 70] = concat(
    p6_edx!(),
    [
        "avx",
        "xsave",
        "aes",
        "popcnt",
        "x2apic",
        "sse4.2",
        "sse4.1",
        "cx16",
        "ssse3",
        "pclmulqdq",
        "sse3",
        "tsc-deadline",
        "fma",
        "movbe",
        "pcid",
        "f16c",
        "rdrand",
        "lm",
        "pdpe1gb",
        "rdtscp",
        "nx",
        "syscall",
        "abm",
        "lahf-lm",
        "3dnowprefetch",
        "fsgsbase",
        "bmi1",
        "hle",
        "avx2",
        "smep",
        "bmi2",
        "erms",
        "invpcid",
        "rtm",
        "rdseed",
        "adx",
        "smap",
        "clwb",
        "avx512f",
        "avx512dq",
        "avx512bw",
        "avx512cd",
        "avx512vl",
        "clflushopt",
        "pku",
        "xsaveopt",
        "xsavec",
        "xgetbv1",
        "arat",
    ],
);

/// The named models ktvmm has: those kvm-unit-tests' x86 cfg uses.
pub const NAMED_MODELS: &[NamedModel] = &[
    NamedModel {
        name: "Opteron_G1",
        vendor: "AuthenticAMD",
        family: 15,
        model: 6,
        stepping: 1,
        level: 5,
        xlevel: 0x8000_0008,
        model_id: "AMD Opteron 240 (Gen 1 Class Opteron)",
        features: &OPTERON_G1_FEATURES,
    },
    NamedModel {
        name: "IvyBridge",
        vendor: "GenuineIntel",
        family: 6,
        model: 58,
        stepping: 9,
        level: 0xd,
        xlevel: 0x8000_0008,
        model_id: "Intel Xeon E3-12xx v2 (Ivy Bridge)",
        features: &IVYBRIDGE_FEATURES,
    },
    NamedModel {
        name: "Skylake-Server",
        vendor: "GenuineIntel",
        family: 6,
        model: 85,
        stepping: 4,
        level: 0xd,
        xlevel: 0x8000_0008,
        model_id: "Intel Xeon Processor (Skylake)",
        features: &SKYLAKE_SERVER_FEATURES,
    },
];

/// CPUID.1:EAX for a family, model and stepping: families above 15 go to
/// the extended family field, models above 15 put their high nibble in the
/// extended model field (the SDM's "display family/model" rules, reversed).
pub fn signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family, ext_family) = if family > 0xf {
        (0xf, family - 0xf)
    } else {
        (family, 0)
    };
    (ext_family & 0xff) << 20
        | (model >> 4 & 0xf) << 16
        | (family & 0xf) << 8
        | (model & 0xf) << 4
        | (stepping & 0xf)
}

/// One edit after the model name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Turn a feature flag on or off.
    Flag(&'static str, bool),
    /// The 12-character vendor string.
    Vendor(String),
    /// `phys-bits=N`: the guest's physical address width (CPUID.80000008
    /// EAX[7:0]).
    PhysBits(u8),
    /// `host-phys-bits=on|off`: on, the host's width wins over
    /// `phys-bits` (QEMU's rule); off is the default.
    HostPhysBits(bool),
    /// A VMX capability (`vmx-mbec`) on or off.
    VmxControl(&'static str, bool),
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            model: Model::Max,
            edits: Vec::new(),
        }
    }
}

impl CpuSpec {
    /// Whether an edit names a VMX capability (only then are KVM's feature
    /// MSRs read).
    pub fn names_vmx_controls(&self) -> bool {
        self.edits.iter().any(|e| matches!(e, Edit::VmxControl(..)))
    }
}

impl fmt::Display for CpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.model {
            Model::Max => "max",
            Model::Qemu64 => "qemu64",
            Model::Named(m) => m.name,
        })?;
        for edit in &self.edits {
            match edit {
                Edit::Flag(name, on) => write!(f, ",{}{name}", if *on { '+' } else { '-' })?,
                Edit::Vendor(v) => write!(f, ",vendor={v}")?,
                Edit::PhysBits(n) => write!(f, ",phys-bits={n}")?,
                Edit::HostPhysBits(on) => {
                    write!(f, ",host-phys-bits={}", if *on { "on" } else { "off" })?
                }
                Edit::VmxControl(name, on) => write!(f, ",{}{name}", if *on { '+' } else { '-' })?,
            }
        }
        Ok(())
    }
}

/// Why a CPU model cannot be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuModelError {
    /// Not a model ktvmm knows.
    #[error(
        "CPU model '{0}' is not supported (ktvmm has: max, host, qemu64, Opteron_G1, IvyBridge, \
         Skylake-Server)"
    )]
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
    /// `phys-bits` out of QEMU's range.
    #[error("phys-bits={0} must be a number from 32 to 52")]
    BadPhysBits(String),
    /// `phys-bits` wider than the host's.
    #[error("phys-bits={0} is more than the host's {1} physical address bits")]
    PhysBitsAboveHost(u8, u8),
    /// `phys-bits` narrower than the host's, which KVM must allow.
    #[error(
        "phys-bits={0} is less than the host's {1} physical address bits, which needs \
         KVM_CAP_SMALLER_MAXPHYADDR (kvm_intel's allow_smaller_maxphyaddr=Y with EPT, or \
         kvm_amd with npt=0); this host's KVM does not report it"
    )]
    SmallerMaxPhyAddr(u8, u8),
    /// A VMX capability ktvmm can check but not take away.
    #[error("turning off VMX capability '{0}' is not supported by ktvmm")]
    VmxControlOff(&'static str),
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
    flag("fpu", 1, 0, Reg::Edx, 0),
    flag("vme", 1, 0, Reg::Edx, 1),
    flag("de", 1, 0, Reg::Edx, 2),
    flag("pse", 1, 0, Reg::Edx, 3),
    flag("msr", 1, 0, Reg::Edx, 5),
    flag("pae", 1, 0, Reg::Edx, 6),
    flag("mce", 1, 0, Reg::Edx, 7),
    flag("cx8", 1, 0, Reg::Edx, 8),
    flag("sep", 1, 0, Reg::Edx, 11),
    flag("mtrr", 1, 0, Reg::Edx, 12),
    flag("mca", 1, 0, Reg::Edx, 14),
    flag("cmov", 1, 0, Reg::Edx, 15),
    flag("pat", 1, 0, Reg::Edx, 16),
    flag("mmx", 1, 0, Reg::Edx, 23),
    flag("fxsr", 1, 0, Reg::Edx, 24),
    flag("sse", 1, 0, Reg::Edx, 25),
    flag("sse2", 1, 0, Reg::Edx, 26),
    flag("arat", 6, 0, Reg::Eax, 2),
    flag("avx512f", 7, 0, Reg::Ebx, 16),
    flag("avx512dq", 7, 0, Reg::Ebx, 17),
    flag("avx512cd", 7, 0, Reg::Ebx, 28),
    flag("avx512bw", 7, 0, Reg::Ebx, 30),
    flag("avx512vl", 7, 0, Reg::Ebx, 31),
    flag("xsaveopt", 0xd, 1, Reg::Eax, 0),
    flag("xsavec", 0xd, 1, Reg::Eax, 1),
    flag("xgetbv1", 0xd, 1, Reg::Eax, 2),
    flag("3dnowprefetch", 0x8000_0001, 0, Reg::Ecx, 8),
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

/// VMX capabilities (bits of the VMX capability MSRs, not of CPUID) that
/// `-cpu` can name: (QEMU's name, MSR, bit of its allowed-1 half).
const VMX_CONTROLS: &[(&str, u32, u8)] = &[
    // IA32_VMX_PROCBASED_CTLS2, "mode-based execute control for EPT".
    ("vmx-mbec", 0x48b, 22),
];

/// What this host's KVM can give guests.
#[derive(Clone, Debug)]
pub struct HostCpu {
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub supported: CpuId,
    /// Flags KVM provides beyond it.
    pub extra: Vec<&'static str>,
    /// `KVM_CAP_SMALLER_MAXPHYADDR`: a guest may have fewer physical
    /// address bits than the host.
    pub smaller_maxphyaddr: bool,
    /// VMX capabilities of `VMX_CONTROLS` nested guests can have.
    pub vmx_controls: Vec<&'static str>,
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
            smaller_maxphyaddr: smaller_maxphyaddr(&kvm),
            vmx_controls: vmx_controls(&kvm),
        })
    }

    /// Whether `spec` can be given here.
    pub fn check(&self, spec: &CpuSpec) -> Result<(), CpuModelError> {
        build(spec, self).map(|_| ())
    }
}

/// Whether KVM lets a guest have fewer physical address bits than the host
/// (`KVM_CAP_SMALLER_MAXPHYADDR`: kvm_intel reports it with EPT when
/// loaded with `allow_smaller_maxphyaddr=Y`, kvm_amd without NPT, and
/// shadow-paging KVMs such as kvm_pvm always).
pub fn smaller_maxphyaddr(kvm: &kvm_ioctls::Kvm) -> bool {
    kvm.check_extension_raw(kvm_bindings::KVM_CAP_SMALLER_MAXPHYADDR.into()) > 0
}

/// The VMX capabilities of `VMX_CONTROLS` that KVM's feature MSRs offer
/// nested guests (none where the host has no VMX).
pub fn vmx_controls(kvm: &kvm_ioctls::Kvm) -> Vec<&'static str> {
    let Ok(list) = kvm.get_msr_feature_index_list() else {
        return Vec::new();
    };
    VMX_CONTROLS
        .iter()
        .filter(|(_, msr, bit)| {
            if !list.as_slice().contains(msr) {
                return false;
            }
            let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                index: *msr,
                ..Default::default()
            }]) else {
                return false;
            };
            matches!(kvm.get_msrs(&mut msrs), Ok(1))
                && msrs.as_slice()[0].data >> 32 & (1 << bit) != 0
        })
        .map(|(name, _, _)| *name)
        .collect()
}

/// Parses QEMU's `-cpu` spelling.
pub fn parse(text: &str) -> Result<CpuSpec, CpuModelError> {
    let mut parts = text.split(',');
    let model = match parts.next().unwrap_or("") {
        "max" | "host" => Model::Max,
        "qemu64" => Model::Qemu64,
        other => match NAMED_MODELS.iter().find(|m| m.name == other) {
            Some(named) => Model::Named(named),
            None => return Err(CpuModelError::UnknownModel(other.to_string())),
        },
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
        } else if let Some(bits) = part.strip_prefix("phys-bits=") {
            let bits = bits
                .parse::<u8>()
                .ok()
                .filter(|b| (32..=52).contains(b))
                .ok_or_else(|| CpuModelError::BadPhysBits(bits.to_string()))?;
            edits.push(Edit::PhysBits(bits));
            continue;
        } else if matches!(part, "migratable=no" | "migratable=off") {
            // No migration to be compatible with.
            continue;
        } else if let Some((name, value)) = part.split_once('=') {
            match value {
                "on" | "true" => (name, true),
                "off" | "false" => (name, false),
                _ => return Err(CpuModelError::UnknownProperty(part.to_string())),
            }
        } else if part == "host-phys-bits" {
            (part, true)
        } else {
            return Err(CpuModelError::UnknownProperty(part.to_string()));
        };
        let name = name.replace('_', "-");
        if name == "host-phys-bits" {
            edits.push(Edit::HostPhysBits(on));
        } else if let Some((control, _, _)) = VMX_CONTROLS.iter().find(|(n, _, _)| *n == name) {
            edits.push(Edit::VmxControl(control, on));
        } else {
            let flag = find_flag(&name).ok_or_else(|| CpuModelError::UnknownFlag(name.clone()))?;
            edits.push(Edit::Flag(flag.name, on));
        }
    }
    Ok(CpuSpec { model, edits })
}

/// The CPUID template for `spec` (before per-vCPU APIC IDs), from what
/// `host`'s KVM supports.
pub fn build(spec: &CpuSpec, host: &HostCpu) -> Result<CpuId, CpuModelError> {
    let supported = &host.supported;
    let extra = host.extra.as_slice();
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
        Model::Named(model) => named(&mut entries, model, &host_has),
    }
    let mut phys_bits = None;
    let mut host_phys_bits = false;
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
            Edit::PhysBits(bits) => phys_bits = Some(*bits),
            Edit::HostPhysBits(on) => host_phys_bits = *on,
            Edit::VmxControl(name, on) => {
                let host_offers = host.vmx_controls.contains(name);
                if *on && !(host_offers && has_flag(&entries, "vmx")) {
                    return Err(CpuModelError::Unsupported(name));
                }
                // Taking it away would mean writing the VMX capability
                // MSRs of each vCPU; where the host lacks it, it is off.
                if !*on && host_offers {
                    return Err(CpuModelError::VmxControlOff(name));
                }
            }
        }
    }
    if let Some(bits) = phys_bits.filter(|_| !host_phys_bits) {
        set_phys_bits(&mut entries, bits, host.smaller_maxphyaddr)?;
    }
    CpuId::from_entries(&entries)
        .map_err(|_| CpuModelError::UnknownProperty("too many CPUID entries".into()))
}

const LEAF_ADDRESS_SIZES: u32 = 0x8000_0008;

/// CPUID.80000008 EAX[7:0] = `bits`, which must not exceed the host's and
/// may be smaller only where KVM allows it.
fn set_phys_bits(
    entries: &mut [kvm_cpuid_entry2],
    bits: u8,
    smaller_allowed: bool,
) -> Result<(), CpuModelError> {
    let Some(e) = entries
        .iter_mut()
        .find(|e| e.function == LEAF_ADDRESS_SIZES)
    else {
        return Err(CpuModelError::UnknownProperty(format!(
            "phys-bits={bits} (KVM reports no CPUID leaf 0x80000008)"
        )));
    };
    let host = (e.eax & 0xff) as u8;
    if bits > host {
        return Err(CpuModelError::PhysBitsAboveHost(bits, host));
    }
    if bits < host && !smaller_allowed {
        return Err(CpuModelError::SmallerMaxPhyAddr(bits, host));
    }
    e.eax = (e.eax & !0xff) | u32::from(bits);
    Ok(())
}

fn has_flag(entries: &[kvm_cpuid_entry2], name: &str) -> bool {
    find_flag(name).is_some_and(|f| {
        entries_get(entries, f.leaf, f.index).is_some_and(|e| reg(e, f.reg) & (1 << f.bit) != 0)
    })
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
    const EDX_80000001: u32 = (1 << 11) | (1 << 20) | (1 << 29) | (EDX_1 & AMD_ALIASES);
    // LAHF_LM (SVM is off under KVM by QEMU's default).
    const ECX_80000001: u32 = 1 << 0;
    const BRAND: &str = "QEMU Virtual CPU version 2.5+";

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
            0x8000_0002..=0x8000_0004 => set_brand(e, BRAND),
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

/// Leaf `e` (0x80000002-4) of the brand string `brand`, NUL-padded to 48
/// bytes.
fn set_brand(e: &mut kvm_cpuid_entry2, brand: &str) {
    let at = (e.function.saturating_sub(0x8000_0002) as usize) * 16;
    let word = |i: usize| {
        let mut b = [0u8; 4];
        for (k, byte) in b.iter_mut().enumerate() {
            *byte = brand.as_bytes().get(at + i + k).copied().unwrap_or(0);
        }
        u32::from_le_bytes(b)
    };
    (e.eax, e.ebx, e.ecx, e.edx) = (word(0), word(4), word(8), word(12));
}

/// The registers a named model decides bit by bit: (leaf, subleaf, reg).
const MODEL_REGS: &[(u32, u32, Reg)] = &[
    (1, 0, Reg::Ecx),
    (1, 0, Reg::Edx),
    (6, 0, Reg::Eax),
    (7, 0, Reg::Ebx),
    (7, 0, Reg::Ecx),
    (7, 0, Reg::Edx),
    (0xd, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
];

/// Leaf-1 EDX bits AMD repeats in 0x80000001 EDX (QEMU's
/// CPUID_EXT2_AMD_ALIASES).
const AMD_ALIASES: u32 = 0x0183_f3ff;

/// XSAVE state components (XCR0 bits) and the feature that brings each.
const XSAVE_COMPONENTS: &[(u32, &str)] = &[
    (2, "avx"),
    (5, "avx512f"),
    (6, "avx512f"),
    (7, "avx512f"),
    (9, "pku"),
];

/// A named model under KVM, as QEMU builds it: its vendor, signature,
/// brand string and leaf ranges, each of its features the host has (QEMU
/// drops the others with a warning), plus what QEMU's KVM defaults add
/// (x2apic where the host has it; the hypervisor bit comes per vCPU).
/// Leaves the model does not decide (caches, topology, address widths)
/// stay the host's.
fn named(
    entries: &mut Vec<kvm_cpuid_entry2>,
    model: &NamedModel,
    host_has: &dyn Fn(&Flag) -> bool,
) {
    entries.retain(|e| {
        e.function <= model.level
            || (0x4000_0000..0x5000_0000).contains(&e.function)
            || (0x8000_0000..=model.xlevel).contains(&e.function)
    });
    // The brand string is the model's own, whatever the host has.
    for leaf in 0x8000_0002..=0x8000_0004 {
        if !entries.iter().any(|e| e.function == leaf) {
            entries.push(kvm_cpuid_entry2 {
                function: leaf,
                ..Default::default()
            });
        }
    }
    let has = |name: &str| model.features.contains(&name) && find_flag(name).is_some_and(host_has);
    let value = |leaf: u32, index: u32, r: Reg| {
        FLAGS
            .iter()
            .filter(|f| f.leaf == leaf && f.index == index && f.reg == r)
            .filter(|f| has(f.name) || (f.name == "x2apic" && host_has(f)))
            .fold(0u32, |acc, f| acc | 1 << f.bit)
    };
    let signature = signature(model.family, model.model, model.stepping);
    let xcr0 = XSAVE_COMPONENTS
        .iter()
        .filter(|(_, feature)| has(feature))
        .fold(0b11u32, |acc, (bit, _)| acc | 1 << bit);
    let xsave_size = entries
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2 && xcr0 & (1 << e.index.min(31)) != 0)
        .map(|e| e.ebx + e.eax)
        .fold(512 + 64, u32::max);
    for e in entries.iter_mut() {
        for &(leaf, index, r) in MODEL_REGS {
            if is_leaf(e, leaf, index) {
                *reg_mut(e, r) = value(leaf, index, r);
            }
        }
        match (e.function, e.index) {
            (0, _) => e.eax = model.level,
            (1, _) => e.eax = signature,
            (6, _) => (e.ebx, e.ecx, e.edx) = (0, 0, 0),
            (7, 0) => e.eax = 0,
            (7, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            (0xd, 0) => {
                e.eax &= xcr0;
                e.edx = 0;
                e.ecx = xsave_size;
            }
            (0xd, 1) => (e.ecx, e.edx) = (0, 0),
            (0xd, i) if i >= 32 || xcr0 & (1 << i) == 0 => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0)
            }
            (0x8000_0000, _) => e.eax = model.xlevel,
            (0x8000_0001, _) => {
                e.eax = signature;
                e.ebx = 0;
            }
            (0x8000_0002..=0x8000_0004, _) => set_brand(e, model.model_id),
            (0x8000_0007, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            (0x8000_0008, _) => (e.ebx, e.edx) = (0, 0),
            _ => {}
        }
    }
    if model.vendor == "AuthenticAMD" {
        let leaf1_edx = entries_get(entries, 1, 0).map_or(0, |e| e.edx);
        for e in entries.iter_mut().filter(|e| e.function == 0x8000_0001) {
            e.edx |= leaf1_edx & AMD_ALIASES;
        }
    }
    set_vendor(entries, model.vendor);
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

    fn host_cpu(extra: &[&'static str]) -> HostCpu {
        HostCpu {
            supported: host(),
            extra: extra.to_vec(),
            smaller_maxphyaddr: false,
            vmx_controls: Vec::new(),
        }
    }

    fn get(cpuid: &CpuId, leaf: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries_get(cpuid.as_slice(), leaf, index).unwrap()
    }

    #[test]
    fn spellings() {
        assert_eq!(parse("max").unwrap(), CpuSpec::default());
        assert_eq!(parse("host,migratable=no").unwrap(), CpuSpec::default());
        assert_eq!(
            parse("max,host-phys-bits").unwrap().edits,
            [Edit::HostPhysBits(true)]
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
        use std::mem::discriminant;
        let refused = [
            ("Westmere", CpuModelError::UnknownModel(String::new())),
            ("max,+warp-drive", CpuModelError::UnknownFlag(String::new())),
            (
                "max,phys-bits=wide",
                CpuModelError::BadPhysBits(String::new()),
            ),
            (
                "max,phys-bits=60",
                CpuModelError::BadPhysBits(String::new()),
            ),
            (
                "max,hv-passthrough",
                CpuModelError::UnknownProperty(String::new()),
            ),
            ("max,vendor=Intel", CpuModelError::BadVendor(String::new())),
        ];
        for (text, kind) in refused {
            let err = parse(text).unwrap_err();
            assert_eq!(discriminant(&err), discriminant(&kind), "{text}: {err:?}");
        }
    }

    #[test]
    fn max_is_what_the_host_supports_plus_kvm_extras() {
        let cpuid = build(&CpuSpec::default(), &host_cpu(&["tsc-deadline"])).unwrap();
        assert_eq!(get(&cpuid, 7, 0).ebx, !0);
        assert_ne!(get(&cpuid, 1, 0).ecx & (1 << 24), 0);
    }

    #[test]
    fn qemu64_looks_like_qemus() {
        let cpuid = build(&parse("qemu64").unwrap(), &host_cpu(&[])).unwrap();
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
        let cpuid = build(&spec, &host_cpu(&[])).unwrap();
        assert_ne!(get(&cpuid, 1, 0).ecx & (1 << 17), 0);
        assert_ne!(get(&cpuid, 7, 0).ebx & (1 << 10), 0);
        assert_eq!(get(&cpuid, 1, 0).ecx & (1 << 21), 0);
        assert_eq!(get(&cpuid, 0, 0).ebx, u32::from_le_bytes(*b"Genu"));
        assert_eq!(
            build(&parse("max,+vmx").unwrap(), &host_cpu(&[])),
            Err(CpuModelError::Unsupported("vmx"))
        );
        assert_eq!(
            build(&parse("qemu64,+tsc-deadline").unwrap(), &host_cpu(&[])),
            Err(CpuModelError::Unsupported("tsc-deadline"))
        );
        assert!(
            build(
                &parse("qemu64,+tsc-deadline").unwrap(),
                &host_cpu(&["tsc-deadline"])
            )
            .is_ok()
        );
    }

    /// (vendor, family, model, stepping) as a guest decodes CPUID.0/1.
    fn identity(cpuid: &CpuId) -> (String, u32, u32, u32) {
        let leaf0 = get(cpuid, 0, 0);
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let eax = get(cpuid, 1, 0).eax;
        let base_family = eax >> 8 & 0xf;
        let family = base_family
            + if base_family == 0xf {
                eax >> 20 & 0xff
            } else {
                0
            };
        let model = if matches!(base_family, 6 | 0xf) {
            (eax >> 16 & 0xf) << 4 | (eax >> 4 & 0xf)
        } else {
            eax >> 4 & 0xf
        };
        (String::from_utf8(vendor).unwrap(), family, model, eax & 0xf)
    }

    fn brand(cpuid: &CpuId) -> String {
        let bytes: Vec<u8> = (0x8000_0002..=0x8000_0004)
            .flat_map(|leaf| {
                let e = get(cpuid, leaf, 0);
                [e.eax, e.ebx, e.ecx, e.edx]
            })
            .flat_map(|w| w.to_le_bytes())
            .collect();
        String::from_utf8(bytes)
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    }

    /// A host like the development machine's: everything but VMX, with
    /// 0x80000008 and the XSAVE leaves.
    fn host_with_xsave() -> HostCpu {
        let mut entries = host().as_slice().to_vec();
        let sig =
            |f, i| kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX * u32::from(f == 0xd && i < 64);
        for (index, eax, ebx, ecx, edx) in [
            (0, 0x2e7, 0, 0xa88, 0),
            (1, 0xf, 0, 0, 0),
            (2, 256, 576, 0, 0),
            (5, 64, 832, 0, 0),
            (6, 512, 896, 0, 0),
            (7, 1024, 1408, 0, 0),
            (9, 8, 2432, 0, 0),
        ] {
            entries.push(kvm_cpuid_entry2 {
                function: 0xd,
                index,
                flags: sig(0xd, index),
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            });
        }
        entries.push(entry(0x8000_0007, 0, 0, 0, 0, 1 << 8));
        HostCpu {
            supported: CpuId::from_entries(&entries).unwrap(),
            extra: vec!["tsc-deadline"],
            smaller_maxphyaddr: true,
            vmx_controls: Vec::new(),
        }
    }

    #[test]
    fn signature_encodes_extended_family_and_model() {
        assert_eq!(signature(15, 6, 1), 0x0000_0f61);
        assert_eq!(signature(6, 58, 9), 0x0003_06a9);
        assert_eq!(signature(6, 85, 4), 0x0005_0654);
        assert_eq!(signature(25, 1, 1), 0x00a0_0f11, "family 25 = 15 + 10");
        assert_eq!(signature(15, 107, 1), 0x0006_0fb1, "qemu64's");
    }

    #[test]
    fn opteron_g1_is_a_gen1_opteron() {
        let spec = parse("Opteron_G1,vendor=AuthenticAMD").unwrap();
        assert_eq!(spec.to_string(), "Opteron_G1,vendor=AuthenticAMD");
        let cpuid = build(&spec, &host_with_xsave()).unwrap();
        assert_eq!(identity(&cpuid), ("AuthenticAMD".into(), 15, 6, 1));
        assert_eq!(brand(&cpuid), "AMD Opteron 240 (Gen 1 Class Opteron)");
        assert_eq!(get(&cpuid, 0, 0).eax, 5, "level 5");
        assert_eq!(get(&cpuid, 0x8000_0000, 0).eax, 0x8000_0008);
        assert!(entries_get(cpuid.as_slice(), 7, 0).is_none());
        assert!(entries_get(cpuid.as_slice(), 0xd, 0).is_none());
        let leaf1 = get(&cpuid, 1, 0);
        assert_eq!(leaf1.edx, 0x078b_fbff, "the P6 set and nothing else");
        assert_eq!(
            leaf1.ecx,
            1 | 1 << 21,
            "sse3, and x2apic from QEMU's KVM defaults"
        );
        let ext = get(&cpuid, 0x8000_0001, 0);
        assert_ne!(ext.edx & (1 << 11), 0, "syscall");
        assert_ne!(ext.edx & (1 << 29), 0, "lm");
        assert_eq!(ext.edx & (1 << 27), 0, "no rdtscp");
        assert_eq!(ext.edx & AMD_ALIASES, leaf1.edx & AMD_ALIASES);
        assert_eq!(ext.ecx, 0, "no lahf_lm, no svm");
        assert_eq!(get(&cpuid, 0x8000_0007, 0).edx, 0);
    }

    #[test]
    fn ivybridge_with_36_physical_address_bits() {
        let spec = parse("IvyBridge,phys-bits=36,host-phys-bits=off").unwrap();
        assert_eq!(spec.edits, [Edit::PhysBits(36), Edit::HostPhysBits(false)]);
        let cpuid = build(&spec, &host_with_xsave()).unwrap();
        assert_eq!(identity(&cpuid), ("GenuineIntel".into(), 6, 58, 9));
        assert_eq!(brand(&cpuid), "Intel Xeon E3-12xx v2 (Ivy Bridge)");
        assert_eq!(
            get(&cpuid, 0x8000_0008, 0).eax,
            0x3024,
            "36 bits, virtual 48"
        );
        let leaf1 = get(&cpuid, 1, 0);
        for bit in [28, 26, 25, 24, 30] {
            assert_ne!(
                leaf1.ecx & (1 << bit),
                0,
                "avx xsave aes tsc-deadline rdrand: {bit}"
            );
        }
        assert_eq!(leaf1.ecx & (1 << 12), 0, "no fma");
        assert_eq!(leaf1.ecx & (1 << 17), 0, "no pcid");
        assert_eq!(
            get(&cpuid, 7, 0).ebx,
            1 | 1 << 7 | 1 << 9,
            "fsgsbase smep erms"
        );
        assert!(
            entries_get(cpuid.as_slice(), 6, 0).is_none(),
            "no leaf the host lacks"
        );
        let xsave = get(&cpuid, 0xd, 0);
        assert_eq!(xsave.eax, 0b111, "x87 sse avx");
        assert_eq!(xsave.ecx, 832, "the AVX area ends the buffer");
        assert_eq!(get(&cpuid, 0xd, 1).eax, 1, "xsaveopt only");
        assert_eq!(get(&cpuid, 0xd, 5).eax, 0, "no AVX-512 state");
        // host-phys-bits=on wins over phys-bits, as in QEMU.
        let host_wins = build(
            &parse("IvyBridge,phys-bits=36,host-phys-bits=on").unwrap(),
            &host_with_xsave(),
        )
        .unwrap();
        assert_eq!(get(&host_wins, 0x8000_0008, 0).eax, 0x3030);
    }

    #[test]
    fn phys_bits_below_the_host_needs_kvms_permission() {
        let mut host = host_with_xsave();
        host.smaller_maxphyaddr = false;
        let spec = parse("IvyBridge,phys-bits=36,host-phys-bits=off").unwrap();
        let err = build(&spec, &host).unwrap_err();
        assert_eq!(err, CpuModelError::SmallerMaxPhyAddr(36, 48));
        let message = err.to_string();
        assert!(message.contains("KVM_CAP_SMALLER_MAXPHYADDR"), "{message}");
        assert!(message.contains("allow_smaller_maxphyaddr"), "{message}");
        // Equal to the host's is no reduction.
        assert!(build(&parse("max,phys-bits=48").unwrap(), &host).is_ok());
        assert_eq!(
            build(&parse("max,phys-bits=52").unwrap(), &host),
            Err(CpuModelError::PhysBitsAboveHost(52, 48))
        );
    }

    #[test]
    fn skylake_server_and_vmx_controls() {
        let host = host_with_xsave();
        let cpuid = build(&parse("Skylake-Server").unwrap(), &host).unwrap();
        assert_eq!(identity(&cpuid), ("GenuineIntel".into(), 6, 85, 4));
        assert_eq!(brand(&cpuid), "Intel Xeon Processor (Skylake)");
        let leaf7 = get(&cpuid, 7, 0);
        for bit in [16, 17, 30, 31, 23, 24, 10] {
            assert_ne!(
                leaf7.ebx & (1 << bit),
                0,
                "avx512 clflushopt clwb invpcid: {bit}"
            );
        }
        assert_eq!(leaf7.ebx & (1 << 29), 0, "no sha-ni");
        assert_eq!(leaf7.ecx, 1 << 3, "pku alone");
        assert_eq!(leaf7.edx, 0);
        assert_ne!(get(&cpuid, 0x8000_0001, 0).edx & (1 << 26), 0, "pdpe1gb");
        assert_eq!(get(&cpuid, 0xd, 0).eax, 0x2e7, "x87 sse avx avx512 pkru");
        assert_eq!(get(&cpuid, 0xd, 0).ecx, 2440);
        // ept-mbec's line: this fake host, like an AMD one, has no VMX.
        let spec = parse("Skylake-Server,host-phys-bits,+vmx,+vmx-mbec").unwrap();
        assert_eq!(
            spec.to_string(),
            "Skylake-Server,host-phys-bits=on,+vmx,+vmx-mbec"
        );
        assert!(spec.names_vmx_controls());
        assert_eq!(build(&spec, &host), Err(CpuModelError::Unsupported("vmx")));
        // With VMX but without MBEC, MBEC is the missing flag.
        let mut vmx_host = host.clone();
        vmx_host.supported.as_mut_slice()[1].ecx |= 1 << 5;
        assert_eq!(
            build(&spec, &vmx_host),
            Err(CpuModelError::Unsupported("vmx-mbec"))
        );
        vmx_host.vmx_controls = vec!["vmx-mbec"];
        assert!(build(&spec, &vmx_host).is_ok());
        assert_eq!(
            build(&parse("max,+vmx,-vmx-mbec").unwrap(), &vmx_host),
            Err(CpuModelError::VmxControlOff("vmx-mbec"))
        );
        assert!(build(&parse("max,-vmx-mbec").unwrap(), &host).is_ok());
    }
}
