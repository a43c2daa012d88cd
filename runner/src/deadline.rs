//! `ktvmm run --timeout` bounds the whole run, setup included: building a
//! VM with 1000 vCPUs took 20 s before the guest's own limit started to
//! count. A watchdog thread ends the process at the deadline if the VM
//! is still being set up, and is the backstop should the run itself not
//! stop in time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ktvmm_vmm::Outcome;
use ktvmm_vmm::run::outcome::EXIT_TIMEOUT;

const SETUP: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
/// After the deadline, what the VM's own stop (with the vCPUs' state) may
/// take before the watchdog ends the process.
const BACKSTOP: Duration = Duration::from_secs(1);

/// The watchdog of one run.
pub struct Deadline {
    limit: Duration,
    started: Instant,
    phase: Arc<AtomicU8>,
}

impl Deadline {
    /// Starts watching: `limit` from now; `json` is where the outcome goes
    /// (`--json-outcome`).
    pub fn start(limit: Duration, json: Option<PathBuf>) -> Deadline {
        let phase = Arc::new(AtomicU8::new(SETUP));
        let watched = phase.clone();
        let started = Instant::now();
        let watchdog = std::thread::Builder::new()
            .name("deadline".into())
            .spawn(move || watch(limit, started, &watched, json));
        if let Err(e) = watchdog {
            log::warn!("cannot start the setup watchdog: {e}");
        }
        Deadline {
            limit,
            started,
            phase,
        }
    }

    /// The VM is built: what is left of the limit for the run.
    pub fn running(&self) -> Duration {
        self.phase.store(RUNNING, Ordering::SeqCst);
        self.limit
            .saturating_sub(self.started.elapsed())
            .max(Duration::from_millis(1))
    }

    /// The whole limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The run is over: the watchdog has nothing more to do.
    pub fn done(&self) {
        self.phase.store(DONE, Ordering::SeqCst);
    }
}

fn watch(limit: Duration, started: Instant, phase: &AtomicU8, json: Option<PathBuf>) {
    std::thread::sleep(limit.saturating_sub(started.elapsed()));
    let why = match phase.load(Ordering::SeqCst) {
        SETUP => "ktvmm was still setting up the VM",
        RUNNING => {
            std::thread::sleep(BACKSTOP);
            if phase.load(Ordering::SeqCst) != RUNNING {
                return;
            }
            "the VM did not stop"
        }
        _ => return,
    };
    let outcome = Outcome::timeout(limit);
    if let Some(path) = json {
        let _ = std::fs::write(path, outcome.to_json() + "\n");
    }
    let message = outcome.message().unwrap_or_default();
    errln!("ktvmm: {message} ({why})");
    std::process::exit(i32::from(EXIT_TIMEOUT));
}
