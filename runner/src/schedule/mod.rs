//! Runs tests as child processes, up to `-j` at a time: each in its own
//! process group, stopped at its time limit (SIGTERM, then SIGKILL after a
//! grace period), all stopped on Ctrl-C. Reporters hear about it through
//! [`Observer`].

mod child;
pub mod debugfs_stats;
mod guard;
pub mod logcap;

pub use child::{core_path, repro};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use child::Running;

use crate::suite::{TestKind, TestSpec, Vmm};
use crate::verdict::{self, Ending, Status, TestResult};
use crate::{guest_outcome, interrupt};

/// How often the observer is ticked while tests run.
const TICK: Duration = Duration::from_millis(100);
/// A guest's VMM stops it at its limit; the runner steps in only this much
/// later, should the VMM itself be stuck.
const GUEST_BACKSTOP: Duration = Duration::from_secs(2);
/// And, with `--cores`, this much more for writing the guest's core after
/// its limit (all of its RAM, to a disk of unknown speed).
const CORE_GRACE: Duration = Duration::from_secs(30);

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
    /// Guests write a core when they do not pass (`ktvmm test --cores`).
    pub cores: bool,
    /// Guests wait for GDB on this port (`ktvmm test --gdb NAME`).
    pub gdb_port: Option<u16>,
    /// Where host programs' VMs are read from, and how their counters
    /// divide; `None` when debugfs cannot be read.
    pub host_stats: Option<(PathBuf, debugfs_stats::Names)>,
    /// Bytes of a test's output its log keeps (head and tail).
    pub log_limit: u64,
    /// No test starts after this (`--for`); those running finish.
    pub start_until: Option<Instant>,
    /// No test starts after one has not passed (`--for` with
    /// `--until-fail`); those running finish.
    pub stop_after_failure: bool,
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
    /// Its log could not be written.
    LogFailed,
}

struct Slot {
    running: Running,
    /// For a host program: its VMs' counters so far.
    sampler: Option<debugfs_stats::Sampler>,
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
    let mut guard = guard::Guard::start(options.jobs.max(1));
    let mut failed = false;

    loop {
        // What is not started when the time is up or a test has failed is
        // not run (and not reported).
        let stopping = options.start_until.is_some_and(|t| Instant::now() >= t)
            || (options.stop_after_failure && failed);
        while !interrupted && !stopping && slots.len() < options.jobs.max(1) && next < jobs.len() {
            let job = &jobs[next];
            // A test that must run alone waits for the running ones to
            // finish, and nothing starts beside it (order is kept).
            let alone_running = slots.keys().any(|&i| jobs[i].spec.exclusive);
            if alone_running || (job.spec.exclusive && !slots.is_empty()) {
                break;
            }
            observer.started(job);
            let Some(cmd) = child::command(&job.spec, options, job.timeout, &job.log) else {
                let result = skipped(job);
                observer.finished(job, &result);
                results[next] = Some(result);
                next += 1;
                continue;
            };
            // An outcome left by an earlier run in the same place must not
            // stand in for this one's.
            let _ = std::fs::remove_file(child::outcome_path(&job.log));
            match Running::spawn(cmd, &job.log, options.log_limit, done_tx.clone(), next) {
                Ok(running) => {
                    guard.watch(running.pgid());
                    let started = Instant::now();
                    let limit = match &job.spec.kind {
                        // Held for a debugger: ktvmm's own limit, which
                        // stops while GDB holds the guest, is the only one.
                        TestKind::Guest(g) if g.vmm == Vmm::Ktvmm && options.gdb_port.is_some() => {
                            Duration::from_secs(100 * 365 * 24 * 3600)
                        }
                        // ktvmm stops its guests itself; QEMU does not.
                        TestKind::Guest(g) if g.vmm == Vmm::Ktvmm && options.cores => {
                            job.timeout + GUEST_BACKSTOP + CORE_GRACE
                        }
                        TestKind::Guest(g) if g.vmm == Vmm::Ktvmm => job.timeout + GUEST_BACKSTOP,
                        TestKind::Guest(_) => job.timeout,
                        TestKind::Exec(_) | TestKind::Skip(_) => job.timeout,
                    };
                    let sampler = match (&job.spec.kind, &options.host_stats) {
                        (TestKind::Exec(_), Some((root, _))) => {
                            Some(debugfs_stats::Sampler::new(root))
                        }
                        _ => None,
                    };
                    slots.insert(
                        next,
                        Slot {
                            running,
                            sampler,
                            started,
                            deadline: started + limit,
                            stop: None,
                            kill_at: None,
                        },
                    );
                }
                Err(e) => {
                    failed = true;
                    let result = cannot_start(job, &e);
                    observer.finished(job, &result);
                    results[next] = Some(result);
                }
            }
            next += 1;
        }
        if slots.is_empty() && (interrupted || stopping || next == jobs.len()) {
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
                let pgid = slot.running.pgid();
                let names = options.host_stats.as_ref().map(|(_, names)| names);
                let result = finish(&jobs[index], slot, names);
                failed |= result.status.is_failure();
                guard.forget(pgid);
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
            if let Some(sampler) = &mut slot.sampler {
                sampler.sample(slot.running.pgid());
            }
            if slot.kill_at.is_some_and(|t| now >= t) {
                slot.running.signal(libc::SIGKILL);
            } else if slot.stop.is_none() && slot.running.log_failed() {
                slot.stop = Some(Stop::LogFailed);
                slot.running.signal(libc::SIGTERM);
                slot.kill_at = Some(now + options.grace);
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

fn finish(job: &Job, mut slot: Slot, names: Option<&debugfs_stats::Names>) -> TestResult {
    let host_stats = match (slot.sampler.take(), names) {
        (Some(sampler), Some(names)) => sampler.finish(names),
        _ => None,
    };
    let duration = slot.started.elapsed();
    let (exited, captured) = slot.running.reap();
    let ending = match slot.stop {
        Some(Stop::TimedOut) => Ending::TimedOut,
        Some(Stop::Interrupted) => Ending::Interrupted,
        Some(Stop::LogFailed) | None => exited,
    };
    let log_text = logcap::read_for_verdict(&job.log);
    let outcome = match (&job.spec.kind, slot.stop) {
        // A test the runner stopped is judged by that, whatever ktvmm wrote.
        (TestKind::Guest(g), None) if g.vmm == Vmm::Ktvmm => {
            guest_outcome::read(&child::outcome_path(&job.log))
        }
        _ => None,
    };
    let (status, mut reason) = match &job.spec.kind {
        TestKind::Guest(g) if g.vmm != Vmm::Ktvmm => match ending {
            Ending::Exited(code) => match crate::qemu_cmd::qemu_exit(code) {
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
        TestKind::Guest(g) => match &outcome {
            Some(Ok(outcome)) => verdict::ktvmm_guest_status(outcome, g.exit_codes),
            Some(Err(why)) => (Status::Error, Some(format!("unreadable outcome: {why}"))),
            None => {
                let (status, reason) = verdict::ktvmm_without_outcome(ending);
                // What ktvmm managed to say on its last `ktvmm:` line.
                let said = log_text.lines().rev().find(|l| l.starts_with("ktvmm: "));
                (
                    status,
                    said.map(|l| l["ktvmm: ".len()..].to_string()).or(reason),
                )
            }
        },
        TestKind::Exec(_) | TestKind::Skip(_) => verdict::exec_status(ending),
    };
    if ending == Ending::TimedOut {
        reason = Some(format!("timed out after {} s", job.timeout.as_secs_f64()));
    }
    let subtests = crate::subtests::count(&log_text);
    // The test's own words: the skip's reason, the failed assertion or
    // subtests.
    let reason = crate::reasons::explain(status, reason, &log_text, subtests.as_ref());
    // Without its log the verdict is not to be trusted.
    let (status, reason) = match captured.error {
        Some(error) => (Status::Error, Some(error)),
        None => (status, reason),
    };
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
        forensics: match &outcome {
            Some(Ok(outcome)) if status == Status::Timeout => outcome.vcpus.clone(),
            _ => None,
        },
        core: core_of(outcome.as_ref().and_then(|o| o.as_ref().ok()), status),
        kvm_stats: match outcome {
            Some(Ok(outcome)) => outcome.kvm_stats,
            _ => host_stats,
        },
        iteration: job.iteration,
        variant: job.spec.variant.clone(),
    }
}

/// The guest core of a test that did not pass; one that passed has its
/// core (written for a code the runner reads as a pass or skip) removed.
fn core_of(outcome: Option<&guest_outcome::GuestOutcome>, status: Status) -> Option<PathBuf> {
    let core = outcome?.core.clone()?;
    if status.is_failure() || status == Status::XFail {
        Some(core)
    } else {
        let _ = std::fs::remove_file(&core);
        None
    }
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
        kvm_stats: None,
        core: None,
        iteration: job.iteration,
        variant: job.spec.variant.clone(),
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
        kvm_stats: None,
        core: None,
        iteration: job.iteration,
        variant: job.spec.variant.clone(),
    }
}
