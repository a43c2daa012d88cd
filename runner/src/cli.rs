//! Command-line definitions. QEMU users type `-smp 4 -append "..."`; those
//! single-dash spellings are rewritten to the GNU long options before clap
//! sees them, so both work everywhere.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::units::{parse_duration, parse_mem_mib, parse_seconds};

/// ktvmm: run KVM unit-test guests on a purpose-built mini-VMM.
#[derive(Debug, Parser)]
#[command(name = "ktvmm", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot one guest and exit with its exit code.
    Run(RunArgs),
    /// Run a suite of guests (the bundled suite when no path is given).
    Test(TestArgs),
    /// Measure boot-to-exit time against the raw KVM floor.
    Bench(BenchArgs),
    /// Compare two runs (output directories or results.json files): exit 1
    /// when a test or subtest regressed.
    Diff(DiffArgs),
    /// Put the results of the shards of one run (`ktvmm test --shard K/N`),
    /// or of repeated runs, together into one results directory.
    Merge(MergeArgs),
    /// Fuzz KVM's API and ktvmm's devices from a seed, for a bounded number
    /// of inputs; replay or minimise a saved reproducer.
    Fuzz(FuzzArgs),
    /// Say which environments can run guests on this host (`ktvmm test
    /// --env`): exit 0 when every one named (default: all) can.
    Envs(EnvsArgs),
    /// One run of the raw KVM floor (what `bench` times as its baseline).
    #[command(hide = true)]
    BenchFloor,
}

/// Options of `ktvmm run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The guest: an ELF file, or `bundled:NAME` for a guest built into ktvmm.
    pub guest: String,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Write the outcome as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_outcome: Option<PathBuf>,
    /// After the run, print its time and KVM's largest counters for the VM
    /// and its vCPUs on stderr (the outcome file has them all).
    #[arg(long)]
    pub stats: bool,
    /// When the run does not pass (a guest code other than 0 or 77, a
    /// timeout, a hang, a crash), write an ELF core of the guest to FILE:
    /// all RAM and every vCPU's registers, as QEMU's dump-guest-memory
    /// does (open it with `gdb GUEST FILE`).
    #[arg(long, value_name = "FILE")]
    pub core: Option<PathBuf>,
    /// Serve GDB's remote protocol on [ADDR:]PORT (QEMU's `-gdb tcp::PORT`
    /// is accepted too); without ADDR, on 127.0.0.1 only.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub gdb: Option<String>,
    /// Serve GDB on 127.0.0.1:1234 (QEMU's -s).
    #[arg(short = 's')]
    pub gdb_default: bool,
    /// Hold the vCPUs before the guest's first instruction until GDB
    /// connects and continues (QEMU's -S; with -s or --gdb).
    #[arg(short = 'S')]
    pub hold: bool,
    /// Leave the test devices out: a bare platform (COM1, isa-debug-exit,
    /// PCI host bridge).
    #[arg(long)]
    pub no_testdevs: bool,
    /// The CPU model, as QEMU spells it: max, host, qemu64, Opteron_G1,
    /// IvyBridge or Skylake-Server, then +flag/-flag, vendor=...,
    /// phys-bits=N and host-phys-bits=on|off edits (QEMU: -cpu).
    #[arg(long, value_name = "MODEL", default_value = "max", value_parser = ktvmm_vmm::cpu::model::parse)]
    pub cpu: ktvmm_vmm::cpu::model::CpuSpec,
    /// Leave out the PIT (QEMU: -machine pit=off).
    #[arg(long)]
    pub no_pit: bool,
    /// Boot with this protocol instead of the one the file calls for:
    /// `multiboot` boots an ELF64 guest through its multiboot header (as
    /// QEMU would), `elf64` insists on ktvmm's long-mode protocol.
    #[arg(long, value_name = "PROTOCOL")]
    pub boot: Option<ktvmm_vmm::boot::Protocol>,
    /// Put an Intel VT-d unit (at 0xfed90000) in front of edu: DMA and
    /// MSI remapping (QEMU: -M q35 -device intel-iommu,intremap=on).
    #[arg(long)]
    pub iommu: bool,
}

/// How to shape the VM (shared by `run` and `test`).
#[derive(Debug, Args, Clone)]
pub struct VmArgs {
    /// Number of vCPUs (QEMU: -smp N).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub smp: u32,
    /// Guest RAM in MiB; a M or G suffix is accepted (QEMU: -m).
    #[arg(short = 'm', long = "memory", value_name = "MB", default_value = "128", value_parser = parse_mem_mib)]
    pub mem_mib: u64,
    /// The guest's command line (QEMU: -append).
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub append: String,
    /// A file the guest receives as its initrd (QEMU: -initrd).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Stop the guest after SECS seconds (exit code 124).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
}

/// Options of `ktvmm test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Suite files (ktvmm.toml, *.ktvmm.toml), directories to search for
    /// them (or holding guests and executables), guest ELF files, host
    /// executables. None: the bundled suite.
    pub paths: Vec<PathBuf>,
    /// List the selected tests instead of running them.
    #[arg(long)]
    pub list: bool,
    /// Run only tests whose name matches (substring, glob with * and ?, or
    /// =NAME for exactly that name).
    #[arg(short = 'f', long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Leave out tests whose name matches (substring, glob, or =NAME).
    #[arg(short = 'x', long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Run tests whose name matches (as for --filter) with no other test
    /// running beside them (repeatable).
    #[arg(long = "exclusive", value_name = "PATTERN")]
    pub exclusive: Vec<String>,
    /// Run only tests in this group (repeatable: any of them).
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Run only the tests that did not pass in the last run.
    #[arg(long)]
    pub rerun_failed: bool,
    /// Run the K-th of N interleaved parts of the selected tests (1-based).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::select::Shard>,
    /// Tests to run at once (default: the number of CPUs).
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Time limit of tests whose suite gives none, in seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Run every selected test N times.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Repeat the selected tests until one does not pass (at most --repeat
    /// times when that is given).
    #[arg(long)]
    pub until_fail: bool,
    /// Run each selected test once per value of KEY (repeatable: once per
    /// combination): smp, memory, cpu, iommu, append for guests; args,
    /// env.NAME for programs. Numbers take ranges: smp=1..8,
    /// memory=64M..1G*2, smp=1..16+4. Each variant is a test named
    /// TEST[KEY=VALUE,...].
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...", value_parser = crate::suite::sweep::parse_axis)]
    pub sweeps: Vec<crate::suite::sweep::Axis>,
    /// Soak: run the selected tests again and again for DURATION (`90s`,
    /// `10m`, `2h`), finishing those running when the time is up; report
    /// each test's runs, failures and failure rate (with --until-fail,
    /// stop at the first failure).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with_all = ["repeat", "retries"])]
    pub soak: Option<Duration>,
    /// Run the whole selection under each KVM configuration in turn
    /// (repeatable), reloading modules between them: NAME:MODULE.PARAM=VALUE,...
    /// (NAME: alone is the host as it is). Results are TEST[kvm=NAME].
    #[arg(long = "kvm-config", value_name = "NAME:MODULE.PARAM=VALUE,...", value_parser = crate::kvm_matrix::parse_config)]
    pub kvm_configs: Vec<crate::kvm_matrix::Config>,
    /// Where guests run: ktvmm (the default), qemu-kvm, qemu-tcg
    /// (repeatable: each guest runs in each, and the summary says where the
    /// verdicts differ).
    #[arg(long = "env", value_name = "ENV")]
    pub envs: Vec<crate::envs::Env>,
    /// Known failures (TOML, see docs/runner.md): expected failures are
    /// XFAIL, passes of tests expected to fail XPASS; only the unexpected
    /// fails the run.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Run the selected tests in an order shuffled by SEED (the same seed,
    /// the same order), to expose tests that depend on others.
    #[arg(long, value_name = "SEED")]
    pub shuffle: Option<u64>,
    /// Run a test that did not pass up to N more times; one that then
    /// passes is reported FLAKY.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Where logs and results go (default: a new ktvmm-results/<time>/,
    /// linked from ktvmm-results/latest).
    #[arg(short = 'o', long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// The most of a test's output its log keeps, in MiB (`M`, `G`
    /// suffixes): its head and its tail, with a line saying what was cut.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_log_limit)]
    pub log_limit: u64,
    /// Print only tests that did not pass, and the summary.
    #[arg(short = 'q', long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print each test as it starts.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// When not on a terminal, print what is running after this many
    /// seconds without output.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub heartbeat: Duration,
    /// Two-dimensional paging (EPT, NPT) on or off for this run.
    #[arg(long, value_name = "on|off", value_parser = crate::units::parse_switch)]
    pub tdp: Option<bool>,
    /// Nested virtualization on or off for this run.
    #[arg(long, value_name = "on|off", value_parser = crate::units::parse_switch)]
    pub nested: Option<bool>,
    /// APIC virtualization (APICv, AVIC) on or off for this run.
    #[arg(long, value_name = "on|off", value_parser = crate::units::parse_switch)]
    pub apicv: Option<bool>,
    /// A KVM module parameter for this run (repeatable).
    #[arg(long = "kvm-param", value_name = "MODULE.PARAM=VALUE", value_parser = crate::kvm_env::parse_param)]
    pub kvm_params: Vec<crate::kvm_env::Param>,
    /// Print how the environment would be set up and which tests would
    /// run, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep an ELF core of every guest that does not pass (fails, times
    /// out, hangs) next to its log: `gdb GUEST LOG.core` opens it.
    #[arg(long)]
    pub cores: bool,
    /// Run only the guest test named exactly NAME, held at its first
    /// instruction with a GDB stub on --gdb-port (as `ktvmm run -s -S`):
    /// the command to attach is printed, and no time limit applies while
    /// it waits.
    #[arg(long, value_name = "NAME")]
    pub gdb: Option<String>,
    /// The port --gdb listens on (127.0.0.1).
    #[arg(long, value_name = "PORT", default_value_t = 1234)]
    pub gdb_port: u16,
}

/// Options of `ktvmm envs`.
#[derive(Debug, Args)]
pub struct EnvsArgs {
    /// Environments to probe: ktvmm, qemu-kvm, qemu-tcg (default: all).
    pub envs: Vec<crate::envs::Env>,
    /// The CPU model to probe QEMU with.
    #[arg(long, default_value = "max")]
    pub cpu: String,
}

/// Options of `ktvmm diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier run.
    pub before: PathBuf,
    /// The later run.
    pub after: PathBuf,
    /// List a KVM counter (or a test's duration) when it moved by at
    /// least this factor...
    #[arg(long, default_value_t = 2.0, value_name = "X")]
    pub counter_factor: f64,
    /// ...and by at least this many (both must hold).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub counter_min: u64,
    /// Exit 1 when a KVM counter rose past those thresholds, as for a
    /// regression (a CI gate on patches).
    #[arg(long)]
    pub fail_on_counters: bool,
    /// Also write the comparison as a self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// Options of `ktvmm merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The results to merge: output directories of `ktvmm test` (or their
    /// results.json files).
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// Where the merged results go (created if need be; not one of the
    /// inputs).
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: PathBuf,
    /// The inputs are repeated runs of the same tests (each may be
    /// sharded): every run of a test is kept, as `--repeat` keeps them.
    #[arg(long)]
    pub repeats: bool,
}

/// Options of `ktvmm bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Also show where `ktvmm run`'s time goes.
    #[arg(long)]
    pub breakdown: bool,
    /// Measure `ktvmm test`'s own cost per test instead: --tests trivial
    /// tests at -j 1 against as many plain `ktvmm run`s.
    #[arg(long)]
    pub runner: bool,
    /// Tests per round with --runner.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub tests: u32,
    /// Measure the fuzz harness instead: executions per second and what a
    /// fixed-seed run of --inputs reaches (twice, to check that it
    /// repeats), against the raw create-VM-and-run floor, and how long the
    /// planted bug takes to find.
    #[arg(long)]
    pub fuzz: bool,
    /// Inputs of the fixed-seed run with --fuzz.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub inputs: u64,
}

/// Options of `ktvmm fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// The seed inputs are drawn from (the same seed, the same inputs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inputs to execute.
    #[arg(long, default_value_t = 10_000)]
    pub iterations: u64,
    /// Stop after SECS seconds even if inputs are left.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub time: Option<Duration>,
    /// Threads, each with its own VMs.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Where reproducers of findings are saved.
    #[arg(long, value_name = "DIR", default_value = "ktvmm-fuzz")]
    pub out: PathBuf,
    /// Also write the statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Replay a reproducer: exit 1 if its finding comes back, 0 if not.
    #[arg(long, value_name = "FILE", conflicts_with = "minimise")]
    pub replay: Option<PathBuf>,
    /// Shrink a reproducer's input; writes FILE with .min.json.
    #[arg(long, value_name = "FILE")]
    pub minimise: Option<PathBuf>,
    /// Stop at the first finding.
    #[arg(long)]
    pub stop_on_finding: bool,
    /// VM exits one input may cause at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub exit_budget: u32,
    /// Guest CPU time one input may use, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 4)]
    pub cpu_budget_ms: u64,
    /// Harness self-test: put a bug on purpose in front of pc-testdev's
    /// register port (a panic when the guest writes the value 13), which
    /// the run must find.
    #[arg(long)]
    pub plant_bug: bool,
}

/// `--log-limit`: a size in MiB, at least 1.
fn parse_log_limit(text: &str) -> Result<u64, String> {
    match parse_mem_mib(text)? {
        0 => Err(format!("'{text}' is too small: a log keeps at least 1M")),
        // Kept in bytes: far below u64's range.
        mib if mib > 1 << 30 => Err(format!("'{text}' is too large: at most 1024G")),
        mib => Ok(mib),
    }
}

/// Rewrites QEMU-style `-smp`, `-append`, `-initrd`, `-memory` (any long
/// option, typed with one dash) to `--smp` etc. Values of options
/// and everything after `--` are left alone.
#[cfg(test)]
pub fn qemu_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    qemu_style_typed(args).0
}

/// [`qemu_style`], and each rewritten word with what the user typed
/// (`--smp`, `-smp`), so that errors echo options as typed.
pub fn qemu_style_typed(
    args: impl IntoIterator<Item = OsString>,
) -> (Vec<OsString>, Vec<(String, String)>) {
    let args: Vec<OsString> = args.into_iter().collect();
    let command = Cli::command();
    let mut long_names = Vec::new();
    let mut takes_value = Vec::new();
    // Only the options of the subcommand given: `-foo` under `run` is not
    // `test`'s `-f oo`.
    let named = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'));
    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|s| named.as_deref().is_none_or(|n| s.get_name() == n))
        .collect();
    for sub in subcommands {
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                long_names.push(long.to_string());
                if arg.get_action().takes_values() {
                    takes_value.push(format!("--{long}"));
                    if let Some(short) = arg.get_short() {
                        takes_value.push(format!("-{short}"));
                    }
                }
            }
        }
    }
    let mut out: Vec<OsString> = Vec::new();
    let mut typed = Vec::new();
    let mut value_next = false;
    let mut rest_verbatim = false;
    for arg in args {
        let text = arg.to_string_lossy().into_owned();
        if value_next && text.starts_with('-') && text.len() > 1 {
            // `-smp -1`: a value, wrong or not, that clap would take for an
            // option ("use '-- -1'"); joined, its parser says what is wrong.
            if let Some(option) = out.pop() {
                let mut joined = option;
                joined.push("=");
                joined.push(&arg);
                out.push(joined);
                value_next = false;
                continue;
            }
        }
        if rest_verbatim || value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        if text == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        let mut word = text.clone();
        if let Some(body) = text.strip_prefix('-').filter(|b| !b.starts_with('-')) {
            let name = body.split('=').next().unwrap_or(body);
            // Short options with an attached value (`-m256`) stay as they
            // are; any other multi-letter word is a long option, known or
            // not, so that an error names all of `-bogus`, not `-b`.
            let short_with_value = takes_value
                .iter()
                .any(|t| t.len() == 2 && body.starts_with(&t[1..]))
                && !long_names.iter().any(|l| l == name);
            if name.len() > 1 && !short_with_value {
                word = format!("-{text}");
                typed.push((format!("--{name}"), format!("-{name}")));
            }
        }
        value_next = !word.contains('=') && takes_value.contains(&word);
        out.push(if word == text { arg } else { word.into() });
    }
    (out, typed)
}

/// Clap's message for `error`, with the options the user typed QEMU-style
/// (`-nographic`) named as typed, not as rewritten (`--nographic`).
pub fn as_typed(message: &str, typed: &[(String, String)]) -> String {
    let mut message = message.to_string();
    for (rewritten, as_typed) in typed {
        let mut out = String::with_capacity(message.len());
        let mut rest = message.as_str();
        while let Some(at) = rest.find(rewritten.as_str()) {
            let after = &rest[at + rewritten.len()..];
            // The whole option, not the start of a longer one (`--no-pit`
            // for `--no`), nor the end of one.
            let whole = !after.starts_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_')
                && !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '-');
            out.push_str(&rest[..at]);
            out.push_str(if whole { as_typed } else { rewritten });
            rest = after;
        }
        out.push_str(rest);
        message = out;
        // "to pass '-bogus' as a value, use '-- -bogus'": for an option
        // typed QEMU-style that is advice to make a file named -bogus.
        let tip = format!("  tip: to pass '{as_typed}' as a value, use '-- {as_typed}'\n\n");
        message = message.replace(&tip, "");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(qemu_style(line.split_whitespace().map(OsString::from)))
    }

    fn run_args(line: &str) -> RunArgs {
        match parse(line).unwrap().command {
            Command::Run(args) => args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn qemu_and_gnu_spellings_agree() {
        let qemu = run_args("ktvmm run g.elf -smp 4 -m 256 -append x -initrd env.txt");
        let gnu = run_args("ktvmm run g.elf --smp 4 --memory 256 --append x --initrd env.txt");
        for args in [&qemu, &gnu] {
            assert_eq!(args.vm.smp, 4);
            assert_eq!(args.vm.mem_mib, 256);
            assert_eq!(args.vm.append, "x");
            assert_eq!(
                args.vm.initrd.as_deref(),
                Some(std::path::Path::new("env.txt"))
            );
        }
        assert_eq!(run_args("ktvmm run g.elf -smp=3").vm.smp, 3);
    }

    #[test]
    fn defaults_are_one_cpu_128_mib_no_timeout() {
        let args = run_args("ktvmm run guest.elf");
        assert_eq!((args.vm.smp, args.vm.mem_mib), (1, 128));
        assert_eq!(args.vm.append, "");
        assert!(args.vm.timeout.is_none());
    }

    #[test]
    fn option_values_are_never_rewritten() {
        assert_eq!(run_args("ktvmm run g.elf -append -smp").vm.append, "-smp");
        let args: Vec<OsString> = ["ktvmm", "run", "g.elf", "--", "-smp"]
            .map(Into::into)
            .to_vec();
        assert_eq!(qemu_style(args.clone()), args);
    }

    #[test]
    fn unknown_options_and_bad_values_are_errors() {
        let err = parse("ktvmm run g.elf -bogus 1").unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");
        assert_eq!(run_args("ktvmm run g.elf -m256").vm.mem_mib, 256);
        assert!(parse("ktvmm run g.elf -smp four").is_err());
        assert!(parse("ktvmm run g.elf --timeout -1").is_err());
        assert!(parse("ktvmm run").is_err());
    }

    /// The checked-in corpus of command lines (one argument per line),
    /// then a fixed-seed batch of command lines made of real options,
    /// values and junk: clap and the QEMU-style rewriting accept or
    /// refuse each, and never panic.
    #[test]
    fn the_cli_corpus_and_a_seeded_batch_parse_or_fail_cleanly() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/cli");
        for entry in std::fs::read_dir(corpus).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let args: Vec<OsString> = text.lines().map(OsString::from).collect();
            let _ = Cli::try_parse_from(qemu_style(args));
        }
        let words = [
            "run",
            "test",
            "fuzz",
            "bench",
            "diff",
            "-smp",
            "--smp",
            "-m",
            "-m256",
            "256M",
            "-append",
            "--append=x",
            "-initrd",
            "--timeout",
            "0.5",
            "-1",
            "nan",
            "--",
            "-j",
            "0",
            "4",
            "--shard",
            "1/0",
            "2/3",
            "--seed",
            "--iterations",
            "--replay",
            "x",
            "-bogus",
            "--tdp",
            "on",
            "maybe",
            "-",
            "=",
            "-cpu",
            "max,+x2apic",
        ];
        let mut rng = crate::select::SplitMix64(0xc11);
        for _ in 0..2_000 {
            let mut args = vec![OsString::from("ktvmm")];
            for _ in 0..rng.below(8) {
                args.push(words[rng.below(words.len())].into());
            }
            let _ = Cli::try_parse_from(qemu_style(args));
        }
    }
}
