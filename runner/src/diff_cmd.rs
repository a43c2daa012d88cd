//! `ktvmm diff RUN_A RUN_B`: what changed between two runs. Regressions
//! (a test or subtest that passed in A and fails in B) come first and make
//! the exit status 1, so CI can gate on them; then fixes, other verdict
//! changes, tests that appeared or vanished, the biggest duration changes,
//! and the two environments side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::console::seconds;
use crate::results::{ResultsFile, read_json};
use crate::verdict::{RunMeta, Status, TestResult};

/// Duration changes listed at most.
const DURATION_ROWS: usize = 5;
/// Smaller duration changes are noise.
const MIN_DURATION_CHANGE: Duration = Duration::from_millis(50);

/// Compares `a` (before) with `b` (after); returns 1 on a regression.
pub fn diff(a: &Path, b: &Path) -> Result<u8> {
    let (a, b) = (load(a)?, load(b)?);
    let report = compare(&a, &b);
    print!("{}", report.text);
    Ok(u8::from(report.regressions > 0))
}

fn load(path: &Path) -> Result<ResultsFile> {
    let file: PathBuf = if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    };
    // The error names the file and what is wrong with it.
    Ok(read_json(&file)?)
}

/// One test's verdict over all its repetitions: the first that did not
/// pass, else the last.
fn verdicts(file: &ResultsFile) -> BTreeMap<&str, &TestResult> {
    let mut map: BTreeMap<&str, &TestResult> = BTreeMap::new();
    for r in &file.tests {
        match map.get(r.name.as_str()) {
            Some(kept) if kept.status.is_failure() => {}
            _ => {
                map.insert(&r.name, r);
            }
        }
    }
    map
}

struct Report {
    text: String,
    regressions: usize,
}

fn is_good(s: Status) -> bool {
    matches!(
        s,
        Status::Pass | Status::Skip | Status::Flaky | Status::XFail
    )
}

fn compare(a: &ResultsFile, b: &ResultsFile) -> Report {
    let (va, vb) = (verdicts(a), verdicts(b));
    let mut regressions = Vec::new();
    let mut fixes = Vec::new();
    let mut changes = Vec::new();
    let mut subtest_regressions = Vec::new();
    for (name, rb) in &vb {
        let Some(ra) = va.get(name) else { continue };
        let line = format!(
            "  {name}: {} -> {}{}",
            ra.status.label(),
            rb.status.label(),
            rb.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        match (is_good(ra.status), is_good(rb.status)) {
            (true, false) => regressions.push(line),
            (false, true) => fixes.push(line),
            _ if ra.status != rb.status => changes.push(line),
            _ => {}
        }
        let failed_before: BTreeSet<&str> = failed_subtests(ra);
        for sub in failed_subtests(rb) {
            if !failed_before.contains(sub) && ra.subtests.is_some() {
                subtest_regressions.push(format!("  {name}: {sub}"));
            }
        }
    }
    let appeared: Vec<&str> = vb
        .keys()
        .filter(|n| !va.contains_key(*n))
        .copied()
        .collect();
    let vanished: Vec<&str> = va
        .keys()
        .filter(|n| !vb.contains_key(*n))
        .copied()
        .collect();
    let mut durations: Vec<(&str, Duration, Duration)> = vb
        .iter()
        .filter_map(|(name, rb)| va.get(name).map(|ra| (*name, ra.duration, rb.duration)))
        .filter(|(_, da, db)| da.abs_diff(*db) >= MIN_DURATION_CHANGE)
        .collect();
    durations.sort_by_key(|(_, da, db)| std::cmp::Reverse(da.abs_diff(*db)));
    durations.truncate(DURATION_ROWS);

    let mut text = String::new();
    let mut section = |title: &str, lines: &[String]| {
        if !lines.is_empty() {
            text += &format!("{title} ({}):\n{}\n", lines.len(), lines.join("\n"));
        }
    };
    section("regressions", &regressions);
    section("new subtest failures", &subtest_regressions);
    section("fixed", &fixes);
    section("other changes", &changes);
    let names = |v: &[&str]| v.iter().map(|n| format!("  {n}")).collect::<Vec<_>>();
    section("new tests", &names(&appeared));
    section("vanished tests", &names(&vanished));
    let duration_lines: Vec<String> = durations
        .iter()
        .map(|(n, da, db)| format!("  {n}: {} -> {}", seconds(*da), seconds(*db)))
        .collect();
    section("biggest duration changes", &duration_lines);
    text += &environments(&a.meta, &b.meta);
    let regressions = regressions.len() + subtest_regressions.len();
    text += &format!(
        "diff: {regressions} regressions, {} fixed, {} other changes, {} new, {} vanished ({} tests before, {} after)\n",
        fixes.len(),
        changes.len(),
        appeared.len(),
        vanished.len(),
        va.len(),
        vb.len()
    );
    Report { text, regressions }
}

fn failed_subtests(r: &TestResult) -> BTreeSet<&str> {
    r.subtests
        .iter()
        .flat_map(|s| s.failed.iter().map(String::as_str))
        .collect()
}

/// The two runs' fingerprints; rows that differ are marked `*`.
fn environments(a: &RunMeta, b: &RunMeta) -> String {
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "ktvmm".into(),
            a.ktvmm_version.clone(),
            b.ktvmm_version.clone(),
        ),
        (
            "host kernel".into(),
            a.host_kernel.clone(),
            b.host_kernel.clone(),
        ),
        (
            "KVM module".into(),
            a.kvm_module.clone(),
            b.kvm_module.clone(),
        ),
        ("CPU".into(), a.cpu.clone(), b.cpu.clone()),
    ];
    let keys: BTreeSet<&String> = a.kvm_params.keys().chain(b.kvm_params.keys()).collect();
    let missing = "-".to_string();
    for key in keys {
        let (pa, pb) = (
            a.kvm_params.get(key).unwrap_or(&missing),
            b.kvm_params.get(key).unwrap_or(&missing),
        );
        // Only parameters that differ: there are dozens.
        if pa != pb {
            rows.push((key.clone(), pa.clone(), pb.clone()));
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut text = "environment (before | after):\n".to_string();
    for (what, va, vb) in rows {
        let mark = if va == vb { ' ' } else { '*' };
        text += &format!("{mark} {what:<width$}  {va} | {vb}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::{meta, result};
    use crate::verdict::Subtests;

    fn file(tests: Vec<TestResult>) -> ResultsFile {
        ResultsFile {
            meta: meta(),
            tests,
        }
    }

    #[test]
    fn regressions_fixes_and_changes() {
        let mut sub_a = result("guest", Status::Fail);
        sub_a.subtests = Some(Subtests {
            pass: 1,
            fail: 1,
            skip: 0,
            failed: vec!["old".into()],
            ..Default::default()
        });
        let mut sub_b = sub_a.clone();
        sub_b
            .subtests
            .as_mut()
            .unwrap()
            .failed
            .push("new one".into());
        let a = file(vec![
            result("stays", Status::Pass),
            result("breaks", Status::Pass),
            result("heals", Status::Fail),
            result("goes", Status::Pass),
            result("times-out", Status::Fail),
            sub_a,
        ]);
        let mut slower = result("stays", Status::Pass);
        slower.duration = Duration::from_secs(9);
        let mut b_meta = meta();
        b_meta.kvm_params.insert("kvm_intel.ept".into(), "N".into());
        let b = ResultsFile {
            meta: b_meta,
            tests: vec![
                slower,
                result("breaks", Status::Fail),
                result("heals", Status::Pass),
                result("comes", Status::Pass),
                result("times-out", Status::Timeout),
                sub_b,
            ],
        };
        let report = compare(&a, &b);
        let t = &report.text;
        assert_eq!(report.regressions, 2, "{t}");
        assert!(
            t.starts_with("regressions (1):\n  breaks: PASS -> FAIL"),
            "{t}"
        );
        assert!(
            t.contains("new subtest failures (1):\n  guest: new one"),
            "{t}"
        );
        assert!(t.contains("fixed (1):\n  heals: FAIL -> PASS"), "{t}");
        assert!(
            t.contains("other changes (1):\n  times-out: FAIL -> TIMEOUT"),
            "{t}"
        );
        assert!(t.contains("new tests (1):\n  comes"), "{t}");
        assert!(t.contains("vanished tests (1):\n  goes"), "{t}");
        assert!(t.contains("stays: 1.50 s -> 9.00 s"), "{t}");
        assert!(t.contains("* kvm_intel.ept  Y | N"), "{t}");
        assert!(t.contains("  KVM module"), "{t}");
    }

    #[test]
    fn identical_runs_have_nothing_to_say() {
        let a = file(vec![result("x", Status::Pass)]);
        let report = compare(&a, &a);
        assert_eq!(report.regressions, 0);
        assert!(report.text.starts_with("environment"), "{}", report.text);
    }
}
