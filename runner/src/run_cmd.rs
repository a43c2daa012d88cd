//! `ktvmm run`: boot one guest, exit with its code.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ktvmm_vmm::{KernelImage, Outcome, Vm, VmConfig};

use crate::cli::RunArgs;
use crate::{bundled, detach};
use ktvmm_vmm::kmsg::KernelLog;
use ktvmm_vmm::kvm_stats::KvmCounters;
use std::time::{Duration, Instant};

/// Reads a guest from a file, or from the binary for `bundled:NAME`.
pub fn load_guest(guest: &str) -> Result<KernelImage> {
    if let Some(name) = guest.strip_prefix(bundled::PREFIX) {
        let bytes = bundled::guest(name).ok_or_else(|| {
            let names: Vec<&str> = bundled::GUESTS.iter().map(|(n, _)| *n).collect();
            anyhow!(
                "{guest}: no such bundled guest (there are: {})",
                names.join(", ")
            )
        })?;
        return Ok(KernelImage {
            name: guest.to_string(),
            bytes: bytes.to_vec(),
        });
    }
    read_image(Path::new(guest))
}

fn read_image(path: &Path) -> Result<KernelImage> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(KernelImage {
        name: path.display().to_string(),
        bytes,
    })
}

/// Runs the guest; exits the process with the guest's exit code, or returns
/// the exit code when no VM could be built.
pub fn run(args: RunArgs) -> Result<u8> {
    let config = match vm_config(&args) {
        Ok(config) => config,
        Err(e) => {
            // The runner reads verdicts from the outcome: it says why, too.
            if let Some(path) = &args.json_outcome {
                let outcome = Outcome::VmmError {
                    message: format!("{e:#}"),
                };
                let run = Run {
                    outcome: &outcome,
                    host_log: &[],
                    wall: Duration::ZERO,
                    counters: None,
                    core: None,
                };
                write_outcome(path, &run)?;
            }
            return Err(e);
        }
    };
    let mut kernel_log = args.vm.timeout.and_then(|_| KernelLog::open_at_end());
    let started = Instant::now();
    let (outcome, vm) = match Vm::build(config) {
        Ok(mut vm) => {
            vm.keep_cpu_state(args.core.is_some());
            (vm.run(args.vm.timeout), Some(vm))
        }
        Err(e) => (
            Outcome::VmmError {
                message: e.to_string(),
            },
            None,
        ),
    };
    // A hang report includes what the host kernel said meanwhile.
    let host_log = match (&outcome, kernel_log.as_mut()) {
        (Outcome::Timeout { .. }, Some(log)) => log.new_lines(),
        _ => Vec::new(),
    };
    let wall = started.elapsed();
    let core = match (&args.core, &vm) {
        (Some(path), Some(vm)) if !passed(&outcome) => Some(write_core(vm, path)),
        _ => None,
    };
    let run = Run {
        outcome: &outcome,
        host_log: &host_log,
        wall,
        counters: vm.as_ref().and_then(Vm::kvm_counters),
        core: core
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(PathBuf::as_path),
    };
    if let Some(path) = &args.json_outcome {
        write_outcome(path, &run)?;
    }
    if let Some(message) = outcome.message() {
        eprintln!("ktvmm: {message}");
    }
    if !host_log.is_empty() {
        // Indented, under the timeout message: the runner takes a test's
        // reason from the last line that starts with "ktvmm: ".
        eprintln!("  host kernel log during the run:");
        for line in &host_log {
            eprintln!("    {line}");
        }
    }
    match &core {
        Some(Ok(path)) => eprintln!("ktvmm core: guest core written to {}", path.display()),
        Some(Err(e)) => eprintln!("ktvmm core: no core: {e:#}"),
        None => {}
    }
    if args.stats {
        print_stats(&run);
    }
    match vm {
        Some(vm) => detach::exit_leaving_teardown(outcome.exit_code(), vm),
        None => Ok(outcome.exit_code()),
    }
}

/// The VM `args` ask for, with the guest (and initrd) read in.
fn vm_config(args: &RunArgs) -> Result<VmConfig> {
    let kernel = load_guest(&args.guest)?;
    let initrd = args.vm.initrd.as_deref().map(read_image).transpose()?;
    Ok(VmConfig {
        kernel,
        cpus: args.vm.smp,
        mem_mib: args.vm.mem_mib,
        cmdline: args.vm.append.clone(),
        initrd,
        console: Box::new(io::stdout()),
        testdevs: !args.no_testdevs,
        cpu: args.cpu.clone(),
        pit: !args.no_pit,
        boot: args.boot,
        iommu: args.iommu,
    })
}

/// What a run leaves to report.
struct Run<'a> {
    outcome: &'a Outcome,
    host_log: &'a [String],
    /// From building the VM to the end of the run.
    wall: Duration,
    counters: Option<&'a KvmCounters>,
    /// The guest core written, if any.
    core: Option<&'a Path>,
}

/// Whether a run passed or skipped by the guest's own word (no core then).
fn passed(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::GuestExit { code: 0 | 77 })
}

/// Writes the guest's core to `path`.
fn write_core(vm: &Vm, path: &Path) -> Result<PathBuf> {
    let mut file = fs::File::create(path)
        .with_context(|| format!("{}: cannot create the core file", path.display()))?;
    vm.write_core(&mut file)
        .with_context(|| format!("{}: cannot write the core", path.display()))?;
    Ok(path.to_path_buf())
}

/// `--json-outcome`: the outcome, plus the run's wall time, KVM's counters
/// (absent where KVM has none) and what the host kernel logged.
fn write_outcome(path: &Path, run: &Run) -> Result<()> {
    let mut json: serde_json::Value =
        serde_json::from_str(&run.outcome.to_json()).unwrap_or(serde_json::Value::Null);
    if let Some(object) = json.as_object_mut() {
        if run.wall > Duration::ZERO {
            let millis = (run.wall.as_secs_f64() * 1000.0).round() / 1000.0;
            object.insert("run_s".into(), millis.into());
        }
        if let Some(counters) = run.counters.and_then(|c| serde_json::to_value(c).ok()) {
            object.insert("kvm_stats".into(), counters);
        }
        if let Some(core) = run.core {
            object.insert("core".into(), core.display().to_string().into());
        }
        if !run.host_log.is_empty() {
            object.insert("host_kernel_log".into(), run.host_log.to_vec().into());
        }
    }
    fs::write(path, json.to_string() + "\n")
        .with_context(|| format!("{}: cannot write the outcome", path.display()))
}

/// `--stats`: the run's time and KVM's largest counters, on stderr (stdout
/// is the guest's console).
fn print_stats(run: &Run) {
    eprintln!("ktvmm stats: the run took {:.3} s", run.wall.as_secs_f64());
    let Some(counters) = run.counters else {
        eprintln!("  KVM offers no counters here (no KVM_CAP_BINARY_STATS_FD)");
        return;
    };
    eprintln!(
        "  KVM counters ({} VM, {} per vCPU, summed over vCPUs), largest first:",
        counters.vm.len(),
        counters.vcpu.len()
    );
    for (name, value) in counters.top(STATS_SHOWN) {
        eprintln!("    {name:<32} {value:>14}");
    }
}

/// Counters `--stats` shows.
const STATS_SHOWN: usize = 16;
