//! `ktvmm fuzz`: a bounded fuzz campaign against KVM's API (through
//! ktvmm's devices), replaying a reproducer, or shrinking one. See
//! docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use ktvmm_vmm::fuzz::{self, Budget, Campaign, Executor, HostWatch, Reproducer, repro};

use crate::cli::FuzzArgs;
use crate::verdict::RunMeta;

/// Runs the subcommand; 0 when nothing was found, 1 when something was.
pub fn fuzz(args: FuzzArgs) -> Result<u8> {
    let budget = Budget {
        exits_per_run: args.exits_per_run.max(1),
        slice: Duration::from_micros(args.slice_us.max(1)),
        spin: Duration::from_millis(args.spin_ms),
        guest_time: Duration::from_millis(args.guest_ms.max(1)),
        ..Budget::default()
    };
    if let Some(path) = &args.replay {
        return replay(path, budget);
    }
    if let Some(path) = &args.minimise {
        return shrink(path, budget);
    }
    if let Some(path) = &args.artifact {
        return artifact(path, budget);
    }
    if let Some(index) = args.input {
        return one(args.seed, index, budget, args.plant_bug);
    }
    let campaign = Campaign {
        seed: args.seed,
        iterations: args.iterations,
        time_limit: args.time,
        budget,
        plant_bug: args.plant_bug,
    };
    let host = host();
    // The CPUID that reproducers record: what KVM offers here.
    let cpuid = Executor::new(budget, false)
        .context("cannot start the fuzzer")?
        .supported_cpuid()
        .clone();
    let mut saved: Vec<PathBuf> = Vec::new();
    let mut save_error = None;
    println!(
        "fuzzing with seed {} for {} inputs{}; reproducers go to {}",
        args.seed,
        args.iterations,
        args.time
            .map(|t| format!(" (at most {} s)", t.as_secs_f64()))
            .unwrap_or_default(),
        args.out.display()
    );
    let stats = campaign
        .run(|found| {
            let reproducer =
                Reproducer::new(found, args.seed, args.plant_bug, host.clone(), &cpuid);
            let place = match reproducer.save(&args.out) {
                Ok(path) => {
                    let shown = path.display().to_string();
                    saved.push(path);
                    shown
                }
                Err(e) => {
                    let shown = format!("not saved: {e}");
                    save_error.get_or_insert(e);
                    shown
                }
            };
            for finding in &found.execution.findings {
                println!(
                    "finding in input {} after {:.1} s: {finding}\n  reproducer: {place}",
                    found.index,
                    found.after.as_secs_f64()
                );
            }
        })
        .context("cannot start the fuzzer")?;
    println!("{stats}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&stats.to_json())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write the statistics", path.display()))?;
    }
    if let Some(e) = save_error {
        bail!("a reproducer could not be saved: {e}");
    }
    if !saved.is_empty() {
        println!(
            "{} reproducer(s); replay one with: ktvmm fuzz --replay {}",
            saved.len(),
            saved[0].display()
        );
    }
    Ok(u8::from(!saved.is_empty()))
}

/// The host facts a reproducer records, as results.json has them.
fn host() -> repro::Host {
    let meta = RunMeta::probe(Vec::new(), SystemTime::now());
    repro::Host {
        kernel: meta.host_kernel,
        kvm_module: meta.kvm_module,
        cpu: meta.cpu,
    }
}

/// Runs `input` once, the VMM's panics caught, and says how it ended.
fn run_one(
    what: &str,
    input: &fuzz::Input,
    budget: Budget,
    plant_bug: bool,
) -> Result<fuzz::Execution> {
    let mut executor = Executor::new(budget, plant_bug).context("cannot start the fuzzer")?;
    let mut watch = HostWatch::start();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let execution = fuzz::check(&mut executor, &mut watch, input);
    std::panic::set_hook(hook);
    println!(
        "{what}: ended with {}, {} exits",
        execution.outcome,
        execution.exits.values().sum::<u64>()
    );
    println!("exits: {}", execution.trace.join(" "));
    for finding in &execution.findings {
        println!("finding: {finding}");
    }
    Ok(execution)
}

fn one(seed: u64, index: u64, budget: Budget, plant_bug: bool) -> Result<u8> {
    let input = fuzz::nth_input(seed, index);
    println!("{}", serde_json::to_string_pretty(&input)?);
    let execution = run_one(
        &format!("input {index} of seed {seed}"),
        &input,
        budget,
        plant_bug,
    )?;
    Ok(u8::from(!execution.findings.is_empty()))
}

/// A libFuzzer artifact of the `kvm_api` target: its bytes read as an
/// input the way the target reads them, saved as a reproducer, and run.
fn artifact(path: &Path, budget: Budget) -> Result<u8> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let input: fuzz::Input =
        arbitrary::Arbitrary::arbitrary(&mut arbitrary::Unstructured::new(&bytes))
            .map_err(|e| anyhow::anyhow!("{}: not a kvm_api input: {e}", path.display()))?;
    let execution = run_one(&path.display().to_string(), &input, budget, false)?;
    let cpuid = Executor::new(budget, false)
        .context("cannot start the fuzzer")?
        .supported_cpuid()
        .clone();
    let found = fuzz::Found {
        index: 0,
        input,
        execution,
        after: Duration::ZERO,
    };
    let mut reproducer = Reproducer::new(&found, 0, false, host(), &cpuid);
    reproducer.seed = None;
    reproducer.index = None;
    let out = path.with_extension("json");
    reproducer.write(&out)?;
    println!("reproducer: {}", out.display());
    Ok(u8::from(!found.execution.findings.is_empty()))
}

fn replay(path: &Path, budget: Budget) -> Result<u8> {
    let reproducer = Reproducer::load(path)?;
    let execution = run_one(
        &path.display().to_string(),
        &reproducer.input,
        budget,
        reproducer.plant_bug,
    )?;
    if execution.findings.is_empty() {
        println!(
            "no finding: it does not reproduce here (recorded: {})",
            reproducer.kinds().join(", ")
        );
        return Ok(0);
    }
    let same = repro::kinds(&execution.findings) == reproducer.kinds();
    println!(
        "{}",
        if same {
            "reproduced: the same kinds of findings as recorded"
        } else {
            "found something, but not what was recorded"
        }
    );
    Ok(1)
}

fn shrink(path: &Path, budget: Budget) -> Result<u8> {
    let reproducer = Reproducer::load(path)?;
    let mut executor =
        Executor::new(budget, reproducer.plant_bug).context("cannot start the fuzzer")?;
    let wanted = reproducer.kinds();
    if wanted.is_empty() {
        bail!("{}: records no finding to keep", path.display());
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (input, runs) = fuzz::minimise(&mut executor, &reproducer.input, &wanted, 2000);
    let mut watch = HostWatch::start();
    let execution = fuzz::check(&mut executor, &mut watch, &input);
    std::panic::set_hook(hook);
    let size = |i: &fuzz::Input| (i.ops.len(), i.vcpus.len(), i.program.len());
    let (ops, vcpus, bytes) = size(&reproducer.input);
    let (min_ops, min_vcpus, min_bytes) = size(&input);
    let still = repro::kinds(&execution.findings) == wanted;
    let minimised = Reproducer {
        findings: execution.findings,
        outcome: execution.outcome,
        exit_trace: execution.trace.iter().map(|s| s.to_string()).collect(),
        input,
        ..reproducer
    };
    let out = path.with_extension("min.json");
    minimised.write(&out)?;
    println!(
        "{} runs: {ops} -> {min_ops} operations, {vcpus} -> {min_vcpus} vCPUs, {bytes} -> {min_bytes} program bytes{}\nwritten: {}",
        runs,
        if still {
            ""
        } else {
            " (the last run did not reproduce: flaky?)"
        },
        out.display()
    );
    Ok(0)
}
