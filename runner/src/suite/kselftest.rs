//! Kernel selftests as suites, read the way the kernel's own runner
//! (`run_kselftest.sh`, `kselftest/runner.sh`) reads them:
//!
//! - a target's build directory (`tools/testing/selftests/kvm`): its
//!   Makefile's `TEST_GEN_PROGS`, `TEST_CUSTOM_PROGS` and `TEST_PROGS`, as
//!   `make emit_tests` lists them, and nothing else (helpers in
//!   `TEST_GEN_PROGS_EXTENDED` and `TEST_FILES` are left out);
//! - the selftests directory itself, with `TARGETS` as `make` takes it;
//! - a kselftest install directory (`kselftest-list.txt`,
//!   `run_kselftest.sh`);
//! - the `*.test` files of the KVM selftests runner (one command line each).
//!
//! Tests are named as the kernel's runner names them (the file's base name,
//! `collection:name` when a run holds several collections), get their
//! collection's `settings` timeout (45 s without one), run in their own
//! directory, and are started as `runner.sh` starts them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ExecTest, SuiteError, TestKind, TestSpec};

/// `kselftest/runner.sh`'s `kselftest_default_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(45);
/// `timeout=0` in `settings` turns the limit off (`timeout 0` never fires);
/// a limit this long is the same in practice and keeps deadline arithmetic
/// simple.
const NO_LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tests that must run with nothing else running, unless a suite says
/// otherwise: the kernel's performance and stress tests measure or load
/// the machine, and next to other tests they run past their limits.
pub const ALONE_BY_DEFAULT: [&str; 2] = ["*_perf_test", "*_stress_test"];
/// Listing files (`kselftest-list.txt`, `settings`, `*.test`) are small;
/// anything bigger is not one.
const MAX_LIST_BYTES: u64 = 1 << 20;
/// `make` prints the lists of one Makefile: a few KiB.
const MAX_MAKE_OUTPUT: u64 = 4 << 20;
/// How long `make` may take to print a Makefile's test lists.
const MAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds of selftest directory `ktvmm test DIR` understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A target's directory in a selftests tree (`.../selftests/kvm`).
    Target {
        /// The target, as `TARGETS` spells it (`kvm`, `drivers/net`).
        collection: String,
    },
    /// `tools/testing/selftests` itself.
    Root,
    /// What `make install INSTALL_PATH=DIR` wrote.
    Install,
}

/// What kind of selftest directory `dir` is, if any.
pub fn layout(dir: &Path) -> Option<Layout> {
    if dir.join("kselftest-list.txt").is_file() {
        return Some(Layout::Install);
    }
    if is_selftests_root(dir) {
        return Some(Layout::Root);
    }
    let (_, collection) = target_of(dir)?;
    Some(Layout::Target { collection })
}

/// The selftests directory: `lib.mk` and the runner's own scripts.
fn is_selftests_root(dir: &Path) -> bool {
    dir.join("lib.mk").is_file() && dir.join("kselftest/runner.sh").is_file()
}

/// For a directory with a Makefile inside a selftests tree: the tree's root
/// and the target's name relative to it.
fn target_of(dir: &Path) -> Option<(PathBuf, String)> {
    if !dir.join("Makefile").is_file() {
        return None;
    }
    let dir = std::path::absolute(dir).ok()?;
    let root = dir.ancestors().skip(1).find(|a| is_selftests_root(a))?;
    let collection = dir.strip_prefix(root).ok()?.to_string_lossy().into_owned();
    Some((root.to_path_buf(), collection))
}

/// Every test of the selftest directory `dir`, in the kernel runner's order.
pub fn load(dir: &Path, layout: &Layout) -> Result<Vec<TestSpec>, SuiteError> {
    // Tests start in their own directory: a relative path would then be
    // looked up from there.
    let dir = &std::path::absolute(dir).map_err(|e| SuiteError::path(dir, e.to_string()))?;
    let mut listed = Vec::new();
    match layout {
        Layout::Install => listed = install_list(dir)?,
        Layout::Target { collection } => {
            listed.extend(target_list(dir, collection)?);
        }
        Layout::Root => {
            let targets = std::env::var("TARGETS").unwrap_or_default();
            if targets.trim().is_empty() {
                return Err(SuiteError::path(
                    dir,
                    "a kernel selftests directory: say which targets to run, as make does \
                     (TARGETS=\"kvm vfio\" ktvmm test DIR), or give a target's directory \
                     (DIR/kvm)"
                        .into(),
                ));
            }
            for target in targets.split_whitespace() {
                let target_dir = dir.join(target);
                if !target_dir.join("Makefile").is_file() {
                    return Err(SuiteError::path(
                        &target_dir,
                        format!("TARGETS names '{target}', which has no Makefile here"),
                    ));
                }
                listed.extend(target_list(&target_dir, target)?);
            }
        }
    }
    // One collection keeps runner.sh's bare names; several need theirs.
    let several = listed
        .windows(2)
        .any(|w| w[0].collection != w[1].collection);
    let mut settings: Vec<(String, Duration)> = Vec::new();
    let mut tests = Vec::new();
    for item in listed {
        let timeout = match settings.iter().find(|(c, _)| *c == item.collection) {
            Some((_, t)) => *t,
            None => {
                let t = timeout_setting(&item.collection_dir.join("settings"))?;
                settings.push((item.collection.clone(), t));
                t
            }
        };
        let base = item
            .file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let name = if several {
            format!("{}:{base}", item.collection)
        } else {
            base.clone()
        };
        tests.push(TestSpec {
            exclusive: alone_by_default(&base),
            variant: None,
            kind: TestKind::Exec(how_to_run(&item.file, &item.collection_dir)),
            name,
            timeout: Some(timeout),
            groups: vec![item.collection],
            source: item.source,
        });
    }
    Ok(tests)
}

/// Whether a test of this base name runs alone unless told otherwise.
pub fn alone_by_default(name: &str) -> bool {
    ALONE_BY_DEFAULT
        .iter()
        .any(|p| crate::select::matches(p, name))
}

/// One test as the kernel's runner lists it.
struct Listed {
    collection: String,
    collection_dir: PathBuf,
    file: PathBuf,
    source: PathBuf,
}

/// `collection:test` lines of `kselftest-list.txt`; the tests are in
/// `DIR/collection/`.
fn install_list(dir: &Path) -> Result<Vec<Listed>, SuiteError> {
    let list = dir.join("kselftest-list.txt");
    let text = read_small(&list)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((collection, test)) = line.split_once(':').filter(|(c, t)| {
            !c.is_empty() && !t.is_empty() && !t.contains('/') && !c.split('/').any(|p| p == "..")
        }) else {
            return Err(SuiteError::Line {
                path: list.clone(),
                line: i + 1,
                message: format!("{line:?} is not COLLECTION:TEST"),
            });
        };
        let collection_dir = dir.join(collection);
        out.push(Listed {
            collection: collection.to_string(),
            file: collection_dir.join(test),
            collection_dir,
            source: list.clone(),
        });
    }
    Ok(out)
}

/// The tests `make emit_tests` would list for the target in `dir`, with
/// their paths: asked of the target's own Makefile, so the kernel's
/// per-architecture lists and conditions apply as they do for the kernel.
fn target_list(dir: &Path, collection: &str) -> Result<Vec<Listed>, SuiteError> {
    let makefile = dir.join("Makefile");
    let output = make_lists(dir)?;
    let mut out = Vec::new();
    for line in output.lines() {
        // TEST_GEN_PROGS and TEST_CUSTOM_PROGS carry $(OUTPUT), TEST_PROGS
        // is relative to the source directory: joining handles both.
        let Some(words) = line
            .strip_prefix("ktvmm-gen-progs:")
            .or_else(|| line.strip_prefix("ktvmm-progs:"))
        else {
            continue;
        };
        for word in words.split_whitespace() {
            out.push(Listed {
                collection: collection.to_string(),
                collection_dir: dir.to_path_buf(),
                file: dir.join(word),
                source: makefile.clone(),
            });
        }
    }
    Ok(out)
}

/// Asks `make` for the target's test lists. The rule is added with a
/// second `-f` read from stdin, so nothing is written into the tree.
fn make_lists(dir: &Path) -> Result<String, SuiteError> {
    const RULE: &str = ".PHONY: ktvmm-list-tests\nktvmm-list-tests:\n\
        \t$(info ktvmm-gen-progs: $(TEST_GEN_PROGS) $(TEST_CUSTOM_PROGS))\n\
        \t$(info ktvmm-progs: $(TEST_PROGS))\n\t@:\n";
    let makefile = dir.join("Makefile");
    let fail = |message: String| SuiteError::path(&makefile, message);
    let mut cmd = Command::new("make");
    cmd.args(["-s", "--no-print-directory", "-C"])
        .arg(dir)
        .args(["-f", "Makefile", "-f", "-", "ktvmm-list-tests"]);
    let ran = crate::helper_cmd::run(cmd, RULE.as_bytes(), MAKE_TIMEOUT, MAX_MAKE_OUTPUT)
        .map_err(|e| fail(format!("cannot run make to list its tests: {e}")))?;
    let Some(status) = ran.status else {
        return Err(fail(format!(
            "make did not list its tests within {} s",
            MAKE_TIMEOUT.as_secs()
        )));
    };
    let (out, err) = (ran.stdout, ran.stderr);
    if !status.success() {
        let said = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fail(format!(
            "make could not list its tests ({status}): {said}"
        )));
    }
    Ok(out)
}

/// `timeout=N` from a collection's `settings` file (the runner reads each
/// `key=value` line; `timeout` is the one that concerns a test's run).
fn timeout_setting(settings: &Path) -> Result<Duration, SuiteError> {
    if !settings.is_file() {
        return Ok(DEFAULT_TIMEOUT);
    }
    let text = read_small(settings)?;
    let mut timeout = DEFAULT_TIMEOUT;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(value) = line.strip_prefix("timeout=") {
            let secs: u64 = value.trim().parse().map_err(|_| SuiteError::Line {
                path: settings.to_path_buf(),
                line: i + 1,
                message: format!("timeout={value}: not a number of seconds"),
            })?;
            timeout = if secs == 0 {
                NO_LIMIT
            } else {
                Duration::from_secs(secs)
            };
        }
    }
    Ok(timeout)
}

/// How `runner.sh` starts `file`: an executable as it is (a script without
/// `#!` through `/bin/sh`, which is what `execvp` falls back to); a file
/// that is not executable with the collection's `ksft_runner.sh`, or with
/// the interpreter of its `#!` line. What the kernel's runner reports as
/// `not ok` without running anything (a missing file, or neither) fails the
/// same way here, saying why.
fn how_to_run(file: &Path, collection_dir: &Path) -> ExecTest {
    let cwd = file.parent().map(Path::to_path_buf);
    let exec = |program: PathBuf, args: Vec<String>| ExecTest {
        path: program,
        args,
        env: Vec::new(),
        cwd: cwd.clone(),
    };
    let shown = file.display().to_string();
    let Ok(meta) = std::fs::metadata(file) else {
        return refuse(&format!("{shown} is missing (not built?)"));
    };
    let head = first_bytes(file);
    if meta.permissions().mode() & 0o111 != 0 {
        if head.starts_with(b"\x7fELF") || head.starts_with(b"#!") {
            return exec(
                file.to_path_buf(),
                extra_args(file, |k| std::env::var(k).ok()),
            );
        }
        let mut args = vec![shown];
        args.extend(extra_args(file, |k| std::env::var(k).ok()));
        return exec("/bin/sh".into(), args);
    }
    let runner = collection_dir.join("ksft_runner.sh");
    if std::fs::metadata(&runner).is_ok_and(|m| m.permissions().mode() & 0o111 != 0) {
        return exec(runner, vec![shown]);
    }
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = String::from_utf8_lossy(line.split(|&b| b == b'\n').next().unwrap_or(b""));
        let mut words = line.split_whitespace().map(str::to_string);
        if let Some(interpreter) = words.next() {
            let mut args: Vec<String> = words.collect();
            args.push(shown);
            return exec(interpreter.into(), args);
        }
    }
    refuse(&format!(
        "{shown} is not executable and has no #! line: the kernel's runner fails it without running it"
    ))
}

/// The arguments `runner.sh` gives an executable test: the words of
/// `KSELFTEST_<NAME>_ARGS`, NAME the file's base name with blanks and
/// control characters dropped, anything else that is not alphanumeric
/// made `_`, upper-cased (`state_test` -> `KSELFTEST_STATE_TEST_ARGS`),
/// split on whitespace as the shell splits an unquoted variable.
fn extra_args(file: &Path, var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let base = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let sanitized: String = base
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    var(&format!("KSELFTEST_{sanitized}_ARGS"))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A test that fails at once, with `message` in its log.
fn refuse(message: &str) -> ExecTest {
    ExecTest {
        path: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo \"ktvmm: $1\" >&2; exit 1".into(),
            "ktvmm".into(),
            message.into(),
        ],
        env: Vec::new(),
        cwd: None,
    }
}

fn first_bytes(file: &Path) -> Vec<u8> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = Vec::new();
    // Non-blocking: a FIFO in the tree must not hang discovery.
    let opened = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file);
    if let Ok(f) = opened
        && f.metadata().is_ok_and(|m| m.is_file())
    {
        let _ = f.take(256).read_to_end(&mut head);
    }
    head
}

/// A listing file (`kselftest-list.txt`, `settings`, a `*.test` file),
/// whole, through the one bounded reader every input goes through.
fn read_small(path: &Path) -> Result<String, SuiteError> {
    Ok(ktvmm_vmm::input::read_text(
        path,
        MAX_LIST_BYTES,
        "a kselftest listing",
    )?)
}

/// Tests from the KVM selftests runner's `*.test` files under `dir`: each
/// holds one command line (`#` comments and blank lines aside), the program
/// relative to the selftest target the file sits in (or to `dir` outside
/// one); the test is named by the file's path under `dir` without `.test`.
pub fn load_test_files(dir: &Path, files: &[PathBuf]) -> Result<Vec<TestSpec>, SuiteError> {
    let mut tests = Vec::new();
    for file in files {
        let text = read_small(file)?;
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let line_error = |line: usize, message: String| SuiteError::Line {
            path: file.clone(),
            line,
            message,
        };
        let Some((line, command)) = lines.next() else {
            return Err(line_error(1, "no command line in it".into()));
        };
        if let Some((extra, _)) = lines.next() {
            return Err(line_error(
                extra,
                "a second command line: a .test file holds one".into(),
            ));
        }
        let words = super::kut::shell_words(command).map_err(|e| line_error(line, e))?;
        let Some((program, args)) = words.split_first() else {
            return Err(line_error(line, "no command line in it".into()));
        };
        let target = file
            .parent()
            .and_then(|p| p.ancestors().find_map(target_of))
            .map(|(root, collection)| root.join(collection));
        let base = target.clone().unwrap_or_else(|| dir.to_path_buf());
        let path = base.join(program);
        if !path.is_file() {
            return Err(line_error(
                line,
                format!("program {} is not there (not built?)", path.display()),
            ));
        }
        let timeout = match &target {
            Some(t) => timeout_setting(&t.join("settings"))?,
            None => DEFAULT_TIMEOUT,
        };
        let relative = file.strip_prefix(dir).unwrap_or(file);
        let base_name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        tests.push(TestSpec {
            name: relative.with_extension("").to_string_lossy().into_owned(),
            kind: TestKind::Exec(ExecTest {
                path: std::path::absolute(&path).unwrap_or(path.clone()),
                args: args.to_vec(),
                env: Vec::new(),
                cwd: path.parent().map(Path::to_path_buf),
            }),
            timeout: Some(timeout),
            groups: Vec::new(),
            source: file.clone(),
            exclusive: alone_by_default(&base_name),
            variant: None,
        });
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ktvmm-kselftest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn settings_give_the_timeout() {
        let d = scratch("settings");
        let settings = d.join("settings");
        assert_eq!(timeout_setting(&settings).unwrap(), DEFAULT_TIMEOUT);
        std::fs::write(&settings, "# c\ntimeout=120\n").unwrap();
        assert_eq!(
            timeout_setting(&settings).unwrap(),
            Duration::from_secs(120)
        );
        std::fs::write(&settings, "timeout=0\n").unwrap();
        assert_eq!(timeout_setting(&settings).unwrap(), NO_LIMIT);
        std::fs::write(&settings, "other=1\ntimeout=2m\n").unwrap();
        let err = timeout_setting(&settings).unwrap_err().to_string();
        assert!(
            err.ends_with("settings:2: timeout=2m: not a number of seconds"),
            "{err}"
        );
    }

    #[test]
    fn files_start_as_runner_sh_starts_them() {
        let d = scratch("start");
        let write = |name: &str, text: &str, mode: u32| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let elf = write("prog", "\x7fELF....", 0o755);
        assert_eq!(how_to_run(&elf, &d).path, elf);
        assert_eq!(how_to_run(&elf, &d).cwd.as_deref(), Some(d.as_path()));
        let bare = write("bare.sh", "echo hi\n", 0o755);
        let run = how_to_run(&bare, &d);
        assert_eq!(
            (run.path, run.args),
            ("/bin/sh".into(), vec![bare.display().to_string()])
        );
        let interp = write("py.sh", "#!/usr/bin/env python3 -u\nprint(1)\n", 0o644);
        let run = how_to_run(&interp, &d);
        assert_eq!(
            (run.path, run.args),
            (
                "/usr/bin/env".into(),
                vec!["python3".into(), "-u".into(), interp.display().to_string()]
            )
        );
        let missing = how_to_run(&d.join("gone"), &d);
        assert!(missing.args[3].ends_with("gone is missing (not built?)"));
        write("ksft_runner.sh", "#!/bin/sh\n", 0o755);
        let run = how_to_run(&write("data.py", "x\n", 0o644), &d);
        assert_eq!(run.path, d.join("ksft_runner.sh"));
    }

    #[test]
    fn arguments_from_the_environment_as_runner_sh_reads_them() {
        let env = |k: &str| match k {
            "KSELFTEST_DIRTY_LOG_PERF_TEST_ARGS" => Some(" -i 3  -v 2 ".to_string()),
            "KSELFTEST_NX_HUGE_PAGES_TEST_SH_ARGS" => Some("-x".to_string()),
            _ => None,
        };
        assert_eq!(
            extra_args(Path::new("/k/dirty_log_perf_test"), env),
            ["-i", "3", "-v", "2"]
        );
        assert_eq!(
            extra_args(Path::new("x86/nx_huge_pages_test.sh"), env),
            ["-x"]
        );
        assert!(extra_args(Path::new("state_test"), env).is_empty());
    }

    #[test]
    fn layouts() {
        let d = scratch("layouts");
        assert_eq!(layout(&d), None);
        std::fs::create_dir_all(d.join("kselftest")).unwrap();
        std::fs::write(d.join("lib.mk"), "").unwrap();
        std::fs::write(d.join("kselftest/runner.sh"), "").unwrap();
        assert_eq!(layout(&d), Some(Layout::Root));
        std::fs::create_dir_all(d.join("drivers/net")).unwrap();
        std::fs::write(d.join("drivers/net/Makefile"), "").unwrap();
        assert_eq!(
            layout(&d.join("drivers/net")),
            Some(Layout::Target {
                collection: "drivers/net".into()
            })
        );
        assert_eq!(layout(&d.join("drivers")), None);
        std::fs::write(d.join("kselftest-list.txt"), "").unwrap();
        assert_eq!(layout(&d), Some(Layout::Install));
        assert!(alone_by_default("dirty_log_perf_test"));
        assert!(alone_by_default("memslot_modification_stress_test"));
        assert!(!alone_by_default("perf_test_helper"));
    }
}
