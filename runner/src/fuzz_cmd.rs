//! `ktvmm fuzz`: a bounded, seeded fuzz run of KVM's API and ktvmm's
//! devices, replaying and minimising of the reproducers it saves.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ktvmm_fuzz::{Campaign, ExecOptions, Executor, Reproducer, minimise};
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
    // Decided before anything runs: a corrupted reproducer must not replay
    // as some fuzzer input and look fixed.
    let reproducer = match replay_kind(&bytes) {
        ReplayKind::Reproducer => Reproducer::load(file)?,
        ReplayKind::FuzzerInput => {
            let mut executor = Executor::new(exec)?;
            return replay_fuzzer_artifact(file, &bytes, &mut executor);
        }
        ReplayKind::Neither(why) => bail!(
            "{}: {why}: --replay takes a reproducer ktvmm fuzz saved (JSON) or a libFuzzer input of the kvm_api target (binary)",
            file.display()
        ),
    };
    let mut executor = Executor::new(exec)?;
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

enum ReplayKind {
    Reproducer,
    FuzzerInput,
    Neither(&'static str),
}

/// What `--replay` was given. libFuzzer inputs of the `kvm_api` target are
/// raw bytes that `arbitrary` decodes, and it decodes anything, even text:
/// so JSON is read as a reproducer (and refused if it is not one), and
/// other text or an empty file is neither.
fn replay_kind(bytes: &[u8]) -> ReplayKind {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => ReplayKind::Neither("is empty"),
        Some(b'{') => ReplayKind::Reproducer,
        Some(b'[') => ReplayKind::Neither("is JSON, but not an object as reproducers are"),
        Some(_) if is_text(bytes) => ReplayKind::Neither("is text, not JSON"),
        Some(_) => ReplayKind::FuzzerInput,
    }
}

/// Printable UTF-8 with line breaks and tabs: what a person wrote.
fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        text.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    })
}

/// A libFuzzer artifact of the `kvm_api` target: decoded, executed, and
/// saved as a reproducer next to it when it finds something.
fn replay_fuzzer_artifact(file: &Path, bytes: &[u8], executor: &mut Executor) -> Result<u8> {
    // Any bytes decode (`arbitrary` fills what is missing with defaults).
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
