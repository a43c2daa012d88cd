//! Which of the discovered tests run: name patterns, groups, the failures of
//! the last run, and a shard of the rest.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::suite::TestSpec;

/// The selection options of `ktvmm test`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Keep tests matching any of these (see [`matches`]). Empty: all.
    pub patterns: Vec<String>,
    /// Drop tests matching any of these.
    pub exclude: Vec<String>,
    /// Keep tests in any of these groups. Empty: all.
    pub groups: Vec<String>,
    /// Keep only these names (`--rerun-failed`).
    pub only: Option<HashSet<String>>,
    /// Keep one shard of what is left.
    pub shard: Option<Shard>,
}

/// `--shard K/N`: the K-th (1-based) of N interleaved parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// Which part, 1..=count.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not a shard: write K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Selection {
    /// The tests the name patterns, groups and `--rerun-failed` keep, in
    /// their discovered order: what the shards are dealt from. Each
    /// pattern is compiled once, whatever the number of tests.
    pub fn filter(&self, tests: Vec<TestSpec>) -> Result<Vec<TestSpec>, PatternError> {
        let patterns = Patterns::new(&self.patterns)?;
        let exclude = Patterns::new(&self.exclude)?;
        Ok(tests
            .into_iter()
            .filter(|t| {
                (self.patterns.is_empty() || patterns.any_matches(&t.name))
                    && !exclude.any_matches(&t.name)
                    && (self.groups.is_empty() || t.groups.iter().any(|g| self.groups.contains(g)))
                    && self.only.as_ref().is_none_or(|only| only.contains(&t.name))
            })
            .collect())
    }

    /// This run's shard of the `kept` tests. Sharding comes last and deals
    /// tests out in turn, so every shard of one command line gets a fair
    /// share and together they cover each test exactly once.
    pub fn shard_of(&self, kept: Vec<TestSpec>) -> Vec<TestSpec> {
        match self.shard {
            Some(Shard { index, count }) => kept
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % count == index - 1)
                .map(|(_, t)| t)
                .collect(),
            None => kept,
        }
    }
}

/// What `results.json` records of how a run chose its tests, so that
/// `ktvmm merge` can tell the shards of one run from shards of another
/// suite or selection, and see which are missing or overlap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionRecord {
    /// What was discovered from: the paths as given, or `bundled`.
    pub suite: String,
    /// How many tests were discovered.
    pub discovered: usize,
    /// [`fingerprint`] of the discovered tests' names: the suite's
    /// identity, wherever it was checked out.
    pub suite_digest: String,
    /// The options that chose the tests or shaped the run, as typed
    /// (`-f PATTERN`, `--env ENV`, `--repeat N`...), `--shard` aside.
    pub options: Vec<String>,
    /// How many tests were selected before sharding.
    pub selected: usize,
    /// [`fingerprint`] of the selected tests' names before sharding, in
    /// the order the shards are dealt from.
    pub selection_digest: String,
    /// `--shard K/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// A short, stable digest of a list of test names (64-bit FNV-1a over the
/// names, each ended by a NUL), as 16 hex digits: equal lists give equal
/// digests on every host and ktvmm version.
pub fn fingerprint<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    for name in names {
        for &byte in name.as_bytes().iter().chain(&[0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

pub use ktvmm_fuzz::rng::SplitMix64;

/// Puts `tests` in an order drawn from `seed` (Fisher-Yates with
/// SplitMix64): reproducible across runs and machines.
pub fn shuffle<T>(tests: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..tests.len()).rev() {
        let j = rng.below(i + 1);
        tests.swap(i, j);
    }
}

/// A name pattern that cannot be compiled (globset refuses it: in
/// practice only one too long for its size limit).
#[derive(Debug, thiserror::Error)]
#[error("name pattern '{pattern}': {source}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// Why globset refused it.
    pub source: globset::Error,
}

/// `=NAME` matches that name exactly (and its sweep variants `NAME[...]`);
/// a pattern with `*` or `?` is a glob
/// over the whole name; anything else matches as a substring.
///
/// In a glob, `*` is any run of characters, `/` included (test names are
/// `x86/apic`, and `x86*` has always meant every x86 test: globset's
/// `literal_separator` stays off), and `?` is one byte. Every other
/// character stands for itself: `[`, `]`, `{` and `}` are escaped before
/// globset sees them, so a sweep variant's name (`smptest[smp=4]`) is a
/// plain name and `smptest[smp=*]` picks every `smp` variant rather than
/// reading `[smp=*]` as a character class.
///
/// Compiled once per pattern and thread (a pattern that does not compile
/// matches nothing; [`Selection::apply`] reports it).
pub fn matches(pattern: &str, name: &str) -> bool {
    thread_local! {
        static COMPILED: RefCell<HashMap<String, Option<Pattern>>> = RefCell::default();
    }
    /// Distinct patterns in one run are few; a caller that made up
    /// endless ones would only cost recompiling.
    const KEPT: usize = 1024;
    COMPILED.with_borrow_mut(|compiled| {
        if !compiled.contains_key(pattern) {
            if compiled.len() >= KEPT {
                compiled.clear();
            }
            compiled.insert(pattern.to_string(), Pattern::new(pattern).ok());
        }
        compiled[pattern].as_ref().is_some_and(|p| p.matches(name))
    })
}

/// One pattern, compiled (see [`matches`]).
enum Pattern {
    Exact(String),
    Glob(GlobMatcher),
    Substring(String),
}

impl Pattern {
    fn new(pattern: &str) -> Result<Pattern, PatternError> {
        Ok(if let Some(exact) = pattern.strip_prefix('=') {
            Pattern::Exact(exact.to_string())
        } else if pattern.contains(['*', '?']) {
            Pattern::Glob(glob(pattern)?.compile_matcher())
        } else {
            Pattern::Substring(pattern.to_string())
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            // ...or a variant of that test (`crate::suite::sweep`).
            Pattern::Exact(exact) => name
                .strip_prefix(exact.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('[')),
            Pattern::Glob(glob) => glob.is_match(name),
            Pattern::Substring(part) => name.contains(part.as_str()),
        }
    }
}

/// Several patterns, the globs among them as one [`GlobSet`]: one pass
/// over a name whatever their number.
struct Patterns {
    exact: HashSet<String>,
    substrings: Vec<String>,
    globs: GlobSet,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Patterns, PatternError> {
        let mut exact = HashSet::new();
        let mut substrings = Vec::new();
        let mut globs = GlobSetBuilder::new();
        for pattern in patterns {
            match Pattern::new(pattern)? {
                Pattern::Exact(name) => {
                    exact.insert(name);
                }
                Pattern::Substring(part) => substrings.push(part),
                Pattern::Glob(_) => {
                    globs.add(glob(pattern)?);
                }
            }
        }
        let globs = globs.build().map_err(|source| PatternError {
            pattern: patterns.join(" "),
            source,
        })?;
        Ok(Patterns {
            exact,
            substrings,
            globs,
        })
    }

    fn any_matches(&self, name: &str) -> bool {
        // A name, or the test a sweep variant `NAME[...]` is of.
        let exact = || {
            self.exact.contains(name)
                || name
                    .match_indices('[')
                    .any(|(i, _)| self.exact.contains(&name[..i]))
        };
        exact()
            || self.substrings.iter().any(|s| name.contains(s.as_str()))
            || self.globs.is_match(name)
    }
}

/// `pattern` as a globset glob with ktvmm's meaning (see [`matches`]).
fn glob(pattern: &str) -> Result<globset::Glob, PatternError> {
    let mut escaped = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        if matches!(c, '[' | ']' | '{' | '}') {
            escaped.extend(['[', c, ']']);
        } else {
            escaped.push(c);
        }
    }
    GlobBuilder::new(&escaped)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
        .map_err(|source| PatternError {
            pattern: pattern.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{GuestTest, TestKind};

    fn tests(names: &[(&str, &[&str])]) -> Vec<TestSpec> {
        names
            .iter()
            .map(|(name, groups)| TestSpec {
                name: name.to_string(),
                kind: TestKind::Guest(GuestTest::new("g.elf")),
                timeout: None,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                source: "s".into(),
                exclusive: false,
                variant: None,
            })
            .collect()
    }

    fn names(selection: &Selection, all: &[TestSpec]) -> Vec<String> {
        selection
            .shard_of(selection.filter(all.to_vec()).expect("patterns compile"))
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    #[test]
    fn globs_and_substrings() {
        assert!(matches("edu", "edu-driver"));
        assert!(matches("edu*", "edu-driver"));
        assert!(!matches("edu", "pci"));
        assert!(matches("*-driver", "edu-driver"));
        assert!(!matches("*-drive", "edu-driver"));
        assert!(matches("e?u*r", "edu-driver"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(matches("=state_test", "state_test"));
        assert!(!matches("=state_test", "vmx_state_test"));
        assert!(!matches("=state", "state_test"));
        assert!(
            matches("=*", "*"),
            "exact means exact, even for glob characters"
        );
        assert!(!matches("=*", "x"));
        assert!(!matches("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn glob_characters_on_globset() {
        // `*` crosses `/`: globset's literal_separator is off.
        assert!(matches("x86*", "x86/vmx/apic"));
        assert!(matches("*/apic", "x86/vmx/apic"));
        assert!(matches("a**b", "a/x/b"));
        // `?` is one byte (globset matches bytes, as ours did): a
        // character beyond ASCII takes one per byte of its UTF-8.
        assert!(matches("t??st", "tëst"));
        assert!(!matches("t?st", "tëst"));
        // Brackets and braces are themselves: sweep variants' names.
        assert!(matches("smptest[smp=*]", "smptest[smp=4]"));
        assert!(!matches("smptest[smp=*]", "smptests"));
        assert!(matches("*[smp=4]", "smptest[smp=4]"));
        assert!(matches("*{a,b}?", "x{a,b}y"));
        assert!(!matches("*{a,b}", "xa"));
        assert!(matches("a\\*", "a\\b"));
        // A variant's exact name, by `=` or as a substring.
        assert!(matches("=smptest[smp=4]", "smptest[smp=4]"));
        assert!(!matches("=smptest[smp=4]", "smptest[smp=42]"));
        assert!(matches("smptest[smp=4]", "smptest[smp=4]"));
        // `=NAME` also takes NAME's variants, not other names it begins.
        assert!(matches("=smptest", "smptest[smp=4]"));
        assert!(!matches("=smptest", "smptests"));
    }

    #[test]
    fn sets_of_patterns_match_as_each_would() {
        let patterns = ["=edu", "*-driver", "sm?", "t[1]*", "pci", "=smptest"].map(String::from);
        let set = Patterns::new(&patterns).unwrap();
        for name in [
            "edu",
            "edu-driver",
            "smp",
            "t[1]x",
            "pci-testdev",
            "ed",
            "t1x",
            "x",
        ] {
            assert_eq!(
                set.any_matches(name),
                patterns.iter().any(|p| matches(p, name)),
                "{name}"
            );
        }
        assert!(Patterns::new(&[]).unwrap().globs.is_empty());
    }

    #[test]
    fn filters_combine() {
        let all = tests(&[
            ("edu", &["devices"]),
            ("edu-driver", &["devices", "dma"]),
            ("smp", &[]),
        ]);
        let pick = |s: Selection| names(&s, &all);
        assert_eq!(pick(Selection::default()).len(), 3);
        let by_name = Selection {
            patterns: vec!["edu".into()],
            exclude: vec!["*driver".into()],
            ..Default::default()
        };
        assert_eq!(pick(by_name), ["edu"]);
        let exact_out = Selection {
            exclude: vec!["=edu".into()],
            ..Default::default()
        };
        assert_eq!(pick(exact_out), ["edu-driver", "smp"]);
        let by_group = Selection {
            groups: vec!["dma".into(), "nope".into()],
            ..Default::default()
        };
        assert_eq!(pick(by_group), ["edu-driver"]);
        let only = Selection {
            only: Some(["smp".to_string(), "gone".to_string()].into()),
            ..Default::default()
        };
        assert_eq!(pick(only), ["smp"]);
    }

    #[test]
    fn shards_cover_every_test_once() {
        let all = tests(&(0..23).map(|_| ("", &[][..])).collect::<Vec<_>>())
            .into_iter()
            .enumerate()
            .map(|(i, mut t)| {
                t.name = format!("t{i}");
                t
            })
            .collect::<Vec<_>>();
        for count in 1..6 {
            let mut seen = Vec::new();
            for index in 1..=count {
                let shard = Selection {
                    shard: Some(Shard { index, count }),
                    ..Default::default()
                };
                let part = names(&shard, &all);
                assert!(part.len().abs_diff(all.len() / count) <= 1);
                seen.extend(part);
            }
            seen.sort();
            let mut want: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
            want.sort();
            assert_eq!(seen, want, "{count} shards");
        }
    }

    #[test]
    fn shuffles_are_reproducible_permutations() {
        let original: Vec<u32> = (0..50).collect();
        let mut a = original.clone();
        let mut b = original.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b, "same seed, same order");
        assert_ne!(a, original);
        let mut c = original.clone();
        shuffle(&mut c, 8);
        assert_ne!(a, c, "another seed, another order");
        a.sort_unstable();
        assert_eq!(a, original, "a permutation");
    }

    #[test]
    fn fingerprints_tell_lists_apart() {
        // FNV-1a's published value for the empty input: stable everywhere.
        assert_eq!(fingerprint([]), "cbf29ce484222325");
        assert_eq!(fingerprint(["a", "b"]), fingerprint(["a", "b"]));
        assert_ne!(fingerprint(["a", "b"]), fingerprint(["b", "a"]), "order");
        assert_ne!(fingerprint(["ab"]), fingerprint(["a", "b"]), "boundaries");
    }

    #[test]
    fn shard_spelling() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "4", "a/b", "1/0", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
