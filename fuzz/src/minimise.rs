//! Shrinking a reproducer's input while its finding stays: fewer
//! operations, fewer vCPUs, a shorter program, a plainer starting state.
//! Greedy and bounded: each candidate is one execution.

use super::exec::Executor;
use super::input::Input;
use super::repro::Reproducer;

/// Executions a minimisation may spend.
pub const MAX_TRIES: usize = 2_000;

/// The smallest input found that still produces a finding with the
/// signature of the reproducer's, and the executions spent. The executor
/// runs with the reproducer's harness settings (the planted bug).
pub fn minimise(executor: &mut Executor, reproducer: &Reproducer) -> (Input, usize) {
    let options = executor.options().clone();
    executor.options_mut().plant_bug = reproducer.plant_bug;
    executor.options_mut().trace = false;
    let result = shrink(executor, &reproducer.input, &reproducer.finding.signature());
    *executor.options_mut() = options;
    result
}

fn shrink(executor: &mut Executor, input: &Input, signature: &str) -> (Input, usize) {
    let mut tries = 0;
    let still = |executor: &mut Executor, candidate: &Input, tries: &mut usize| {
        *tries += 1;
        executor
            .execute(candidate)
            .findings
            .iter()
            .any(|f| f.signature() == signature)
    };
    let mut best = input.clone().clamped();
    let mut progress = true;
    while progress && tries < MAX_TRIES {
        progress = false;
        for candidate in candidates(&best) {
            if tries >= MAX_TRIES {
                break;
            }
            if candidate != best && still(executor, &candidate, &mut tries) {
                best = candidate;
                progress = true;
                break;
            }
        }
    }
    (best, tries)
}

/// Simpler variants of `input`, the biggest cuts first.
fn candidates(input: &Input) -> Vec<Input> {
    let mut out = Vec::new();
    let with = |f: &dyn Fn(&mut Input)| {
        let mut c = input.clone();
        f(&mut c);
        c
    };
    for i in (0..input.ops.len()).rev() {
        out.push(with(&|c| {
            c.ops.remove(i);
        }));
    }
    if input.vcpus.len() > 1 {
        out.push(with(&|c| c.vcpus.truncate(1)));
    }
    for chunk in [32, 16, 8, 4, 2, 1] {
        let mut at = 0;
        while at + chunk <= input.program.len() {
            out.push(with(&|c| {
                c.program.drain(at..at + chunk);
            }));
            at += chunk;
        }
    }
    out.push(with(&|c| c.shape.extra_slots = 0));
    out.push(with(&|c| c.shape.irqchip = false));
    for v in 0..input.vcpus.len() {
        out.push(with(&|c| {
            let cpu = &mut c.vcpus[v];
            cpu.msrs.clear();
            cpu.cpuid.clear();
        }));
        out.push(with(&|c| {
            let cpu = &mut c.vcpus[v];
            cpu.cr0_flip = 0;
            cpu.cr4_flip = 0;
            cpu.efer_flip = 0;
        }));
        out.push(with(&|c| c.vcpus[v].gprs = [0; 6]));
        out.push(with(&|c| c.vcpus[v].user = false));
    }
    out
}
