//! The output directory of a run: `--output DIR`, or a new timestamped
//! directory under `ktvmm-results/` with a `latest` link to it; and the
//! per-test log files inside it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::utc::Utc;
use super::{RESULTS_JSON, ResultsError};

/// Where runs go without `--output`, relative to the current directory.
pub const BASE_DIR: &str = "ktvmm-results";
/// The link in [`BASE_DIR`] to the newest run's directory.
pub const LATEST: &str = "latest";
/// The subdirectory holding per-test logs.
pub const LOGS: &str = "logs";

/// Longest sanitised stem of a log file name: leaves room for suffixes and
/// `.log` under the usual 255-byte NAME_MAX.
const MAX_STEM: usize = 200;

/// A run's output directory, created and ready for logs and reports.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    // Behind a lock so parallel test workers can ask for log paths through
    // a shared reference.
    logs: Mutex<LogNames>,
    /// Held for the run: a second run into the same `-o DIR` would mix its
    /// logs with this one's and overwrite its results.
    _lock: Option<fs::File>,
}

/// The lock file in an output directory.
pub const LOCK: &str = ".ktvmm-test.lock";

/// The log file names handed out so far, so that no two tests share one.
#[derive(Debug, Default)]
struct LogNames {
    by_test: HashMap<(String, u32), PathBuf>,
    taken: HashSet<String>,
}

impl OutputDir {
    /// Creates the run's directory: `output` if given (it may exist
    /// already), else a new timestamped one under [`BASE_DIR`] in the
    /// current directory, with [`LATEST`] pointed at it.
    pub fn create(output: Option<&Path>) -> Result<OutputDir, ResultsError> {
        match output {
            Some(dir) => OutputDir::at(dir),
            None => OutputDir::create_in(Path::new(BASE_DIR), SystemTime::now()),
        }
    }

    /// Uses `dir` (creating it and its `logs/` if need be), with no
    /// `latest` link: the user chose where it goes.
    pub fn at(dir: &Path) -> Result<OutputDir, ResultsError> {
        create_dir_all(&dir.join(LOGS))?;
        let lock = lock(dir)?;
        let mut out = OutputDir::new(dir.to_path_buf());
        out._lock = Some(lock);
        Ok(out)
    }

    /// Creates a new directory under `base` named for `now` in UTC
    /// (`2026-11-23T01-02-03`, then `-2`, `-3`... if taken) and points
    /// `base/latest` at it.
    pub fn create_in(base: &Path, now: SystemTime) -> Result<OutputDir, ResultsError> {
        create_dir_all(base)?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let stamp = Utc::from_unix(secs).file_name();
        let mut n = 1;
        let (name, path) = loop {
            let name = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let path = base.join(&name);
            // create_dir, not create_dir_all: it fails on an existing
            // directory, which claims the name even against a concurrent run.
            match fs::create_dir(&path) {
                Ok(()) => break (name, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(source) => return Err(ResultsError::CreateDir { path, source }),
            }
        };
        // logs/ before the link, so `latest` never shows a half-made run.
        create_dir_all(&path.join(LOGS))?;
        point_latest(base, &name)?;
        Ok(OutputDir::new(path))
    }

    fn new(path: PathBuf) -> OutputDir {
        OutputDir {
            path,
            logs: Mutex::new(LogNames::default()),
            _lock: None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log file for a test's `iteration` (1-based):
    /// `DIR/logs/<sanitised name>.log`, `<name>.2.log` for iteration 2, and
    /// `<name>~2.log` if another test's name sanitises the same way. Asking
    /// again for the same test and iteration gives the same path.
    pub fn log_path(&self, name: &str, iteration: u32) -> PathBuf {
        // A poisoned lock only means another worker panicked mid-insert;
        // the sets are still consistent enough to hand out unique names.
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), iteration);
        if let Some(path) = logs.by_test.get(&key) {
            return path.clone();
        }
        let mut stem = sanitise(name);
        if iteration > 1 {
            stem = format!("{stem}.{iteration}");
        }
        let mut file = format!("{stem}.log");
        // `~` never survives sanitise(), so a `~k` suffix cannot collide
        // with another test's plain name.
        let mut k = 2;
        while logs.taken.contains(&file) {
            file = format!("{stem}~{k}.log");
            k += 1;
        }
        let path = self.path.join(LOGS).join(&file);
        logs.taken.insert(file);
        logs.by_test.insert(key, path.clone());
        path
    }
}

/// Takes `dir`'s lock (flock: released by the kernel however the run
/// ends), or says which run holds it.
fn lock(dir: &Path) -> Result<fs::File, ResultsError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK);
    let write_error = |source| ResultsError::Write {
        path: path.clone(),
        source,
    };
    let mut file = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(write_error)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(write_error(error));
        }
        let mut holder = String::new();
        let _ = (&file).take(64).read_to_string(&mut holder);
        return Err(ResultsError::Locked {
            path: dir.to_path_buf(),
            holder: holder.trim().to_string(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// A test name made safe as a file name: ASCII letters, digits, `-`, `_`
/// and `.` kept, anything else (`/`, spaces, `:`...) turned into `_`, no
/// leading dot (no hidden files, no `..`), never empty, bounded in length.
fn sanitise(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s
}

fn create_dir_all(path: &Path) -> Result<(), ResultsError> {
    fs::create_dir_all(path).map_err(|source| ResultsError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Points `base/latest` at `base/name` with a relative link (so the tree
/// can be moved or archived), swapped in by rename so that a reader never
/// finds the link missing.
fn point_latest(base: &Path, name: &str) -> Result<(), ResultsError> {
    let link = base.join(LATEST);
    let tmp = base.join(format!(".{LATEST}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let made = std::os::unix::fs::symlink(name, &tmp).and_then(|()| fs::rename(&tmp, &link));
    made.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ResultsError::Link { path: link, source }
    })
}

/// The previous run's `results.json`, for `--rerun-failed`: in `output`
/// if given, else in the run [`BASE_DIR`]`/latest` points at.
pub fn previous_results(output: Option<&Path>) -> Result<PathBuf, ResultsError> {
    match output {
        Some(dir) => existing(dir.join(RESULTS_JSON)),
        None => previous_results_in(Path::new(BASE_DIR)),
    }
}

/// The `results.json` of the run `base/latest` points at. The link is
/// resolved now, so the path stays the old run's even after a new run
/// moves the link.
pub fn previous_results_in(base: &Path) -> Result<PathBuf, ResultsError> {
    let link = base.join(LATEST);
    let target = fs::read_link(&link).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ResultsError::NoPreviousRun { path: link.clone() },
        _ => ResultsError::Read {
            path: link.clone(),
            source,
        },
    })?;
    // A relative target is relative to the link's directory.
    existing(base.join(target).join(RESULTS_JSON))
}

fn existing(path: PathBuf) -> Result<PathBuf, ResultsError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(ResultsError::NoPreviousRun { path })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testutil::Scratch;
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn timestamped_dirs_and_latest_follows_the_newest() {
        let scratch = Scratch::new("latest");
        let base = scratch.0.join(BASE_DIR);
        let first = OutputDir::create_in(&base, at(1_795_395_723)).unwrap();
        assert_eq!(first.path(), base.join("2026-11-23T01-02-03"));
        assert!(first.path().join(LOGS).is_dir());
        assert_eq!(
            fs::read_link(base.join(LATEST)).unwrap(),
            Path::new("2026-11-23T01-02-03")
        );

        // Same second: a suffix, and the link moves on.
        let second = OutputDir::create_in(&base, at(1_795_395_723)).unwrap();
        assert_eq!(second.path(), base.join("2026-11-23T01-02-03-2"));
        let third = OutputDir::create_in(&base, at(1_795_395_724)).unwrap();
        assert_eq!(third.path(), base.join("2026-11-23T01-02-04"));
        assert_eq!(
            fs::read_link(base.join(LATEST)).unwrap(),
            Path::new("2026-11-23T01-02-04")
        );
        // Through the link lands in the newest run; no temporary links left.
        fs::write(third.path().join("marker"), "3").unwrap();
        assert_eq!(fs::read(base.join(LATEST).join("marker")).unwrap(), b"3");
        let entries = fs::read_dir(&base).unwrap().count();
        assert_eq!(entries, 4, "three runs and the link");
    }

    #[test]
    fn explicit_output_is_created_and_reusable() {
        let scratch = Scratch::new("explicit");
        let dir = scratch.0.join("a/b");
        let out = OutputDir::at(&dir).unwrap();
        assert_eq!(out.path(), dir);
        assert!(dir.join(LOGS).is_dir());
        // Not while a run holds it...
        assert!(matches!(
            OutputDir::create(Some(&dir)),
            Err(ResultsError::Locked { .. })
        ));
        // ...but once it has ended.
        drop(out);
        OutputDir::create(Some(&dir)).unwrap();
        assert!(!scratch.0.join("a").join(LATEST).exists());
    }

    #[test]
    fn log_paths_are_sanitised_and_unique() {
        let scratch = Scratch::new("logs");
        let out = OutputDir::at(&scratch.0).unwrap();
        let logs = scratch.0.join(LOGS);
        assert_eq!(out.log_path("x86/apic", 1), logs.join("x86_apic.log"));
        // Same test again: same file.
        assert_eq!(out.log_path("x86/apic", 1), logs.join("x86_apic.log"));
        // Another name that sanitises the same way.
        assert_eq!(out.log_path("x86:apic", 1), logs.join("x86_apic~2.log"));
        assert_eq!(out.log_path("x86 apic", 1), logs.join("x86_apic~3.log"));
        // Repeats.
        assert_eq!(out.log_path("x86/apic", 2), logs.join("x86_apic.2.log"));
        // A name that looks like a repeat's.
        assert_eq!(out.log_path("x86_apic.2", 1), logs.join("x86_apic.2~2.log"));
        assert_eq!(out.log_path("..", 1), logs.join("_...log"));
        assert_eq!(out.log_path("", 1), logs.join("_.log"));
        assert_eq!(out.log_path("é", 1), logs.join("_~2.log"));
        let long = "x".repeat(1000);
        let p = out.log_path(&long, 1);
        assert!(p.file_name().unwrap().len() <= 255);
    }

    #[test]
    fn previous_results_follow_latest_or_output() {
        let scratch = Scratch::new("prev");
        let base = scratch.0.join(BASE_DIR);
        assert!(matches!(
            previous_results_in(&base),
            Err(ResultsError::NoPreviousRun { .. })
        ));
        let run = OutputDir::create_in(&base, at(1_000)).unwrap();
        // A run that wrote no results yet (interrupted before the first).
        assert!(matches!(
            previous_results_in(&base),
            Err(ResultsError::NoPreviousRun { .. })
        ));
        fs::write(run.path().join(RESULTS_JSON), "{}").unwrap();
        let found = previous_results_in(&base).unwrap();
        // Resolved through the link: still the old run after a new one.
        OutputDir::create_in(&base, at(2_000)).unwrap();
        assert_eq!(found, run.path().join(RESULTS_JSON));

        assert_eq!(
            previous_results(Some(run.path())).unwrap(),
            run.path().join(RESULTS_JSON)
        );
    }
}
