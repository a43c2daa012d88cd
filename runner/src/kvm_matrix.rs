//! A KVM configuration matrix (`ktvmm test --kvm-config
//! NAME:module.param=value,...`, repeatable): the whole selection runs
//! under each configuration in turn, every test of one configuration
//! between two module reloads, each result named and recorded with its
//! configuration (`test[kvm=NAME]`).
//!
//! Every configuration is planned against the host as it is before
//! anything runs, with the refusals of `--kvm-param` (a built-in module,
//! not root, a module in use); moving from one configuration to the next
//! reloads only the modules whose parameters differ, and the last reload
//! puts back the values the host had.

use std::fmt;

use crate::kvm_env::{self, Change, EnvError, Host, Param, Plan, Request};
use crate::suite::TestSpec;

/// The key a configuration adds to a test's variant (`test[kvm=NAME]`).
pub const KVM_KEY: &str = "kvm";

/// Each test once per configuration, all of the first configuration's
/// first; `tests` as they are without any.
pub fn expand(tests: Vec<TestSpec>, configs: &[Config]) -> Vec<TestSpec> {
    if configs.is_empty() {
        return tests;
    }
    configs
        .iter()
        .flat_map(|c| {
            tests
                .iter()
                .map(|t| crate::suite::sweep::with_value(t, KVM_KEY, &c.name))
        })
        .collect()
}

/// The configuration a test runs under.
pub fn config_of(test: &TestSpec) -> Option<&String> {
    test.variant
        .as_ref()
        .and_then(|v| v.values.iter().find(|(k, _)| k == KVM_KEY).map(|(_, c)| c))
}

/// One `--kvm-config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What results and tables call it.
    pub name: String,
    /// Its parameters; none: the host as it is.
    pub params: Vec<Param>,
}

impl Config {
    /// `module.param=value` for each parameter.
    pub fn settings(&self) -> Vec<String> {
        self.params
            .iter()
            .map(|p| format!("{}.{}={}", p.module, p.name, p.value))
            .collect()
    }
}

/// `NAME:module.param=value,...` (`NAME:` alone is the host as it is).
pub fn parse_config(text: &str) -> Result<Config, String> {
    let (name, params) = text.split_once(':').ok_or_else(|| {
        format!("'{text}' is not NAME:module.param=value,... (e.g. noept:kvm_intel.ept=N)")
    })?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "'{text}': a configuration's name is letters, digits, '-', '_' and '.'"
        ));
    }
    let params = params
        .split(',')
        .filter(|p| !p.is_empty())
        .map(kvm_env::parse_param)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config {
        name: name.to_string(),
        params,
    })
}

/// One configuration's place in the matrix.
#[derive(Clone, Debug)]
pub struct Step {
    /// The configuration.
    pub config: Config,
    /// What it changes against the host as it was.
    pub plan: Plan,
    /// The reloads that bring the previous configuration's parameters to
    /// this one's.
    pub enter: Plan,
    /// Tests that run under it.
    pub tests: usize,
}

/// The whole matrix, decided before anything runs.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The configurations, in the order they run.
    pub steps: Vec<Step>,
    /// The reloads that put the host back after the last.
    pub restore: Plan,
}

/// Why the matrix cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// Two configurations have one name.
    #[error("--kvm-config {0} is given twice; configuration names must be unique")]
    Duplicate(String),
    /// One configuration cannot be set up.
    #[error("--kvm-config {name}: {why}")]
    Config {
        /// The configuration.
        name: String,
        /// Why.
        why: EnvError,
    },
}

/// Plans every configuration, each with the number of tests that run
/// under it (and the run's own `--kvm-param`, `--tdp`... in `base`),
/// against `host`; touches nothing.
pub fn plan(
    configs: &[(Config, usize)],
    base: &Request,
    host: &Host,
) -> Result<Matrix, MatrixError> {
    let mut steps: Vec<Step> = Vec::new();
    for (config, tests) in configs {
        if steps.iter().any(|s| s.config.name == config.name) {
            return Err(MatrixError::Duplicate(config.name.clone()));
        }
        let mut request = base.clone();
        request.params.extend(config.params.iter().cloned());
        let plan = kvm_env::plan(&request, host).map_err(|why| MatrixError::Config {
            name: config.name.clone(),
            why,
        })?;
        let previous = steps.last().map_or(&EMPTY, |s| &s.plan);
        steps.push(Step {
            config: config.clone(),
            enter: transition(previous, &plan),
            plan,
            tests: *tests,
        });
    }
    let restore = transition(steps.last().map_or(&EMPTY, |s| &s.plan), &EMPTY);
    Ok(Matrix { steps, restore })
}

static EMPTY: Plan = Plan {
    changes: Vec::new(),
    unchanged: Vec::new(),
    notices: Vec::new(),
};

impl Matrix {
    /// The reloads that put the host back when the configurations up to
    /// `applied` (an index into `steps`; `None`: none) were set up: the
    /// run may stop early (Ctrl-C, `--until-fail`, a reload that failed).
    pub fn restore_after(&self, applied: Option<usize>) -> Plan {
        match applied.and_then(|i| self.steps.get(i)) {
            Some(step) => transition(&step.plan, &EMPTY),
            None => Plan::default(),
        }
    }
}

/// The reloads from the state `from` left to the state `to` wants (both
/// against the original host). A module that is reloaded gets every value
/// `to` wants of it, or its parameters would fall back to their defaults.
fn transition(from: &Plan, to: &Plan) -> Plan {
    let value_in = |plan: &Plan, c: &Change| {
        plan.changes
            .iter()
            .find(|x| x.module == c.module && x.name == c.name)
            .map(|x| x.to.clone())
    };
    // Every parameter either state touches, with its value in each.
    let mut rows: Vec<Change> = Vec::new();
    for c in to.changes.iter().chain(&from.changes) {
        if rows
            .iter()
            .any(|r| r.module == c.module && r.name == c.name)
        {
            continue;
        }
        rows.push(Change {
            module: c.module.clone(),
            name: c.name.clone(),
            from: value_in(from, c).unwrap_or_else(|| c.from.clone()),
            to: value_in(to, c).unwrap_or_else(|| c.from.clone()),
        });
    }
    let reloaded: Vec<String> = rows
        .iter()
        .filter(|r| r.from != r.to)
        .map(|r| r.module.clone())
        .collect();
    // Of a reloaded module: every value `to` sets, and the originals the
    // previous state had changed. Other modules stay as they are.
    rows.retain(|r| reloaded.contains(&r.module) && (r.from != r.to || value_in(to, r).is_some()));
    Plan {
        changes: rows,
        ..Plan::default()
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "KVM configuration matrix: {} configurations, {} tests",
            self.steps.len(),
            self.steps.iter().map(|s| s.tests).sum::<usize>()
        )?;
        for step in &self.steps {
            let settings = step.config.settings();
            writeln!(
                f,
                "configuration {} ({}), {} tests:",
                step.config.name,
                if settings.is_empty() {
                    "the host as it is".to_string()
                } else {
                    settings.join(", ")
                },
                step.tests
            )?;
            for notice in &step.plan.notices {
                writeln!(f, "  notice: {notice}")?;
            }
            for (module, name, value) in &step.plan.unchanged {
                writeln!(f, "  {module}.{name} is already {value}")?;
            }
            write_reloads(f, &step.enter, "  ")?;
        }
        writeln!(f, "afterwards:")?;
        write_reloads(f, &self.restore, "  ")
    }
}

fn write_reloads(f: &mut fmt::Formatter<'_>, plan: &Plan, indent: &str) -> fmt::Result {
    let reloads = plan.reloads();
    if reloads.is_empty() {
        return writeln!(f, "{indent}no module reload");
    }
    for c in plan.changes.iter().filter(|c| c.from != c.to) {
        writeln!(f, "{indent}{}.{}: {} -> {}", c.module, c.name, c.from, c.to)?;
    }
    for (module, settings) in reloads {
        writeln!(
            f,
            "{indent}run: rmmod {module} && modprobe {module} {}",
            settings.join(" ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fake `/sys/module`: `kvm` (built in) and a loadable `kvm_intel`
    /// with reference count `refcnt`.
    fn sysfs(tag: &str, refcnt: u32) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ktvmm-matrix-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let params = root.join("kvm/parameters");
        std::fs::create_dir_all(&params).unwrap();
        std::fs::write(params.join("enable_pmu"), "Y\n").unwrap();
        let intel = root.join("kvm_intel");
        std::fs::create_dir_all(intel.join("parameters")).unwrap();
        std::fs::write(intel.join("initstate"), "live\n").unwrap();
        std::fs::write(intel.join("refcnt"), format!("{refcnt}\n")).unwrap();
        for (p, v) in [("ept", "Y"), ("nested", "N"), ("enable_apicv", "Y")] {
            std::fs::write(intel.join("parameters").join(p), format!("{v}\n")).unwrap();
        }
        root
    }

    /// Configurations with 7 tests each.
    fn configs(texts: &[&str]) -> Vec<(Config, usize)> {
        texts
            .iter()
            .map(|t| (parse_config(t).unwrap(), 7))
            .collect()
    }

    #[test]
    fn spellings() {
        let c = parse_config("noept:kvm_intel.ept=N,kvm-intel.nested=1").unwrap();
        assert_eq!(c.name, "noept");
        assert_eq!(c.settings(), ["kvm_intel.ept=N", "kvm_intel.nested=1"]);
        assert!(parse_config("base:").unwrap().params.is_empty());
        for bad in [
            "noept",
            ":kvm.x=1",
            "a b:kvm.x=1",
            "n:kvm.x",
            "n:kvm.x=1,y=2",
        ] {
            assert!(parse_config(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configurations_are_planned_one_reload_between_each() {
        let host = Host::at(&sysfs("plan", 0), true);
        let matrix = plan(
            &configs(&[
                "base:",
                "noept:kvm_intel.ept=N",
                "nested:kvm_intel.nested=Y,kvm_intel.ept=N",
                "apicv:kvm_intel.enable_apicv=N",
            ]),
            &Request::default(),
            &host,
        )
        .unwrap();
        let reloads: Vec<Vec<(String, Vec<String>)>> =
            matrix.steps.iter().map(|s| s.enter.reloads()).collect();
        let r = |m: &str, s: &[&str]| (m.to_string(), s.iter().map(|x| x.to_string()).collect());
        assert_eq!(reloads[0], []);
        assert_eq!(reloads[1], [r("kvm_intel", &["ept=N"])]);
        // ept stays N, but a reload without it would put it back to Y.
        assert_eq!(reloads[2], [r("kvm_intel", &["nested=Y", "ept=N"])]);
        // nested and ept go back to the host's values, apicv changes.
        assert_eq!(
            reloads[3],
            [r("kvm_intel", &["enable_apicv=N", "nested=N", "ept=Y"])]
        );
        assert_eq!(
            matrix.restore.reloads(),
            [r("kvm_intel", &["enable_apicv=Y"])]
        );
        assert_eq!(matrix.restore_after(Some(3)), matrix.restore);
        // Stopped after the second: its ept=N is undone.
        assert_eq!(
            matrix.restore_after(Some(1)).reloads(),
            [r("kvm_intel", &["ept=Y"])]
        );
        assert!(matrix.restore_after(None).changes.is_empty());
        let text = matrix.to_string();
        for line in [
            "KVM configuration matrix: 4 configurations, 28 tests",
            "configuration base (the host as it is), 7 tests:\n  no module reload",
            "configuration noept (kvm_intel.ept=N), 7 tests:\n  kvm_intel.ept: Y -> N\n  run: rmmod kvm_intel && modprobe kvm_intel ept=N",
            "afterwards:\n  kvm_intel.enable_apicv: N -> Y\n  run: rmmod kvm_intel && modprobe kvm_intel enable_apicv=Y",
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
    }

    #[test]
    fn a_config_the_host_already_has_needs_no_reload() {
        let host = Host::at(&sysfs("same", 0), false);
        let matrix = plan(
            &configs(&["a:kvm_intel.ept=Y", "b:kvm.enable_pmu=1"]),
            &Request::default(),
            &host,
        )
        .unwrap();
        assert!(matrix.steps.iter().all(|s| s.enter.changes.is_empty()));
        assert!(matrix.restore.changes.is_empty());
        assert!(matrix.to_string().contains(
            "configuration b (kvm.enable_pmu=1), 7 tests:\n  kvm.enable_pmu is already Y"
        ));
    }

    #[test]
    fn refusals_name_the_configuration() {
        let cases: [(&str, Host, &str); 4] = [
            ("root", Host::at(&sysfs("user", 0), false), "needs root"),
            ("busy", Host::at(&sysfs("busy", 3), true), "is in use"),
            (
                "builtin",
                Host::at(&sysfs("builtin", 0), true),
                "built into the kernel",
            ),
            (
                "none",
                Host::at(&sysfs("none", 0), true),
                "has no parameter",
            ),
        ];
        for (what, host, needle) in cases {
            let config = match what {
                "builtin" => "off:kvm.enable_pmu=N",
                "none" => "off:kvm_intel.bogus=1",
                _ => "off:kvm_intel.ept=N",
            };
            let err = plan(&configs(&["base:", config]), &Request::default(), &host)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--kvm-config off: "), "{err}");
            assert!(err.contains(needle), "{what}: {err}");
        }
        let host = Host::at(&sysfs("twice", 0), true);
        let err = plan(&configs(&["a:", "a:"]), &Request::default(), &host).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn the_runs_own_parameters_hold_in_every_configuration() {
        let host = Host::at(&sysfs("base", 0), true);
        let base = Request {
            params: vec![kvm_env::parse_param("kvm_intel.nested=Y").unwrap()],
            ..Request::default()
        };
        let matrix = plan(&configs(&["a:", "b:kvm_intel.ept=N"]), &base, &host).unwrap();
        let r = |m: &str, s: &[&str]| (m.to_string(), s.iter().map(|x| x.to_string()).collect());
        assert_eq!(
            matrix.steps[0].enter.reloads(),
            [r("kvm_intel", &["nested=Y"])]
        );
        assert_eq!(
            matrix.steps[1].enter.reloads(),
            [r("kvm_intel", &["nested=Y", "ept=N"])]
        );
        assert_eq!(
            matrix.restore.reloads(),
            [r("kvm_intel", &["nested=N", "ept=Y"])]
        );
    }
}
