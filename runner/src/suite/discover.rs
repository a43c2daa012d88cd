//! From the paths on `ktvmm test`'s command line to a list of tests: suite
//! files, directories searched for them, guest ELFs and host executables.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ktvmm_vmm::boot::loader::is_guest_kernel;
use ktvmm_vmm::input;

use super::file::{self, is_suite_file, stem};
use super::kselftest;
use super::kut;
use super::{ExecTest, GuestTest, SuiteError, TestKind, TestSpec};

/// Every test the paths define, in command-line order; names unique.
pub fn discover(paths: &[PathBuf], host: &kut::Host) -> Result<Vec<TestSpec>, SuiteError> {
    let mut tests = Vec::new();
    for path in paths {
        tests.extend(from_path(path, host)?);
    }
    check_unique(&tests)?;
    Ok(tests)
}

fn from_path(path: &Path, host: &kut::Host) -> Result<Vec<TestSpec>, SuiteError> {
    let meta = fs::metadata(path).map_err(|e| SuiteError::path(path, e.to_string()))?;
    if meta.is_dir() {
        return from_dir(path, host);
    }
    if is_suite_file(path) || path.extension().is_some_and(|e| e == "toml") {
        return file::load(path);
    }
    if kut::is_unittests_cfg(path) {
        return kut::load(path, host);
    }
    match classify(path)? {
        Some(kind) => Ok(vec![plain(path, stem(path), kind)]),
        None => Err(SuiteError::path(
            path,
            "neither a suite file (ktvmm.toml, *.ktvmm.toml), a guest ELF nor an executable".into(),
        )),
    }
}

/// A directory is searched for suite files and kvm-unit-tests'
/// `unittests.cfg`; without any, every guest and executable in it is a test
/// named by its path in the directory.
fn from_dir(dir: &Path, host: &kut::Host) -> Result<Vec<TestSpec>, SuiteError> {
    // A kernel selftests tree lists its own tests: walking it would also
    // find the helper programs and scripts that are not tests.
    if let Some(layout) = kselftest::layout(dir) {
        return kselftest::load(dir, &layout);
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let suites: Vec<&PathBuf> = files
        .iter()
        .filter(|f| is_suite_file(f) || kut::is_unittests_cfg(f))
        .collect();
    if !suites.is_empty() {
        let mut tests = Vec::new();
        for suite in suites {
            if kut::is_unittests_cfg(suite) {
                tests.extend(kut::load(suite, host)?);
            } else {
                tests.extend(file::load(suite)?);
            }
        }
        return Ok(tests);
    }
    let test_files: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "test"))
        .cloned()
        .collect();
    if !test_files.is_empty() {
        return kselftest::load_test_files(dir, &test_files);
    }
    let mut tests = Vec::new();
    for path in &files {
        if let Some(kind) = classify(path)? {
            let relative = path.strip_prefix(dir).unwrap_or(path);
            let name = relative.with_extension("").to_string_lossy().into_owned();
            tests.push(plain(path, name, kind));
        }
    }
    if tests.is_empty() {
        return Err(SuiteError::path(
            dir,
            "no suite files (ktvmm.toml, *.ktvmm.toml), guest ELFs or executables in it".into(),
        ));
    }
    Ok(tests)
}

/// Regular files under `dir`, skipping hidden entries and not following
/// symbolic links to directories (no loops).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SuiteError> {
    let entries = fs::read_dir(dir).map_err(|e| SuiteError::path(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| SuiteError::path(dir, e.to_string()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| SuiteError::path(&path, e.to_string()))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// A file in a directory is read whole to see what it is; no guest or
/// test program is this large.
const MAX_PLAIN: u64 = 1 << 30;

enum Plain {
    Guest,
    Exec,
}

/// A guest kernel, a host executable, or neither.
fn classify(path: &Path) -> Result<Option<Plain>, SuiteError> {
    let bytes = input::read(
        path,
        MAX_PLAIN,
        "a guest or executable found in a directory",
    )?;
    if is_guest_kernel(&bytes) {
        return Ok(Some(Plain::Guest));
    }
    let executable = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    Ok(executable.then_some(Plain::Exec))
}

fn plain(path: &Path, name: String, kind: Plain) -> TestSpec {
    let kind = match kind {
        Plain::Guest => TestKind::Guest(GuestTest::new(path.display().to_string())),
        Plain::Exec => TestKind::Exec(ExecTest {
            path: path.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }),
    };
    TestSpec {
        name,
        kind,
        timeout: None,
        groups: Vec::new(),
        source: path.to_path_buf(),
        exclusive: false,
        variant: None,
    }
}

fn check_unique(tests: &[TestSpec]) -> Result<(), SuiteError> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for test in tests {
        if let Some(first) = seen.insert(&test.name, &test.source) {
            return Err(SuiteError::Duplicate {
                name: test.name.clone(),
                first: first.to_path_buf(),
                second: test.source.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktvmm_vmm::boot::test_images::{elf64, exit_with};

    fn host() -> kut::Host {
        kut::Host::with_cpu(2, false, None)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ktvmm-discover-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn executable(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn names(tests: &[TestSpec]) -> Vec<&str> {
        tests.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn a_directory_of_guests_and_programs() {
        let d = scratch("plain");
        fs::create_dir_all(d.join("x86")).unwrap();
        fs::create_dir_all(d.join(".git")).unwrap();
        fs::write(d.join("a.elf"), elf64(0x10_0000, &exit_with(0), 0)).unwrap();
        executable(&d.join("x86/tool"), "#!/bin/sh\nexit 0\n");
        executable(&d.join(".git/hook"), "#!/bin/sh\n");
        fs::write(d.join("notes.txt"), "not a test").unwrap();
        let tests = discover(std::slice::from_ref(&d), &host()).unwrap();
        assert_eq!(names(&tests), ["a", "x86/tool"]);
        assert!(matches!(tests[0].kind, TestKind::Guest(_)));
        assert!(matches!(tests[1].kind, TestKind::Exec(_)));
    }

    #[test]
    fn suite_files_in_a_directory_win_over_loose_files() {
        let d = scratch("suites");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("g.elf"), elf64(0x10_0000, &exit_with(0), 0)).unwrap();
        fs::write(
            d.join("sub/edu.ktvmm.toml"),
            "[[test]]\nname = \"one\"\nguest = \"../g.elf\"\n",
        )
        .unwrap();
        fs::write(
            d.join("ktvmm.toml"),
            "[[test]]\nname = \"two\"\nguest = \"g.elf\"\n",
        )
        .unwrap();
        assert_eq!(names(&discover(&[d], &host()).unwrap()), ["two", "one"]);
    }

    #[test]
    fn bad_paths_are_named() {
        let d = scratch("bad");
        let err = discover(&[d.join("missing")], &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        fs::write(d.join("notes.txt"), "x").unwrap();
        let err = discover(&[d.join("notes.txt")], &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt: neither"), "{err}");
        let err = discover(std::slice::from_ref(&d), &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no suite files"), "{err}");
        fs::write(d.join("unittests.cfg"), "[x]\n").unwrap();
        let err = discover(&[d.join("unittests.cfg")], &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unittests.cfg:1: [x] has no `file`"), "{err}");
    }

    #[test]
    fn one_name_twice_is_refused() {
        let d = scratch("dup");
        fs::create_dir_all(d.join("b")).unwrap();
        fs::write(d.join("t.elf"), elf64(0x10_0000, &exit_with(0), 0)).unwrap();
        fs::write(d.join("b/t.elf"), elf64(0x10_0000, &exit_with(0), 0)).unwrap();
        let err = discover(&[d.join("t.elf"), d.join("b/t.elf")], &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("two tests are named 't'"), "{err}");
    }
}
