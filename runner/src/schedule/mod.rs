//! Runs tests as child processes, up to `-j` at a time: each in its own
//! process group, stopped at its time limit (SIGTERM, then SIGKILL after a
//! grace period), all stopped on Ctrl-C. Reporters hear about it through
//! [`Observer`].

mod child;

pub use child::repro;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use child::Running;

use crate::interrupt;
use crate::suite::{TestKind, TestSpec, Vmm};
use crate::verdict::{self, Ending, Status, TestResult};

/// How often the observer is ticked while tests run.
const TICK: Duration = Duration::from_millis(100);
/// A guest's VMM stops it at its limit; the runner steps in only this much
/// later, should the VMM itself be stuck.
const GUEST_BACKSTOP: Duration = Duration::from_secs(2);

/// One test to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// What to run.
    pub spec: TestSpec,
    /// Which repetition (1-based).
    pub iteration: u32,
    /// Where its output goes.
    pub log: PathBuf,
    /// Its time limit.
    pub timeout: Duration,
}

/// How to run the jobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tests at a time.
    pub jobs: usize,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The `ktvmm` binary, which boots guests.
    pub ktvmm: PathBuf,
}

/// What the scheduler reports as it goes.
pub trait Observer {
    /// A test has started.
    fn started(&mut self, job: &Job);
    /// A test has finished.
    fn finished(&mut self, job: &Job, result: &TestResult);
    /// Time passes: `running` are the tests under way, with their elapsed
    /// times. Called about every 100 ms.
    fn tick(&mut self, running: &[(&Job, Duration)]);
}

/// The end of a scheduler run.
pub struct Finished {
    /// Results of the tests that ran, in job order.
    pub results: Vec<TestResult>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Interrupted,
}

struct Slot {
    running: Running,
    started: Instant,
    deadline: Instant,
    stop: Option<Stop>,
    kill_at: Option<Instant>,
}

/// Runs `jobs`; returns when all have finished or Ctrl-C stopped the run.
pub fn run(jobs: &[Job], options: &Options, observer: &mut dyn Observer) -> Finished {
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    let mut results: Vec<Option<TestResult>> = vec![None; jobs.len()];
    let mut next = 0;
    let mut seen_requests = interrupt::requests();
    let mut interrupted = false;

    loop {
        while !interrupted && slots.len() < options.jobs.max(1) && next < jobs.len() {
            let job = &jobs[next];
            // A test that must run alone waits for the running ones to
            // finish, and nothing starts beside it (order is kept).
            let alone_running = slots.keys().any(|&i| jobs[i].spec.exclusive);
            if alone_running || (job.spec.exclusive && !slots.is_empty()) {
                break;
            }
            observer.started(job);
            let Some(cmd) = child::command(&job.spec, &options.ktvmm, job.timeout, &job.log) else {
                let result = skipped(job);
                observer.finished(job, &result);
                results[next] = Some(result);
                next += 1;
                continue;
            };
            match Running::spawn(cmd, &job.log, done_tx.clone(), next) {
                Ok(running) => {
                    let started = Instant::now();
                    let limit = match &job.spec.kind {
                        // ktvmm stops its guests itself; QEMU does not.
                        TestKind::Guest(g) if g.vmm == Vmm::Ktvmm => job.timeout + GUEST_BACKSTOP,
                        TestKind::Guest(_) => job.timeout,
                        TestKind::Exec(_) | TestKind::Skip(_) => job.timeout,
                    };
                    slots.insert(
                        next,
                        Slot {
                            running,
                            started,
                            deadline: started + limit,
                            stop: None,
                            kill_at: None,
                        },
                    );
                }
                Err(e) => {
                    let result = cannot_start(job, &e);
                    observer.finished(job, &result);
                    results[next] = Some(result);
                }
            }
            next += 1;
        }
        if slots.is_empty() && (interrupted || next == jobs.len()) {
            break;
        }

        let now = Instant::now();
        let wake = slots
            .values()
            .map(|s| s.kill_at.unwrap_or(s.deadline))
            .min()
            .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
        // Collect every test that is done, then look at the clock: a
        // stream of fast tests must not delay a slow one's time limit.
        let mut done = match done_rx.recv_timeout(wake) {
            Ok(index) => Some(index),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
        };
        while let Some(index) = done {
            if let Some(slot) = slots.remove(&index) {
                let result = finish(&jobs[index], slot);
                observer.finished(&jobs[index], &result);
                results[index] = Some(result);
            }
            done = done_rx.try_recv().ok();
        }

        let now = Instant::now();
        let requests = interrupt::requests();
        if requests > seen_requests {
            let urgent = interrupted || requests - seen_requests > 1;
            seen_requests = requests;
            interrupted = true;
            for slot in slots.values_mut() {
                slot.stop = Some(Stop::Interrupted);
                slot.running.signal(libc::SIGTERM);
                slot.kill_at = Some(if urgent { now } else { now + options.grace });
            }
        }
        for slot in slots.values_mut() {
            if slot.kill_at.is_some_and(|t| now >= t) {
                slot.running.signal(libc::SIGKILL);
            } else if slot.stop.is_none() && now >= slot.deadline {
                slot.stop = Some(Stop::TimedOut);
                slot.running.signal(libc::SIGTERM);
                slot.kill_at = Some(now + options.grace);
            }
        }
        let mut running: Vec<(usize, Duration)> = slots
            .iter()
            .map(|(&i, s)| (i, now.duration_since(s.started)))
            .collect();
        running.sort_unstable_by_key(|&(i, _)| i);
        let running: Vec<(&Job, Duration)> =
            running.into_iter().map(|(i, d)| (&jobs[i], d)).collect();
        observer.tick(&running);
    }

    Finished {
        results: results.into_iter().flatten().collect(),
        interrupted,
    }
}

fn finish(job: &Job, slot: Slot) -> TestResult {
    let duration = slot.started.elapsed();
    let exited = slot.running.reap();
    let ending = match slot.stop {
        Some(Stop::TimedOut) => Ending::TimedOut,
        Some(Stop::Interrupted) => Ending::Interrupted,
        None => exited,
    };
    let log_text = std::fs::read(&job.log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (status, mut reason) = match &job.spec.kind {
        TestKind::Guest(g) if g.vmm != Vmm::Ktvmm => match ending {
            Ending::Exited(code) => match crate::envs::qemu_exit(code) {
                Ok(code) => verdict::guest_status(Ending::Exited(code), g.exit_codes),
                Err(why) => (Status::Fail, Some(why)),
            },
            // QEMU's own complaint (e.g. a device's `hw_error`) says why.
            Ending::Signalled(signal) => {
                let said = log_text.lines().rev().find(|l| l.starts_with("qemu"));
                let mut why = format!("QEMU died of {}", verdict::signal_name(signal));
                if let Some(line) = said {
                    why = format!("{why}: {}", line.trim());
                }
                (Status::Fail, Some(why))
            }
            other => verdict::guest_status(other, g.exit_codes),
        },
        TestKind::Guest(g) => verdict::guest_status(ending, g.exit_codes),
        TestKind::Exec(_) | TestKind::Skip(_) => verdict::exec_status(ending),
    };
    if status == Status::Timeout {
        reason = Some(format!("timed out after {} s", job.timeout.as_secs_f64()));
    }
    if let (TestKind::Guest(_), true) = (&job.spec.kind, status != Status::Pass) {
        // `ktvmm run` says what went wrong on its last `ktvmm:` line.
        if let Some(line) = log_text.lines().rev().find(|l| l.starts_with("ktvmm: ")) {
            reason = Some(line["ktvmm: ".len()..].to_string());
        }
    }
    let subtests = crate::subtests::count(&log_text);
    // The test's own words: the skip's reason, the failed assertion or
    // subtests.
    let reason = crate::reasons::explain(status, reason, &log_text, subtests.as_ref());
    TestResult {
        name: job.spec.name.clone(),
        status,
        duration,
        exit_code: match exited {
            Ending::Exited(code) => Some(code),
            _ => None,
        },
        reason,
        log: job.log.clone(),
        subtests,
        forensics: (status == Status::Timeout)
            .then(|| hang_report(&child::outcome_path(&job.log)))
            .flatten(),
        iteration: job.iteration,
    }
}

/// The vCPU snapshots `ktvmm run` wrote into its outcome file on timeout.
fn hang_report(outcome: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(outcome).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("vcpus").cloned()
}

fn cannot_start(job: &Job, error: &std::io::Error) -> TestResult {
    let what = match &job.spec.kind {
        TestKind::Guest(_) | TestKind::Skip(_) => "ktvmm".to_string(),
        TestKind::Exec(e) => e.path.display().to_string(),
    };
    let message = format!("cannot start {what}: {error}");
    let _ = std::fs::write(&job.log, format!("ktvmm test: {message}\n"));
    TestResult {
        name: job.spec.name.clone(),
        status: Status::Error,
        duration: Duration::ZERO,
        exit_code: None,
        reason: Some(message),
        log: job.log.clone(),
        subtests: None,
        forensics: None,
        iteration: job.iteration,
    }
}

fn skipped(job: &Job) -> TestResult {
    let reason = match &job.spec.kind {
        TestKind::Skip(reason) => reason.as_str(),
        _ => "skipped",
    };
    let _ = std::fs::write(&job.log, format!("SKIP: {reason}\n"));
    TestResult {
        name: job.spec.name.clone(),
        status: Status::Skip,
        duration: Duration::ZERO,
        exit_code: None,
        reason: Some(reason.to_string()),
        log: job.log.clone(),
        subtests: None,
        forensics: None,
        iteration: job.iteration,
    }
}
