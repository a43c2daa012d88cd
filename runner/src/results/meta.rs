//! Gathering [`RunMeta`]: what host and KVM a run ran on. Everything is
//! best effort; what cannot be found reads "unknown" rather than failing a
//! run over its report header.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::verdict::RunMeta;

/// What a field says when the host would not tell.
pub const UNKNOWN: &str = "unknown";

/// KVM vendor modules, in the order they are looked for.
const KVM_MODULES: [&str; 3] = ["kvm_intel", "kvm_amd", "kvm_pvm"];

impl RunMeta {
    /// The metadata of a run started at `started` with `command_line`,
    /// probed from this host. `duration` is zero and `interrupted` false
    /// until the run sets them at its end.
    pub fn probe(command_line: Vec<String>, started: SystemTime) -> RunMeta {
        RunMeta {
            ktvmm_version: env!("CARGO_PKG_VERSION").to_string(),
            command_line,
            host_kernel: kernel_release().unwrap_or_else(|| UNKNOWN.to_string()),
            kvm_module: kvm_module_in(Path::new("/sys/module"))
                .unwrap_or_else(|| UNKNOWN.to_string()),
            kvm_params: kvm_params_in(Path::new("/sys/module")),
            cpu: fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| cpu_model(&s))
                .unwrap_or_else(|| UNKNOWN.to_string()),
            started_unix: started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration: Duration::ZERO,
            interrupted: false,
            notices: Vec::new(),
            selection: None,
            kvm_configs: Default::default(),
        }
    }
}

/// Every readable parameter of `kvm` and `kvm_*` modules, as `module.param`.
fn kvm_params_in(sys_module: &Path) -> std::collections::BTreeMap<String, String> {
    let mut params = std::collections::BTreeMap::new();
    let Ok(modules) = fs::read_dir(sys_module) else {
        return params;
    };
    for module in modules.flatten() {
        let name = module.file_name().to_string_lossy().into_owned();
        if name != "kvm" && !name.starts_with("kvm_") {
            continue;
        }
        let Ok(entries) = fs::read_dir(module.path().join("parameters")) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(value) = fs::read_to_string(entry.path()) {
                let param = entry.file_name().to_string_lossy().into_owned();
                params.insert(format!("{name}.{param}"), value.trim().to_string());
            }
        }
    }
    params
}

/// `uname -r`.
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain bytes, for which all-zero is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut uts) } == 0 {
        let bytes: Vec<u8> = uts
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let release = String::from_utf8_lossy(&bytes).trim().to_string();
        if !release.is_empty() {
            return Some(release);
        }
    }
    // uname cannot really fail; this is for a seccomp'd or odd libc.
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    (!release.is_empty()).then(|| release.to_string())
}

/// The loaded KVM vendor module, from the entries in `sys_module`
/// (`/sys/module`): a known one first, else any other `kvm_*` (alphabetically,
/// to be stable), else plain `kvm` (built in, or an architecture without
/// vendor modules).
pub fn kvm_module_in(sys_module: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(sys_module)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n == "kvm" || n.starts_with("kvm_"))
        .collect();
    names.sort();
    KVM_MODULES
        .iter()
        .find(|m| names.iter().any(|n| n == *m))
        .map(|m| m.to_string())
        .or_else(|| names.iter().find(|n| n.starts_with("kvm_")).cloned())
        .or_else(|| names.into_iter().find(|n| n == "kvm"))
}

/// The first "model name" in /proc/cpuinfo text, with its runs of blanks
/// squeezed (some CPUs pad it).
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo_field(cpuinfo, "model name")
}

/// The first value of `field` in /proc/cpuinfo text, blanks squeezed.
fn cpuinfo_field(cpuinfo: &str, field: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != field {
            return None;
        }
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        (!value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Scratch;
    use super::*;

    #[test]
    fn probe_fills_everything() {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = RunMeta::probe(vec!["ktvmm".into(), "test".into()], started);
        assert_eq!(meta.ktvmm_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(meta.started_unix, 1_700_000_000);
        assert_eq!(meta.command_line, ["ktvmm", "test"]);
        for field in [&meta.host_kernel, &meta.kvm_module, &meta.cpu] {
            assert!(!field.is_empty());
        }
        // Every Linux has a release; uname and /proc agree.
        let proc = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(meta.host_kernel, proc.trim());
    }

    #[test]
    fn kvm_module_preference() {
        let scratch = Scratch::new("sysmod");
        let dir = &scratch.0;
        assert_eq!(kvm_module_in(&dir.join("absent")), None);
        assert_eq!(kvm_module_in(dir), None);
        fs::create_dir(dir.join("kvm")).unwrap();
        fs::create_dir(dir.join("kvmgt")).unwrap();
        assert_eq!(kvm_module_in(dir).as_deref(), Some("kvm"));
        fs::create_dir(dir.join("kvm_zzz")).unwrap();
        assert_eq!(kvm_module_in(dir).as_deref(), Some("kvm_zzz"));
        fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(kvm_module_in(dir).as_deref(), Some("kvm_pvm"));
        fs::create_dir(dir.join("kvm_intel")).unwrap();
        assert_eq!(kvm_module_in(dir).as_deref(), Some("kvm_intel"));
    }

    #[test]
    fn cpu_model_from_cpuinfo() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
                    model name\t: Intel(R)  Xeon(R) Processor  \nflags\t\t: fpu\n\n\
                    processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        assert_eq!(cpu_model("model name\t:\n"), None);
    }
}
