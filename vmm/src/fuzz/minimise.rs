//! Shrinking a reproducer: drop operations, vCPUs, MSR writes and program
//! bytes, and simplify the VM, as long as the same kinds of findings
//! still happen. Greedy and deterministic: each candidate is run once.

use super::exec::Executor;
use super::host::HostWatch;
use super::input::Input;
use super::repro::kinds;

/// The smallest input found that still shows `wanted` (finding kinds,
/// sorted), and how many candidates were run.
pub fn minimise(
    executor: &mut Executor,
    input: &Input,
    wanted: &[&'static str],
    max_runs: usize,
) -> (Input, usize) {
    let mut watch = HostWatch::start();
    let mut best = input.clone();
    let mut runs = 0;
    let mut still_fails = |candidate: &Input, runs: &mut usize| {
        *runs += 1;
        let execution = super::check(executor, &mut watch, candidate);
        kinds(&execution.findings) == wanted
    };
    let mut progress = true;
    while progress && runs < max_runs {
        progress = false;
        for candidate in candidates(&best) {
            if runs >= max_runs {
                break;
            }
            if still_fails(&candidate, &mut runs) {
                best = candidate;
                progress = true;
                break;
            }
        }
    }
    (best, runs)
}

/// Smaller versions of `input`, biggest cuts first.
fn candidates(input: &Input) -> Vec<Input> {
    let mut out = Vec::new();
    let with = |change: &dyn Fn(&mut Input)| {
        let mut candidate = input.clone();
        change(&mut candidate);
        candidate
    };
    // Halves, then single operations.
    let ops = input.ops.len();
    if ops > 1 {
        out.push(with(&|c| c.ops.truncate(ops / 2)));
        out.push(with(&|c| {
            c.ops.drain(..ops / 2);
        }));
    }
    for i in (0..ops).rev() {
        out.push(with(&|c| {
            c.ops.remove(i);
        }));
    }
    for i in (1..input.vcpus.len()).rev() {
        out.push(with(&|c| {
            c.vcpus.remove(i);
        }));
    }
    for (v, vcpu) in input.vcpus.iter().enumerate() {
        for m in (0..vcpu.msrs.len()).rev() {
            out.push(with(&|c| {
                c.vcpus[v].msrs.remove(m);
            }));
        }
        if vcpu.cpuid_edit.is_some() {
            out.push(with(&|c| c.vcpus[v].cpuid_edit = None));
        }
        if vcpu.gprs != [0; 8] {
            out.push(with(&|c| c.vcpus[v].gprs = [0; 8]));
        }
    }
    if input.irqchip != super::input::Irqchip::None {
        out.push(with(&|c| c.irqchip = super::input::Irqchip::None));
    }
    if input.mem_64k > 1 {
        out.push(with(&|c| c.mem_64k = 1));
    }
    // The program: drop chunks, from large to single bytes.
    let len = input.program.len();
    let mut chunk = len / 2;
    while chunk > 0 {
        for start in (0..len.saturating_sub(chunk) + 1).step_by(chunk).rev() {
            out.push(with(&|c| {
                c.program.drain(start..(start + chunk).min(len));
            }));
        }
        chunk /= 2;
    }
    out
}
