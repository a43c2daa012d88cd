//! `ktvmm bench`: how close `ktvmm run` is to the raw KVM floor.
//!
//! Both measurements are whole processes, process start to exit, because
//! that is what a user (or the runner) pays: (a) `ktvmm bench-floor`, which
//! only runs [`ktvmm_vmm::floor`]; (b) `ktvmm run bundled:exitcode`, the
//! smallest bundled guest. The two are interleaved so that machine noise
//! hits both alike.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ktvmm_vmm::{Vm, VmConfig};

use crate::cli::BenchArgs;
use crate::run_cmd::load_guest;

/// The guest `bench` boots: the smallest bundled one.
const SMALLEST_GUEST: &str = "bundled:exitcode";

/// `ktvmm bench-floor`: one floor run in this process.
pub fn floor_once() -> Result<u8> {
    ktvmm_vmm::floor::run_once().map_err(|e| anyhow::anyhow!("raw KVM floor: {e}"))?;
    Ok(0)
}

fn time_process(exe: &Path, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {} {}", exe.display(), args.join(" ")))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("`ktvmm {}` failed ({status})", args.join(" "));
    }
    Ok(elapsed)
}

/// Minimum and median of some durations.
fn min_median(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[0], samples[samples.len() / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs the benchmark and prints its figures.
pub fn bench(args: BenchArgs) -> Result<u8> {
    let exe = crate::self_exe::path()?;
    if args.runner {
        return runner_overhead(&exe, args.tests, args.runs.min(RUNNER_ROUNDS));
    }
    if args.fuzz {
        return fuzz_bench(args.inputs, args.runs);
    }
    let mut floor = Vec::new();
    let mut ktvmm = Vec::new();
    // One untimed round first: page cache, binary mapping, KVM module state.
    time_process(&exe, &["bench-floor"])?;
    time_process(&exe, &["run", SMALLEST_GUEST])?;
    for _ in 0..args.runs {
        floor.push(time_process(&exe, &["bench-floor"])?);
        ktvmm.push(time_process(&exe, &["run", SMALLEST_GUEST])?);
    }
    let (floor_min, floor_median) = min_median(&mut floor);
    let (run_min, run_median) = min_median(&mut ktvmm);
    outln!("runs: {} each, process start to exit", args.runs);
    outln!(
        "(a) raw KVM floor (VM + 1 vCPU, 6 real-mode instructions to HLT): min {}, median {}",
        ms(floor_min),
        ms(floor_median)
    );
    outln!(
        "(b) ktvmm run {SMALLEST_GUEST} (128 MiB, long mode, prints, exits via 0xf4): min {}, median {}",
        ms(run_min),
        ms(run_median)
    );
    if args.breakdown {
        breakdown(args.runs)?;
    }
    outln!(
        "ratio: {:.2}",
        run_median.as_secs_f64() / floor_median.as_secs_f64()
    );
    Ok(0)
}

/// Rounds of the runner benchmark at most (each is 2 x `--tests` boots).
const RUNNER_ROUNDS: u32 = 5;

/// `ktvmm test`'s cost per test: `tests` trivial guests through the whole
/// runner at -j 1 (spawn, log file, bookkeeping, console, results files),
/// against the same number of bare `ktvmm run`s, rounds interleaved.
fn runner_overhead(exe: &Path, tests: u32, rounds: u32) -> Result<u8> {
    let dir = std::env::temp_dir().join(format!("ktvmm-bench-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let suite = dir.join("bench.ktvmm.toml");
    let text: String = (0..tests)
        .map(|i| format!("[[test]]\nname = \"t{i}\"\nguest = \"{SMALLEST_GUEST}\"\n"))
        .collect();
    std::fs::write(&suite, text).with_context(|| format!("{}: cannot write", suite.display()))?;
    let out = dir.join("out");
    let (suite, out) = (suite.display().to_string(), out.display().to_string());
    let runner_args = ["test", "-j", "1", "-q", "-o", &out, &suite];

    time_process(exe, &["run", SMALLEST_GUEST])?;
    let mut bare = Vec::new();
    let mut runner = Vec::new();
    for _ in 0..rounds {
        let mut total = Duration::ZERO;
        for _ in 0..tests {
            total += time_process(exe, &["run", SMALLEST_GUEST])?;
        }
        bare.push(total / tests);
        runner.push(time_process(exe, &runner_args)? / tests);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (_, bare) = min_median(&mut bare);
    let (_, runner) = min_median(&mut runner);
    outln!(
        "runner overhead: {tests} trivial tests ({SMALLEST_GUEST}) per round, -j 1, {rounds} rounds, medians"
    );
    outln!(
        "(a) ktvmm run, one after another:      {} per test",
        ms(bare)
    );
    outln!(
        "(b) ktvmm test -j 1 over the same tests: {} per test (startup, results files included)",
        ms(runner)
    );
    outln!(
        "overhead: {} per test (target: at most 5 ms)",
        ms(runner.saturating_sub(bare))
    );
    Ok(0)
}

/// Median time of each build step and of the run itself, in this process.
fn breakdown(runs: u32) -> Result<()> {
    let image = load_guest(SMALLEST_GUEST, 128)?;
    let mut steps: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    let mut runs_taken = Vec::new();
    let mut teardowns = Vec::new();
    for _ in 0..runs {
        let config = VmConfig {
            kernel: image.clone(),
            cpus: 1,
            mem_mib: 128,
            cmdline: String::new(),
            initrd: None,
            console: Box::new(io::sink()),
            testdevs: true,
            cpu: Default::default(),
            pit: true,
            boot: None,
            iommu: false,
        };
        let mut vm = Vm::build(config)?;
        let started = Instant::now();
        let outcome = vm.run(Some(Duration::from_secs(10)));
        runs_taken.push(started.elapsed());
        for (i, (name, took)) in vm.timings().steps.iter().enumerate() {
            if steps.len() <= i {
                steps.push((name, Vec::new()));
            }
            steps[i].1.push(*took);
        }
        let started = Instant::now();
        drop(vm);
        teardowns.push(started.elapsed());
        if outcome.exit_code() != 0 {
            bail!("{SMALLEST_GUEST} did not pass: {outcome:?}");
        }
    }
    outln!("breakdown (in-process medians of {runs} builds and runs):");
    for (name, samples) in &mut steps {
        outln!("  {:<24} {}", name, ms(min_median(samples).1));
    }
    outln!(
        "  {:<24} {}",
        "run to guest exit (all)",
        ms(min_median(&mut runs_taken).1)
    );
    outln!(
        "  {:<24} {} (ktvmm run leaves this to a detached child)",
        "KVM teardown",
        ms(min_median(&mut teardowns).1)
    );
    Ok(())
}

/// Seeds whose time to the planted bug is measured (0, the smoke seed, first).
const PLANTED_SEEDS: u64 = 5;

/// The fuzz harness: throughput against the in-process floor, coverage of
/// a fixed-seed run and whether it repeats, time to the planted bug.
fn fuzz_bench(inputs: u64, runs: u32) -> Result<u8> {
    use ktvmm_fuzz::Campaign;
    let started = Instant::now();
    for _ in 0..runs * 10 {
        ktvmm_vmm::floor::run_once().map_err(|e| anyhow::anyhow!("raw KVM floor: {e}"))?;
    }
    let floor = f64::from(runs * 10) / started.elapsed().as_secs_f64();
    outln!("raw floor (create VM + vCPU, run to HLT, in process): {floor:.0} per second");

    let campaign = |seed, iterations, plant_bug: bool| {
        let mut campaign = Campaign::new(seed, iterations);
        campaign.exec.plant_bug = plant_bug;
        // The planted bug is a panic; other findings do not stop the search.
        campaign.stop_on = plant_bug.then(|| "vmm-panic".to_string());
        campaign
    };
    let first = campaign(0, inputs, false).run()?;
    let second = campaign(0, inputs, false).run()?;
    let counts = &first.stats.counts;
    outln!(
        "fuzz, seed 0, {inputs} inputs, 1 job: {:.0} and {:.0} executions per second (target: 500)",
        first.stats.speed.executions_per_second,
        second.stats.speed.executions_per_second
    );
    outln!(
        "  {} distinct exit reasons (target: 6): {}",
        counts.exit_reasons.len(),
        counts
            .exit_reasons
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    outln!("  {} distinct ioctls (target: 15)", counts.ioctls.len());
    outln!(
        "  outcomes: {}",
        counts
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!(
        "  findings: {}",
        if counts.findings.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", counts.findings)
        }
    );
    outln!(
        "  executions that ran into the CPU budget, then ended otherwise: {} and {}",
        first.stats.speed.unstable,
        second.stats.speed.unstable
    );
    let same = first.stats.counts == second.stats.counts;
    outln!(
        "  same statistics on the second run: {}",
        if same { "yes" } else { "NO" }
    );

    for seed in 0..PLANTED_SEEDS {
        let report = campaign(seed, 200_000, true).run()?;
        match report
            .found
            .iter()
            .find(|f| matches!(f.reproducer.finding, ktvmm_fuzz::Finding::VmmPanic { .. }))
        {
            Some(found) => outln!(
                "planted bug, seed {seed}: found after {:.2} s ({} inputs)",
                found.after.as_secs_f64(),
                found.iteration + 1
            ),
            None => outln!(
                "planted bug, seed {seed}: stopped at {:?} first",
                report.stats.counts.findings
            ),
        }
    }
    Ok(if same { 0 } else { 1 })
}
