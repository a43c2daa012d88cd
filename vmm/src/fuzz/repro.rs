//! Reproducer files: everything needed to make a finding again, and to
//! report it (the input, where it came from, the host, the CPUID KVM
//! offered, the exits it took), as JSON a human can read and edit.

use std::path::{Path, PathBuf};

use kvm_bindings::CpuId;
use serde::{Deserialize, Serialize};

use super::exec::Finding;
use super::{Found, Input};

/// The format version written.
pub const FORMAT: u32 = 1;

/// The host a finding was made on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// The KVM module serving `/dev/kvm`.
    pub kvm_module: String,
    /// The CPU model.
    pub cpu: String,
}

/// One reproducer.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct Reproducer {
    /// [`FORMAT`].
    pub format: u32,
    /// The ktvmm that found it.
    pub ktvmm_version: String,
    /// The campaign seed and input index, when it came from a campaign.
    pub seed: Option<u64>,
    /// See `seed`.
    pub index: Option<u64>,
    /// Whether the planted bug was on the bus.
    pub plant_bug: bool,
    /// What went wrong.
    pub findings: Vec<Finding>,
    /// How the input ended.
    pub outcome: String,
    /// The exits it took, in order.
    pub exit_trace: Vec<String>,
    /// Where.
    pub host: Host,
    /// `KVM_GET_SUPPORTED_CPUID` there: function, index, EAX, EBX, ECX, EDX.
    pub cpuid: Vec<[u32; 6]>,
    /// The input itself.
    pub input: Input,
}

/// Why a reproducer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a reproducer.
    #[error("{path}: not a ktvmm fuzz reproducer: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl Reproducer {
    /// A reproducer for `found`.
    pub fn new(found: &Found, seed: u64, plant_bug: bool, host: Host, cpuid: &CpuId) -> Self {
        Self {
            format: FORMAT,
            ktvmm_version: env!("CARGO_PKG_VERSION").into(),
            seed: Some(seed),
            index: Some(found.index),
            plant_bug,
            findings: found.execution.findings.clone(),
            outcome: found.execution.outcome.clone(),
            exit_trace: found
                .execution
                .trace
                .iter()
                .map(|s| s.to_string())
                .collect(),
            host,
            cpuid: cpuid
                .as_slice()
                .iter()
                .map(|e| [e.function, e.index, e.eax, e.ebx, e.ecx, e.edx])
                .collect(),
            input: found.input.clone(),
        }
    }

    /// The kinds of its findings, sorted: what a replay must show again.
    pub fn kinds(&self) -> Vec<&'static str> {
        kinds(&self.findings)
    }

    /// Writes it as `dir/<kind>-<seed>-<index>.json`; returns the path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, ReproError> {
        let kind = self.kinds().first().copied().unwrap_or("finding");
        let name = format!(
            "{kind}-{}-{}.json",
            self.seed.unwrap_or(0),
            self.index.unwrap_or(0)
        );
        let path = dir.join(name);
        self.write(&path)?;
        Ok(path)
    }

    /// Writes it to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ReproError> {
        let io = |source| ReproError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(io)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| ReproError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(io)
    }

    /// Reads one.
    pub fn load(path: &Path) -> Result<Self, ReproError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReproError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let repro: Self = serde_json::from_str(&text).map_err(|e| ReproError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if repro.format != FORMAT {
            return Err(ReproError::Format {
                path: path.to_path_buf(),
                message: format!("format {} (this ktvmm reads {FORMAT})", repro.format),
            });
        }
        Ok(repro)
    }
}

/// The distinct kinds of `findings`, sorted.
pub fn kinds(findings: &[Finding]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = findings.iter().map(Finding::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}
