//! `ktvmm diff RUN_A RUN_B`: what changed between two runs. Regressions
//! (a test or subtest that passed in A and fails in B) come first and make
//! the exit status 1, so CI can gate on them; then fixes, other verdict
//! changes, tests that appeared or vanished, KVM counters that moved, the
//! biggest duration changes, and the two environments side by side.

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

/// How far a KVM counter must move to be listed: by `factor` and by `min`.
#[derive(Clone, Copy, Debug)]
pub struct Threshold {
    /// The larger value over the smaller (a counter from 0 counts as 1).
    pub factor: f64,
    /// The difference.
    pub min: u64,
}

/// Counter changes listed at most.
const COUNTER_ROWS: usize = 20;

/// Compares `before` with `after`; returns 1 on a regression (and, with
/// `--fail-on-counters`, on a KVM counter that rose past the thresholds).
pub fn diff(args: &crate::cli::DiffArgs) -> Result<u8> {
    let (a, b) = (load(&args.before)?, load(&args.after)?);
    let threshold = Threshold {
        factor: args.counter_factor,
        min: args.counter_min,
    };
    let report = compare(&a, &b, threshold);
    out!("{}", report.text);
    if let Some(path) = &args.html {
        let body = html(&report, &args.before, &args.after);
        crate::results::write_html_page(path, "ktvmm diff", &body)?;
    }
    let counters_fail = args.fail_on_counters && report.counters_up > 0;
    Ok(u8::from(report.regressions > 0 || counters_fail))
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
    /// What `text` lists, for the HTML page: each section's title and lines.
    sections: Vec<Section>,
    /// The environments' rows: what, before, after.
    environment: Vec<(String, String, String)>,
    /// The last line: how many of each.
    summary: String,
    regressions: usize,
    /// KVM counters that rose past the thresholds.
    counters_up: usize,
}

/// A titled list of changes.
struct Section {
    title: &'static str,
    lines: Vec<String>,
}

fn is_good(s: Status) -> bool {
    matches!(
        s,
        Status::Pass | Status::Skip | Status::Flaky | Status::XFail
    )
}

fn compare(a: &ResultsFile, b: &ResultsFile, threshold: Threshold) -> Report {
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
        // As for counters: moved by the factor, and by enough to matter.
        .filter(|(_, da, db)| {
            da.abs_diff(*db) >= MIN_DURATION_CHANGE && time_ratio(*da, *db) >= threshold.factor
        })
        .collect();
    durations.sort_by_key(|(_, da, db)| std::cmp::Reverse(da.abs_diff(*db)));
    durations.truncate(DURATION_ROWS);

    let mut sections: Vec<Section> = Vec::new();
    let mut section = |title: &'static str, lines: &[String]| {
        if !lines.is_empty() {
            sections.push(Section {
                title,
                lines: lines.to_vec(),
            });
        }
    };
    section("regressions", &regressions);
    section("new subtest failures", &subtest_regressions);
    section("fixed", &fixes);
    section("other changes", &changes);
    let names = |v: &[&str]| v.iter().map(|n| format!("  {n}")).collect::<Vec<_>>();
    section("new tests", &names(&appeared));
    section("vanished tests", &names(&vanished));
    let moved = counter_changes(&va, &vb, threshold);
    let counters_up = moved.iter().filter(|c| c.after > c.before).count();
    let mut counter_lines: Vec<String> = moved.iter().map(ToString::to_string).collect();
    if counter_lines.len() > COUNTER_ROWS {
        let more = counter_lines.len() - COUNTER_ROWS;
        counter_lines.truncate(COUNTER_ROWS);
        counter_lines.push(format!("  ... and {more} more"));
    }
    section("KVM counters that changed", &counter_lines);
    let duration_lines: Vec<String> = durations
        .iter()
        .map(|(n, da, db)| {
            let how = if db >= da { "x" } else { "/" };
            let ratio = time_ratio(*da, *db);
            format!(
                "  {n}: {} -> {} ({how}{ratio:.1})",
                seconds(*da),
                seconds(*db)
            )
        })
        .collect();
    section("biggest duration changes", &duration_lines);
    let environment = environments(&a.meta, &b.meta);
    let regressions = regressions.len() + subtest_regressions.len();
    let summary = format!(
        "diff: {regressions} regressions, {} fixed, {} other changes, {} new, {} vanished ({} tests before, {} after)",
        fixes.len(),
        changes.len(),
        appeared.len(),
        vanished.len(),
        va.len(),
        vb.len()
    );
    let mut text = String::new();
    for Section { title, lines } in &sections {
        text += &format!("{title} ({}):\n{}\n", lines.len(), lines.join("\n"));
    }
    text += "environment (before | after):\n";
    let width = environment.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (what, va, vb) in &environment {
        let mark = if va == vb { ' ' } else { '*' };
        text += &format!("{mark} {what:<width$}  {va} | {vb}\n");
    }
    text += &summary;
    text.push('\n');
    Report {
        text,
        sections,
        environment,
        summary,
        regressions,
        counters_up,
    }
}

/// The longer of two durations over the shorter (a millisecond at least).
fn time_ratio(a: Duration, b: Duration) -> f64 {
    ratio(a.as_secs_f64(), b.as_secs_f64(), 0.001)
}

/// The larger of two values over the smaller, the smaller taken as at
/// least `floor` (a change from nothing is not infinite).
fn ratio(a: f64, b: f64, floor: f64) -> f64 {
    a.max(b) / a.min(b).max(floor)
}

/// A KVM counter of one test that moved.
struct CounterChange<'a> {
    test: &'a str,
    counter: String,
    before: u64,
    after: u64,
}

impl CounterChange<'_> {
    /// The larger value over the smaller; from 0, as from 1.
    fn ratio(&self) -> f64 {
        ratio(self.before as f64, self.after as f64, 1.0)
    }
}

impl std::fmt::Display for CounterChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.after >= self.before { "x" } else { "/" };
        write!(
            f,
            "  {}: {} {} -> {} ({how}{:.0})",
            self.test,
            self.counter,
            thousands(self.before),
            thousands(self.after),
            self.ratio()
        )
    }
}

/// Counters of tests in both runs that moved by `threshold`, the largest
/// moves first. Times (`*_ns`) are left out: on a shared host they are
/// noise, and the durations section covers time.
fn counter_changes<'a>(
    va: &BTreeMap<&'a str, &'a TestResult>,
    vb: &BTreeMap<&'a str, &'a TestResult>,
    threshold: Threshold,
) -> Vec<CounterChange<'a>> {
    let mut moved = Vec::new();
    for (name, rb) in vb {
        let Some(ra) = va.get(name) else { continue };
        let (ca, cb) = (counters(ra), counters(rb));
        for (counter, &after) in &cb {
            // A counter only one kernel offers does not compare.
            let Some(&before) = ca.get(counter) else {
                continue;
            };
            let change = CounterChange {
                test: name,
                counter: counter.clone(),
                before,
                after,
            };
            if before.abs_diff(after) >= threshold.min && change.ratio() >= threshold.factor {
                moved.push(change);
            }
        }
    }
    moved.sort_by(|x, y| y.ratio().total_cmp(&x.ratio()).then(x.test.cmp(y.test)));
    moved
}

/// A test's counters as `name -> value`: the VM's as KVM names them,
/// the vCPUs' sums as `vcpu.name`.
fn counters(r: &TestResult) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    let Some(stats) = &r.kvm_stats else {
        return all;
    };
    for (group, prefix) in [("vm", ""), ("vcpu", "vcpu.")] {
        let Some(map) = stats.get(group).and_then(|m| m.as_object()) else {
            continue;
        };
        for (name, value) in map {
            if let (Some(value), false) = (value.as_u64(), name.ends_with("_ns")) {
                all.insert(format!("{prefix}{name}"), value);
            }
        }
    }
    all
}

/// `48210` as `48,210`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn failed_subtests(r: &TestResult) -> BTreeSet<&str> {
    r.subtests
        .iter()
        .flat_map(|s| s.failed.iter().map(String::as_str))
        .collect()
}

/// The two runs' fingerprints: what, before, after (KVM parameters only
/// where they differ: there are dozens).
fn environments(a: &RunMeta, b: &RunMeta) -> Vec<(String, String, String)> {
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
        if pa != pb {
            rows.push((key.clone(), pa.clone(), pb.clone()));
        }
    }
    rows
}

/// The report as a page: the same sections, the environments side by side
/// with the rows that differ marked.
fn html(report: &Report, before: &Path, after: &Path) -> String {
    use crate::results::html_escape as esc;
    let mut body = String::from("<header><h1>ktvmm diff</h1>");
    body += &format!(
        "<p class=\"sub\">before: {}<br>after: {}</p></header>",
        esc(&before.display().to_string()),
        esc(&after.display().to_string())
    );
    let class = if report.regressions > 0 {
        "st-fail"
    } else {
        "st-pass"
    };
    body += &format!(
        "<p id=\"verdict\" class=\"verdict {class}\">{}</p>",
        esc(&report.summary)
    );
    for Section { title, lines } in &report.sections {
        let kind = title.replace(' ', "-");
        body += &format!(
            "<section class=\"diff-{kind}\"><h2>{} ({})</h2><ul>",
            esc(title),
            lines.len()
        );
        for line in lines {
            body += &format!("<li><code>{}</code></li>", esc(line.trim_start()));
        }
        body += "</ul></section>";
    }
    body += "<section><h2>Environment</h2><table class=\"kv\">\
             <tr><th></th><th>before</th><th>after</th></tr>";
    for (what, va, vb) in &report.environment {
        let mark = if va == vb { "" } else { " class=\"differs\"" };
        body += &format!(
            "<tr{mark}><th>{}</th><td>{}</td><td>{}</td></tr>",
            esc(what),
            esc(va),
            esc(vb)
        );
    }
    body += "</table></section>";
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::{meta, result};
    use crate::verdict::Subtests;

    const THRESHOLD: Threshold = Threshold {
        factor: 2.0,
        min: 1000,
    };

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
        let report = compare(&a, &b, THRESHOLD);
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
        assert!(t.contains("stays: 1.50 s -> 9.00 s (x6.0)"), "{t}");
        assert!(t.contains("* kvm_intel.ept  Y | N"), "{t}");
        assert!(t.contains("  KVM module"), "{t}");
    }

    #[test]
    fn the_page_has_the_same_sections_and_escapes_names() {
        let evil = "</script><img src=x onerror=alert(1)>";
        let a = file(vec![result(evil, Status::Pass)]);
        let mut b_meta = meta();
        b_meta.cpu = "<b>other</b>".into();
        let b = ResultsFile {
            meta: b_meta,
            tests: vec![result(evil, Status::Fail)],
        };
        let report = compare(&a, &b, THRESHOLD);
        let page = html(&report, Path::new("a"), Path::new("b&c"));
        assert!(!page.contains("<img") && !page.contains("<b>"), "{page}");
        assert!(
            page.contains("<h2>regressions (1)</h2><ul><li><code>&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;: PASS -&gt; FAIL (FAIL reason)</code></li>"),
            "{page}"
        );
        assert!(page.contains("after: b&amp;c"), "{page}");
        assert!(
            page.contains("<tr class=\"differs\"><th>CPU</th><td>Test CPU</td><td>&lt;b&gt;other&lt;/b&gt;</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("class=\"verdict st-fail\">diff: 1 regressions"),
            "{page}"
        );
    }

    #[test]
    fn identical_runs_have_nothing_to_say() {
        let a = file(vec![result("x", Status::Pass)]);
        let report = compare(&a, &a, THRESHOLD);
        assert_eq!(report.regressions, 0);
        assert!(report.text.starts_with("environment"), "{}", report.text);
    }

    #[test]
    fn counters_that_moved_past_both_thresholds_are_named() {
        let with = |name: &str, vm: serde_json::Value, vcpu: serde_json::Value| {
            let mut r = result(name, Status::Pass);
            r.kvm_stats = Some(serde_json::json!({ "vm": vm, "vcpu": vcpu }));
            r
        };
        let a = file(vec![with(
            "access",
            serde_json::json!({"remote_tlb_flush": 12, "pages_4k": 100}),
            serde_json::json!({"exits": 5000, "halt_wait_ns": 1, "io_exits": 10}),
        )]);
        let b = file(vec![with(
            "access",
            serde_json::json!({"remote_tlb_flush": 48210, "pages_4k": 150}),
            serde_json::json!({"exits": 1000, "halt_wait_ns": 900000000, "io_exits": 900}),
        )]);
        let report = compare(&a, &b, THRESHOLD);
        let t = &report.text;
        assert!(
            t.contains(
                "KVM counters that changed (2):\n  access: remote_tlb_flush 12 -> 48,210 (x4018)\n  access: vcpu.exits 5,000 -> 1,000 (/5)"
            ),
            "{t}"
        );
        // Below the absolute minimum (io_exits, pages_4k) or a time: not listed.
        assert!(
            !t.contains("io_exits") && !t.contains("pages_4k") && !t.contains("halt_wait"),
            "{t}"
        );
        assert_eq!((report.regressions, report.counters_up), (0, 1));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
