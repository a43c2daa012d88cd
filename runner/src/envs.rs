//! Running the same guests under other VMMs (`ktvmm test --env`): ktvmm
//! (the default), QEMU with KVM, QEMU with TCG. Each guest test becomes one
//! test per environment (`name` in the first, `name@qemu-kvm` in the
//! others), and the summary says where the verdicts differ.
//!
//! QEMU boots multiboot kernels: kvm-unit-tests' `.flat` files, and ktest
//! guests through the multiboot header every ktest image carries. An ELF64
//! guest without one cannot boot under QEMU and is skipped there with that
//! reason. Bundled guests are written to the run's output directory for
//! QEMU to read. Host programs run once, in the first environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ktvmm_vmm::boot::{Kernel, Protocol};
use ktvmm_vmm::input;
use ktvmm_vmm::memory::MAX_MEM_MIB;

use crate::bundled;
use crate::qemu_cmd::QEMU;

use crate::suite::{TestKind, TestSpec, Vmm};
use crate::verdict::{Status, TestResult};

/// An environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// ktvmm.
    Ktvmm,
    /// QEMU with KVM.
    QemuKvm,
    /// QEMU with TCG (no KVM).
    QemuTcg,
}

impl FromStr for Env {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ktvmm" => Ok(Env::Ktvmm),
            "qemu-kvm" => Ok(Env::QemuKvm),
            "qemu-tcg" => Ok(Env::QemuTcg),
            _ => Err(format!(
                "'{text}' is not an environment (ktvmm, qemu-kvm, qemu-tcg)"
            )),
        }
    }
}

impl Env {
    /// Every environment, in the order `ktvmm envs` lists them.
    pub const ALL: [Env; 3] = [Env::Ktvmm, Env::QemuKvm, Env::QemuTcg];

    /// Its name, as `--env` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Env::Ktvmm => "ktvmm",
            Env::QemuKvm => "qemu-kvm",
            Env::QemuTcg => "qemu-tcg",
        }
    }

    fn vmm(self) -> Vmm {
        match self {
            Env::Ktvmm => Vmm::Ktvmm,
            Env::QemuKvm => Vmm::Qemu { tcg: false },
            Env::QemuTcg => Vmm::Qemu { tcg: true },
        }
    }
}

/// One test per guest and environment.
pub fn expand(tests: Vec<TestSpec>, envs: &[Env]) -> Vec<TestSpec> {
    let envs = if envs.is_empty() {
        &[Env::Ktvmm][..]
    } else {
        envs
    };
    let qemu_installed = which(QEMU);
    let mut out = Vec::new();
    for test in tests {
        for (i, &env) in envs.iter().enumerate() {
            let mut spec = test.clone();
            if i > 0 {
                if !matches!(spec.kind, TestKind::Guest(_)) {
                    continue;
                }
                spec.name = format!("{}@{}", test.name, env.name());
            }
            if let TestKind::Guest(guest) = &mut spec.kind {
                guest.vmm = env.vmm();
                if env != Env::Ktvmm
                    && let Some(reason) = unavailable(&guest.guest, qemu_installed)
                {
                    spec.kind = TestKind::Skip(reason);
                }
            }
            out.push(spec);
        }
    }
    out
}

/// No guest can be larger than the largest RAM.
const MAX_GUEST: u64 = MAX_MEM_MIB << 20;

/// Why QEMU cannot run `guest`, if it cannot.
fn unavailable(guest: &str, qemu_installed: bool) -> Option<String> {
    if !qemu_installed {
        return Some(format!(
            "{QEMU} is not installed (Debian: apt-get install qemu-system-x86)"
        ));
    }
    let multiboot = |bytes: &[u8]| Kernel::inspect_as(bytes, Some(Protocol::Multiboot)).is_ok();
    let bootable = match guest.strip_prefix(bundled::PREFIX) {
        Some(name) => bundled::guest(name).is_some_and(multiboot),
        None => {
            input::read(Path::new(guest), MAX_GUEST, "a guest").is_ok_and(|bytes| multiboot(&bytes))
        }
    };
    (!bootable)
        .then(|| "QEMU boots multiboot kernels only, and this guest has no multiboot header".into())
}

/// QEMU reads kernels from files: writes the bundled guests that QEMU
/// tests boot to `dir/guests/` (the run's output directory, so that the
/// commands printed to reproduce a failure keep working) and points those
/// tests at the files.
pub fn write_bundled_guests(tests: &mut [TestSpec], dir: &Path) -> std::io::Result<()> {
    for test in tests {
        let TestKind::Guest(guest) = &mut test.kind else {
            continue;
        };
        let Some(name) = guest.guest.strip_prefix(bundled::PREFIX) else {
            continue;
        };
        if guest.vmm == Vmm::Ktvmm {
            continue;
        }
        let Some(bytes) = bundled::guest(name) else {
            continue;
        };
        let path: PathBuf = dir.join("guests").join(name);
        if !path.exists() {
            std::fs::create_dir_all(dir.join("guests"))?;
            std::fs::write(&path, bytes)?;
        }
        guest.guest = path.display().to_string();
    }
    Ok(())
}

/// Whether `program` is a file in a directory of `PATH`.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

/// Where environments disagree: one line per test whose verdicts differ
/// (skips in an environment that cannot run the test are left out).
pub fn disagreements(results: &[TestResult]) -> Vec<String> {
    let mut by_test: BTreeMap<&str, Vec<(&str, Status)>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.status != Status::Skip) {
        let (base, env) = r.name.split_once('@').unwrap_or((&r.name, "ktvmm"));
        by_test.entry(base).or_default().push((env, r.status));
    }
    let verdict = |s: Status| if s.is_failure() { Status::Fail } else { s };
    by_test
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .filter(|(_, v)| v.iter().any(|(_, s)| verdict(*s) != verdict(v[0].1)))
        .map(|(name, v)| {
            let each: Vec<String> = v
                .iter()
                .map(|(e, s)| format!("{e} {}", s.label()))
                .collect();
            format!("  {name}: {}", each.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::result;
    use crate::suite::GuestTest;

    #[test]
    fn spellings() {
        assert_eq!("qemu-kvm".parse(), Ok(Env::QemuKvm));
        assert!("vmware".parse::<Env>().is_err());
    }

    #[test]
    fn guests_multiply_programs_do_not() {
        let guest = TestSpec {
            name: "g".into(),
            kind: TestKind::Guest(GuestTest::new("bundled:exitcode")),
            timeout: None,
            groups: Vec::new(),
            source: "s".into(),
            exclusive: false,
            variant: None,
        };
        let mut program = guest.clone();
        program.name = "p".into();
        program.kind = TestKind::Exec(crate::suite::ExecTest {
            path: "/bin/true".into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        });
        let tests = expand(vec![guest, program], &[Env::Ktvmm, Env::QemuKvm]);
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["g", "g@qemu-kvm", "p"]);
        // ktest guests boot under QEMU through their multiboot header.
        assert!(
            matches!(&tests[1].kind, TestKind::Guest(g) if g.vmm == Vmm::Qemu { tcg: false })
                || matches!(&tests[1].kind, TestKind::Skip(r) if r.contains("not installed")),
            "{:?}",
            tests[1].kind
        );
    }

    #[test]
    fn disagreements_are_listed() {
        let results = [
            result("a", Status::Pass),
            result("a@qemu-kvm", Status::Fail),
            result("b", Status::Pass),
            result("b@qemu-kvm", Status::Pass),
            result("c", Status::Timeout),
            result("c@qemu-kvm", Status::Fail),
            result("d", Status::Pass),
            result("d@qemu-kvm", Status::Skip),
        ];
        assert_eq!(disagreements(&results), ["  a: ktvmm PASS, qemu-kvm FAIL"]);
    }
}
