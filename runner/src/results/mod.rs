//! The persisted output of `ktvmm test`: the results directory, and the
//! `results.json`, `junit.xml`, `results.tap` and `report.html` reports
//! written into it from the [`TestResult`]s and [`RunMeta`] of a run.

mod dir;
mod json;
mod junit;
mod meta;
mod report;
mod tap;
mod utc;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

// The API the scheduler calls; allowed until it lands and uses all of it.
#[allow(unused_imports)]
pub use dir::{LOGS, OutputDir, previous_results, previous_results_in};
#[allow(unused_imports)]
pub use json::{ResultsFile, failed_names, read as read_json, write as write_json};
#[allow(unused_imports)]
pub use junit::{shell_quote, write as write_junit};
#[allow(unused_imports)]
pub use meta::{UNKNOWN, kvm_module_in};
#[allow(unused_imports)]
pub use report::{REPORT_HTML, escape as html_escape, write_page as write_html_page, write_report};
#[allow(unused_imports)]
pub use tap::write as write_tap;

use crate::verdict::{RunMeta, TestResult};

/// `results.json`'s file name in the output directory.
pub const RESULTS_JSON: &str = "results.json";
/// `junit.xml`'s file name in the output directory.
pub const JUNIT_XML: &str = "junit.xml";
/// `results.tap`'s file name in the output directory.
pub const RESULTS_TAP: &str = "results.tap";

/// Why results could not be written or read back. Each variant names the
/// path; the underlying error is the [`source`](std::error::Error::source),
/// so `{:#}` through anyhow prints both without repeating either.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A directory could not be created.
    #[error("{}: cannot create the directory", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `latest` link could not be pointed at the new run.
    #[error("{}: cannot update the link", path.display())]
    Link {
        /// The link.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A report could not be written.
    #[error("{}: cannot write", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another run is writing into the directory.
    #[error(
        "{}: another ktvmm test (pid {holder}) is writing its results here; wait for it to end or choose another -o DIR",
        path.display()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid the lock file names.
        holder: String,
    },
    /// A previous run's results are not a regular file, too large or
    /// unreadable.
    #[error(transparent)]
    Input(#[from] ktvmm_vmm::input::InputError),
    /// A previous run's results could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A previous run's `results.json` is not one.
    #[error("{}: not a ktvmm results file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// Results could not be put into JSON (not expected to happen: every
    /// field serializes).
    #[error("{}: cannot serialize the results", path.display())]
    Serialize {
        /// The file it was for.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// `--rerun-failed` with no earlier run to take the failures from.
    #[error("{}: no previous run's results here (run without --rerun-failed first)", path.display())]
    NoPreviousRun {
        /// Where the results were looked for.
        path: PathBuf,
    },
}

/// Writes `results.json`, `junit.xml`, `results.tap` and `report.html`
/// into `dir`.
///
/// Each file is replaced atomically, so this may be called again as tests
/// finish (a run stopped in between leaves the last complete set).
pub fn write_all(
    dir: &OutputDir,
    meta: &RunMeta,
    results: &[TestResult],
) -> Result<(), ResultsError> {
    write_json(&dir.path().join(RESULTS_JSON), meta, results)?;
    write_junit(&dir.path().join(JUNIT_XML), dir.path(), meta, results)?;
    write_tap(&dir.path().join(RESULTS_TAP), meta, results)?;
    write_report(dir.path(), meta, results)
}

/// The names of the tests that failed in the previous run, for
/// `--rerun-failed`: its `results.json` is in `output` if given, else in
/// the run `ktvmm-results/latest` points at. Call it before creating this
/// run's [`OutputDir`], which moves the link (and, with the same
/// `--output`, will replace the file).
pub fn previous_failures(output: Option<&Path>) -> Result<Vec<String>, ResultsError> {
    failed_names(&previous_results(output)?)
}

/// The name a report shows for a result: the test's name, marked with the
/// iteration after the first so repeats can be told apart.
fn display_name(result: &TestResult) -> String {
    if result.iteration > 1 {
        format!("{} (iteration {})", result.name, result.iteration)
    } else {
        result.name.clone()
    }
}

/// Replaces `path` with `contents` atomically: written to a temporary file
/// beside it, then renamed over it, so a reader (or a run cut short by
/// Ctrl-C) sees the old file or the new one, never half of one.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ResultsError> {
    let err = |source| ResultsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    // Beside the target, so the rename stays within one filesystem; the pid
    // keeps two runs sharing an --output directory off each other's file.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        // Durable before it becomes visible: a crash after the rename must
        // not leave an empty file under the real name.
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared by the results tests: scratch directories and sample records.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use crate::verdict::{RunMeta, Status, TestResult};

    /// A fresh, empty directory under the system temp dir, removed on drop.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new(tag: &str) -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "ktvmm-results-test-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn meta() -> RunMeta {
        RunMeta {
            ktvmm_version: "0.1.0".into(),
            command_line: vec!["ktvmm".into(), "test".into()],
            host_kernel: "6.1.0".into(),
            kvm_module: "kvm_intel".into(),
            cpu: "Test CPU".into(),
            kvm_params: [("kvm_intel.ept".to_string(), "Y".to_string())].into(),
            started_unix: 1_795_395_723,
            duration: Duration::from_millis(12_345),
            interrupted: false,
            notices: Vec::new(),
            selection: None,
            kvm_configs: Default::default(),
        }
    }

    pub fn result(name: &str, status: Status) -> TestResult {
        let failing = status != Status::Pass;
        TestResult {
            name: name.into(),
            status,
            duration: Duration::from_millis(1_500),
            exit_code: match status {
                Status::Pass | Status::Flaky => Some(0),
                Status::Fail | Status::XFail => Some(1),
                Status::XPass => Some(0),
                Status::Skip => Some(77),
                Status::Timeout | Status::Error => None,
            },
            reason: failing.then(|| format!("{} reason", status.label())),
            log: PathBuf::from(format!("logs/{name}.log")),
            subtests: None,
            forensics: None,
            kvm_stats: None,
            core: None,
            iteration: 1,
            variant: None,
        }
    }

    /// One result of each status.
    pub fn one_of_each() -> Vec<TestResult> {
        Status::ALL
            .iter()
            .map(|&s| result(&format!("t-{}", s.label().to_lowercase()), s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn write_all_writes_the_four_files_and_no_temporaries() {
        let scratch = Scratch::new("all");
        let dir = OutputDir::create(Some(&scratch.0.join("out"))).unwrap();
        write_all(&dir, &meta(), &one_of_each()).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                dir::LOCK,
                JUNIT_XML,
                "logs",
                REPORT_HTML,
                RESULTS_JSON,
                RESULTS_TAP
            ]
        );
    }

    #[test]
    fn write_error_names_the_file() {
        let scratch = Scratch::new("err");
        let path = scratch.0.join("missing-dir").join(RESULTS_JSON);
        let e = write_json(&path, &meta(), &[]).unwrap_err();
        assert!(matches!(e, ResultsError::Write { .. }));
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    }

    #[test]
    fn repeats_are_named_apart() {
        let mut r = result("a", crate::verdict::Status::Pass);
        assert_eq!(display_name(&r), "a");
        r.iteration = 3;
        assert_eq!(display_name(&r), "a (iteration 3)");
    }
}
