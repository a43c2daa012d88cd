//! `ktvmm fuzz`: a bounded, seeded fuzz run of KVM's API and ktvmm's
//! devices, replaying and minimising of the reproducers it saves.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ktvmm_vmm::fuzz::{Campaign, ExecOptions, Executor, Reproducer, minimise};
use ktvmm_vmm::input;

use crate::cli::FuzzArgs;

/// Exit status when a run found something, or a replay reproduced it.
const FOUND: u8 = 1;

/// Runs the subcommand.
pub fn fuzz(args: FuzzArgs) -> Result<u8> {
    let exec = ExecOptions {
        exit_budget: args.exit_budget,
        cpu_budget: Duration::from_millis(args.cpu_budget_ms),
        plant_bug: args.plant_bug,
        ..ExecOptions::default()
    };
    if let Some(file) = &args.replay {
        return replay(file, exec);
    }
    if let Some(file) = &args.minimise {
        return minimise_file(file, exec);
    }
    let campaign = Campaign {
        seed: args.seed,
        iterations: args.iterations,
        time: args.time,
        jobs: args.jobs,
        exec,
        out: Some(args.out.clone()),
        stop_on: args.stop_on_finding.then(String::new),
    };
    let report = campaign.run().context("fuzzing")?;
    out!("{}", report.stats);
    if !report.kernel_log {
        outln!("note: /dev/kmsg is not readable: kernel warnings are not watched");
    }
    for found in &report.found {
        outln!(
            "FINDING after {:.2} s (input {}): {}",
            found.after.as_secs_f64(),
            found.iteration,
            found.reproducer.finding
        );
        if let Some(path) = &found.path {
            outln!("  reproducer: {} (ktvmm fuzz --replay {0})", path.display());
        }
    }
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&report.stats)?;
        std::fs::write(json, text + "\n")
            .with_context(|| format!("{}: cannot write", json.display()))?;
    }
    Ok(if report.found.is_empty() { 0 } else { FOUND })
}

fn replay(file: &Path, exec: ExecOptions) -> Result<u8> {
    let bytes = input::read(file, input::MAX_TEXT, "a reproducer or fuzzer input")?;
    let mut executor = Executor::new(exec)?;
    if !bytes.starts_with(b"{") {
        return replay_fuzzer_artifact(file, &bytes, &mut executor);
    }
    let reproducer = Reproducer::load(file)?;
    let (again, execution) = reproducer.replay(&mut executor);
    for line in &execution.trace {
        outln!("  {line}");
    }
    outln!("ended: {}", execution.end);
    for finding in &execution.findings {
        outln!("finding: {finding}");
    }
    if again {
        outln!("REPRODUCED: {}", reproducer.finding);
        Ok(FOUND)
    } else {
        outln!("not reproduced: {}", reproducer.finding);
        Ok(0)
    }
}

/// A libFuzzer artifact of the `kvm_api` target: decoded, executed, and
/// saved as a reproducer next to it when it finds something.
fn replay_fuzzer_artifact(file: &Path, bytes: &[u8], executor: &mut Executor) -> Result<u8> {
    let Some(reproducer) = Reproducer::from_fuzzer_bytes(bytes, executor) else {
        outln!("{}: no finding (as kvm_api fuzzer input)", file.display());
        return Ok(0);
    };
    for line in &reproducer.trace {
        outln!("  {line}");
    }
    let out = file.with_extension("json");
    reproducer.save(&out)?;
    outln!("REPRODUCED: {}", reproducer.finding);
    outln!(
        "wrote {} (replay and minimise it like any reproducer)",
        out.display()
    );
    Ok(FOUND)
}

fn minimise_file(file: &Path, exec: ExecOptions) -> Result<u8> {
    let mut reproducer = Reproducer::load(file)?;
    let mut executor = Executor::new(exec)?;
    let (again, _) = reproducer.replay(&mut executor);
    if !again {
        bail!(
            "{}: the finding does not reproduce, so there is nothing to minimise",
            file.display()
        );
    }
    let before = serde_json::to_string(&reproducer.input)?.len();
    let (smaller, tries) = minimise::minimise(&mut executor, &reproducer);
    reproducer.input = smaller;
    let (_, traced) = reproducer.replay(&mut executor);
    reproducer.trace = traced.trace;
    let after = serde_json::to_string(&reproducer.input)?.len();
    let out = file.with_extension("min.json");
    reproducer.save(&out)?;
    outln!(
        "minimised in {tries} executions: {before} -> {after} bytes of input, {} ops, {} program bytes",
        reproducer.input.ops.len(),
        reproducer.input.program.len()
    );
    outln!("wrote {}", out.display());
    Ok(0)
}
