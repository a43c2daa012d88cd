//! What a campaign reached: executions, exit reasons, ioctls, outcomes,
//! internal errors and findings. Everything but the timing is the same for
//! the same seed on the same host.

use std::collections::BTreeMap;

use serde::Serialize;

use super::exec::Execution;

/// The statistics of a campaign.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// The campaign's seed.
    pub seed: u64,
    /// Inputs run.
    pub executions: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Whether the time limit stopped it before its iterations.
    pub stopped_early: bool,
    /// Exits by `KVM_EXIT_*` reason (as names).
    pub exit_reasons: BTreeMap<String, u64>,
    /// ioctls by name.
    pub ioctls: BTreeMap<String, u64>,
    /// How inputs ended.
    pub outcomes: BTreeMap<String, u64>,
    /// `KVM_EXIT_INTERNAL_ERROR` by suberror: counted, not findings (KVM's
    /// instruction emulator refuses some instructions by design).
    pub internal_errors: BTreeMap<u32, u64>,
    /// Findings by kind.
    pub findings: BTreeMap<String, u64>,
}

impl Stats {
    /// Empty statistics for a campaign with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// Counts one execution.
    pub fn add(&mut self, execution: &Execution) {
        self.executions += 1;
        for (name, n) in &execution.exits {
            *self.exit_reasons.entry((*name).into()).or_default() += n;
        }
        for (name, n) in &execution.ioctls {
            *self.ioctls.entry((*name).into()).or_default() += n;
        }
        *self.outcomes.entry(execution.outcome.clone()).or_default() += 1;
        for (suberror, n) in &execution.internal_errors {
            *self.internal_errors.entry(*suberror).or_default() += n;
        }
        for finding in &execution.findings {
            *self.findings.entry(finding.kind().into()).or_default() += 1;
        }
    }

    /// Executions per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.executions as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Everything but the timing, for comparing two runs of one seed.
    pub fn without_timing(&self) -> Self {
        Self {
            seconds: 0.0,
            stopped_early: false,
            ..self.clone()
        }
    }

    /// The JSON form, with the rate and the distinct counts spelled out.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("exec_per_sec".into(), self.rate().into());
            map.insert(
                "distinct_exit_reasons".into(),
                self.exit_reasons.len().into(),
            );
            map.insert("distinct_ioctls".into(), self.ioctls.len().into());
        }
        value
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |map: &BTreeMap<String, u64>| {
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "{} executions in {:.2} s ({:.0}/s){}, seed {}",
            self.executions,
            self.seconds,
            self.rate(),
            if self.stopped_early {
                ", stopped by the time limit"
            } else {
                ""
            },
            self.seed
        )?;
        writeln!(
            f,
            "exit reasons ({}): {}",
            self.exit_reasons.len(),
            list(&self.exit_reasons)
        )?;
        writeln!(f, "ioctls ({}): {}", self.ioctls.len(), list(&self.ioctls))?;
        writeln!(f, "outcomes: {}", list(&self.outcomes))?;
        let internal: Vec<String> = self
            .internal_errors
            .iter()
            .map(|(k, v)| format!("suberror {k}: {v}"))
            .collect();
        writeln!(
            f,
            "internal errors: {}",
            if internal.is_empty() {
                "none".into()
            } else {
                internal.join(", ")
            }
        )?;
        write!(
            f,
            "findings: {}",
            if self.findings.is_empty() {
                "none".into()
            } else {
                list(&self.findings)
            }
        )
    }
}
