//! Sweeps: one test across many shapes (`ktvmm test --sweep KEY=V1,V2`,
//! a suite test's `sweep` table). The keys are what shapes a guest's VM
//! (`smp`, `memory`, `cpu`, `iommu`, `append`) and a program's run (`args`,
//! `env.NAME`); the product of all values is one test per combination.
//!
//! A variant is named `test[key=value,...]`, keys always in one order and
//! values in one spelling (`memory=1024` and `memory=1G` are both `1G`), so
//! a variant has the same name however the sweep was typed, from the
//! command line or a suite file, and in every run: `--rerun-failed` and
//! `ktvmm diff` match it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ktvmm_vmm::cpu::model as cpu_model;
use ktvmm_vmm::memory::{MAX_MEM_MIB, MIN_MEM_MIB};

use crate::suite::{TestKind, TestSpec};
use crate::units::parse_mem_mib;

/// Values one key may take at most, after ranges are expanded.
const MAX_VALUES: usize = 1024;
/// Variants one test may have at most: the product of its axes.
pub const MAX_VARIANTS: usize = 4096;

/// What a sweep varies, in the order variant names list them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// vCPUs.
    Smp,
    /// RAM.
    Memory,
    /// The CPU model and flags.
    Cpu,
    /// A VT-d unit in front of edu.
    Iommu,
    /// Words added to the guest's command line.
    Append,
    /// Arguments added to a program's.
    Args,
    /// A program's environment variable.
    Env(String),
}

impl Key {
    /// `smp`, `memory`, `cpu`, `iommu`, `append`, `args`, `env.NAME`.
    pub fn parse(text: &str) -> Result<Key, String> {
        Ok(match text {
            "smp" => Key::Smp,
            "memory" => Key::Memory,
            "cpu" => Key::Cpu,
            "iommu" => Key::Iommu,
            "append" => Key::Append,
            "args" => Key::Args,
            _ => match text.strip_prefix("env.") {
                Some(name)
                    if !name.is_empty()
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Key::Env(name.to_string())
                }
                _ => {
                    return Err(format!(
                        "'{text}' is not a sweep key (smp, memory, cpu, iommu, append for guests; \
                         args, env.NAME for programs)"
                    ));
                }
            },
        })
    }

    /// As typed.
    pub fn name(&self) -> String {
        match self {
            Key::Smp => "smp".into(),
            Key::Memory => "memory".into(),
            Key::Cpu => "cpu".into(),
            Key::Iommu => "iommu".into(),
            Key::Append => "append".into(),
            Key::Args => "args".into(),
            Key::Env(name) => format!("env.{name}"),
        }
    }

    /// Whether the key shapes a guest (else a program).
    fn for_guests(&self) -> bool {
        !matches!(self, Key::Args | Key::Env(_))
    }

    /// Whether the key applies to a test of this kind.
    fn applies_to(&self, kind: &TestKind) -> bool {
        match kind {
            TestKind::Guest(_) => self.for_guests(),
            TestKind::Exec(_) => !self.for_guests(),
            TestKind::Skip(_) => false,
        }
    }

    /// One value in its one spelling (a range is expanded by the caller).
    fn canonical(&self, text: &str) -> Result<String, String> {
        let text = text.trim();
        match self {
            Key::Smp => smp(text).map(|n| n.to_string()),
            Key::Memory => memory(text).map(mib_text),
            Key::Cpu => cpu_model::parse(text)
                .map(|spec| spec.to_string())
                .map_err(|e| format!("cpu {text:?}: {e}")),
            Key::Iommu => {
                crate::units::parse_switch(text).map(|on| if on { "on" } else { "off" }.to_string())
            }
            Key::Args => match shlex::split(text) {
                Some(words) if !words.is_empty() => Ok(text.to_string()),
                _ => Err(format!(
                    "args {text:?}: not a shell-quoted list of arguments"
                )),
            },
            Key::Append | Key::Env(_) => {
                if text.chars().any(char::is_control) {
                    Err(format!(
                        "{}: {text:?} contains control characters",
                        self.name()
                    ))
                } else {
                    Ok(text.to_string())
                }
            }
        }
    }

    /// The numbers a range `FROM..TO`, `FROM..TO*FACTOR`, `FROM..TO+STEP`
    /// of this key stands for, when `text` is one.
    fn range(&self, text: &str) -> Option<Result<Vec<u64>, String>> {
        let number: fn(&str) -> Result<u64, String> = match self {
            Key::Smp => |t| smp(t).map(u64::from),
            Key::Memory => memory,
            _ => return None,
        };
        let (from, rest) = text.split_once("..")?;
        Some((|| {
            let (to, step) = match rest.split_once(['*', '+']) {
                Some((to, step)) => {
                    let by: u64 = step.trim().parse().map_err(|_| {
                        format!("{text}: the step after '*' or '+' is a whole number")
                    })?;
                    (to, Some((rest.as_bytes()[to.len()] == b'*', by)))
                }
                None => (rest, None),
            };
            let (from, to) = (number(from.trim())?, number(to.trim())?);
            if from > to {
                return Err(format!("{text}: the range runs backwards"));
            }
            let next: Box<dyn Fn(u64) -> Option<u64>> = match step {
                None => Box::new(|n: u64| n.checked_add(1)),
                Some((true, factor)) if factor >= 2 => Box::new(move |n| n.checked_mul(factor)),
                Some((false, step)) if step >= 1 => Box::new(move |n| n.checked_add(step)),
                Some(_) => {
                    return Err(format!(
                        "{text}: the range never ends (a factor is at least 2, a step at least 1)"
                    ));
                }
            };
            let mut values = vec![from];
            while let Some(n) = next(values[values.len() - 1]).filter(|&n| n <= to) {
                if values.len() == MAX_VALUES {
                    return Err(format!("{text}: more than {MAX_VALUES} values"));
                }
                values.push(n);
            }
            Ok(values)
        })())
    }
}

fn smp(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("smp {text:?}: a number of vCPUs, at least 1")),
    }
}

fn memory(text: &str) -> Result<u64, String> {
    let mib = parse_mem_mib(text)?;
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(format!(
            "memory {text:?}: out of range ({MIN_MEM_MIB} to {MAX_MEM_MIB} MiB)"
        ));
    }
    Ok(mib)
}

/// `1G` for whole GiB, `64M` otherwise.
fn mib_text(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

/// One key and its values, in their one spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    /// What varies.
    pub key: Key,
    /// Its values, each once, in the order given.
    pub values: Vec<String>,
}

/// `--sweep KEY=V1,V2,...`: values separated by commas, numbers also as
/// ranges (`smp=1..8`, `memory=64M..1G*2`). A CPU model's own `,+flag`,
/// `,-flag` and `,key=value` edits stay with their model
/// (`cpu=max,qemu64,+x2apic` is `max` and `qemu64,+x2apic`).
pub fn parse_axis(text: &str) -> Result<Axis, String> {
    let (key, values) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=V1,V2,... (e.g. smp=1,2,4 or smp=1..8)"))?;
    let key = Key::parse(key.trim())?;
    let items = split_values(&key, values);
    axis(key, &items)
}

/// Splits a comma-separated list of values.
pub fn split_values(key: &Key, text: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for piece in text.split(',') {
        let edit = piece.starts_with(['+', '-']) || piece.contains('=');
        match items.last_mut() {
            Some(model) if *key == Key::Cpu && edit => {
                model.push(',');
                model.push_str(piece);
            }
            _ => items.push(piece.to_string()),
        }
    }
    items
}

/// An axis from its values as given (each a value or a range).
pub fn axis(key: Key, items: &[String]) -> Result<Axis, String> {
    let mut values: Vec<String> = Vec::new();
    for item in items {
        let expanded = match key.range(item) {
            Some(range) => range?
                .into_iter()
                .map(|n| match key {
                    Key::Memory => mib_text(n),
                    _ => n.to_string(),
                })
                .collect(),
            None => vec![key.canonical(item)?],
        };
        for value in expanded {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        if values.len() > MAX_VALUES {
            return Err(format!("{}: more than {MAX_VALUES} values", key.name()));
        }
    }
    if values.is_empty() {
        return Err(format!("{}: no values", key.name()));
    }
    Ok(Axis { key, values })
}

/// Which variant of which test a test is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The test it is a variant of.
    pub of: String,
    /// Each key with its value here, in name order.
    #[serde(with = "ordered_map")]
    pub values: Vec<(String, String)>,
}

impl Variant {
    /// `of[key=value,...]`.
    pub fn name(&self) -> String {
        let pairs: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}[{}]", self.of, pairs.join(","))
    }

    /// The value of `key`, if it varies here.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The command line's sweeps over every test: each test by the axes that
/// apply to its kind (guests by VM keys, programs by `args`/`env`) and that
/// its own suite sweep does not already vary; others are left as they are.
pub fn expand(tests: Vec<TestSpec>, axes: &[Axis]) -> Result<Vec<TestSpec>, String> {
    let axes = merged(axes);
    let mut out = Vec::with_capacity(tests.len());
    for test in tests {
        let own = test.variant.as_ref();
        let apply: Vec<Axis> = axes
            .iter()
            .filter(|a| a.key.applies_to(&test.kind))
            .filter(|a| own.is_none_or(|v| v.get(&a.key.name()).is_none()))
            .cloned()
            .collect();
        for mut spec in variants(&test, &apply)? {
            placeholders(&mut spec);
            out.push(spec);
        }
    }
    Ok(out)
}

/// The same key given twice is one axis with both lists.
fn merged(axes: &[Axis]) -> Vec<Axis> {
    let mut by_key: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for axis in axes {
        let values = by_key.entry(axis.key.clone()).or_default();
        for v in &axis.values {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    by_key
        .into_iter()
        .map(|(key, values)| Axis { key, values })
        .collect()
}

/// Every variant of `test` over `axes` (all of which must apply to it), in
/// the order of the values, the last key varying fastest.
pub fn variants(test: &TestSpec, axes: &[Axis]) -> Result<Vec<TestSpec>, String> {
    if axes.is_empty() {
        return Ok(vec![test.clone()]);
    }
    let axes = merged(axes);
    if let Some(axis) = axes.iter().find(|a| !a.key.applies_to(&test.kind)) {
        return Err(format!(
            "test '{}': sweep key `{}` is for {}",
            test.name,
            axis.key.name(),
            if axis.key.for_guests() {
                "guests"
            } else {
                "programs (`exec`)"
            }
        ));
    }
    let count = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
        .filter(|&n| n <= MAX_VARIANTS)
        .ok_or_else(|| {
            format!(
                "test '{}': the sweep makes more than {MAX_VARIANTS} variants",
                test.name
            )
        })?;
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let mut rest = index;
        let mut chosen: Vec<(&Key, &str)> = Vec::with_capacity(axes.len());
        for axis in axes.iter().rev() {
            chosen.push((&axis.key, &axis.values[rest % axis.values.len()]));
            rest /= axis.values.len();
        }
        chosen.reverse();
        out.push(variant(test, &chosen));
    }
    Ok(out)
}

fn variant(test: &TestSpec, chosen: &[(&Key, &str)]) -> TestSpec {
    let mut spec = test.clone();
    let mut variant = variant_of(test);
    for &(key, value) in chosen {
        set(&mut spec.kind, key, value);
        variant.values.push((key.name(), value.to_string()));
    }
    // Keys in their one order, wherever they came from.
    variant
        .values
        .sort_by_cached_key(|(k, _)| Key::parse(k).ok());
    spec.name = variant.name();
    spec.variant = Some(variant);
    spec
}

/// `test` with `key=value` added last to its variant (`--kvm-config`'s
/// `kvm=NAME`, which is not a shape of the VM).
pub fn with_value(test: &TestSpec, key: &str, value: &str) -> TestSpec {
    let mut spec = test.clone();
    let mut variant = variant_of(test);
    variant.values.push((key.to_string(), value.to_string()));
    spec.name = variant.name();
    spec.variant = Some(variant);
    spec
}

/// The test's variant so far: none yet is the test itself.
fn variant_of(test: &TestSpec) -> Variant {
    test.variant.clone().unwrap_or_else(|| Variant {
        of: test.name.clone(),
        values: Vec::new(),
    })
}

fn set(kind: &mut TestKind, key: &Key, value: &str) {
    match (kind, key) {
        (TestKind::Guest(g), Key::Smp) => g.smp = value.parse().unwrap_or(g.smp),
        (TestKind::Guest(g), Key::Memory) => g.mem_mib = parse_mem_mib(value).unwrap_or(g.mem_mib),
        (TestKind::Guest(g), Key::Cpu) => g.cpu = Some(value.to_string()),
        (TestKind::Guest(g), Key::Iommu) => g.iommu = value == "on",
        (TestKind::Guest(g), Key::Append) => {
            if !g.append.is_empty() {
                g.append.push(' ');
            }
            g.append.push_str(value);
        }
        (TestKind::Exec(e), Key::Args) => e.args.extend(shlex::split(value).unwrap_or_default()),
        (TestKind::Exec(e), Key::Env(name)) => {
            e.env.retain(|(k, _)| k != name);
            e.env.push((name.clone(), value.to_string()));
        }
        _ => {}
    }
}

/// `{KEY}` in a guest's command line or a program's arguments and
/// environment is the value of a swept KEY (`{env.BDF}`, `{cpu}`), and in
/// a guest's always its VM's own `{smp}` and `{memory}` (in MiB): a guest
/// told `smp={smp}` checks the CPU count of every variant.
fn placeholders(spec: &mut TestSpec) {
    let mut values: Vec<(String, String)> = spec
        .variant
        .as_ref()
        .map(|v| v.values.clone())
        .unwrap_or_default();
    if let TestKind::Guest(g) = &spec.kind {
        values.retain(|(k, _)| k != "smp" && k != "memory");
        values.push(("smp".into(), g.smp.to_string()));
        values.push(("memory".into(), g.mem_mib.to_string()));
    }
    let fill = |text: &mut String| {
        if !text.contains('{') {
            return;
        }
        for (key, value) in &values {
            *text = text.replace(&format!("{{{key}}}"), value);
        }
    };
    match &mut spec.kind {
        TestKind::Guest(g) => fill(&mut g.append),
        TestKind::Exec(e) => {
            e.args.iter_mut().for_each(fill);
            e.env.iter_mut().for_each(|(_, v)| fill(v));
        }
        TestKind::Skip(_) => {}
    }
}

/// `[("smp", "4")]` as the JSON object `{"smp": "4"}`, keeping the order.
mod ordered_map {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(pairs)
            }
        }
        d.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{ExecTest, GuestTest};

    fn guest(name: &str, append: &str) -> TestSpec {
        let mut g = GuestTest::new("bundled:selftest");
        g.append = append.into();
        TestSpec {
            name: name.into(),
            kind: TestKind::Guest(g),
            timeout: None,
            groups: vec![],
            source: "s".into(),
            exclusive: false,
            variant: None,
        }
    }

    fn program(name: &str) -> TestSpec {
        TestSpec {
            kind: TestKind::Exec(ExecTest {
                path: "/bin/sh".into(),
                args: vec!["-c".into(), "echo {env.BDF}".into()],
                env: vec![("BDF".into(), "none".into())],
                cwd: None,
            }),
            ..guest(name, "")
        }
    }

    fn values(text: &str) -> Vec<String> {
        parse_axis(text).unwrap().values
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(values("smp=1..4"), ["1", "2", "3", "4"]);
        assert_eq!(values("smp=1..8*2"), ["1", "2", "4", "8"]);
        assert_eq!(values("smp=1..8+3"), ["1", "4", "7"]);
        assert_eq!(values("smp=4,1..2,4"), ["4", "1", "2"]);
        assert_eq!(
            values("memory=64M..1G*2"),
            ["64M", "128M", "256M", "512M", "1G"]
        );
        assert_eq!(values("memory=1024,1G,96"), ["1G", "96M"]);
        assert_eq!(values("iommu=on,off,1"), ["on", "off"]);
        assert_eq!(
            values("cpu=max,qemu64,+x2apic,max,vendor=AuthenticAMD"),
            ["max", "qemu64,+x2apic", "max,vendor=AuthenticAMD"]
        );
        assert_eq!(values("env.BDF=0000:00:01.0,0000:00:02.0").len(), 2);
        assert_eq!(values("append=a b,c"), ["a b", "c"]);
        for bad in [
            "smp",
            "smpp=1",
            "smp=0",
            "smp=4..1",
            "smp=1..9*1",
            "smp=1..9+0",
            "smp=1..x",
            "smp=1..100000",
            "memory=1..9",
            "memory=lots",
            "cpu=nosuchmodel",
            "iommu=maybe",
            "args='unclosed",
            "env.=1",
            "env.1A=1",
        ] {
            assert!(parse_axis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variants_are_named_in_one_order_and_shaped() {
        let axes = [
            parse_axis("append=alpha,beta").unwrap(),
            parse_axis("smp=1,2").unwrap(),
        ];
        let out = expand(vec![guest("shape", "smp={smp}")], &axes).unwrap();
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shape[smp=1,append=alpha]",
                "shape[smp=1,append=beta]",
                "shape[smp=2,append=alpha]",
                "shape[smp=2,append=beta]"
            ]
        );
        let TestKind::Guest(g) = &out[3].kind else {
            panic!()
        };
        assert_eq!((g.smp, g.append.as_str()), (2, "smp=2 beta"));
        let v = out[3].variant.as_ref().unwrap();
        assert_eq!(v.of, "shape");
        assert_eq!(v.get("smp"), Some("2"));
        // The same sweep typed the other way round names the same tests.
        let again = expand(
            vec![guest("shape", "smp={smp}")],
            &[axes[1].clone(), axes[0].clone()],
        )
        .unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn programs_and_guests_take_their_own_keys() {
        let axes = [
            parse_axis("smp=1,2").unwrap(),
            parse_axis("env.BDF=a,b,c").unwrap(),
            parse_axis("args=-v,-x 'y z'").unwrap(),
        ];
        let out = expand(vec![guest("g", ""), program("p")], &axes).unwrap();
        assert_eq!(out.len(), 2 + 6);
        let p = &out[2];
        assert_eq!(p.name, "p[args=-v,env.BDF=a]");
        let TestKind::Exec(e) = &out[7].kind else {
            panic!()
        };
        assert_eq!(e.args, ["-c", "echo c", "-x", "y z"]);
        assert_eq!(e.env, [("BDF".to_string(), "c".to_string())]);
        // A suite's own sweep must fit its test.
        let err = variants(&program("p"), &axes[..1]).unwrap_err();
        assert!(err.contains("`smp` is for guests"), "{err}");
    }

    #[test]
    fn a_suites_own_sweep_keeps_its_keys() {
        let own = variants(&guest("s", ""), &[parse_axis("smp=1,2").unwrap()]).unwrap();
        let out = expand(
            own,
            &[
                parse_axis("smp=8").unwrap(),
                parse_axis("iommu=on").unwrap(),
            ],
        )
        .unwrap();
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["s[smp=1,iommu=on]", "s[smp=2,iommu=on]"]);
    }

    #[test]
    fn the_product_is_bounded() {
        let axes = [
            parse_axis("smp=1..100").unwrap(),
            parse_axis("memory=8..100").unwrap(),
        ];
        let err = expand(vec![guest("g", "")], &axes).unwrap_err();
        assert!(err.contains("more than 4096 variants"), "{err}");
    }

    #[test]
    fn variant_globs_select_variants() {
        use crate::select::matches;
        assert!(matches("=smptest[smp=4]", "smptest[smp=4]"));
        assert!(matches("smptest[smp=4]", "smptest[smp=4]"));
        assert!(!matches("=smptest[smp=4]", "smptest[smp=48]"));
        assert!(matches("smptest[smp=*]", "smptest[smp=48]"));
        assert!(matches("*[smp=4,*", "smptest[smp=4,append=x]"));
    }

    #[test]
    fn variants_round_trip_through_json() {
        let v = Variant {
            of: "t".into(),
            values: vec![("smp".into(), "4".into()), ("append".into(), "a".into())],
        };
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, r#"{"of":"t","values":{"smp":"4","append":"a"}}"#);
        assert_eq!(serde_json::from_str::<Variant>(&text).unwrap(), v);
    }
}
