//! The `ktvmm` command: the runner around the VM (`ktvmm_vmm`) and the
//! fuzz harness (`ktvmm_fuzz`).
//!
//! Each subcommand is a `*_cmd.rs` (`run`, `test`, `diff`, `merge`,
//! `envs`, `fuzz`; `bench.rs`), parsed by `cli.rs`. `ktvmm test` flows
//! through the folders in order: `suite/` finds the tests (ktvmm suite
//! files, kvm-unit-tests' cfg, kernel selftests; sweeps), `select.rs`
//! picks them, `schedule/` runs them (children, logs, time limits), and
//! `verdict.rs`, `subtests.rs` and `reasons.rs` judge them for
//! `console.rs` and `results/`. Beside them: other environments
//! (`envs.rs`, `qemu_cmd.rs`, `qemu_probe.rs`), KVM's module parameters
//! (`kvm_env.rs`, `kvm_matrix.rs`), and small shared pieces (`units.rs`,
//! `printable.rs`, `helper_cmd.rs`).

// `println!` and `eprintln!` panic when stdout or stderr is closed or full
// (`ktvmm test --list | head -1`, `2>/dev/full`); ktvmm's output goes
// through these, which drop what cannot be written.

/// `print!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `println!` that never panics.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod bundled;
mod cli;
mod console;
mod deadline;
mod detach;
mod diff_cmd;
mod envs;
mod envs_cmd;
mod expect;
mod fuzz_cmd;
mod guest_outcome;
mod helper_cmd;
mod interrupt;
mod kvm_env;
mod kvm_matrix;
mod merge_cmd;
mod printable;
mod qemu_cmd;
mod qemu_probe;
mod reasons;
mod results;
mod run_cmd;
mod schedule;
mod select;
mod self_exe;
mod subtests;
mod suite;
mod tables;
mod test_cmd;
mod units;
mod verdict;

use std::process::ExitCode;

use clap::Parser;
use ktvmm_vmm::run::outcome::EXIT_VMM_ERROR;

/// Writes a usage error to stderr, never panicking.
fn out_or_err(message: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(message.as_bytes());
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("KTVMM_LOG", "warn")).init();
    let (args, typed) = cli::qemu_style_typed(std::env::args_os());
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            out_or_err(&cli::as_typed(&e.render().to_string(), &typed));
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    let result = match cli.command {
        cli::Command::Run(args) => run_cmd::run(args),
        cli::Command::Test(args) => test_cmd::test(args),
        cli::Command::Bench(args) => bench::bench(args),
        cli::Command::Diff(args) => diff_cmd::diff(&args),
        cli::Command::Merge(args) => merge_cmd::merge(&args),
        cli::Command::Fuzz(args) => fuzz_cmd::fuzz(args),
        cli::Command::Envs(args) => envs_cmd::envs(&args),
        cli::Command::BenchFloor => bench::floor_once(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            errln!("ktvmm: {e:#}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
