//! What `ktvmm test` prints: a line per finished test (with the end of the
//! log for a failure), a heartbeat while tests run, and the summary.
//!
//! On a terminal the heartbeat is one status line redrawn in place; in a
//! pipe or CI log it is a plain line whenever nothing was printed for a few
//! seconds, so a long test never looks like a hang and a fast suite stays
//! quiet.
//!
//! Not on `indicatif`, weighed for this (issue 21): off a terminal its
//! draw target hides itself and prints nothing, and a CI log is where the
//! heartbeat matters most, so the plain lines after a silence would stay
//! ours beside it: two ways to show one progress. On a terminal, what the
//! line says (the tests running, each with its time) comes from the
//! scheduler's ticks, so indicatif would only take over the redraw (an
//! erase, the line cut to the width), while every verdict line and the
//! summary would have to print through its handle to keep the line intact;
//! that for four more crates (`console`, `portable-atomic`, `unit-prefix`,
//! `unicode-width`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::expect::{Expectation, apply_one};
use crate::schedule::{Job, Observer, repro};
use crate::verdict::RunMeta;
use crate::verdict::{Status, TestResult};

/// Lines of a failed test's log shown under its verdict.
const TAIL_LINES: usize = 15;
/// How often the terminal status line is redrawn.
const TTY_REDRAW: Duration = Duration::from_millis(250);

/// How much to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Only tests that did not pass, and the summary.
    Quiet,
    /// Every finished test.
    Normal,
    /// Also each test as it starts, with its log path.
    Verbose,
}

/// The console reporter.
pub struct Console {
    verbosity: Verbosity,
    tty: bool,
    heartbeat: Duration,
    ktvmm: PathBuf,
    expectations: Vec<Expectation>,
    meta: Option<RunMeta>,
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last_output: Instant,
    status_shown: bool,
    last_redraw: Option<Instant>,
    /// Tests whose failure's log tail has been shown.
    tails_shown: std::collections::HashSet<String>,
}

impl Console {
    /// A console for a run of `total` tests; off a terminal, a heartbeat
    /// line follows `heartbeat` of silence. `ktvmm` is the binary that
    /// reproduction commands name.
    pub fn new(verbosity: Verbosity, total: usize, heartbeat: Duration, ktvmm: PathBuf) -> Self {
        let now = Instant::now();
        Console {
            verbosity,
            tty: std::io::stdout().is_terminal(),
            heartbeat,
            ktvmm,
            expectations: Vec::new(),
            meta: None,
            total,
            done: 0,
            failed: 0,
            started: now,
            last_output: now,
            status_shown: false,
            last_redraw: None,
            tails_shown: Default::default(),
        }
    }

    /// Shows verdicts with `--expect`'s known failures applied (XFAIL,
    /// XPASS), as the summary and the reports will.
    pub fn expect(&mut self, expectations: Vec<Expectation>, meta: RunMeta) {
        self.expectations = expectations;
        self.meta = Some(meta);
    }

    /// A line of the runner's own (not a test's).
    pub fn note(&mut self, text: &str) {
        self.print(&format!("{text}\n"));
    }

    /// Another round of `tests` is about to run (`--until-fail`).
    pub fn next_round(&mut self, tests: usize) {
        self.total += tests;
    }

    /// Prints `text` (whole lines) above the status line.
    fn print(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.status_shown {
            let _ = out.write_all(b"\r\x1b[2K");
            self.status_shown = false;
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.last_output = Instant::now();
        // Redraw the status line at the next tick.
        self.last_redraw = None;
    }

    /// Removes the status line (before the summary).
    pub fn clear_status(&mut self) {
        if self.status_shown {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\r\x1b[2K");
            let _ = out.flush();
            self.status_shown = false;
        }
    }

    fn progress(&self) -> String {
        let failed = if self.failed > 0 {
            format!(", {} not passed", self.failed)
        } else {
            String::new()
        };
        format!(
            "[{}/{}{failed}] {}",
            self.done,
            self.total,
            clock(self.started.elapsed())
        )
    }
}

impl Observer for Console {
    fn started(&mut self, job: &Job) {
        if self.verbosity >= Verbosity::Verbose {
            self.print(&format!(
                "START   {}  (log {})\n",
                display_name(&job.spec.name, job.iteration),
                job.log.display()
            ));
        }
    }

    fn finished(&mut self, job: &Job, result: &TestResult) {
        let mut shown = result.clone();
        if let Some(meta) = &self.meta {
            apply_one(&self.expectations, meta, &mut shown);
        }
        let result = &shown;
        self.done += 1;
        if result.status.is_failure() {
            self.failed += 1;
        }
        let show = match self.verbosity {
            Verbosity::Quiet => result.status.is_failure(),
            _ => true,
        };
        if !show {
            return;
        }
        let mut text = format!(
            "{:<7} {} ({})",
            result.status.label(),
            display_name(&result.name, job.iteration),
            seconds(result.duration)
        );
        if let Some(s) = &result.subtests {
            // An XPASS is one of the failures, as kvm-unit-tests counts it.
            let fail = match s.xpass {
                0 => "fail".to_string(),
                n => format!("fail ({n} xpass)"),
            };
            let parts: Vec<String> = [
                (s.pass, "pass"),
                (s.fail, fail.as_str()),
                (s.kfail, "known fail"),
                (s.xfail, "xfail"),
                (s.skip, "skip"),
                (s.not_run, "not run"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            text += &format!(" [{}]", parts.join(", "));
        }
        if let Some(reason) = result
            .reason
            .as_ref()
            .filter(|_| result.status != Status::Pass)
        {
            text += &format!(": {reason}");
        }
        text.push('\n');
        // The end of the log and the rerun command once per test: a soak's
        // hundredth failure of one test says no more than its first.
        let again = result.status.is_failure() && !self.tails_shown.insert(result.name.clone());
        if result.status.is_failure() && again {
            text += &format!("        log: {}\n", result.log.display());
        } else if result.status.is_failure() {
            for line in crate::printable::tail(&result.log, TAIL_LINES) {
                text += &format!("        | {line}\n");
            }
            text += &format!("        log: {}\n", result.log.display());
            // A test that timed out would run forever when rerun without
            // its limit.
            let limit = (result.status == Status::Timeout).then_some(job.timeout);
            if let Some(command) = repro(&job.spec, &self.ktvmm, limit) {
                text += &format!("        rerun alone: {command}\n");
            }
        }
        self.print(&text);
    }

    fn tick(&mut self, running: &[(&Job, Duration)]) {
        let now = Instant::now();
        let list = running
            .iter()
            .map(|(job, t)| {
                format!(
                    "{} ({})",
                    display_name(&job.spec.name, job.iteration),
                    seconds(*t)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if self.tty {
            if self
                .last_redraw
                .is_some_and(|t| now.duration_since(t) < TTY_REDRAW)
            {
                return;
            }
            self.last_redraw = Some(now);
            let mut line = format!("{} running: {list}", self.progress());
            let width = terminal_width().saturating_sub(1);
            if line.chars().count() > width {
                line = line
                    .chars()
                    .take(width.saturating_sub(3))
                    .collect::<String>()
                    + "...";
            }
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
            self.status_shown = true;
        } else if self.verbosity != Verbosity::Quiet
            && !running.is_empty()
            && now.duration_since(self.last_output) >= self.heartbeat
        {
            // -q: only what did not pass, so no progress lines in a log.
            let line = format!("{} running: {list}\n", self.progress());
            self.print(&line);
        }
    }
}

/// The summary, printed at the end of every run, however it ended: counts
/// by status, wall time, and each test that did not pass with its log.
pub fn summary(results: &[TestResult], wall: Duration, not_run: usize, output: &Path) {
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let mut flaky = String::new();
    for (status, what) in [
        (Status::Flaky, "flaky"),
        (Status::XFail, "expected failures"),
        (Status::XPass, "unexpected passes"),
    ] {
        let n = count(status);
        if n > 0 {
            flaky += &format!(", {n} {what}");
        }
    }
    let mut text = format!(
        "\nsummary: {} passed, {} failed, {} skipped, {} timed out, {} errors{flaky} ({} tests in {})\n",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
        count(Status::Timeout),
        count(Status::Error),
        results.len(),
        seconds(wall)
    );
    if not_run > 0 {
        text += &format!("interrupted: {not_run} tests did not run\n");
    }
    let bad: Vec<&TestResult> = results
        .iter()
        .filter(|r| r.status.is_failure() || matches!(r.status, Status::Flaky | Status::XFail))
        .collect();
    if !bad.is_empty() {
        text += "not passed:\n";
        let width = bad
            .iter()
            .map(|r| display_name(&r.name, r.iteration).chars().count())
            .max()
            .unwrap_or(0);
        // A test that failed in many runs (`--repeat`, `--for`) is listed
        // with its first few; the rest are counted.
        let mut shown: Vec<(&str, usize)> = Vec::new();
        for r in bad {
            let times = match shown.iter_mut().find(|(n, _)| *n == r.name) {
                Some((_, times)) => times,
                None => {
                    shown.push((&r.name, 0));
                    &mut shown.last_mut().expect("just pushed").1
                }
            };
            *times += 1;
            if *times > SAME_TEST_SHOWN {
                continue;
            }
            text += &format!(
                "  {:<7} {:<width$}  {}  ({})\n",
                r.status.label(),
                display_name(&r.name, r.iteration),
                r.log.display(),
                r.reason.as_deref().unwrap_or("failed"),
            );
            if let Some(core) = &r.core {
                text += &format!("          guest core: {}\n", core.display());
            }
        }
        for (name, times) in shown.iter().filter(|(_, t)| *t > SAME_TEST_SHOWN) {
            text += &format!(
                "  ... and {} more runs of {name} that did not pass\n",
                times - SAME_TEST_SHOWN
            );
        }
    }
    text += &skips_by_reason(results);
    text += &format!(
        "results: {} (results.json, junit.xml, results.tap, report.html)\n",
        output.display()
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Runs of one test the summary lists among those that did not pass.
const SAME_TEST_SHOWN: usize = 3;

/// Skipped tests grouped by their reason, most frequent first: a kernel
/// selftests run skips dozens of tests for a handful of reasons (a missing
/// CPU feature or capability), and that is what a reader wants to see.
fn skips_by_reason(results: &[TestResult]) -> String {
    const NAMES_SHOWN: usize = 3;
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for r in results.iter().filter(|r| r.status == Status::Skip) {
        let reason = r.reason.as_deref().unwrap_or("skipped");
        let name = display_name(&r.name, r.iteration);
        match groups.iter_mut().find(|(g, _)| *g == reason) {
            Some((_, names)) => names.push(name),
            None => groups.push((reason, vec![name])),
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    // Stable: equal counts keep the order the tests ran in.
    groups.sort_by_key(|(_, names)| std::cmp::Reverse(names.len()));
    let total: usize = groups.iter().map(|(_, n)| n.len()).sum();
    let mut text = format!("skipped ({total}), by reason:\n");
    for (reason, names) in groups {
        let mut shown = names[..names.len().min(NAMES_SHOWN)].join(", ");
        if names.len() > NAMES_SHOWN {
            shown += &format!(", +{} more", names.len() - NAMES_SHOWN);
        }
        text += &format!("  {:>3}  {reason}  ({shown})\n", names.len());
    }
    text
}

/// `name`, or `name#3` for the third repetition.
pub fn display_name(name: &str, iteration: u32) -> String {
    if iteration > 1 {
        format!("{name}#{iteration}")
    } else {
        name.to_string()
    }
}

/// `0.42 s`, `12.3 s`, `250 ms`.
pub fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(10) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn terminal_width() -> usize {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a read-only query on our own stdout.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_millis(42)), "42 ms");
        assert_eq!(seconds(Duration::from_millis(1234)), "1.23 s");
        assert_eq!(seconds(Duration::from_secs(125)), "125.0 s");
        assert_eq!(clock(Duration::from_secs(125)), "2:05");
        assert_eq!(display_name("edu", 1), "edu");
        assert_eq!(display_name("edu", 3), "edu#3");
    }

    #[test]
    fn skips_are_summarised_by_reason() {
        let skip = |name: &str, reason: &str| TestResult {
            name: name.into(),
            status: Status::Skip,
            duration: Duration::ZERO,
            exit_code: Some(4),
            reason: Some(reason.into()),
            log: "l".into(),
            subtests: None,
            forensics: None,
            core: None,
            kvm_stats: None,
            iteration: 1,
            variant: None,
        };
        let mut results = vec![skip("a", "no VMX")];
        for name in ["b", "c", "d", "e"] {
            results.push(skip(name, "no SVM"));
        }
        results.push(skip("f", "no VMX"));
        let mut pass = skip("p", "");
        pass.status = Status::Pass;
        results.push(pass);
        assert_eq!(
            skips_by_reason(&results),
            "skipped (6), by reason:\n    4  no SVM  (b, c, d, +1 more)\n    2  no VMX  (a, f)\n"
        );
        assert_eq!(skips_by_reason(&results[6..]), "");
    }
}
