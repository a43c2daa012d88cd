//! The KVM environment a run asks for: `--tdp`, `--nested`, `--apicv` and
//! `--kvm-param module.param=value`, turned into module parameters of the
//! KVM backend actually loaded, applied by reloading the module and put back
//! afterwards. Tests never do this themselves: the runner does it once, from
//! its own options, and says exactly what it will do with `--dry-run`.
//!
//! Everything is decided from a sysfs tree (`/sys/module`, or a fake one in
//! tests) before any test runs; a plan that cannot be carried out is one
//! clear error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the user asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Two-dimensional paging (EPT on Intel, NPT on AMD).
    pub tdp: Option<bool>,
    /// Nested virtualization.
    pub nested: Option<bool>,
    /// APIC virtualization (APICv on Intel, AVIC on AMD).
    pub apicv: Option<bool>,
    /// Raw `module.param=value` settings.
    pub params: Vec<Param>,
}

impl Request {
    /// Whether anything was asked for.
    pub fn is_empty(&self) -> bool {
        self.tdp.is_none()
            && self.nested.is_none()
            && self.apicv.is_none()
            && self.params.is_empty()
    }
}

/// One `module.param=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Module name (`kvm_intel`).
    pub module: String,
    /// Parameter name (`ept`).
    pub name: String,
    /// The value to set.
    pub value: String,
}

/// `module.param=value`.
pub fn parse_param(text: &str) -> Result<Param, String> {
    let bad = |why: &str| format!("'{text}' is not module.param=value: {why}");
    let (key, value) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (module, name) = key
        .split_once('.')
        .ok_or_else(|| bad("no '.' in the name"))?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !valid(module) || !valid(name) {
        return Err(bad(
            "module and parameter names are letters, digits, '_' and '-'",
        ));
    }
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the value is empty or has spaces"));
    }
    Ok(Param {
        module: module.replace('-', "_"),
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// The host as far as module parameters go.
#[derive(Clone, Debug)]
pub struct Host {
    /// The `module` directory of sysfs (`/sys/module`).
    pub modules: PathBuf,
    /// The loaded KVM backend module (`kvm_intel`, `kvm_amd`, `kvm_pvm`...).
    pub backend: Option<String>,
    /// Whether this process may load and unload modules.
    pub root: bool,
}

impl Host {
    /// This machine.
    pub fn probe() -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Self::at(Path::new("/sys/module"), root)
    }

    /// The host a sysfs `module` directory describes.
    pub fn at(modules: &Path, root: bool) -> Self {
        // The module the run's metadata names, unless that is `kvm` itself:
        // the named options map to vendor modules' parameters.
        let backend = crate::results::kvm_module_in(modules).filter(|m| m != "kvm");
        Host {
            modules: modules.to_path_buf(),
            backend,
            root,
        }
    }

    fn param_path(&self, module: &str, name: &str) -> PathBuf {
        self.modules.join(module).join("parameters").join(name)
    }

    fn read_param(&self, module: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.param_path(module, name))
            .ok()
            .map(|v| v.trim().to_string())
    }
}

/// One parameter the plan sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Module.
    pub module: String,
    /// Parameter.
    pub name: String,
    /// Its value now.
    pub from: String,
    /// The value wanted.
    pub to: String,
}

/// What will be done, before it is done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Parameters to change (the modules holding them are reloaded).
    pub changes: Vec<Change>,
    /// Parameters already as wanted.
    pub unchanged: Vec<(String, String, String)>,
    /// Options that do not apply here, and why.
    pub notices: Vec<String>,
}

/// Why the environment cannot be set up as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The module is not loaded.
    #[error("module {0} is not loaded (is it the KVM backend of this machine?)")]
    NoModule(String),
    /// The module has no such parameter.
    #[error("module {module} has no parameter {name}")]
    NoParam {
        /// Module.
        module: String,
        /// Parameter.
        name: String,
    },
    /// The module is built into the kernel.
    #[error(
        "{module} is built into the kernel, so {setting} cannot be changed without a reboot (put it on the kernel command line)"
    )]
    BuiltIn {
        /// Module.
        module: String,
        /// `module.param=value`.
        setting: String,
    },
    /// Reloading needs root.
    #[error(
        "setting {setting} means reloading {module}, which needs root (run as root, or set it yourself)"
    )]
    NotRoot {
        /// Module.
        module: String,
        /// `module.param=value`.
        setting: String,
    },
    /// The module cannot be unloaded now.
    #[error(
        "{module} is in use (reference count {refcnt}: virtual machines running?); it cannot be reloaded"
    )]
    InUse {
        /// Module.
        module: String,
        /// Its reference count.
        refcnt: String,
    },
    /// modprobe failed, or the value did not take.
    #[error("{0}")]
    Apply(String),
}

/// The backend-specific parameter behind a named option, if this backend
/// has one.
fn named_param(backend: &str, option: &str) -> Option<&'static str> {
    match (backend, option) {
        ("kvm_intel", "tdp") => Some("ept"),
        ("kvm_amd", "tdp") => Some("npt"),
        ("kvm_intel" | "kvm_amd", "nested") => Some("nested"),
        ("kvm_intel", "apicv") => Some("enable_apicv"),
        ("kvm_amd", "apicv") => Some("avic"),
        _ => None,
    }
}

/// A boolean in the spelling the parameter already uses (`Y`/`N` for bool
/// parameters, `1`/`0` for the integer ones some kernels have).
fn spell(current: &str, on: bool) -> String {
    let numeric = current.parse::<i64>().is_ok();
    match (numeric, on) {
        (true, true) => "1".into(),
        (true, false) => "0".into(),
        (false, true) => "Y".into(),
        (false, false) => "N".into(),
    }
}

/// Whether two spellings of a parameter value mean the same.
fn same(a: &str, b: &str) -> bool {
    a == b
        || matches!((crate::units::parse_switch(a), crate::units::parse_switch(b)), (Ok(x), Ok(y)) if x == y)
}

/// Decides what to change; touches nothing.
pub fn plan(request: &Request, host: &Host) -> Result<Plan, EnvError> {
    let mut plan = Plan::default();
    let backend = host.backend.clone().unwrap_or_else(|| "none".into());
    let mut wanted: Vec<(String, String, Wanted)> = Vec::new();
    for (option, value) in [
        ("tdp", request.tdp),
        ("nested", request.nested),
        ("apicv", request.apicv),
    ] {
        let Some(on) = value else { continue };
        match named_param(&backend, option) {
            Some(param) => wanted.push((backend.clone(), param.into(), Wanted::Switch(on))),
            None => plan.notices.push(format!(
                "--{option} ignored: the KVM backend here is {backend}, which has no such parameter"
            )),
        }
    }
    for p in &request.params {
        wanted.push((
            p.module.clone(),
            p.name.clone(),
            Wanted::Value(p.value.clone()),
        ));
    }
    for (module, name, want) in wanted {
        if !host.modules.join(&module).is_dir() {
            return Err(EnvError::NoModule(module));
        }
        let Some(current) = host.read_param(&module, &name) else {
            return Err(EnvError::NoParam { module, name });
        };
        let to = match want {
            Wanted::Switch(on) => spell(&current, on),
            Wanted::Value(v) => v,
        };
        if same(&current, &to) {
            plan.unchanged.push((module, name, current));
        } else {
            plan.changes
                .retain(|c| !(c.module == module && c.name == name));
            plan.changes.push(Change {
                module,
                name,
                from: current,
                to,
            });
        }
    }
    for change in &plan.changes {
        let dir = host.modules.join(&change.module);
        let setting = format!("{}.{}={}", change.module, change.name, change.to);
        if !dir.join("initstate").exists() {
            return Err(EnvError::BuiltIn {
                module: change.module.clone(),
                setting,
            });
        }
        if !host.root {
            return Err(EnvError::NotRoot {
                module: change.module.clone(),
                setting,
            });
        }
        let refcnt = std::fs::read_to_string(dir.join("refcnt")).unwrap_or_default();
        if refcnt.trim().parse::<u64>().is_ok_and(|n| n > 0) {
            return Err(EnvError::InUse {
                module: change.module.clone(),
                refcnt: refcnt.trim().to_string(),
            });
        }
    }
    Ok(plan)
}

enum Wanted {
    Switch(bool),
    Value(String),
}

impl Plan {
    /// The modules to reload, each with the settings to load it with.
    pub fn reloads(&self) -> Vec<(String, Vec<String>)> {
        let mut reloads: Vec<(String, Vec<String>)> = Vec::new();
        for c in &self.changes {
            let setting = format!("{}={}", c.name, c.to);
            match reloads.iter_mut().find(|(m, _)| *m == c.module) {
                Some((_, settings)) => settings.push(setting),
                None => reloads.push((c.module.clone(), vec![setting])),
            }
        }
        reloads
    }

    /// The plan that puts things back.
    pub fn reverse(&self) -> Plan {
        Plan {
            changes: self
                .changes
                .iter()
                .map(|c| Change {
                    module: c.module.clone(),
                    name: c.name.clone(),
                    from: c.to.clone(),
                    to: c.from.clone(),
                })
                .collect(),
            ..Plan::default()
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for notice in &self.notices {
            writeln!(f, "notice: {notice}")?;
        }
        for (module, name, value) in &self.unchanged {
            writeln!(f, "{module}.{name} is already {value}")?;
        }
        for c in &self.changes {
            writeln!(f, "{}.{}: {} -> {}", c.module, c.name, c.from, c.to)?;
        }
        for (module, settings) in self.reloads() {
            writeln!(
                f,
                "run: rmmod {module} && modprobe {module} {}",
                settings.join(" ")
            )?;
            writeln!(f, "afterwards: reload {module} with the values it has now")?;
        }
        if self.changes.is_empty() {
            writeln!(f, "nothing to change")?;
        }
        Ok(())
    }
}

/// Carries out `plan` (module reloads), checking that every value took.
pub fn apply(plan: &Plan, host: &Host) -> Result<(), EnvError> {
    for (module, settings) in plan.reloads() {
        // rmmod, not `modprobe -r`, which would take `kvm` out too when the
        // vendor module goes, resetting kvm's own parameters.
        run(Command::new("rmmod").arg(&module))?;
        run(Command::new("modprobe").arg(&module).args(&settings))?;
    }
    for c in &plan.changes {
        let now = host.read_param(&c.module, &c.name).unwrap_or_default();
        if !same(&now, &c.to) {
            return Err(EnvError::Apply(format!(
                "{}.{} is {now} after reloading, not {}",
                c.module, c.name, c.to
            )));
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), EnvError> {
    let shown = format!("{cmd:?}").replace('"', "");
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(EnvError::Apply(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(EnvError::Apply(format!("{shown}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake module: name, loadable, reference count, parameters.
    type FakeModule<'a> = (&'a str, bool, u32, &'a [(&'a str, &'a str)]);

    /// A fake `/sys/module` with `modules`.
    fn sysfs(tag: &str, modules: &[FakeModule]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ktvmm-sysfs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, loadable, refcnt, params) in modules {
            let dir = root.join(name);
            std::fs::create_dir_all(dir.join("parameters")).unwrap();
            if *loadable {
                std::fs::write(dir.join("initstate"), "live\n").unwrap();
                std::fs::write(dir.join("refcnt"), format!("{refcnt}\n")).unwrap();
            }
            for (p, v) in *params {
                std::fs::write(dir.join("parameters").join(p), format!("{v}\n")).unwrap();
            }
        }
        root
    }

    fn intel(tag: &str, refcnt: u32) -> PathBuf {
        sysfs(
            tag,
            &[
                ("kvm", true, 1, &[("enable_pmu", "Y")]),
                (
                    "kvm_intel",
                    true,
                    refcnt,
                    &[("ept", "Y"), ("nested", "N"), ("enable_apicv", "Y")],
                ),
            ],
        )
    }

    #[test]
    fn options_map_to_the_backend_loaded() {
        let host = Host::at(&intel("map", 0), true);
        assert_eq!(host.backend.as_deref(), Some("kvm_intel"));
        let request = Request {
            tdp: Some(false),
            nested: Some(false),
            apicv: Some(false),
            ..Request::default()
        };
        let plan = plan(&request, &host).unwrap();
        let changed: Vec<_> = plan
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.to.as_str()))
            .collect();
        assert_eq!(changed, [("ept", "N"), ("enable_apicv", "N")]);
        assert_eq!(
            plan.unchanged,
            [("kvm_intel".into(), "nested".into(), "N".into())]
        );
        assert_eq!(
            plan.reloads(),
            [(
                "kvm_intel".to_string(),
                vec!["ept=N".to_string(), "enable_apicv=N".to_string()]
            )]
        );
        let text = plan.to_string();
        assert!(text.contains("kvm_intel.ept: Y -> N"), "{text}");
        assert!(
            text.contains("rmmod kvm_intel && modprobe kvm_intel ept=N enable_apicv=N"),
            "{text}"
        );
        assert_eq!(plan.reverse().changes[0].to, "Y");
    }

    #[test]
    fn amd_uses_npt_and_avic_in_their_own_spelling() {
        let root = sysfs(
            "amd",
            &[(
                "kvm_amd",
                true,
                0,
                &[("npt", "1"), ("avic", "0"), ("nested", "1")],
            )],
        );
        let host = Host::at(&root, true);
        let request = Request {
            tdp: Some(false),
            apicv: Some(true),
            nested: Some(true),
            ..Request::default()
        };
        let plan = plan(&request, &host).unwrap();
        let changed: Vec<_> = plan
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.to.as_str()))
            .collect();
        assert_eq!(changed, [("npt", "0"), ("avic", "1")]);
        assert_eq!(plan.unchanged.len(), 1);
    }

    #[test]
    fn other_backends_ignore_named_options_with_a_notice() {
        let root = sysfs(
            "pvm",
            &[
                ("kvm", false, 0, &[]),
                ("kvm_pvm", false, 0, &[("foo", "N")]),
            ],
        );
        let host = Host::at(&root, true);
        assert_eq!(host.backend.as_deref(), Some("kvm_pvm"));
        let request = Request {
            tdp: Some(false),
            ..Request::default()
        };
        let plan = plan(&request, &host).unwrap();
        assert!(plan.changes.is_empty());
        assert!(plan.notices[0].contains("--tdp ignored") && plan.notices[0].contains("kvm_pvm"));
        // A raw parameter of a built-in module cannot be changed...
        let raw = Request {
            params: vec![parse_param("kvm_pvm.foo=Y").unwrap()],
            ..Request::default()
        };
        let err = super::plan(&raw, &host).unwrap_err();
        assert!(matches!(err, EnvError::BuiltIn { .. }), "{err}");
        assert!(err.to_string().contains("kvm_pvm.foo=Y"));
        // ...but one already at the wanted value is fine.
        let same = Request {
            params: vec![parse_param("kvm_pvm.foo=0").unwrap()],
            ..Request::default()
        };
        assert!(super::plan(&same, &host).unwrap().changes.is_empty());
    }

    #[test]
    fn what_stops_a_change_is_named() {
        let off = Request {
            tdp: Some(false),
            ..Request::default()
        };
        let not_root = Host::at(&intel("user", 0), false);
        assert!(matches!(
            plan(&off, &not_root),
            Err(EnvError::NotRoot { .. })
        ));
        let on = Request {
            tdp: Some(true),
            ..Request::default()
        };
        assert!(
            plan(&on, &not_root).unwrap().changes.is_empty(),
            "no change needs no root"
        );
        let busy = Host::at(&intel("busy", 2), true);
        assert!(matches!(plan(&off, &busy), Err(EnvError::InUse { .. })));
        let host = Host::at(&intel("names", 0), true);
        let unknown = |p: &str| Request {
            params: vec![parse_param(p).unwrap()],
            ..Request::default()
        };
        assert_eq!(
            plan(&unknown("kvm_intel.bogus=1"), &host),
            Err(EnvError::NoParam {
                module: "kvm_intel".into(),
                name: "bogus".into()
            })
        );
        assert_eq!(
            plan(&unknown("kvm_amd.npt=0"), &host),
            Err(EnvError::NoModule("kvm_amd".into()))
        );
    }

    #[test]
    fn spellings() {
        let p = parse_param("kvm-intel.ept=0").unwrap();
        assert_eq!(
            (p.module.as_str(), p.name.as_str(), p.value.as_str()),
            ("kvm_intel", "ept", "0")
        );
        for bad in [
            "kvm_intel",
            "ept=0",
            "kvm_intel.=0",
            ".ept=0",
            "kvm_intel.ept=",
            "a b.c=1",
            "kvm.x=a b",
        ] {
            assert!(parse_param(bad).is_err(), "{bad}");
        }
        assert!(same("Y", "1") && same("N", "0") && !same("Y", "N") && same("auto", "auto"));
    }

    #[test]
    fn this_host_can_be_planned_for() {
        let host = Host::probe();
        let request = Request {
            tdp: Some(true),
            ..Request::default()
        };
        // Whatever the machine, planning answers (a plan or a clear error).
        match plan(&request, &host) {
            Ok(plan) => assert!(!plan.to_string().is_empty()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
