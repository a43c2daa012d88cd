//! Reproducers: a finding saved as one self-contained JSON file (the input,
//! where it came from, the host it was found on, the exit trace) that
//! `ktvmm fuzz --replay FILE` runs again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::exec::{Execution, Executor};
use super::input::Input;
use super::oracle::Finding;

/// The format's name and version, the file's first field.
pub const FORMAT: &str = "ktvmm-fuzz-reproducer/1";

/// Why a reproducer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// The file could not be read or written.
    // `error`, not `source`: the message holds it, and a `source` would be
    // printed a second time by `{:#}`.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a regular file, too large or unreadable.
    #[error(transparent)]
    Input(#[from] ktvmm_vmm::input::InputError),
    /// The file is not a reproducer.
    #[error("{path}: not a ktvmm fuzz reproducer: {error}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        error: serde_json::Error,
    },
    /// JSON without a `format`: something else.
    #[error(
        "{path}: has no \"format\": not a ktvmm fuzz reproducer (those say \"format\": \"{FORMAT}\")"
    )]
    NoFormat {
        /// The file.
        path: String,
    },
    /// A reproducer of another version.
    #[error("{path}: format {found}, but this ktvmm reads {FORMAT}")]
    Version {
        /// The file.
        path: String,
        /// Its format.
        found: String,
    },
}

/// The machine a finding was made on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `/proc/version`.
    pub kernel: String,
    /// The KVM modules loaded (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub kvm_modules: Vec<String>,
    /// The CPU, from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUID leaf 0 vendor and leaf 1 signature as the host sees them.
    pub cpuid: String,
    /// ktvmm's version.
    pub ktvmm: String,
}

impl Host {
    /// This machine.
    pub fn this() -> Self {
        let kernel = std::fs::read_to_string("/proc/version")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let kvm_modules = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"]
            .iter()
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .map(|m| m.to_string())
            .collect();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Host {
            kernel,
            kvm_modules,
            cpu,
            cpuid: host_cpuid(),
            ktvmm: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

fn host_cpuid() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let (leaf0, leaf1) = (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1));
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        format!(
            "{} family/model/stepping {:#x}, features ecx {:#010x} edx {:#010x}",
            String::from_utf8_lossy(&vendor),
            leaf1.eax,
            leaf1.ecx,
            leaf1.edx
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

/// One finding, ready to replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reproducer {
    /// [`FORMAT`].
    pub format: String,
    /// What was found.
    pub finding: Finding,
    /// The run's seed, if the input came from one.
    pub seed: Option<u64>,
    /// The input's number in that run.
    pub iteration: Option<u64>,
    /// Whether the planted bug was on the bus (the harness's self-test).
    pub plant_bug: bool,
    /// Where it was found.
    pub host: Host,
    /// The input.
    pub input: Input,
    /// The exits and calls of the execution that found it.
    pub trace: Vec<String>,
}

impl Reproducer {
    /// A reproducer of `finding`, with the trace of a traced execution.
    pub fn new(
        finding: Finding,
        input: Input,
        seed: Option<u64>,
        iteration: Option<u64>,
        plant_bug: bool,
        trace: Vec<String>,
    ) -> Self {
        Reproducer {
            format: FORMAT.into(),
            finding,
            seed,
            iteration,
            plant_bug,
            host: Host::this(),
            input,
            trace,
        }
    }

    /// Reads one.
    pub fn load(path: &Path) -> Result<Self, ReproError> {
        let name = path.display().to_string();
        let text = ktvmm_vmm::input::read_text(path, ktvmm_vmm::input::MAX_TEXT, "a reproducer")?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| ReproError::Format {
                path: name.clone(),
                error,
            })?;
        let Some(found) = value.get("format").and_then(|f| f.as_str()) else {
            return Err(ReproError::NoFormat { path: name });
        };
        if found != FORMAT {
            return Err(ReproError::Version {
                path: name,
                found: found.into(),
            });
        }
        serde_json::from_value(value).map_err(|error| ReproError::Format { path: name, error })
    }

    /// Writes it.
    pub fn save(&self, path: &Path) -> Result<(), ReproError> {
        let io = |error| ReproError::Io {
            path: path.display().to_string(),
            error,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(path, text + "\n").map_err(io)
    }

    /// The reproducer of a libFuzzer artifact (raw bytes the `kvm_api`
    /// target decoded with `arbitrary`): its input executed once, traced;
    /// `None` when the execution finds nothing about the input.
    pub fn from_fuzzer_bytes(bytes: &[u8], executor: &mut Executor) -> Option<Self> {
        use arbitrary::{Arbitrary, Unstructured};
        let input = Input::arbitrary_take_rest(Unstructured::new(bytes)).ok()?;
        let options = executor.options().clone();
        executor.options_mut().trace = true;
        let execution = executor.execute(&input);
        *executor.options_mut() = options.clone();
        let finding = execution.findings.into_iter().find(|f| !f.is_host_wide())?;
        Some(Reproducer::new(
            finding,
            input,
            None,
            None,
            options.plant_bug,
            execution.trace,
        ))
    }

    /// Runs the input again (traced) and says whether the finding came back.
    pub fn replay(&self, executor: &mut Executor) -> (bool, Execution) {
        let options = executor.options().clone();
        executor.options_mut().plant_bug = self.plant_bug;
        executor.options_mut().trace = true;
        let execution = executor.execute(&self.input);
        *executor.options_mut() = options;
        let signature = self.finding.signature();
        let again = execution
            .findings
            .iter()
            .any(|f| f.signature() == signature);
        (again, execution)
    }

    /// A file name for it: the finding's kind, the seed and iteration.
    pub fn file_name(&self) -> String {
        let slug: String = self
            .finding
            .signature()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(48)
            .collect();
        match (self.seed, self.iteration) {
            (Some(seed), Some(i)) => format!("{slug}-seed{seed}-{i}.json"),
            _ => format!("{slug}.json"),
        }
    }
}
