//! Statistics of a fuzz run. The part that depends only on the seed and
//! the inputs ([`Counts`]) is kept apart from the part that depends on the
//! machine's speed ([`Speed`]), so two runs can be compared for equality.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::exec::Execution;

/// What a run reached; the same for the same seed, count and host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// The seed.
    pub seed: u64,
    /// Inputs executed.
    pub executions: u64,
    /// How each execution's last guest run ended.
    pub outcomes: BTreeMap<String, u64>,
    /// Executions that reached each `KVM_EXIT_*` reason. (Not the number
    /// of exits: a guest that loops on port I/O until its CPU budget is
    /// spent makes as many exits as the host's speed allows.)
    pub exit_reasons: BTreeMap<String, u64>,
    /// KVM calls made.
    pub ioctls: BTreeMap<String, u64>,
    /// `KVM_EXIT_INTERNAL_ERROR`s by kind (expected on some hosts: not bugs).
    pub internal_errors: BTreeMap<String, u64>,
    /// Findings by signature.
    pub findings: BTreeMap<String, u64>,
}

/// How fast a run went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Executions per second, all threads together.
    pub executions_per_second: f64,
    /// Threads.
    pub jobs: u32,
    /// Executions whose first try ran into the CPU budget and whose second
    /// did not (see `Executor::execute`): how much the host's timing shows.
    pub unstable: u64,
}

/// Both parts, as `--json` writes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The repeatable part.
    pub counts: Counts,
    /// The timing part.
    pub speed: Speed,
}

impl Counts {
    /// Adds one execution.
    pub fn add(&mut self, execution: &Execution) {
        self.executions += 1;
        *self.outcomes.entry(execution.end.clone()).or_default() += 1;
        for name in execution.exits.keys() {
            *self.exit_reasons.entry(name.to_string()).or_default() += 1;
        }
        for (name, n) in &execution.ioctls {
            *self.ioctls.entry(name.to_string()).or_default() += u64::from(*n);
        }
        for (kind, n) in &execution.internal_errors {
            *self.internal_errors.entry(kind.clone()).or_default() += u64::from(*n);
        }
        for finding in &execution.findings {
            *self.findings.entry(finding.signature()).or_default() += 1;
        }
    }
}

fn histogram(f: &mut fmt::Formatter<'_>, title: &str, map: &BTreeMap<String, u64>) -> fmt::Result {
    writeln!(f, "{title} ({} distinct):", map.len())?;
    let mut rows: Vec<_> = map.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (name, n) in rows {
        writeln!(f, "  {n:>9}  {name}")?;
    }
    Ok(())
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "{} executions (seed {}) in {:.2} s: {:.0} executions/s with {} job(s)",
            c.executions,
            c.seed,
            self.speed.seconds,
            self.speed.executions_per_second,
            self.speed.jobs
        )?;
        histogram(f, "outcomes", &c.outcomes)?;
        histogram(f, "exit reasons", &c.exit_reasons)?;
        histogram(f, "ioctls", &c.ioctls)?;
        histogram(f, "internal errors (counted, not bugs)", &c.internal_errors)?;
        histogram(f, "findings", &c.findings)?;
        if self.speed.unstable > 0 {
            writeln!(
                f,
                "{} execution(s) ran into the CPU budget once, then ended otherwise",
                self.speed.unstable
            )?;
        }
        Ok(())
    }
}
