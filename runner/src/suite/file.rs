//! ktvmm suite files (`ktvmm.toml`, `*.ktvmm.toml`): the format is in
//! `docs/suites.md`. Every problem is reported as `FILE:LINE: what`, and a
//! file with any problem yields no tests at all.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ExecTest, ExitCodes, GuestTest, SuiteError, TestKind, TestSpec};
use ktvmm_vmm::cpu::model as cpu_model;
use ktvmm_vmm::input;

use crate::bundled;
use crate::units::parse_mem_mib;

/// Whether `path` has the suite-file name pattern.
pub fn is_suite_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "ktvmm.toml" || n.ends_with(".ktvmm.toml"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default, rename = "test")]
    tests: Vec<Spanned<RawTest>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    smp: Option<u32>,
    memory: Option<RawMemory>,
    timeout: Option<f64>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<String>,
    guest: Option<String>,
    exec: Option<String>,
    smp: Option<u32>,
    memory: Option<RawMemory>,
    append: Option<String>,
    initrd: Option<String>,
    cpu: Option<String>,
    boot: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    timeout: Option<f64>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    exclusive: bool,
    iommu: Option<bool>,
    /// Keys to values: one test per combination (`crate::suite::sweep`).
    #[serde(alias = "matrix")]
    sweep: Option<toml::Table>,
}

/// `memory = 256` (MiB) or `memory = "1G"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawMemory {
    Mib(u64),
    Text(String),
}

/// Reads and checks one suite file.
pub fn load(path: &Path) -> Result<Vec<TestSpec>, SuiteError> {
    let text = input::read_text(path, input::MAX_TEXT, "a suite file")?;
    parse(path, &text)
}

/// Parses suite-file `text`; `path` names it in errors and anchors
/// relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Vec<TestSpec>, SuiteError> {
    let at = |span: Option<Range<usize>>, message: String| SuiteError::Line {
        path: path.to_path_buf(),
        line: span.map_or(1, |s| line_of(text, s.start)),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        at(e.span(), message)
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let defaults = raw.defaults.map(|d| {
        let span = d.span();
        (d.into_inner(), span)
    });
    let (defaults, defaults_span) = match defaults {
        Some((d, span)) => (d, Some(span)),
        None => (RawDefaults::default(), None),
    };
    let default_mem = defaults
        .memory
        .as_ref()
        .map(memory_mib)
        .transpose()
        .map_err(|m| at(defaults_span.clone(), format!("[defaults]: {m}")))?;
    let default_timeout = defaults
        .timeout
        .map(timeout)
        .transpose()
        .map_err(|m| at(defaults_span.clone(), format!("[defaults]: {m}")))?;
    if defaults.smp == Some(0) {
        return Err(at(
            defaults_span,
            "[defaults]: smp must be at least 1".into(),
        ));
    }

    let mut tests: Vec<TestSpec> = Vec::new();
    // Name -> line, and the lines' starts: a suite of 100,000 tests is read
    // in linear time.
    let mut lines: HashMap<String, usize> = HashMap::new();
    let index = LineIndex::new(text);
    for spanned in raw.tests {
        let span = spanned.span();
        let line = index.line_of(span.start);
        let mut raw = spanned.into_inner();
        let sweep = raw.sweep.take();
        let spec = test(raw, base, path, &defaults, default_mem, default_timeout)
            .map_err(|m| at(Some(span.clone()), m))?;
        let variants = match sweep {
            Some(table) => sweep_axes(&spec.name, &table)
                .and_then(|axes| crate::suite::sweep::variants(&spec, &axes))
                .map_err(|m| at(Some(span.clone()), m))?,
            None => vec![spec],
        };
        for spec in variants {
            if let Some(first) = lines.get(&spec.name) {
                return Err(at(
                    Some(span),
                    format!(
                        "test '{}' is already defined on line {first}; names must be unique",
                        spec.name
                    ),
                ));
            }
            lines.insert(spec.name.clone(), line);
            tests.push(spec);
        }
    }
    if tests.is_empty() {
        return Err(at(
            None,
            "no tests: add a [[test]] table with `guest` or `exec`".into(),
        ));
    }
    Ok(tests)
}

fn test(
    raw: RawTest,
    base: &Path,
    source: &Path,
    defaults: &RawDefaults,
    default_mem: Option<u64>,
    default_timeout: Option<Duration>,
) -> Result<TestSpec, String> {
    let label = raw
        .name
        .clone()
        .map_or_else(|| "[[test]]".to_string(), |n| format!("test '{n}'"));
    let timeout = raw.timeout.map(timeout).transpose()?.or(default_timeout);
    let groups = defaults
        .groups
        .iter()
        .chain(&raw.groups)
        .cloned()
        .collect::<Vec<_>>();
    let (kind, default_name) = match (raw.guest, raw.exec) {
        (Some(_), Some(_)) => {
            return Err(format!("{label}: give `guest` or `exec`, not both"));
        }
        (None, None) => {
            return Err(format!(
                "{label}: needs `guest` (a guest ELF) or `exec` (a host program)"
            ));
        }
        (Some(guest), None) => {
            for (set, key) in [
                (raw.args.is_some(), "args"),
                (raw.env.is_some(), "env"),
                (raw.cwd.is_some(), "cwd"),
            ] {
                if set {
                    return Err(format!(
                        "{label}: `{key}` is for `exec` tests; a guest's command line is `append`"
                    ));
                }
            }
            let name = guest
                .strip_prefix(bundled::PREFIX)
                .map(str::to_string)
                .unwrap_or_else(|| stem(Path::new(&guest)));
            let guest = if let Some(bundled_name) = guest.strip_prefix(bundled::PREFIX) {
                if bundled::guest(bundled_name).is_none() {
                    return Err(format!("{label}: no bundled guest '{bundled_name}'"));
                }
                guest
            } else {
                existing_file(base, &guest, "guest")?.display().to_string()
            };
            let smp = raw.smp.or(defaults.smp).unwrap_or(1);
            if smp == 0 {
                return Err(format!("{label}: smp must be at least 1"));
            }
            let mem_mib = match raw.memory.as_ref().map(memory_mib).transpose()? {
                Some(m) => m,
                None => default_mem.unwrap_or(GuestTest::new("").mem_mib),
            };
            let initrd = raw
                .initrd
                .map(|i| existing_file(base, &i, "initrd"))
                .transpose()?;
            let cpu = raw
                .cpu
                .map(|c| {
                    cpu_model::parse(&c)
                        .map(|spec| spec.to_string())
                        .map_err(|e| format!("{label}: cpu = {c:?}: {e}"))
                })
                .transpose()?;
            let boot = raw
                .boot
                .map(|b| b.parse().map_err(|e| format!("{label}: boot = {b:?}: {e}")))
                .transpose()?;
            let kind = TestKind::Guest(GuestTest {
                exit_codes: ExitCodes::for_guest(&guest),
                guest,
                smp,
                mem_mib,
                append: raw.append.unwrap_or_default(),
                initrd,
                cpu,
                no_pit: false,
                boot,
                iommu: raw.iommu.unwrap_or(false),
                vmm: Default::default(),
            });
            (kind, name)
        }
        (None, Some(exec)) => {
            for (set, key) in [
                (raw.smp.is_some(), "smp"),
                (raw.memory.is_some(), "memory"),
                (raw.append.is_some(), "append"),
                (raw.initrd.is_some(), "initrd"),
                (raw.cpu.is_some(), "cpu"),
                (raw.boot.is_some(), "boot"),
                (raw.iommu.is_some(), "iommu"),
            ] {
                if set {
                    return Err(format!(
                        "{label}: `{key}` is for `guest` tests; a program's arguments are `args`"
                    ));
                }
            }
            let path = existing_file(base, &exec, "exec")?;
            let name = stem(&path);
            let mut env: Vec<(String, String)> = defaults
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in raw.env.unwrap_or_default() {
                env.retain(|(key, _)| *key != k);
                env.push((k, v));
            }
            let cwd = raw.cwd.map(|c| base.join(c));
            if let Some(dir) = cwd.as_ref().filter(|d| !d.is_dir()) {
                return Err(format!("{label}: cwd {} is not a directory", dir.display()));
            }
            let kind = TestKind::Exec(ExecTest {
                path,
                args: raw.args.unwrap_or_default(),
                env,
                cwd,
            });
            (kind, name)
        }
    };
    let name = raw.name.unwrap_or(default_name);
    check_name(&name)?;
    Ok(TestSpec {
        name,
        kind,
        timeout,
        groups,
        source: source.to_path_buf(),
        exclusive: raw.exclusive,
        variant: None,
    })
}

/// A test's `sweep` table: `smp = [1, 2]`, `smp = "1..8"`, `memory =
/// "64M..1G*2"`, `append = ["a", "b c"]`, `iommu = [true, false]`,
/// `env.NAME = [...]` (also as `env = { NAME = [...] }`).
fn sweep_axes(test: &str, table: &toml::Table) -> Result<Vec<crate::suite::sweep::Axis>, String> {
    use crate::suite::sweep::{Key, axis, split_values};
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("env", toml::Value::Table(vars)) => {
                entries.extend(vars.iter().map(|(name, v)| (format!("env.{name}"), v)));
            }
            _ => entries.push((key.clone(), value)),
        }
    }
    if entries.is_empty() {
        return Err(format!("test '{test}': sweep: no keys"));
    }
    let mut axes = Vec::new();
    for (key, value) in entries {
        let bad = |e: String| format!("test '{test}': sweep {key}: {e}");
        let parsed = Key::parse(&key).map_err(bad)?;
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Boolean(b) => Ok(if *b { "on" } else { "off" }.to_string()),
            other => Err(format!(
                "a {} is not a string, number or boolean",
                other.type_str()
            )),
        };
        let items = match value {
            // A string is spelled as on the command line: `"1,2,4"`, `"1..8"`.
            toml::Value::String(s) => split_values(&parsed, s),
            toml::Value::Array(list) => list
                .iter()
                .map(scalar)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            other => vec![scalar(other).map_err(bad)?],
        };
        axes.push(axis(parsed, &items).map_err(bad)?);
    }
    Ok(axes)
}

/// Names end up in file names, terminals and XML: keep them printable.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a test name cannot be empty".into());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("test name {name:?} contains control characters"));
    }
    Ok(())
}

/// A file's name without its last extension: how a test is named when its
/// definition gives no name.
pub fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

fn existing_file(base: &Path, relative: &str, key: &str) -> Result<PathBuf, String> {
    let path = base.join(relative);
    match std::fs::metadata(&path) {
        // A bare name would be looked up in PATH when it runs.
        Ok(meta) if meta.is_file() => Ok(std::path::absolute(&path).unwrap_or(path)),
        Ok(meta) if meta.is_dir() => Err(format!(
            "{key} {}: is a directory, not a file",
            path.display()
        )),
        Ok(_) => Err(format!(
            "{key} {}: is not a regular file (a FIFO or device)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{key} {}: no such file", path.display()))
        }
        Err(e) => Err(format!("{key} {}: {e}", path.display())),
    }
}

fn memory_mib(raw: &RawMemory) -> Result<u64, String> {
    let mib = match raw {
        RawMemory::Mib(n) => *n,
        RawMemory::Text(t) => parse_mem_mib(t)?,
    };
    if mib == 0 {
        return Err("memory must be more than 0".into());
    }
    Ok(mib)
}

fn timeout(secs: f64) -> Result<Duration, String> {
    crate::units::parse_seconds(&secs.to_string())
        .map_err(|_| format!("timeout {secs} is not a positive number of seconds"))
}

/// Where each line of a text starts, to turn many byte offsets into line
/// numbers without scanning the text for each.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex(newline_offsets(text))
    }

    /// The 1-based line of byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn newline_offsets(text: &str) -> Vec<usize> {
    text.bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'\n').then_some(i))
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_index_agrees_with_counting() {
        let text = "a\n\nbc\nd";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(index.line_of(offset), line_of(text, offset), "{offset}");
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ktvmm-suite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("guest.elf"), b"\x7fELF").unwrap();
        std::fs::write(dir.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("env.txt"), b"A=1\n").unwrap();
        dir
    }

    fn parse_in(dir: &Path, text: &str) -> Result<Vec<TestSpec>, String> {
        parse(&dir.join("t.ktvmm.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn guests_and_programs_with_defaults() {
        let d = dir("full");
        let tests = parse_in(
            &d,
            r#"
[defaults]
timeout = 30
groups = ["all"]
memory = "256M"
env = { A = "1", B = "2" }

[[test]]
name = "edu-smp2"
guest = "guest.elf"
smp = 2
append = "x y"
initrd = "env.txt"
groups = ["edu"]

[[test]]
guest = "bundled:edu"
memory = 64
timeout = 5
boot = "multiboot"

[[test]]
exec = "tool"
args = ["-v"]
env = { B = "3" }
"#,
        )
        .unwrap();
        assert_eq!(tests.len(), 3);
        assert_eq!(tests[0].name, "edu-smp2");
        assert_eq!(tests[0].groups, ["all", "edu"]);
        assert_eq!(tests[0].timeout, Some(Duration::from_secs(30)));
        let TestKind::Guest(g) = &tests[0].kind else {
            panic!("not a guest")
        };
        assert_eq!((g.smp, g.mem_mib, g.append.as_str()), (2, 256, "x y"));
        assert_eq!(g.initrd.as_deref(), Some(d.join("env.txt").as_path()));
        assert_eq!(g.guest, d.join("guest.elf").display().to_string());

        assert_eq!(tests[1].name, "edu");
        assert_eq!(tests[1].timeout, Some(Duration::from_secs(5)));
        let TestKind::Guest(g) = &tests[1].kind else {
            panic!("not a guest")
        };
        assert_eq!((g.guest.as_str(), g.smp, g.mem_mib), ("bundled:edu", 1, 64));
        assert_eq!(g.boot, Some(ktvmm_vmm::boot::Protocol::Multiboot));
        let TestKind::Guest(g) = &tests[0].kind else {
            panic!("not a guest")
        };
        assert_eq!(g.boot, None);

        assert_eq!(tests[2].name, "tool");
        let TestKind::Exec(e) = &tests[2].kind else {
            panic!("not exec")
        };
        assert_eq!(e.args, ["-v"]);
        assert_eq!(e.env, [("A".into(), "1".into()), ("B".into(), "3".into())]);
    }

    #[test]
    fn problems_name_the_file_and_line() {
        let d = dir("bad");
        let cases = [
            ("[[test]]\nguest = \"guest.elf\"\nsmpp = 2\n", ":3:", "smpp"),
            ("[[test]]\nname = \"a\"\n", ":1:", "needs `guest`"),
            (
                "[[test]]\nguest = \"guest.elf\"\nexec = \"tool\"\n",
                ":1:",
                "not both",
            ),
            (
                "\n[[test]]\nguest = \"missing.elf\"\n",
                ":2:",
                "no such file",
            ),
            (
                "[[test]]\nguest = \"bundled:nope\"\n",
                ":1:",
                "no bundled guest",
            ),
            ("[[test]]\nguest = \"guest.elf\"\nsmp = 0\n", ":1:", "smp"),
            (
                "[[test]]\nguest = \"guest.elf\"\nmemory = \"lots\"\n",
                ":1:",
                "lots",
            ),
            (
                "[[test]]\nguest = \"guest.elf\"\ntimeout = -1\n",
                ":1:",
                "timeout",
            ),
            (
                "[[test]]\nguest = \"guest.elf\"\nargs = [\"x\"]\n",
                ":1:",
                "append",
            ),
            ("[[test]]\nexec = \"tool\"\nappend = \"x\"\n", ":1:", "args"),
            (
                "[[test]]\nguest = \"guest.elf\"\nboot = \"bios\"\n",
                ":1:",
                "not a boot protocol",
            ),
            (
                "[[test]]\nexec = \"tool\"\nboot = \"elf64\"\n",
                ":1:",
                "boot",
            ),
            ("[[test]]\nexec = \"tool\"\ncwd = \"nope\"\n", ":1:", "cwd"),
            (
                "[[test]]\nguest = \"guest.elf\"\nname = \"\"\n",
                ":1:",
                "empty",
            ),
            (
                "[[test]]\nguest = \"guest.elf\"\n\n[[test]]\nguest = \"guest.elf\"\n",
                ":4:",
                "line 1",
            ),
            ("[defaults]\nsmp = 2\n", ":1:", "no tests"),
            ("[[test]\n", ":1:", ""),
            ("[[test]]\nguest = 3\n", ":2:", ""),
        ];
        for (text, line, needle) in cases {
            let err = parse_in(&d, text).expect_err(text);
            assert!(err.contains("t.ktvmm.toml"), "{err}");
            assert!(err.contains(line), "{text:?}: wanted {line} in {err}");
            assert!(err.contains(needle), "{text:?}: wanted {needle} in {err}");
        }
    }

    #[test]
    fn the_name_pattern() {
        assert!(is_suite_file(Path::new("a/ktvmm.toml")));
        assert!(is_suite_file(Path::new("edu.ktvmm.toml")));
        assert!(!is_suite_file(Path::new("Cargo.toml")));
        assert!(!is_suite_file(Path::new("ktvmm.toml.bak")));
    }
}
