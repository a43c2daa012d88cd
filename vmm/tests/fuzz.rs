//! The fuzz harness under real KVM: a fixed-seed smoke campaign, the
//! determinism of what a seed decides, the planted bug found and
//! reproduced, and inputs built by `arbitrary` from raw bytes.

use ktvmm_vmm::fuzz::{
    self, Budget, Campaign, Executor, Finding, HostWatch, Input, Mode, Op, VcpuSetup, repro,
};
use ktvmm_vmm::rng::SplitMix64;

fn quiet<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = f();
    std::panic::set_hook(hook);
    result
}

#[test]
fn a_smoke_campaign_reaches_exits_and_ioctls() {
    let campaign = Campaign {
        seed: 7,
        iterations: 800,
        time_limit: None,
        budget: Budget::default(),
        plant_bug: false,
    };
    let mut findings = Vec::new();
    let stats = campaign
        .run(|found| findings.push((found.index, found.execution.findings.clone())))
        .expect("the fuzzer starts");
    assert_eq!(stats.executions, 800);
    assert!(stats.exit_reasons.len() >= 6, "{stats}");
    assert!(stats.ioctls.len() >= 15, "{stats}");
    // Every input ran: all but a few ended one way or another.
    assert!(stats.ioctls["KVM_RUN"] >= 800, "{stats}");
    let json = stats.to_json();
    assert_eq!(json["executions"], 800);
    assert!(json["distinct_ioctls"].as_u64().unwrap() >= 15);
    eprintln!("{stats}\nfindings: {findings:?}");
}

/// The same seed gives the same inputs, and running them gives the same
/// outcomes and exits: except where a vCPU ran a whole time slice without
/// an exit ("spinning"), where how far it got is the host's speed.
#[test]
fn a_seed_decides_inputs_and_outcomes() {
    for index in 0..50 {
        let input = fuzz::nth_input(99, index);
        assert_eq!(input, fuzz::nth_input(99, index));
        let text = serde_json::to_string(&input).unwrap();
        assert_eq!(serde_json::from_str::<Input>(&text).unwrap(), input);
    }
    let mut executor = Executor::new(Budget::default(), false).expect("the fuzzer starts");
    let mut watch = HostWatch::start();
    let run =
        |executor: &mut Executor, watch: &mut HostWatch| -> Vec<(String, Vec<&'static str>)> {
            (0..300)
                .map(|i| {
                    let e = fuzz::check(executor, watch, &fuzz::nth_input(99, i));
                    (e.outcome, e.trace)
                })
                .collect()
        };
    let first = run(&mut executor, &mut watch);
    let second = run(&mut executor, &mut watch);
    let clocked = |r: &(String, Vec<&str>)| r.1.contains(&"spinning");
    let mut compared = 0;
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        if clocked(a) || clocked(b) {
            continue;
        }
        assert_eq!(a, b, "input {i} of seed 99 ran differently");
        compared += 1;
    }
    assert!(
        compared >= 270,
        "only {compared} of 300 inputs ran without spinning"
    );
}

/// The input the planted bug's minimised reproducer shrinks to: `mov al,
/// 0x5a; mov dx, 0x5f0; out dx, al` in real mode.
fn planted_input() -> Input {
    Input {
        irqchip: fuzz::Irqchip::None,
        mem_64k: 1,
        vcpus: vec![VcpuSetup {
            mode: Mode::Real,
            user: false,
            gprs: [0; 8],
            interrupts: false,
            entry: 0,
            msrs: Vec::new(),
            cpuid_edit: None,
        }],
        program: vec![0xb0, 0x5a, 0xba, 0xf0, 0x05, 0xee],
        ops: vec![Op::Run { vcpu: 0 }],
    }
}

#[test]
fn the_planted_bug_is_caught_saved_and_replayed() {
    let input = planted_input();
    let mut planted = Executor::new(Budget::default(), true).expect("the fuzzer starts");
    let mut watch = HostWatch::start();
    let execution = quiet(|| fuzz::check(&mut planted, &mut watch, &input));
    assert_eq!(execution.outcome, "vmm-panic");
    assert!(
        matches!(&execution.findings[..], [Finding::Panic { message }] if message.contains("planted bug")),
        "{:?}",
        execution.findings
    );
    // Without the plant, the same input is harmless.
    let mut clean = Executor::new(Budget::default(), false).expect("the fuzzer starts");
    let execution = fuzz::check(&mut clean, &mut watch, &input);
    assert!(execution.findings.is_empty(), "{:?}", execution.findings);

    // A reproducer round-trips through its file, and the minimiser keeps
    // the finding while it shrinks a bigger input around it.
    let mut bigger = input.clone();
    bigger.ops.insert(0, Op::Nmi { vcpu: 0 });
    bigger.ops.push(Op::GetMsr {
        vcpu: 0,
        index: 0x10,
    });
    bigger.program.extend_from_slice(&[0x90; 16]);
    let (small, runs) = quiet(|| fuzz::minimise(&mut planted, &bigger, &["panic"], 200));
    assert!(
        runs > 0 && small.ops.len() == 1 && small.program.len() <= 6,
        "{small:?}"
    );
    let found = fuzz::Found {
        index: 3,
        input: small,
        execution: ktvmm_vmm::fuzz::Execution {
            outcome: "vmm-panic".into(),
            findings: vec![Finding::Panic {
                message: "planted bug".into(),
            }],
            ..Default::default()
        },
        after: std::time::Duration::ZERO,
    };
    let reproducer = fuzz::Reproducer::new(
        &found,
        1,
        true,
        repro::Host::default(),
        planted.supported_cpuid(),
    );
    let dir = std::env::temp_dir().join(format!("ktvmm-fuzz-test-{}", std::process::id()));
    let path = reproducer.save(&dir).unwrap();
    let loaded = fuzz::Reproducer::load(&path).unwrap();
    assert_eq!(loaded, reproducer);
    assert_eq!(loaded.kinds(), ["panic"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Inputs made by `arbitrary` from raw bytes, as `cargo fuzz` makes them:
/// none escapes the harness, none hangs it.
#[test]
fn arbitrary_inputs_are_bounded() {
    let mut executor = Executor::new(Budget::default(), false).expect("the fuzzer starts");
    let mut watch = HostWatch::start();
    let mut rng = SplitMix64(0xa5b1_7a11);
    let mut ran = 0;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..rng.below(2048)).map(|_| rng.next() as u8).collect();
        let mut raw = arbitrary::Unstructured::new(&bytes);
        let Ok(input) = <Input as arbitrary::Arbitrary>::arbitrary(&mut raw) else {
            continue;
        };
        let started = std::time::Instant::now();
        let execution = fuzz::check(&mut executor, &mut watch, &input);
        assert!(
            started.elapsed().as_secs() < 5,
            "input {input:?} took too long"
        );
        assert!(
            !execution
                .findings
                .iter()
                .any(|f| matches!(f, Finding::Hang { .. })),
            "{:?}",
            execution.findings
        );
        ran += 1;
    }
    assert!(ran > 100, "only {ran} inputs were built");
}
