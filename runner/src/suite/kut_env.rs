//! kvm-unit-tests' environment file: what KUT's scripts give every test as
//! its initrd, `KEY=VALUE` lines the test reads with `getenv`. As
//! `scripts/arch-run.bash` makes it: the target and accelerator, the host
//! kernel's version, the lines of the user's own `$KVM_UNIT_TESTS_ENV`
//! file, and an `ERRATA_<commit>=y|n` line per entry of KUT's
//! `errata.txt` (y when the host kernel has the fix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ktvmm_vmm::input::{self, InputError};

use crate::suite::{ExitCodes, TestKind, TestSpec};

/// A kernel release (`uname -r`) as KUT's scripts split it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Release {
    version: u32,
    patchlevel: u32,
    sublevel: Option<u32>,
    extraversion: Option<u32>,
}

/// The leading digits of `text`, as a number.
fn leading_number(text: &str) -> Option<u32> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Release {
    /// `6.18.0-rc1+` -> 6, 18, 0, none (`rc1` has no leading digits).
    fn parse(string: &str) -> Option<Self> {
        let mut parts = string.splitn(3, '.');
        let version = parts.next()?.parse().ok()?;
        let patchlevel = leading_number(parts.next()?)?;
        let rest = parts.next().unwrap_or("");
        let (sublevel, extra) = rest.split_once('-').unwrap_or((rest, ""));
        Some(Self {
            version,
            patchlevel,
            sublevel: leading_number(sublevel),
            extraversion: leading_number(extra),
        })
    }

    /// Whether this kernel is at least `minimum` (an errata.txt version),
    /// with the script's rules for missing sublevels and extraversions.
    fn at_least(&self, minimum: &Release) -> bool {
        use std::cmp::Ordering::{Equal, Greater};
        match (self.version, self.patchlevel).cmp(&(minimum.version, minimum.patchlevel)) {
            Greater => true,
            Equal => match (self.sublevel, minimum.sublevel) {
                (Some(s), Some(min)) if s != min => s > min,
                (Some(_), Some(_)) => match (self.extraversion, minimum.extraversion) {
                    (Some(x), Some(min)) => x >= min,
                    (_, min) => min.unwrap_or(0) == 0,
                },
                (_, min) => min.unwrap_or(0) == 0,
            },
            _ => false,
        }
    }
}

/// The environment file's text. `errata` is errata.txt's text, `user` the
/// user's environment file; `release` the host's `uname -r`.
fn build(release: &str, errata: Option<&str>, user: Option<&str>) -> Result<String, String> {
    let kernel = Release::parse(release);
    let mut lines: Vec<(String, String)> = vec![
        // ktvmm gives the tests QEMU's machine, devices and exit codes.
        ("TARGET".into(), "qemu".into()),
        ("QEMU_ACCEL".into(), "kvm".into()),
        ("KERNEL_VERSION_STRING".into(), release.into()),
    ];
    let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
    lines.push((
        "KERNEL_VERSION".into(),
        number(kernel.as_ref().map(|k| k.version)),
    ));
    lines.push((
        "KERNEL_PATCHLEVEL".into(),
        number(kernel.as_ref().map(|k| k.patchlevel)),
    ));
    lines.push((
        "KERNEL_SUBLEVEL".into(),
        number(kernel.as_ref().and_then(|k| k.sublevel)),
    ));
    lines.push((
        "KERNEL_EXTRAVERSION".into(),
        number(kernel.as_ref().and_then(|k| k.extraversion)),
    ));
    for line in user.unwrap_or("").lines().map(str::trim_start) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let is_name = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_name && !lines.iter().any(|(k, _)| k == key) {
            lines.push((key.into(), value.into()));
        }
    }
    for (number, line) in errata.unwrap_or("").lines().enumerate() {
        let line: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(commit), Some(minimum)) = (fields.next(), fields.next()) else {
            continue;
        };
        if commit.is_empty() {
            continue;
        }
        let key = format!("ERRATA_{commit}");
        if lines.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let minimum = Release::parse(minimum).ok_or_else(|| {
            format!(
                "errata.txt:{}: bad minimum kernel version {minimum:?}",
                number + 1
            )
        })?;
        let have = kernel.as_ref().is_some_and(|k| k.at_least(&minimum));
        lines.push((key, if have { "y" } else { "n" }.into()));
    }
    Ok(lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

/// Writes an environment file into `dir` for each kvm-unit-tests tree the
/// tests come from (errata.txt is next to its `x86/`), and hands it to
/// every KUT test that has no initrd of its own.
pub fn write_files(tests: &mut [TestSpec], dir: &Path) -> Result<(), String> {
    let release = host_release();
    let user_path = std::env::var_os("KVM_UNIT_TESTS_ENV").map(PathBuf::from);
    let user = match &user_path {
        Some(path) if path.is_file() => Some(
            input::read_text(path, input::MAX_TEXT, "a KVM_UNIT_TESTS_ENV file")
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let mut written: HashMap<PathBuf, PathBuf> = HashMap::new();
    for test in tests {
        let TestKind::Guest(guest) = &mut test.kind else {
            continue;
        };
        if guest.exit_codes != ExitCodes::KvmUnitTests || guest.initrd.is_some() {
            continue;
        }
        let errata_path = Path::new(&guest.guest)
            .parent()
            .and_then(Path::parent)
            .map(|tree| tree.join("errata.txt"))
            .unwrap_or_default();
        if let Some(file) = written.get(&errata_path) {
            guest.initrd = Some(file.clone());
            continue;
        }
        // A tree without errata.txt has no errata lines, as KUT's; one
        // that is a FIFO or huge is an error, not a hang.
        let errata = match input::read_text(&errata_path, input::MAX_TEXT, "an errata.txt") {
            Ok(text) => Some(text),
            Err(InputError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e.to_string()),
        };
        let text = build(&release, errata.as_deref(), user.as_deref())
            .map_err(|e| format!("{}: {e}", errata_path.display()))?;
        let file = dir.join(format!("kut-env.{}", written.len() + 1));
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        guest.initrd = Some(file.clone());
        written.insert(errata_path, file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ERRATA: &str = "\
#---------------:------------:------
# commit        : minimum    : summary
9e3f7a296940    : 4.9        : arm64: one
7b6b46311a85    : 6.18       : two
aaaaaaaaaaaa    : 6.18.2     : three
bbbbbbbbbbbb    : 6.18.0-5   : four
";

    #[test]
    fn releases_split_as_kuts_scripts_split_them() {
        let r = Release::parse("6.18.0-rc1+").unwrap();
        assert_eq!(
            (r.version, r.patchlevel, r.sublevel, r.extraversion),
            (6, 18, Some(0), None)
        );
        let r = Release::parse("5.15.0-91-generic").unwrap();
        assert_eq!((r.sublevel, r.extraversion), (Some(0), Some(91)));
        assert!(Release::parse("garbage").is_none());
    }

    #[test]
    fn errata_follow_the_host_kernel() {
        let env = build("6.18.1", Some(ERRATA), None).unwrap();
        assert!(env.starts_with("TARGET=qemu\nQEMU_ACCEL=kvm\nKERNEL_VERSION_STRING=6.18.1\n"));
        assert!(env.contains("KERNEL_VERSION=6\nKERNEL_PATCHLEVEL=18\nKERNEL_SUBLEVEL=1\n"));
        assert!(env.contains("ERRATA_9e3f7a296940=y\n"), "{env}");
        assert!(env.contains("ERRATA_7b6b46311a85=y\n"), "{env}");
        assert!(env.contains("ERRATA_aaaaaaaaaaaa=n\n"), "{env}");
        assert!(env.contains("ERRATA_bbbbbbbbbbbb=y\n"), "{env}");
        let old = build("6.17.9", Some(ERRATA), None).unwrap();
        assert!(old.contains("ERRATA_7b6b46311a85=n\n"), "{old}");
        let extra = build("6.18.0-4", Some(ERRATA), None).unwrap();
        assert!(extra.contains("ERRATA_bbbbbbbbbbbb=n\n"), "{extra}");
    }

    #[test]
    fn the_users_file_adds_and_overrides_errata() {
        let user = "NR_CPUS=2\n  MEMLIMIT=64\nERRATA_9e3f7a296940=n\nnot a line\n1BAD=x\n";
        let env = build("6.18.1", Some(ERRATA), Some(user)).unwrap();
        assert!(env.contains("NR_CPUS=2\nMEMLIMIT=64\n"), "{env}");
        assert_eq!(env.matches("ERRATA_9e3f7a296940").count(), 1, "{env}");
        assert!(env.contains("ERRATA_9e3f7a296940=n\n"), "{env}");
        assert!(!env.contains("1BAD"), "{env}");
    }

    #[test]
    fn a_bad_version_names_the_line() {
        let err = build("6.18.1", Some("# c\nabc : six : x\n"), None).unwrap_err();
        assert!(err.contains("errata.txt:2") && err.contains("six"), "{err}");
    }
}
