//! Which of the discovered tests run: name patterns, groups, the failures of
//! the last run, and a shard of the rest.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::suite::TestSpec;

/// The selection options of `ktvmm test`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Keep tests matching any of these (a glob with `*`, `?`; otherwise a
    /// substring). Empty: all.
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
    /// their discovered order: what the shards are dealt from.
    pub fn filter(&self, tests: Vec<TestSpec>) -> Vec<TestSpec> {
        tests
            .into_iter()
            .filter(|t| {
                (self.patterns.is_empty() || self.patterns.iter().any(|p| matches(p, &t.name)))
                    && !self.exclude.iter().any(|p| matches(p, &t.name))
                    && (self.groups.is_empty() || t.groups.iter().any(|g| self.groups.contains(g)))
                    && self.only.as_ref().is_none_or(|only| only.contains(&t.name))
            })
            .collect()
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

/// `=NAME` matches that name exactly (and its sweep variants `NAME[...]`); a pattern with `*` or `?` is a glob
/// over the whole name; anything else matches as a substring.
pub fn matches(pattern: &str, name: &str) -> bool {
    if let Some(exact) = pattern.strip_prefix('=') {
        // ...or a variant of that test (`crate::suite::sweep`).
        name.strip_prefix(exact)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
    } else if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), name.as_bytes())
    } else {
        name.contains(pattern)
    }
}

/// Iterative glob with one backtrack point: linear in practice, no
/// recursion a long pattern could blow up.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
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
            .shard_of(selection.filter(all.to_vec()))
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
