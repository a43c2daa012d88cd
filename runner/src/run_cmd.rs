//! `ktvmm run`: boot one guest, exit with its code.

use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use ktvmm_vmm::{KernelImage, Outcome, Vm, VmConfig, input};

use crate::cli::RunArgs;
use crate::deadline::Deadline;
use crate::{bundled, detach};
use ktvmm_vmm::kmsg::KernelLog;

/// Reads a guest from a file, or from the binary for `bundled:NAME`; a
/// guest cannot be larger than the RAM (`mem_mib`) it is loaded into.
pub fn load_guest(guest: &str, mem_mib: u64) -> Result<KernelImage> {
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
    read_image(Path::new(guest), "a guest", mem_mib)
}

fn read_image(path: &Path, what: &str, mem_mib: u64) -> Result<KernelImage> {
    let what = format!("{what} for {mem_mib} MiB of RAM (-m)");
    let bytes = input::read(path, mem_mib.saturating_mul(1 << 20), &what)?;
    Ok(KernelImage {
        name: path.display().to_string(),
        bytes,
    })
}

/// Runs the VM for what is left of the deadline after setup; a timeout
/// still names the whole limit.
fn run_within(vm: &mut Vm, deadline: Option<&Deadline>) -> Outcome {
    let Some(deadline) = deadline else {
        return vm.run(None);
    };
    let mut outcome = vm.run(Some(deadline.running()));
    deadline.done();
    if let Outcome::Timeout { seconds, .. } = &mut outcome {
        *seconds = deadline.limit().as_secs_f64();
    }
    outcome
}

/// Runs the guest; exits the process with the guest's exit code, or returns
/// the exit code when no VM could be built.
pub fn run(args: RunArgs) -> Result<u8> {
    let kernel = load_guest(&args.guest, args.vm.mem_mib)?;
    let initrd = args
        .vm
        .initrd
        .as_deref()
        .map(|path| read_image(path, "an initrd", args.vm.mem_mib))
        .transpose()?;
    let config = VmConfig {
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
    };
    let mut kernel_log = args.vm.timeout.and_then(|_| KernelLog::open_at_end());
    let deadline = args
        .vm
        .timeout
        .map(|limit| Deadline::start(limit, args.json_outcome.clone()));
    let (outcome, vm) = match Vm::build(config) {
        Ok(mut vm) => (run_within(&mut vm, deadline.as_ref()), Some(vm)),
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
    if let Some(path) = &args.json_outcome {
        let mut json: serde_json::Value =
            serde_json::from_str(&outcome.to_json()).unwrap_or(serde_json::Value::Null);
        if let (false, Some(object)) = (host_log.is_empty(), json.as_object_mut()) {
            object.insert("host_kernel_log".into(), host_log.clone().into());
        }
        fs::write(path, json.to_string() + "\n")
            .with_context(|| format!("{}: cannot write the outcome", path.display()))?;
    }
    if let Some(message) = outcome.message() {
        errln!("ktvmm: {message}");
    }
    if !host_log.is_empty() {
        // Indented, under the timeout message: the runner takes a test's
        // reason from the last line that starts with "ktvmm: ".
        errln!("  host kernel log during the run:");
        for line in &host_log {
            errln!("    {line}");
        }
    }
    match vm {
        Some(vm) => detach::exit_leaving_teardown(outcome.exit_code(), vm),
        None => Ok(outcome.exit_code()),
    }
}
