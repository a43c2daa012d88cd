//! A reproducible fuzz harness for KVM's API surface and ktvmm's devices.
//!
//! An [`Input`] describes a VM (memory slots, vCPUs, irqchip or not), each
//! vCPU's starting state and mode, a guest program, and KVM calls with
//! guest runs among them. [`exec::Executor`] runs one on a fresh VM with
//! the real device buses; [`oracle`] says what counts as a bug;
//! [`campaign`] runs many from a seed (the same seed, the same inputs,
//! the same [`stats::Counts`]); [`repro`] saves and replays findings and
//! [`minimise`] shrinks them. See docs/fuzzing.md.
//!
//! It drives the VMM (`ktvmm_vmm`) through the same public items any
//! embedder uses, and writes its guest programs against the boot contract
//! (`ktvmm_abi`); `ktvmm fuzz`, `ktvmm bench --fuzz` and the cargo-fuzz
//! targets in `cargo-fuzz/` are its users.

pub mod bounds;
mod catch;
pub mod draw;
pub mod exec;
pub mod guest;
pub mod input;
pub mod minimise;
pub mod oracle;
pub mod parsers;
pub mod planted;
pub mod program;
pub mod repro;
pub mod rng;
pub mod rules;
pub mod stats;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use exec::{ExecError, ExecOptions, Execution, Executor};
pub use input::Input;
pub use oracle::Finding;
pub use repro::Reproducer;
pub use stats::{Counts, Speed, Stats};

use oracle::HostWatch;
use rng::SplitMix64;

/// A bounded fuzz run.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// The seed every input is drawn from.
    pub seed: u64,
    /// Inputs to execute (all of them unless `time` runs out first).
    pub iterations: u64,
    /// Stop after this long, whatever `iterations` says.
    pub time: Option<Duration>,
    /// Threads, each with its own KVM handle.
    pub jobs: u32,
    /// Bounds of each execution.
    pub exec: ExecOptions,
    /// Where reproducers go (none saved without).
    pub out: Option<PathBuf>,
    /// Stop at the first finding whose signature starts with this (`""`:
    /// any finding).
    pub stop_on: Option<String>,
}

/// A finding of a campaign, with its reproducer.
#[derive(Clone, Debug)]
pub struct Found {
    /// The input's number.
    pub iteration: u64,
    /// The reproducer (saved when the campaign has an output directory).
    pub reproducer: Reproducer,
    /// Where it was saved.
    pub path: Option<PathBuf>,
    /// How long after the start it was found.
    pub after: Duration,
}

/// What a campaign did.
#[derive(Debug)]
pub struct Report {
    /// Its statistics.
    pub stats: Stats,
    /// The first finding of each signature.
    pub found: Vec<Found>,
    /// Whether the kernel log could be watched.
    pub kernel_log: bool,
}

/// Why a campaign could not run.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// An executor could not start.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A reproducer could not be saved.
    #[error(transparent)]
    Repro(#[from] repro::ReproError),
    /// The output directory could not be made.
    #[error("{path}: {source}")]
    Out {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The input numbered `iteration` of the run seeded with `seed`.
pub fn input_for(seed: u64, iteration: u64) -> Input {
    Input::generate(&mut SplitMix64::for_item(seed, iteration))
}

impl Campaign {
    /// `iterations` inputs of `seed` on one thread with the default
    /// bounds, nothing saved, no early stop.
    pub fn new(seed: u64, iterations: u64) -> Self {
        Campaign {
            seed,
            iterations,
            time: None,
            jobs: 1,
            exec: ExecOptions::default(),
            out: None,
            stop_on: None,
        }
    }
}

struct Shared {
    counts: Mutex<Counts>,
    seen: Mutex<BTreeSet<String>>,
    found: Mutex<Vec<Found>>,
    watch: Mutex<HostWatch>,
    stop: AtomicBool,
    unstable: std::sync::atomic::AtomicU64,
    errors: Mutex<Vec<CampaignError>>,
}

impl Campaign {
    /// Runs it.
    pub fn run(&self) -> Result<Report, CampaignError> {
        let shared = Shared {
            counts: Mutex::new(Counts {
                seed: self.seed,
                ..Default::default()
            }),
            seen: Mutex::new(BTreeSet::new()),
            found: Mutex::new(Vec::new()),
            watch: Mutex::new(HostWatch::start()),
            stop: AtomicBool::new(false),
            unstable: Default::default(),
            errors: Mutex::new(Vec::new()),
        };
        let kernel_log = ktvmm_vmm::platform::bus::lock(&shared.watch).reads_kernel_log();
        let started = Instant::now();
        let jobs = self.jobs.max(1);
        std::thread::scope(|scope| {
            for job in 0..jobs {
                let shared = &shared;
                scope.spawn(move || {
                    if let Err(e) = self.worker(job, jobs, shared, started) {
                        ktvmm_vmm::platform::bus::lock(&shared.errors).push(e);
                        shared.stop.store(true, Ordering::Release);
                    }
                });
            }
        });
        if let Some(e) = ktvmm_vmm::platform::bus::lock(&shared.errors).pop() {
            return Err(e);
        }
        let seconds = started.elapsed().as_secs_f64();
        let counts = ktvmm_vmm::platform::bus::lock(&shared.counts).clone();
        let speed = Speed {
            seconds,
            executions_per_second: counts.executions as f64 / seconds.max(1e-9),
            jobs,
            unstable: shared.unstable.load(Ordering::Acquire),
        };
        let mut found = std::mem::take(&mut *ktvmm_vmm::platform::bus::lock(&shared.found));
        found.sort_by_key(|f| f.iteration);
        Ok(Report {
            stats: Stats { counts, speed },
            found,
            kernel_log,
        })
    }

    fn worker(
        &self,
        job: u32,
        jobs: u32,
        shared: &Shared,
        started: Instant,
    ) -> Result<(), CampaignError> {
        let mut executor = Executor::new(self.exec.clone())?;
        let mut iteration = u64::from(job);
        while iteration < self.iterations {
            if shared.stop.load(Ordering::Acquire)
                || self.time.is_some_and(|t| started.elapsed() >= t)
            {
                break;
            }
            let input = input_for(self.seed, iteration);
            let mut execution = executor.execute(&input);
            execution
                .findings
                .extend(ktvmm_vmm::platform::bus::lock(&shared.watch).check());
            ktvmm_vmm::platform::bus::lock(&shared.counts).add(&execution);
            if execution.unstable {
                shared.unstable.fetch_add(1, Ordering::AcqRel);
            }
            for finding in &execution.findings {
                let new = ktvmm_vmm::platform::bus::lock(&shared.seen).insert(finding.signature());
                if new {
                    self.keep(&mut executor, shared, &input, iteration, finding, started)?;
                }
            }
            if let Some(prefix) = &self.stop_on
                && execution
                    .findings
                    .iter()
                    .any(|f| f.signature().starts_with(prefix.as_str()))
            {
                shared.stop.store(true, Ordering::Release);
            }
            iteration += u64::from(jobs);
        }
        Ok(())
    }

    /// Saves the first finding of a signature, with a traced re-execution.
    fn keep(
        &self,
        executor: &mut Executor,
        shared: &Shared,
        input: &Input,
        iteration: u64,
        finding: &Finding,
        started: Instant,
    ) -> Result<(), CampaignError> {
        let after = started.elapsed();
        executor.options_mut().trace = true;
        let traced = executor.execute(input);
        executor.options_mut().trace = false;
        let reproducer = Reproducer::new(
            finding.clone(),
            input.clone(),
            Some(self.seed),
            Some(iteration),
            self.exec.plant_bug,
            traced.trace,
        );
        let path = match &self.out {
            Some(out) => {
                std::fs::create_dir_all(out).map_err(|source| CampaignError::Out {
                    path: out.display().to_string(),
                    source,
                })?;
                let path = out.join(reproducer.file_name());
                reproducer.save(&path)?;
                Some(path)
            }
            None => None,
        };
        ktvmm_vmm::platform::bus::lock(&shared.found).push(Found {
            iteration,
            reproducer,
            path,
            after,
        });
        Ok(())
    }
}
