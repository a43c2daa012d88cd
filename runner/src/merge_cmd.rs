//! `ktvmm merge DIR... -o OUT`: the results of the shards of one run
//! (`ktvmm test --shard K/N` on several machines), or of repeated runs, put
//! back together as one results directory (results.json, junit.xml,
//! results.tap, report.html), written by the same writers as `ktvmm
//! test`'s, with the same summary and exit code.
//!
//! Inputs that do not add up to one run are refused, each with its own
//! line, and nothing is written: a run from another suite or selection
//! (told by the fingerprints `results.json` records in `meta.selection`),
//! a shard given twice (overlap), a shard missing, a whole run among
//! shards, an interrupted run. With `--repeats` the inputs are repetitions:
//! every run of a test is kept, numbered on as `--repeat` numbers them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::MergeArgs;
use crate::results::{self, LOGS, OutputDir, RESULTS_JSON, ResultsFile, read_json};
use crate::select::SelectionRecord;
use crate::verdict::{RunMeta, TestResult};

/// One run given to merge.
struct Input {
    /// As the user named it, for messages.
    label: String,
    /// The directory holding its `results.json` and `logs/`.
    dir: PathBuf,
    file: ResultsFile,
}

impl Input {
    /// Reads `path`: an output directory, or a `results.json` in one.
    fn load(path: &Path) -> Result<Input> {
        let (dir, json) = if path.is_dir() {
            (path.to_path_buf(), path.join(RESULTS_JSON))
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        };
        Ok(Input {
            label: path.display().to_string(),
            dir,
            file: read_json(&json)?,
        })
    }

    fn record(&self) -> Option<&SelectionRecord> {
        self.file.meta.selection.as_ref()
    }

    /// Its shard's index; 0 for a whole run.
    fn shard_index(&self) -> usize {
        self.record().and_then(|r| r.shard).map_or(0, |s| s.index)
    }
}

/// Merges the runs `args` names into `args.output`; returns 1 when a test
/// failed, as `ktvmm test` does.
pub fn merge(args: &MergeArgs) -> Result<u8> {
    let inputs = args
        .inputs
        .iter()
        .map(|p| Input::load(p))
        .collect::<Result<Vec<_>>>()?;
    let problems = problems(&inputs, args.repeats);
    if !problems.is_empty() {
        bail!(
            "these results are not one run, nothing merged:\n  {}",
            problems.join("\n  ")
        );
    }
    refuse_an_input_as_output(&inputs, &args.output)?;
    let output = OutputDir::create(Some(&args.output))?;
    let meta = merged_meta(&inputs, std::env::args().collect());
    let (tests, missing) = merged_tests(&inputs, args.repeats, &output)?;
    results::write_all(&output, &meta, &tests).context("cannot write the merged results")?;
    for notice in &meta.notices {
        outln!("notice: {notice}");
    }
    if !missing.is_empty() {
        outln!(
            "notice: {} log(s) were not found in their run's {LOGS}/ and are linked where the run had them: {}",
            missing.len(),
            missing.join(", ")
        );
    }
    crate::console::summary(&tests, meta.duration, 0, output.path());
    if args.repeats {
        out!("{}", mixed_repeats(&tests));
    }
    Ok(u8::from(tests.iter().any(|r| r.status.is_failure())))
}

/// Everything that stops `inputs` from being merged, one line each; empty
/// when they are the shards of one run (or, with `repeats`, repetitions
/// of one run, sharded or not).
fn problems(inputs: &[Input], repeats: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut records: Vec<(&Input, &SelectionRecord)> = Vec::new();
    for input in inputs {
        if input.file.meta.interrupted {
            out.push(format!(
                "{}: the run was interrupted, so some of its tests did not run (run it again)",
                input.label
            ));
        }
        match input.record() {
            Some(record) => records.push((input, record)),
            None => out.push(format!(
                "{}: {RESULTS_JSON} does not record which tests the run selected (written by an older ktvmm; run it again with this one)",
                input.label
            )),
        }
    }
    let Some(&(first, first_record)) = records.first() else {
        return out;
    };
    for &(input, record) in &records[1..] {
        if record.suite_digest != first_record.suite_digest {
            out.push(format!(
                "{}: from another suite than {} ({} with {} tests, against {} with {})",
                input.label,
                first.label,
                record.suite,
                record.discovered,
                first_record.suite,
                first_record.discovered
            ));
        } else if record.selection_digest != first_record.selection_digest
            || record.options != first_record.options
        {
            out.push(format!(
                "{}: another selection of the suite than {} ({}: {} tests, against {}: {})",
                input.label,
                first.label,
                options_text(record),
                record.selected,
                options_text(first_record),
                first_record.selected
            ));
        }
    }
    if !out.is_empty() {
        // Shards only add up within one selection.
        return out;
    }
    let Some(count) = first_record.shard.map(|s| s.count) else {
        if !repeats {
            for (input, record) in &records[1..] {
                match record.shard {
                    Some(shard) => out.push(format!(
                        "{}: shard {shard}, while {} is a whole run",
                        input.label, first.label
                    )),
                    None => out.push(format!(
                        "{}: the whole selection again, as {} ran it: repeated runs, not shards (merge them with --repeats)",
                        input.label, first.label
                    )),
                }
            }
        }
        if repeats && records.iter().any(|(_, r)| r.shard.is_some()) {
            out.push(format!(
                "{}: a whole run, among shards: merge the shards of each run first",
                first.label
            ));
        }
        return out;
    };
    for (input, record) in &records[1..] {
        match record.shard {
            None => out.push(format!(
                "{}: a whole run, while {} is shard {}",
                input.label,
                first.label,
                first_record
                    .shard
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )),
            Some(shard) if shard.count != count => out.push(format!(
                "{}: shard {shard}, while {} is one of {count} shards",
                input.label, first.label
            )),
            Some(_) => {}
        }
    }
    if !out.is_empty() {
        return out;
    }
    let mut seen: BTreeMap<usize, &str> = BTreeMap::new();
    for (input, record) in &records {
        let Some(shard) = record.shard else { continue };
        match seen.get(&shard.index) {
            Some(other) if !repeats => out.push(format!(
                "{}: shard {shard} again ({other} is shard {shard} too): shards overlap (merge repeated runs with --repeats)",
                input.label
            )),
            Some(_) => {}
            None => {
                seen.insert(shard.index, &input.label);
            }
        }
    }
    let given: Vec<String> = seen
        .iter()
        .map(|(k, label)| format!("{k}/{count} in {label}"))
        .collect();
    for k in (1..=count).filter(|k| !seen.contains_key(k)) {
        out.push(format!(
            "shard {k}/{count} is missing (given: {})",
            given.join(", ")
        ));
    }
    out
}

/// A selection's options for a message: `-f x -g y`, or `all tests`.
fn options_text(record: &SelectionRecord) -> String {
    if record.options.is_empty() {
        "all tests".to_string()
    } else {
        crate::results::shell_quote(&record.options)
    }
}

/// Merging into one of the inputs would overwrite its results and logs
/// while they are read.
fn refuse_an_input_as_output(inputs: &[Input], output: &Path) -> Result<()> {
    let Ok(output) = output.canonicalize() else {
        // Not there yet: not an input.
        return Ok(());
    };
    for input in inputs {
        if input.dir.canonicalize().is_ok_and(|dir| dir == output) {
            bail!(
                "{}: is also the output (-o); merge into a new directory",
                input.label
            );
        }
    }
    Ok(())
}

/// The merged run's metadata: its span from the first start to the last
/// end, the hosts' facts (each distinct value, in input order), the
/// selection without a shard, and a notice saying what was merged.
fn merged_meta(inputs: &[Input], command_line: Vec<String>) -> RunMeta {
    let metas: Vec<&RunMeta> = inputs.iter().map(|i| &i.file.meta).collect();
    let start = metas.iter().map(|m| m.started_unix).min().unwrap_or(0);
    let end = metas
        .iter()
        .map(|m| Duration::from_secs(m.started_unix) + m.duration)
        .max()
        .unwrap_or_default();
    let distinct = |field: fn(&RunMeta) -> &String| {
        let mut values: Vec<&str> = Vec::new();
        for meta in &metas {
            if !values.contains(&field(meta).as_str()) {
                values.push(field(meta));
            }
        }
        values.join(", ")
    };
    let first = metas[0];
    let mut notices: Vec<String> = Vec::new();
    for notice in metas.iter().flat_map(|m| &m.notices) {
        if !notices.contains(notice) {
            notices.push(notice.clone());
        }
    }
    let differing: BTreeSet<&String> = metas
        .iter()
        .flat_map(|m| m.kvm_params.iter())
        .filter(|(key, value)| first.kvm_params.get(*key) != Some(value))
        .map(|(key, _)| key)
        .collect();
    if !differing.is_empty() {
        let keys: Vec<&str> = differing.iter().map(|k| k.as_str()).collect();
        notices.push(format!(
            "the merged runs had different KVM module parameters ({}); the first run's are shown",
            keys.join(", ")
        ));
    }
    let parts: Vec<String> = inputs
        .iter()
        .map(|i| match i.record().and_then(|r| r.shard) {
            Some(shard) => format!("{} (shard {shard})", i.label),
            None => i.label.clone(),
        })
        .collect();
    let original: Vec<String> = strip_shard(&first.command_line);
    notices.push(format!(
        "merged from {} runs of `{}`: {}",
        inputs.len(),
        crate::results::shell_quote(&original),
        parts.join(", ")
    ));
    RunMeta {
        ktvmm_version: distinct(|m| &m.ktvmm_version),
        command_line,
        host_kernel: distinct(|m| &m.host_kernel),
        kvm_module: distinct(|m| &m.kvm_module),
        cpu: distinct(|m| &m.cpu),
        kvm_params: first.kvm_params.clone(),
        started_unix: start,
        duration: end.saturating_sub(Duration::from_secs(start)),
        interrupted: false,
        notices,
        selection: first.selection.clone().map(|mut r| {
            r.shard = None;
            r
        }),
        // Equal in every part: they name the tests, whose names the
        // selection's digests compare.
        kvm_configs: first.kvm_configs.clone(),
    }
}

/// A `ktvmm test` command line without what differs between its shards:
/// `--shard K/N` and `-o DIR`.
fn strip_shard(words: &[String]) -> Vec<String> {
    const WITH_VALUE: [&str; 3] = ["--shard", "-o", "--output"];
    let mut out = Vec::new();
    let mut skip = false;
    for word in words {
        if std::mem::take(&mut skip) {
            continue;
        }
        if WITH_VALUE.contains(&word.as_str()) {
            skip = true;
            continue;
        }
        let joined = ["--shard=", "--output=", "-o"]
            .iter()
            .any(|flag| word.starts_with(flag));
        if !joined {
            out.push(word.clone());
        }
    }
    out
}

/// Every input's results, shards in order, each log (and guest core)
/// copied into `output`'s `logs/` under the name `ktvmm test` would give
/// it. With `repeats`, a test's runs are numbered on across inputs. Also
/// returns the tests whose logs were not in their run's directory.
fn merged_tests(
    inputs: &[Input],
    repeats: bool,
    output: &OutputDir,
) -> Result<(Vec<TestResult>, Vec<String>)> {
    let mut order: Vec<&Input> = inputs.iter().collect();
    order.sort_by_key(|i| i.shard_index());
    let mut tests = Vec::new();
    let mut missing = Vec::new();
    // Runs of each test in the inputs merged so far.
    let mut runs_before: HashMap<String, u32> = HashMap::new();
    for input in order {
        let mut runs_here: HashMap<&str, u32> = HashMap::new();
        for original in &input.file.tests {
            let mut result = original.clone();
            if repeats {
                let runs = runs_here.entry(original.name.as_str()).or_default();
                *runs = (*runs).max(result.iteration);
                result.iteration += runs_before.get(&result.name).copied().unwrap_or(0);
            }
            if !copy_log(&mut result, &input.dir, output)? {
                missing.push(crate::console::display_name(&result.name, result.iteration));
            }
            tests.push(result);
        }
        for (name, runs) in runs_here {
            *runs_before.entry(name.to_string()).or_default() += runs;
        }
    }
    Ok((tests, missing))
}

/// Copies `result`'s log from its run's `logs/` (where `ktvmm test` wrote
/// it, whatever directory the path in results.json was relative to) into
/// `output`, with its guest core, and points the result at the copies.
/// Returns false, leaving the result as it was, when the run's directory
/// has no such log.
fn copy_log(result: &mut TestResult, from: &Path, output: &OutputDir) -> Result<bool> {
    // Only the file name is taken from results.json: it cannot lead out of
    // the run's logs/.
    let Some(source) = result.log.file_name().map(|f| from.join(LOGS).join(f)) else {
        return Ok(false);
    };
    if !is_file(&source) {
        return Ok(false);
    }
    let log = output.log_path(&result.name, result.iteration);
    link_or_copy(&source, &log)?;
    if let Some(core) = result.core.as_ref().and_then(|c| c.file_name()) {
        let source = from.join(LOGS).join(core);
        if is_file(&source) {
            // Named as `ktvmm test --cores` names it beside the log.
            let core = crate::schedule::core_path(&log);
            link_or_copy(&source, &core)?;
            result.core = Some(core);
        }
    }
    result.log = log;
    Ok(true)
}

/// A regular file, not a link to one elsewhere (an input is a CI artifact:
/// its links are not followed out of it).
fn is_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// A hard link when both are on one filesystem (logs are large, and final),
/// else a copy.
fn link_or_copy(source: &Path, dest: &Path) -> Result<()> {
    match fs::remove_file(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot replace", dest.display())),
    }
    if fs::hard_link(source, dest).is_ok() {
        return Ok(());
    }
    fs::copy(source, dest)
        .map(drop)
        .with_context(|| format!("{}: cannot copy to {}", source.display(), dest.display()))
}

/// With `--repeats`: each test whose runs did not all agree, with its
/// count of each verdict, for the console after the summary.
fn mixed_repeats(tests: &[TestResult]) -> String {
    let mut by_test: BTreeMap<&str, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for r in tests {
        *by_test
            .entry(&r.name)
            .or_default()
            .entry(r.status.label())
            .or_default() += 1;
    }
    let mixed: Vec<String> = by_test
        .into_iter()
        .filter(|(_, counts)| counts.len() > 1)
        .map(|(name, counts)| {
            let counts: Vec<String> = counts
                .iter()
                .map(|(label, n)| format!("{n} {label}"))
                .collect();
            format!("  {name}: {}\n", counts.join(", "))
        })
        .collect();
    if mixed.is_empty() {
        return String::new();
    }
    format!(
        "flaky across the runs merged ({}):\n{}",
        mixed.len(),
        mixed.concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::{Scratch, meta, result};
    use crate::select::Shard;
    use crate::verdict::Status;

    fn record(suite: &str, selection: &str, shard: Option<(usize, usize)>) -> SelectionRecord {
        SelectionRecord {
            suite: format!("{suite}.toml"),
            discovered: 10,
            suite_digest: suite.into(),
            options: Vec::new(),
            selected: 10,
            selection_digest: selection.into(),
            shard: shard.map(|(index, count)| Shard { index, count }),
        }
    }

    fn input(label: &str, record: Option<SelectionRecord>) -> Input {
        let mut meta = meta();
        meta.selection = record;
        Input {
            label: label.into(),
            dir: PathBuf::from(label),
            file: ResultsFile {
                meta,
                tests: Vec::new(),
            },
        }
    }

    fn shard(label: &str, k: usize, n: usize) -> Input {
        input(label, Some(record("s", "all", Some((k, n)))))
    }

    #[test]
    fn the_shards_of_one_run_merge_in_any_order() {
        let inputs = [shard("c", 3, 3), shard("a", 1, 3), shard("b", 2, 3)];
        assert_eq!(problems(&inputs, false), Vec::<String>::new());
        assert_eq!(problems(&inputs[..1], false).len(), 2, "two missing");
    }

    #[test]
    fn overlapping_missing_and_mismatched_shards_are_each_named() {
        let overlap = [shard("a", 1, 3), shard("b", 2, 3), shard("b2", 2, 3)];
        assert_eq!(
            problems(&overlap, false),
            [
                "b2: shard 2/3 again (b is shard 2/3 too): shards overlap (merge repeated runs with --repeats)",
                "shard 3/3 is missing (given: 1/3 in a, 2/3 in b)",
            ]
        );
        // As repetitions, a shard may come twice; one missing still counts.
        assert_eq!(
            problems(&overlap, true),
            ["shard 3/3 is missing (given: 1/3 in a, 2/3 in b)"]
        );
        let counts = [shard("a", 1, 2), shard("b", 2, 3)];
        assert_eq!(
            problems(&counts, false),
            ["b: shard 2/3, while a is one of 2 shards"]
        );
        let whole = [shard("a", 1, 2), input("w", Some(record("s", "all", None)))];
        assert_eq!(
            problems(&whole, false),
            ["w: a whole run, while a is shard 1/2"]
        );
    }

    #[test]
    fn foreign_runs_are_named_with_what_differs() {
        let inputs = [
            shard("a", 1, 2),
            input("other", Some(record("t", "all", Some((2, 2))))),
            input("filtered", Some(record("s", "some", Some((2, 2))))),
        ];
        let problems = problems(&inputs, false);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("other: from another suite than a (t.toml with 10 tests"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("filtered: another selection of the suite than a (all tests"),
            "{problems:?}"
        );
    }

    #[test]
    fn whole_runs_need_repeats_and_records_are_required() {
        let runs = [
            input("r1", Some(record("s", "all", None))),
            input("r2", Some(record("s", "all", None))),
        ];
        let problems_of = |inputs: &[Input], repeats| problems(inputs, repeats);
        assert_eq!(
            problems_of(&runs, false),
            [
                "r2: the whole selection again, as r1 ran it: repeated runs, not shards (merge them with --repeats)"
            ]
        );
        assert!(problems_of(&runs, true).is_empty());
        let mut cut = shard("a", 1, 1);
        cut.file.meta.interrupted = true;
        let old = input("old", None);
        let found = problems_of(&[cut, old], false);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("a: the run was interrupted"));
        assert!(found[1].starts_with("old: results.json does not record"));
    }

    #[test]
    fn repeats_number_runs_on_and_logs_are_copied() {
        let scratch = Scratch::new("merge");
        let mut inputs = Vec::new();
        for (run, status) in [("r1", Status::Pass), ("r2", Status::Fail)] {
            let dir = scratch.0.join(run);
            fs::create_dir_all(dir.join(LOGS)).unwrap();
            let mut one = input(run, Some(record("s", "all", None)));
            one.dir = dir.clone();
            for iteration in 1..=2 {
                let mut r = result("x/y", status);
                r.iteration = iteration;
                // Relative to wherever that run was started: only the file
                // name is used.
                r.log = PathBuf::from(format!("elsewhere/logs/x_y.{iteration}.log"));
                fs::write(dir.join(LOGS).join(format!("x_y.{iteration}.log")), run).unwrap();
                one.file.tests.push(r);
            }
            inputs.push(one);
        }
        let output = OutputDir::at(&scratch.0.join("out")).unwrap();
        let (tests, missing) = merged_tests(&inputs, true, &output).unwrap();
        assert!(missing.is_empty());
        let iterations: Vec<u32> = tests.iter().map(|t| t.iteration).collect();
        assert_eq!(iterations, [1, 2, 3, 4]);
        let logs: Vec<String> = tests
            .iter()
            .map(|t| fs::read_to_string(&t.log).unwrap())
            .collect();
        assert_eq!(logs, ["r1", "r1", "r2", "r2"]);
        assert_eq!(tests[3].log, output.path().join(LOGS).join("x_y.4.log"));
        let mixed = mixed_repeats(&tests);
        assert_eq!(
            mixed,
            "flaky across the runs merged (1):\n  x/y: 2 FAIL, 2 PASS\n"
        );
    }

    #[test]
    fn the_merged_meta_spans_the_runs_and_drops_the_shard() {
        let mut a = shard("a", 1, 2);
        let mut b = shard("b", 2, 2);
        a.file.meta.started_unix = 100;
        a.file.meta.duration = Duration::from_secs(10);
        a.file.meta.command_line = ["ktvmm", "test", "--shard", "1/2", "-oout", "s.toml"]
            .map(String::from)
            .to_vec();
        b.file.meta.started_unix = 105;
        b.file.meta.duration = Duration::from_secs(20);
        b.file.meta.host_kernel = "6.2.0".into();
        let meta = merged_meta(&[a, b], vec!["ktvmm".into(), "merge".into()]);
        assert_eq!(meta.started_unix, 100);
        assert_eq!(meta.duration, Duration::from_secs(25));
        assert_eq!(meta.host_kernel, "6.1.0, 6.2.0");
        assert_eq!(meta.selection.unwrap().shard, None);
        assert_eq!(
            meta.notices.last().unwrap(),
            "merged from 2 runs of `ktvmm test s.toml`: a (shard 1/2), b (shard 2/2)"
        );
    }
}
