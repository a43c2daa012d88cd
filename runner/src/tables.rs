//! Tables printed after the summary when a run had more than one shape of
//! a test: verdicts per sweep variant, verdicts per KVM configuration, and
//! a soak's runs and failures per test.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use crate::console::seconds;
use crate::suite::sweep::Variant;
use crate::verdict::{Status, TestResult};

use crate::kvm_matrix::KVM_KEY;

/// A test's results in run order, grouped by name (repetitions together),
/// names in the order they first finished.
fn by_name(results: &[TestResult]) -> Vec<(&str, Vec<&TestResult>)> {
    let mut groups: Vec<(&str, Vec<&TestResult>)> = Vec::new();
    // Sweeps and soaks make many results: a lookup, not a scan, per result.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for r in results {
        let at = *index.entry(&r.name).or_insert_with(|| {
            groups.push((&r.name, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(r);
    }
    groups
}

/// The position of `key` in an ordered list of rows whose positions
/// `index` holds, appending a row made by `new` when it is not there yet.
fn row_of<K: Clone + Eq + Hash, R>(
    rows: &mut Vec<R>,
    index: &mut HashMap<K, usize>,
    key: &K,
    new: impl FnOnce() -> R,
) -> usize {
    if let Some(&at) = index.get(key) {
        return at;
    }
    rows.push(new());
    index.insert(key.clone(), rows.len() - 1);
    rows.len() - 1
}

/// `PASS`, `PASS x3`, or `2 PASS, 1 FAIL` for a test run several times.
fn verdict(runs: &[&TestResult]) -> String {
    let mut counts: Vec<(Status, usize)> = Vec::new();
    for r in runs {
        match counts.iter_mut().find(|(s, _)| *s == r.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.status, 1)),
        }
    }
    match counts.as_slice() {
        [(status, 1)] => status.label().to_string(),
        [(status, n)] => format!("{} x{n}", status.label()),
        _ => counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.label()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Rows of cells as aligned columns, each line indented by two spaces.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        text += &format!("  {}\n", cells.join("  ").trim_end());
    }
    text
}

/// What follows the variant in a name (`@qemu-kvm` under `--env`).
fn suffix<'a>(name: &'a str, variant: &Variant) -> &'a str {
    name.strip_prefix(&variant.name()).unwrap_or("")
}

/// Verdicts per sweep variant: one table per set of swept keys, a row per
/// test and values of the other keys, a column per value of the last key.
/// Empty when nothing was swept.
pub fn sweeps(results: &[TestResult]) -> String {
    struct Table<'a> {
        keys: &'a [(String, String)],
        columns: Vec<&'a str>,
        rows: Vec<(Vec<String>, Vec<String>)>,
        /// Where each row's label is in `rows`.
        index: HashMap<Vec<String>, usize>,
    }
    let mut tables: Vec<Table> = Vec::new();
    let mut variants = 0;
    for (name, runs) in by_name(results) {
        let Some(v) = &runs[0].variant else { continue };
        let Some(((_, last), others)) = v.values.split_last() else {
            continue;
        };
        if v.values.iter().all(|(k, _)| k == KVM_KEY) {
            continue;
        }
        variants += 1;
        let same_keys = |t: &Table| {
            t.keys.len() == v.values.len() && t.keys.iter().zip(&v.values).all(|(a, b)| a.0 == b.0)
        };
        let at = match tables.iter().position(same_keys) {
            Some(at) => at,
            None => {
                tables.push(Table {
                    keys: &v.values,
                    columns: Vec::new(),
                    rows: Vec::new(),
                    index: HashMap::new(),
                });
                tables.len() - 1
            }
        };
        let table = &mut tables[at];
        let column = match table.columns.iter().position(|c| c == last) {
            Some(column) => column,
            None => {
                table.columns.push(last);
                table
                    .rows
                    .iter_mut()
                    .for_each(|(_, cells)| cells.push("-".into()));
                table.columns.len() - 1
            }
        };
        let mut label = vec![format!("{}{}", v.of, suffix(name, v))];
        label.extend(others.iter().map(|(_, value)| value.clone()));
        let width = table.columns.len();
        let row = row_of(&mut table.rows, &mut table.index, &label, || {
            (label.clone(), vec!["-".into(); width])
        });
        table.rows[row].1[column] = verdict(&runs);
    }
    if tables.is_empty() {
        return String::new();
    }
    let mut text = format!("verdicts per variant ({variants}):\n");
    for table in tables {
        let (last, others) = table.keys.split_last().expect("a variant has a value");
        let mut header = vec!["test".to_string()];
        header.extend(others.iter().map(|(k, _)| k.clone()));
        header.extend(table.columns.iter().map(|c| format!("{}={c}", last.0)));
        let mut rows = vec![header];
        rows.extend(
            table
                .rows
                .into_iter()
                .map(|(label, cells)| label.into_iter().chain(cells).collect()),
        );
        text += &render(&rows);
    }
    text
}

/// Verdicts per KVM configuration: a row per test, a column per
/// configuration, in the order they ran. Empty without `--kvm-config`.
pub fn configs(results: &[TestResult], names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (name, runs) in by_name(results) {
        let Some(v) = &runs[0].variant else { continue };
        let Some(config) = v.get(KVM_KEY) else {
            continue;
        };
        let Some(column) = names.iter().position(|n| n == config) else {
            continue;
        };
        let rest = Variant {
            of: v.of.clone(),
            values: v
                .values
                .iter()
                .filter(|(k, _)| k != KVM_KEY)
                .cloned()
                .collect(),
        };
        let label = if rest.values.is_empty() {
            rest.of.clone()
        } else {
            rest.name()
        } + suffix(name, v);
        let at = row_of(&mut rows, &mut index, &label, || {
            (label.clone(), vec!["-".to_string(); names.len()])
        });
        rows[at].1[column] = verdict(&runs);
    }
    let mut table = vec![
        std::iter::once("test".to_string())
            .chain(names.iter().cloned())
            .collect::<Vec<_>>(),
    ];
    table.extend(
        rows.into_iter()
            .map(|(label, cells)| std::iter::once(label).chain(cells).collect()),
    );
    format!(
        "verdicts per KVM configuration ({}):\n{}",
        names.len(),
        render(&table)
    )
}

/// A soak's record per test: runs, passes, failures (anything that fails
/// a run), the failure rate, and the log of the first failure.
pub fn soak(results: &[TestResult], wall: Duration) -> String {
    let groups = by_name(results);
    let mut table = vec![
        ["test", "runs", "pass", "fail", "rate", "first failure"]
            .map(String::from)
            .to_vec(),
    ];
    for (name, runs) in &groups {
        let failures: Vec<&&TestResult> = runs.iter().filter(|r| r.status.is_failure()).collect();
        let passes = runs.iter().filter(|r| r.status == Status::Pass).count();
        table.push(vec![
            name.to_string(),
            runs.len().to_string(),
            passes.to_string(),
            failures.len().to_string(),
            format!("{:.1}%", 100.0 * failures.len() as f64 / runs.len() as f64),
            failures.first().map_or("-".into(), |r| log_of(&r.log)),
        ]);
    }
    format!(
        "soak: {} runs of {} tests in {}:\n{}",
        results.len(),
        groups.len(),
        seconds(wall),
        render(&table)
    )
}

fn log_of(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::result;

    fn swept(name: &str, values: &[(&str, &str)], status: Status) -> TestResult {
        let variant = Variant {
            of: name.into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut r = result(&variant.name(), status);
        r.variant = Some(variant);
        r
    }

    #[test]
    fn a_table_per_set_of_keys() {
        let results = [
            swept("shape", &[("smp", "1")], Status::Pass),
            swept("shape", &[("smp", "2")], Status::Fail),
            swept("shape", &[("smp", "2")], Status::Pass),
            swept("prog", &[("env.BDF", "0000:00:01.0")], Status::Skip),
            result("plain", Status::Pass),
        ];
        let text = sweeps(&results);
        assert_eq!(
            text,
            "verdicts per variant (3):\n  test   smp=1  smp=2\n  shape  PASS   1 FAIL, 1 PASS\n  \
             test  env.BDF=0000:00:01.0\n  prog  SKIP\n"
        );
        let two_keys = [
            swept("s", &[("smp", "1"), ("append", "a")], Status::Pass),
            swept("s", &[("smp", "1"), ("append", "b")], Status::Fail),
            swept("s", &[("smp", "2"), ("append", "b")], Status::Pass),
        ];
        assert_eq!(
            sweeps(&two_keys),
            "verdicts per variant (3):\n  test  smp  append=a  append=b\n  \
             s     1    PASS      FAIL\n  s     2    -         PASS\n"
        );
        assert_eq!(sweeps(&[result("plain", Status::Pass)]), "");
    }

    #[test]
    fn configurations_side_by_side() {
        let results = [
            swept("a", &[("kvm", "base")], Status::Pass),
            swept("a", &[("kvm", "noept")], Status::Fail),
            swept("b", &[("smp", "2"), ("kvm", "noept")], Status::Pass),
        ];
        let names = ["base".to_string(), "noept".to_string()];
        assert_eq!(
            configs(&results, &names),
            "verdicts per KVM configuration (2):\n  test      base  noept\n  \
             a         PASS  FAIL\n  b[smp=2]  -     PASS\n"
        );
        // A configuration is not a sweep of its own.
        assert!(sweeps(&results[..2]).is_empty());
    }

    #[test]
    fn a_soak_counts_runs_and_points_at_the_first_failure() {
        let mut results = Vec::new();
        for (i, status) in [Status::Pass, Status::Fail, Status::Pass, Status::Fail]
            .into_iter()
            .enumerate()
        {
            let mut r = result("flaky", status);
            r.iteration = i as u32 + 1;
            r.log = format!("logs/flaky.{}.log", i + 1).into();
            results.push(r);
        }
        results.push(result("steady", Status::Pass));
        let text = soak(&results, Duration::from_secs(10));
        assert!(
            text.starts_with("soak: 5 runs of 2 tests in 10.0 s:\n"),
            "{text}"
        );
        assert!(
            text.contains("  flaky   4     2     2     50.0%  logs/flaky.2.log\n"),
            "{text}"
        );
        assert!(
            text.contains("  steady  1     1     0     0.0%   -\n"),
            "{text}"
        );
    }
}
