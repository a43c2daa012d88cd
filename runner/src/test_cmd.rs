//! `ktvmm test`: discover, select, run in parallel, report.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::cli::TestArgs;
use crate::console::{self, Console, Verbosity};
use crate::results::{self, OutputDir};
use crate::schedule::{self, Job};
use crate::select::{Selection, SelectionRecord, fingerprint};
use crate::suite::{TestSpec, discover::discover, kut};
use crate::verdict::{RunMeta, Status, TestResult};
use crate::{bundled, interrupt, kvm_env, kvm_matrix, tables};

/// Exit code of a run cut short by Ctrl-C (as a shell reports SIGINT).
const EXIT_INTERRUPTED: u8 = 130;
/// Between SIGTERM and SIGKILL for a test being stopped.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs the tests; returns 0 when every test passed or skipped.
pub fn test(args: TestArgs) -> Result<u8> {
    interrupt::install();
    let tests = if args.paths.is_empty() {
        bundled::suite()
    } else {
        let host = kut::Host::new(available_cpus() as u32, !args.groups.is_empty());
        discover(&args.paths, &host)?
    };
    let tests = crate::suite::sweep::expand(tests, &args.sweeps).map_err(|e| anyhow::anyhow!(e))?;
    // Before selection, so filters and --rerun-failed pick configurations.
    let tests = kvm_matrix::expand(tests, &args.kvm_configs);
    let discovered = tests.len();
    let expectations = match &args.expect {
        Some(path) => crate::expect::load(path)?,
        None => Vec::new(),
    };
    let selection = selection(&args)?;
    let suite_digest = fingerprint(tests.iter().map(|t| t.name.as_str()));
    let selected = selection.filter(tests)?;
    let record = SelectionRecord {
        suite: suite_name(&args),
        discovered,
        suite_digest,
        options: selection_options(&args),
        selected: selected.len(),
        selection_digest: fingerprint(selected.iter().map(|t| t.name.as_str())),
        shard: args.shard,
    };
    let mut tests = crate::envs::expand(selection.shard_of(selected), &args.envs);
    if let Some(name) = &args.gdb {
        tests = one_for_gdb(tests, name)?;
    }
    for test in &mut tests {
        if args
            .exclusive
            .iter()
            .any(|p| crate::select::matches(p, &test.name))
        {
            test.exclusive = true;
        }
    }
    if let Some(seed) = args.shuffle {
        crate::select::shuffle(&mut tests, seed);
    }

    let environment = kvm_env::Request {
        tdp: args.tdp,
        nested: args.nested,
        apicv: args.apicv,
        params: args.kvm_params.clone(),
    };
    // Decided before anything runs: a request that cannot be met stops here.
    let env_host = kvm_env::Host::probe();
    // The configurations that have tests, in their order, with how many.
    let configs: Vec<(kvm_matrix::Config, usize)> = args
        .kvm_configs
        .iter()
        .map(|c| {
            let under = tests
                .iter()
                .filter(|t| kvm_matrix::config_of(t) == Some(&c.name))
                .count();
            (c.clone(), under)
        })
        .filter(|(_, under)| *under > 0)
        .collect();
    let matrix = if args.kvm_configs.is_empty() {
        None
    } else {
        Some(kvm_matrix::plan(&configs, &environment, &env_host)?)
    };
    let plan = if environment.is_empty() || matrix.is_some() {
        None
    } else {
        Some(kvm_env::plan(&environment, &env_host)?)
    };
    if args.dry_run {
        if let Some(plan) = &plan {
            out!("{plan}");
        }
        if let Some(matrix) = &matrix {
            out!("{matrix}");
        }
        outln!("would run {} tests:", tests.len());
        for test in &tests {
            outln!("  {}", test.name);
        }
        return Ok(0);
    }

    // Listing and running agree on an empty selection.
    if tests.is_empty() {
        if args.rerun_failed && selection.only.as_ref().is_some_and(HashSet::is_empty) {
            outln!("nothing to rerun: every test passed last time");
            return Ok(0);
        }
        bail!("no tests selected ({discovered} found; check -f/-x/-g/--shard)");
    }
    if args.list {
        for test in &tests {
            let mut line = test.name.clone();
            if !test.groups.is_empty() {
                line += &format!("  [{}]", test.groups.join(", "));
            }
            if test.exclusive {
                line += "  (runs alone)";
            }
            outln!("{line}");
        }
        return Ok(0);
    }

    // Whether QEMU can start VMs here, before any test is judged under it.
    let qemu_notices = crate::qemu_probe::apply(&mut tests);
    let output = OutputDir::create(args.output.as_deref())?;
    if args.gdb.is_some() {
        print_gdb_attach(&tests, &output, args.gdb_port)?;
    }
    crate::envs::write_bundled_guests(&mut tests, output.path()).with_context(|| {
        format!(
            "{}: cannot write the bundled guests for QEMU",
            output.path().display()
        )
    })?;
    crate::suite::kut_env::write_files(&mut tests, output.path())
        .map_err(|e| anyhow::anyhow!("kvm-unit-tests' environment file: {e}"))?;
    if let Some(plan) = plan.as_ref().filter(|p| !p.changes.is_empty()) {
        kvm_env::apply(plan, &env_host).context("cannot set up the KVM environment")?;
    }
    for notice in plan.iter().flat_map(|p| &p.notices).chain(&qemu_notices) {
        outln!("notice: {notice}");
    }
    if let Some(seed) = args.shuffle {
        outln!("order shuffled with --shuffle {seed}");
    }
    let host_stats = host_stats(&tests);
    let options = schedule::Options {
        jobs: args
            .jobs
            .map_or_else(available_cpus, |j| j as usize)
            .min(tests.len()),
        grace: KILL_GRACE,
        ktvmm: crate::self_exe::path()?,
        host_stats: host_stats.as_ref().ok().cloned(),
        cores: args.cores,
        gdb_port: args.gdb.as_ref().map(|_| args.gdb_port),
        log_limit: args.log_limit << 20,
        start_until: None,
        stop_after_failure: false,
    };
    let verbosity = match (args.quiet, args.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    let started_at = SystemTime::now();
    let started = Instant::now();
    let rounds = match (args.until_fail, args.repeat) {
        (true, 1) => u32::MAX,
        (_, n) => n,
    };
    // Each batch adds what it queues (rounds, configurations, a soak's
    // rounds are not known ahead).
    let mut console = Console::new(verbosity, 0, args.heartbeat, options.ktvmm.clone());
    let mut meta = RunMeta::probe(std::env::args().collect(), started_at);
    meta.notices = qemu_notices;
    meta.selection = Some(record);
    meta.kvm_configs = configs
        .iter()
        .map(|(c, _)| (c.name.clone(), c.settings()))
        .collect();
    if let Err(Some(why)) = &host_stats {
        // Said once, not per test.
        let notice = format!("no KVM counters for host programs: {why}");
        outln!("notice: {notice}");
        meta.notices.push(notice);
    }
    console.expect(expectations.clone(), meta.clone());
    let mut run = Run {
        args: &args,
        output: &output,
        options,
        console,
        expectations: &expectations,
        meta: &meta,
        results: Vec::new(),
        interrupted: false,
        planned: 0,
    };
    let mut matrix_failed = None;
    // The last configuration set up, for putting the host back.
    let mut applied = None;
    match &matrix {
        None => run.selection(&tests, rounds),
        Some(matrix) => {
            for (index, step) in matrix.steps.iter().enumerate() {
                if run.interrupted || run.stopped() {
                    break;
                }
                // A reload that failed counts as done: putting back reloads
                // its modules with the host's values.
                applied = Some(index);
                if let Err(e) = kvm_env::apply(&step.enter, &env_host) {
                    matrix_failed = Some(format!(
                        "cannot set up KVM configuration {}: {e}",
                        step.config.name
                    ));
                    break;
                }
                for notice in &step.plan.notices {
                    run.console
                        .note(&format!("notice: {}: {notice}", step.config.name));
                }
                if !step.enter.changes.is_empty() {
                    run.console.note(&format!(
                        "KVM configuration {}: reloaded {}",
                        step.config.name,
                        step.enter
                            .reloads()
                            .iter()
                            .map(|(m, s)| format!("{m} {}", s.join(" ")))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                let under: Vec<TestSpec> = tests
                    .iter()
                    .filter(|t| kvm_matrix::config_of(t) == Some(&step.config.name))
                    .cloned()
                    .collect();
                run.selection(&under, rounds);
            }
        }
    }
    let Run {
        mut console,
        results,
        interrupted,
        planned,
        ..
    } = run;
    console.clear_status();

    meta.duration = started.elapsed();
    meta.interrupted = interrupted;
    let written = results::write_all(&output, &meta, &results);
    // A soak has no fixed number of runs to fall short of.
    let not_run = if interrupted && args.soak.is_none() {
        planned.saturating_sub(results.len())
    } else {
        0
    };
    console::summary(&results, started.elapsed(), not_run, output.path());
    // A sweep's table has the configurations as its last column already.
    let mut tables = tables::sweeps(&results);
    if tables.is_empty() {
        let names: Vec<String> = configs.iter().map(|(c, _)| c.name.clone()).collect();
        tables += &tables::configs(&results, &names);
    }
    if args.soak.is_some() {
        tables += &tables::soak(&results, started.elapsed());
    }
    out!("{tables}");
    let disagreements = crate::envs::disagreements(&results);
    if args.envs.len() > 1 && !disagreements.is_empty() {
        outln!("environments disagree ({}):", disagreements.len());
        for line in &disagreements {
            outln!("{line}");
        }
    }
    if let Some(plan) = plan.as_ref().filter(|p| !p.changes.is_empty())
        && let Err(e) = kvm_env::apply(&plan.reverse(), &env_host)
    {
        errln!("ktvmm: putting the KVM module parameters back failed: {e}");
    }
    if let Some(matrix) = &matrix
        && let Err(e) = kvm_env::apply(&matrix.restore_after(applied), &env_host)
    {
        errln!("ktvmm: putting the KVM module parameters back failed: {e}");
    }
    written.context("cannot write the results")?;
    if let Some(why) = matrix_failed {
        bail!("{why}");
    }
    Ok(if interrupted {
        EXIT_INTERRUPTED
    } else {
        u8::from(results.iter().any(|r| r.status.is_failure()))
    })
}

/// What every batch of a run shares: where it goes, how it is shown, and
/// what has come of it so far.
struct Run<'a> {
    args: &'a TestArgs,
    output: &'a OutputDir,
    options: schedule::Options,
    console: Console,
    expectations: &'a [crate::expect::Expectation],
    meta: &'a RunMeta,
    results: Vec<TestResult>,
    interrupted: bool,
    /// Tests queued so far.
    planned: usize,
}

impl Run<'_> {
    /// Whether `--until-fail` has had its failure.
    fn stopped(&self) -> bool {
        self.args.until_fail && self.results.iter().any(|r| r.status.is_failure())
    }

    /// Runs `tests` as the options say: once, `--repeat` times, round by
    /// round `--until-fail`, or again and again `--for` a while.
    fn selection(&mut self, tests: &[TestSpec], rounds: u32) {
        if let Some(length) = self.args.soak {
            return self.soak(tests, length);
        }
        let mut iteration = 1;
        while iteration <= rounds && !self.interrupted {
            // --until-fail runs a round at a time and stops after a bad one;
            // --repeat alone queues every round at once to keep -j busy.
            let batch = if self.args.until_fail { 1 } else { rounds };
            let failed = self.batch(tests, iteration, batch);
            iteration += batch;
            if self.args.until_fail && failed {
                break;
            }
        }
    }

    /// `--for`: rounds of `tests`, enough at a time to keep every worker
    /// busy, until the time is up (what is running then finishes) or, with
    /// `--until-fail`, a test has not passed; each round in a new order
    /// under `--shuffle`.
    fn soak(&mut self, tests: &[TestSpec], length: Duration) {
        let end = Instant::now() + length;
        let per_batch = self.options.jobs.max(1).div_ceil(tests.len().max(1)).max(1) as u32 * 2;
        self.options.start_until = Some(end);
        self.options.stop_after_failure = self.args.until_fail;
        let mut tests = tests.to_vec();
        let mut iteration = 1;
        while !self.interrupted && Instant::now() < end {
            if let Some(seed) = self.args.shuffle.filter(|_| iteration > 1) {
                crate::select::shuffle(&mut tests, seed.wrapping_add(u64::from(iteration)));
            }
            let failed = self.batch(&tests, iteration, per_batch);
            iteration += per_batch;
            if failed && self.args.until_fail {
                break;
            }
        }
    }

    /// Rounds `first..first + count` of `tests`; returns whether any
    /// did not pass (expected failures aside).
    fn batch(&mut self, tests: &[TestSpec], first: u32, count: u32) -> bool {
        let jobs = jobs(tests, first, count, self.args, self.output);
        self.console.next_round(jobs.len());
        self.planned += jobs.len();
        let finished = schedule::run(&jobs, &self.options, &mut self.console);
        self.interrupted = finished.interrupted;
        let mut round = finished.results;
        // Before retrying: an expected failure is not worth another run.
        crate::expect::apply(self.expectations, self.meta, &mut round);
        if !self.interrupted && self.args.retries > 0 {
            self.interrupted = retry(
                &mut round,
                &jobs,
                self.args,
                self.output,
                &self.options,
                &mut self.console,
            );
        }
        let failed = round.iter().any(|r| r.status.is_failure());
        self.results.extend(round);
        failed
    }
}

/// Runs the tests of `results` that did not pass again, up to
/// `--retries` times; one that passes becomes FLAKY, never PASS. Returns
/// whether Ctrl-C stopped it.
fn retry(
    results: &mut [TestResult],
    jobs: &[Job],
    args: &TestArgs,
    output: &OutputDir,
    options: &schedule::Options,
    console: &mut Console,
) -> bool {
    let mut pending: Vec<usize> = (0..results.len())
        .filter(|&i| {
            // An unexpected pass is not made better by running it again.
            matches!(
                results[i].status,
                Status::Fail | Status::Timeout | Status::Error
            ) && results[i].reason.as_deref() != Some("interrupted")
        })
        .collect();
    for attempt in 1..=args.retries {
        if pending.is_empty() {
            break;
        }
        let retry_jobs: Vec<Job> = pending
            .iter()
            .filter_map(|&i| {
                let job = jobs.iter().find(|j| {
                    j.spec.name == results[i].name && j.iteration == results[i].iteration
                })?;
                let mut job = job.clone();
                job.log =
                    output.log_path(&format!("{}.retry{attempt}", job.spec.name), job.iteration);
                Some(job)
            })
            .collect();
        console.note(&format!(
            "retrying {} test(s) that did not pass (attempt {attempt} of {})",
            retry_jobs.len(),
            args.retries
        ));
        console.next_round(retry_jobs.len());
        let finished = schedule::run(&retry_jobs, options, console);
        for again in &finished.results {
            let Some(&i) = pending.iter().find(|&&i| {
                results[i].name == again.name && results[i].iteration == again.iteration
            }) else {
                continue;
            };
            if !again.status.is_failure() {
                let first = results[i].reason.clone().unwrap_or_else(|| "failed".into());
                results[i].status = Status::Flaky;
                results[i].reason = Some(format!(
                    "{first}; passed on retry {attempt} (log {})",
                    again.log.display()
                ));
                pending.retain(|&p| p != i);
            }
        }
        if finished.interrupted {
            return true;
        }
    }
    for &i in &pending {
        let first = results[i].reason.clone().unwrap_or_else(|| "failed".into());
        results[i].reason = Some(format!("{first}; failed all {} retries", args.retries));
    }
    false
}

fn selection(args: &TestArgs) -> Result<Selection> {
    let only = if args.rerun_failed {
        let failed = results::previous_failures(args.output.as_deref())
            .context("--rerun-failed needs the results of an earlier run")?;
        Some(failed.into_iter().collect())
    } else {
        None
    };
    Ok(Selection {
        patterns: args.filters.clone(),
        exclude: args.excludes.clone(),
        groups: args.groups.clone(),
        only,
        shard: args.shard,
    })
}

/// The suite as `results.json` names it: the paths as given, or `bundled`.
fn suite_name(args: &TestArgs) -> String {
    if args.paths.is_empty() {
        "bundled".to_string()
    } else {
        let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        paths.join(" ")
    }
}

/// The options that chose the tests or shaped the run, as typed, in a
/// fixed order: shards of one run agree on them.
fn selection_options(args: &TestArgs) -> Vec<String> {
    let mut words = Vec::new();
    let mut each = |flag: &str, values: &[String]| {
        for value in values {
            words.extend([flag.to_string(), value.clone()]);
        }
    };
    each("-f", &args.filters);
    each("-x", &args.excludes);
    each("-g", &args.groups);
    let envs: Vec<String> = args.envs.iter().map(|e| e.name().to_string()).collect();
    each("--env", &envs);
    if args.rerun_failed {
        words.push("--rerun-failed".into());
    }
    if args.repeat > 1 {
        words.extend(["--repeat".to_string(), args.repeat.to_string()]);
    }
    if args.until_fail {
        words.push("--until-fail".into());
    }
    words
}

/// Rounds `first..first + count` of every test, round by round.
fn jobs(
    tests: &[TestSpec],
    first: u32,
    count: u32,
    args: &TestArgs,
    output: &OutputDir,
) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(tests.len() * count as usize);
    for iteration in first..first.saturating_add(count) {
        for spec in tests {
            jobs.push(Job {
                spec: spec.clone(),
                iteration,
                log: output.log_path(&spec.name, iteration),
                timeout: spec.timeout.unwrap_or(args.timeout),
            });
        }
    }
    jobs
}

/// `--gdb NAME`: exactly that guest test, run by ktvmm.
fn one_for_gdb(tests: Vec<TestSpec>, name: &str) -> Result<Vec<TestSpec>> {
    let Some(test) = tests.into_iter().find(|t| t.name == name) else {
        bail!("--gdb {name}: no test has that exact name (--list shows them)");
    };
    let crate::suite::TestKind::Guest(guest) = &test.kind else {
        bail!("--gdb {name}: not a guest ktvmm runs; only guests can be debugged");
    };
    if guest.vmm != crate::suite::Vmm::Ktvmm {
        bail!("--gdb {name}: runs under QEMU; debug it there with -s -S");
    }
    Ok(vec![test])
}

/// Says how to attach GDB to the `--gdb` test, with its symbol file: the
/// `.elf` kvm-unit-tests builds beside a `.flat`, or a bundled guest's
/// image written to the output directory.
fn print_gdb_attach(tests: &[TestSpec], output: &OutputDir, port: u16) -> Result<()> {
    let Some(test) = tests.first() else {
        return Ok(());
    };
    let crate::suite::TestKind::Guest(guest) = &test.kind else {
        return Ok(());
    };
    let symbols = if let Some(name) = guest.guest.strip_prefix(bundled::PREFIX) {
        let path = output.path().join("guests").join(name);
        if let Some(bytes) = bundled::guest(name) {
            std::fs::create_dir_all(output.path().join("guests"))
                .and_then(|()| std::fs::write(&path, bytes))
                .with_context(|| format!("{}: cannot write the guest", path.display()))?;
        }
        path.display().to_string()
    } else {
        crate::run_cmd::symbol_file(&guest.guest)
    };
    outln!(
        "{} waits for GDB, held at its first instruction; attach with:\n  \
         gdb -ex 'target remote 127.0.0.1:{port}' {symbols}",
        test.name
    );
    Ok(())
}

/// Where host programs' KVM counters come from: `Err(None)` when no test
/// is a host program, `Err(Some(why))` when debugfs cannot be read.
fn host_stats(
    tests: &[TestSpec],
) -> std::result::Result<(std::path::PathBuf, schedule::debugfs_stats::Names), Option<String>> {
    use schedule::debugfs_stats::{DEBUGFS_KVM, Names, unavailable};
    if !tests
        .iter()
        .any(|t| matches!(t.kind, crate::suite::TestKind::Exec(_)))
    {
        return Err(None);
    }
    let root = std::path::PathBuf::from(DEBUGFS_KVM);
    match unavailable(&root) {
        Some(why) => Err(Some(why)),
        None => Ok((root, Names::probe())),
    }
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
