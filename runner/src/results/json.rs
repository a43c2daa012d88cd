//! `results.json`: the run's metadata and every result, the machine-readable
//! record `--rerun-failed` reads back.

use std::path::Path;

use ktvmm_vmm::input;
use serde::{Deserialize, Serialize};

use super::{ResultsError, write_atomic};
use crate::verdict::{RunMeta, TestResult};

/// The contents of `results.json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ResultsFile {
    /// The run.
    pub meta: RunMeta,
    /// Its results, in the order they were written.
    pub tests: Vec<TestResult>,
}

/// [`ResultsFile`] by reference, so writing needs no copy of the results.
#[derive(Serialize)]
struct ResultsFileRef<'a> {
    meta: &'a RunMeta,
    tests: &'a [TestResult],
}

/// Writes `{"meta": ..., "tests": [...]}` to `path`, pretty-printed,
/// replacing any earlier file atomically.
pub fn write(path: &Path, meta: &RunMeta, tests: &[TestResult]) -> Result<(), ResultsError> {
    let mut text =
        serde_json::to_vec_pretty(&ResultsFileRef { meta, tests }).map_err(|source| {
            ResultsError::Serialize {
                path: path.to_path_buf(),
                source,
            }
        })?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Reads a `results.json`.
pub fn read(path: &Path) -> Result<ResultsFile, ResultsError> {
    let text = input::read(path, input::MAX_RESULTS, "a results.json")?;
    serde_json::from_slice(&text).map_err(|source| ResultsError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The names of the tests in a `results.json` whose status fails a run,
/// each once, in file order. A test that failed in any iteration counts:
/// a flaky test is worth rerunning.
pub fn failed_names(path: &Path) -> Result<Vec<String>, ResultsError> {
    let file = read(path)?;
    let mut names: Vec<String> = Vec::new();
    for t in file.tests {
        if t.status.is_failure() && !names.contains(&t.name) {
            names.push(t.name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::testutil::*;
    use super::*;
    use crate::verdict::{Status, Subtests};

    #[test]
    fn every_status_round_trips() {
        let scratch = Scratch::new("json");
        let path = scratch.0.join("results.json");
        let mut tests = one_of_each();
        tests[0].subtests = Some(Subtests {
            pass: 3,
            fail: 1,
            skip: 1,
            failed: vec!["x86: a < b".into()],
            ..Default::default()
        });
        tests[1].iteration = 2;
        tests[2].duration = Duration::from_millis(1);
        tests[3].log = PathBuf::from("/abs/path with space/x.log");
        let mut meta = meta();
        meta.interrupted = true;
        write(&path, &meta, &tests).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.meta, meta);
        assert_eq!(back.tests, tests);
        let statuses: Vec<Status> = back.tests.iter().map(|t| t.status).collect();
        assert_eq!(statuses, Status::ALL);

        // The spelling other tools read.
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["tests"][3]["status"], "timeout");
        assert_eq!(v["meta"]["duration_s"], 12.345);
    }

    #[test]
    fn rerun_picks_exactly_the_failures() {
        let scratch = Scratch::new("rerun");
        let path = scratch.0.join("results.json");
        let mut tests = vec![
            result("pass", Status::Pass),
            result("fail", Status::Fail),
            result("skip", Status::Skip),
            result("timeout", Status::Timeout),
            result("error", Status::Error),
            // Flaky: passed once, failed on the repeat; listed once.
            result("flaky", Status::Pass),
            result("flaky", Status::Fail),
            result("fail", Status::Fail),
        ];
        tests[6].iteration = 2;
        tests[7].iteration = 2;
        write(&path, &meta(), &tests).unwrap();
        assert_eq!(
            failed_names(&path).unwrap(),
            ["fail", "timeout", "error", "flaky"]
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let scratch = Scratch::new("badjson");
        let path = scratch.0.join("results.json");
        let e = read(&path).unwrap_err();
        assert!(matches!(e, ResultsError::Input(_)));
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");

        fs::write(&path, "{\"meta\": ").unwrap();
        let e = failed_names(&path).unwrap_err();
        assert!(matches!(e, ResultsError::Parse { .. }));
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    }
}
