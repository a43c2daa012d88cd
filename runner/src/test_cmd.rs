//! `ktvmm test` (minimal form): runs guests one after another, each in its
//! own `ktvmm run` process, and prints a verdict per guest and a summary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ktvmm_vmm::outcome::EXIT_TIMEOUT;

use crate::bundled::{self, SUITE};
use crate::cli::TestArgs;

/// Exit code by which a guest says it skipped (the kvm-unit-tests convention).
const EXIT_SKIP: i32 = 77;
/// Lines of a failed test's output shown under its verdict.
const TAIL_LINES: usize = 15;

struct TestSpec {
    name: String,
    guest: String,
    smp: u32,
    mem_mib: u64,
    args: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Pass,
    Fail,
    Skip,
    Timeout,
}

impl Status {
    fn from_exit(code: Option<i32>) -> Self {
        match code {
            Some(0) => Status::Pass,
            Some(EXIT_SKIP) => Status::Skip,
            Some(c) if c == i32::from(EXIT_TIMEOUT) => Status::Timeout,
            _ => Status::Fail,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Timeout => "TIMEOUT",
        }
    }
}

fn specs(args: &TestArgs) -> Vec<TestSpec> {
    if args.paths.is_empty() {
        return SUITE
            .iter()
            .map(|t| TestSpec {
                name: t.name.to_string(),
                guest: format!("{}{}", bundled::PREFIX, t.guest),
                smp: t.smp,
                mem_mib: t.mem_mib,
                args: t.args.to_string(),
            })
            .collect();
    }
    args.paths
        .iter()
        .map(|path: &PathBuf| TestSpec {
            name: path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
            guest: path.display().to_string(),
            smp: 1,
            mem_mib: 128,
            args: String::new(),
        })
        .collect()
}

/// Runs the tests; returns 0 when none failed.
pub fn test(args: TestArgs) -> Result<u8> {
    let specs = specs(&args);
    if args.list {
        for spec in &specs {
            println!("{}", spec.name);
        }
        return Ok(0);
    }
    let exe = std::env::current_exe().context("cannot find the ktvmm executable")?;
    let started = Instant::now();
    let mut results = Vec::new();
    for spec in &specs {
        let t0 = Instant::now();
        let output = Command::new(&exe)
            .arg("run")
            .arg(&spec.guest)
            .args(["--smp", &spec.smp.to_string()])
            .args(["--memory", &spec.mem_mib.to_string()])
            .arg(format!("--append={}", spec.args))
            .args(["--timeout", &args.timeout.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{}: cannot start ktvmm run", spec.name))?;
        let elapsed = t0.elapsed();
        let status = Status::from_exit(output.status.code());
        println!("{:<7} {} ({})", status.label(), spec.name, millis(elapsed));
        if matches!(status, Status::Fail | Status::Timeout) {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                println!("        | {line}");
            }
        }
        results.push((spec.name.as_str(), status));
    }

    let count = |s: Status| results.iter().filter(|(_, r)| *r == s).count();
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, s)| matches!(s, Status::Fail | Status::Timeout))
        .map(|(n, _)| *n)
        .collect();
    println!();
    println!(
        "summary: {} passed, {} failed, {} skipped ({} timed out) in {}",
        count(Status::Pass),
        failed.len(),
        count(Status::Skip),
        count(Status::Timeout),
        millis(started.elapsed())
    );
    if !failed.is_empty() {
        println!("not passed: {}", failed.join(", "));
    }
    Ok(u8::from(!failed.is_empty()))
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
