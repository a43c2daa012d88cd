//! The `ktvmm` command.

mod bench;
mod bundled;
mod cli;
mod console;
mod detach;
mod diff_cmd;
mod envs;
mod expect;
mod fuzz_cmd;
mod guest_outcome;
mod interrupt;
mod kvm_env;
mod qemu_probe;
mod reasons;
mod results;
mod run_cmd;
mod schedule;
mod select;
mod subtests;
mod suite;
mod test_cmd;
mod verdict;

use std::process::ExitCode;

use clap::Parser;
use ktvmm_vmm::outcome::EXIT_VMM_ERROR;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("KTVMM_LOG", "warn")).init();
    let cli = match cli::Cli::try_parse_from(cli::qemu_style(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_VMM_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        cli::Command::Run(args) => run_cmd::run(args),
        cli::Command::Test(args) => test_cmd::test(args),
        cli::Command::Bench(args) => bench::bench(args),
        cli::Command::Diff(args) => diff_cmd::diff(&args),
        cli::Command::Fuzz(args) => fuzz_cmd::fuzz(args),
        cli::Command::Envs(args) => envs::probe_cmd(&args),
        cli::Command::BenchFloor => bench::floor_once(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ktvmm: {e:#}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
