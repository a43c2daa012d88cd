//! A fuzz harness for KVM's API surface, driven through ktvmm's devices
//! (`ktvmm fuzz`).
//!
//! Each input ([`Input`]) is a typed description of a VM: its shape, each
//! vCPU's mode and registers, a guest program of generated instructions,
//! and ioctls between runs. [`Executor`] runs it in a fresh VM with every
//! run bounded; [`Campaign`] draws inputs from a seed, watches the host
//! (kernel taint flags and log) and collects statistics and findings.
//! Everything a seed decides is the same on every run on the same host.

mod exec;
mod host;
mod input;
mod minimise;
mod program;
pub mod repro;
mod stats;
pub mod targets;

use std::time::{Duration, Instant};

pub use exec::{Budget, ExecError, Execution, Executor, Finding, layout};
pub use host::HostWatch;
pub use input::{Input, Irqchip, Mode, Op, VcpuSetup};
pub use minimise::minimise;
pub use repro::{ReproError, Reproducer};
pub use stats::Stats;

use crate::rng::SplitMix64;

/// The seed of input `index` of a campaign with `seed`: each input can be
/// made again alone.
pub fn input_seed(seed: u64, index: u64) -> u64 {
    SplitMix64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next()
}

/// Input `index` of the campaign with `seed`.
pub fn nth_input(seed: u64, index: u64) -> Input {
    Input::generate(&mut SplitMix64(input_seed(seed, index)))
}

/// Runs one input and checks the host around it; a panic in the VMM is
/// caught and becomes a finding.
pub fn check(executor: &mut Executor, watch: &mut HostWatch, input: &Input) -> Execution {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| executor.execute(input)));
    let mut execution = match result {
        Ok(execution) => execution,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Execution {
                outcome: "vmm-panic".into(),
                findings: vec![Finding::Panic { message }],
                ..Execution::default()
            }
        }
    };
    execution.findings.extend(watch.check());
    execution
}

/// A fuzz run's settings.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// How many inputs.
    pub iterations: u64,
    /// Stop early after this long (the statistics say so).
    pub time_limit: Option<Duration>,
    /// Per-input limits.
    pub budget: Budget,
    /// Put the planted bug on the bus (a self-test of the harness).
    pub plant_bug: bool,
}

/// One finding, with what is needed to make it again.
#[derive(Clone, Debug)]
pub struct Found {
    /// Which input of the campaign.
    pub index: u64,
    /// The input.
    pub input: Input,
    /// What happened.
    pub execution: Execution,
    /// When it was found, since the campaign started.
    pub after: Duration,
}

impl Campaign {
    /// Runs the campaign; `on_finding` sees each input with findings as
    /// it happens.
    pub fn run(&self, mut on_finding: impl FnMut(&Found)) -> Result<Stats, ExecError> {
        let mut executor = Executor::new(self.budget, self.plant_bug)?;
        let mut watch = HostWatch::start();
        let mut stats = Stats::new(self.seed);
        let started = Instant::now();
        // A device model's panic is a finding, reported by us: keep the
        // default hook from printing each one.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for index in 0..self.iterations {
            if self
                .time_limit
                .is_some_and(|limit| started.elapsed() >= limit)
            {
                stats.stopped_early = true;
                break;
            }
            let input = nth_input(self.seed, index);
            let execution = check(&mut executor, &mut watch, &input);
            stats.add(&execution);
            if !execution.findings.is_empty() {
                on_finding(&Found {
                    index,
                    input,
                    execution,
                    after: started.elapsed(),
                });
            }
        }
        std::panic::set_hook(hook);
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }
}
