//! The fuzz harness against real KVM, in CI-sized doses: a seed gives the
//! same statistics twice, a run reaches many exits and calls, every run is
//! bounded, and the planted bug is found, saved, replayed and minimised.

use std::time::{Duration, Instant};

use ktvmm_vmm::fuzz::input::{Mode, Op, Shape, VcpuSetup};
use ktvmm_vmm::fuzz::{Campaign, ExecOptions, Executor, Finding, Input, Reproducer, minimise};

fn campaign(seed: u64, iterations: u64, plant_bug: bool) -> Campaign {
    let mut campaign = Campaign::new(seed, iterations);
    campaign.exec.plant_bug = plant_bug;
    campaign
}

#[test]
fn a_seed_gives_the_same_statistics_and_reaches_many_exits_and_calls() {
    let first = campaign(0x5eed, 800, false).run().unwrap();
    let second = campaign(0x5eed, 800, false).run().unwrap();
    assert_eq!(first.stats.counts, second.stats.counts);
    let counts = &first.stats.counts;
    assert_eq!(counts.executions, 800);
    assert!(
        counts.exit_reasons.len() >= 5,
        "exit reasons: {:?}",
        counts.exit_reasons
    );
    assert!(counts.ioctls.len() >= 15, "ioctls: {:?}", counts.ioctls);
    assert!(
        !counts.findings.keys().any(|k| k.starts_with("vmm-panic")),
        "ktvmm itself panicked: {:?}",
        counts.findings
    );
}

fn one_vcpu(mode: Mode, irqchip: bool, program: &[u8]) -> Input {
    Input {
        shape: Shape {
            irqchip,
            extra_slots: 0,
        },
        vcpus: vec![VcpuSetup {
            mode,
            ..VcpuSetup::default()
        }],
        program: program.to_vec(),
        ops: vec![Op::Run { cpu: 0, exits: 50 }],
    }
}

#[test]
fn guests_that_never_exit_are_stopped_by_the_budgets() {
    let mut executor = Executor::new(ExecOptions::default()).unwrap();
    for mode in [Mode::Real, Mode::Protected32, Mode::Long64] {
        for irqchip in [false, true] {
            let started = Instant::now();
            // jmp $
            let spin = executor.execute(&one_vcpu(mode, irqchip, &[0xeb, 0xfe]));
            assert_eq!(spin.end, "cpu-budget", "{mode:?}");
            assert!(started.elapsed() < Duration::from_secs(1));
            // cli; hlt: in the kernel with an irqchip, in ktvmm without
            let halt = executor.execute(&one_vcpu(mode, irqchip, &[0xfa, 0xf4]));
            assert_eq!(halt.end, if irqchip { "halted" } else { "hlt" }, "{mode:?}");
        }
    }
    // An exit storm (out to port 0x80 in a loop) stops at the exit budget.
    let storm = executor.execute(&one_vcpu(Mode::Long64, false, &[0xe6, 0x80, 0xeb, 0xfc]));
    assert_eq!(storm.end, "exit-limit");
    assert_eq!(storm.exits.get("KVM_EXIT_IO"), Some(&50));
}

#[test]
fn guest_port_writes_reach_the_devices() {
    let mut executor = Executor::new(ExecOptions::default()).unwrap();
    // mov eax, 7; out 0xf4, eax: isa-debug-exit ends the run.
    let input = one_vcpu(Mode::Protected32, true, &[0xb8, 7, 0, 0, 0, 0xe7, 0xf4]);
    let run = executor.execute(&input);
    assert_eq!(run.end, "guest-exit");
    assert!(run.findings.is_empty(), "{:?}", run.findings);
}

#[test]
fn the_planted_bug_is_found_and_its_reproducer_replays_and_shrinks() {
    let dir = std::env::temp_dir().join(format!("ktvmm-fuzz-test-{}", std::process::id()));
    let mut run = campaign(1, 700, true);
    run.out = Some(dir.clone());
    run.stop_on = Some("vmm-panic".into());
    let report = run.run().unwrap();
    let found = report
        .found
        .iter()
        .find(|f| matches!(f.reproducer.finding, Finding::VmmPanic { .. }))
        .expect("the planted bug is found by seed 1 within 700 inputs");
    let path = found.path.as_ref().expect("a reproducer file");
    let reproducer = Reproducer::load(path).unwrap();
    assert!(reproducer.plant_bug);
    assert!(
        reproducer.trace.iter().any(|l| l.contains("out 0xe0")),
        "{:?}",
        reproducer.trace
    );

    // Replayed by a harness started without the planted bug: the file
    // says to plant it.
    let mut executor = Executor::new(ExecOptions::default()).unwrap();
    let (again, _) = reproducer.replay(&mut executor);
    assert!(again, "the reproducer replays to the same finding");

    let (small, _) = minimise::minimise(&mut executor, &reproducer);
    assert!(small.program.len() <= 16, "{:02x?}", small.program);
    assert_eq!(small.ops.len(), 1);
    let (still, _) = Reproducer {
        input: small,
        ..reproducer
    }
    .replay(&mut executor);
    assert!(still);
    let _ = std::fs::remove_dir_all(dir);
}

/// The files of one cargo-fuzz corpus directory.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn the_kvm_api_corpus_replays_without_a_vmm_panic() {
    use arbitrary::{Arbitrary, Unstructured};
    let mut executor = Executor::new(ExecOptions::default()).unwrap();
    let files = corpus("kvm_api");
    assert!(!files.is_empty());
    for bytes in files {
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let execution = executor.execute(&input);
        assert!(
            !execution
                .findings
                .iter()
                .any(|f| matches!(f, Finding::VmmPanic { .. })),
            "{:?}",
            execution.findings
        );
    }
}
