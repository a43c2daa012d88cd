//! `ktvmm fuzz` from the command line: a short campaign with statistics as
//! JSON, and a reproducer replayed and shrunk.

mod common;

use common::{parts, run, scratch};
use ktvmm_vmm::fuzz::{self, Executor, Finding, Input, Irqchip, Mode, Op, VcpuSetup, repro};

#[test]
fn a_short_campaign_writes_its_statistics() {
    let dir = scratch("fuzz-campaign");
    let json = dir.join("stats.json");
    let out = dir.join("found");
    let (output, _) = run(&[
        "fuzz",
        "--seed",
        "11",
        "--iterations",
        "300",
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let (code, stdout, stderr) = parts(&output);
    assert!(code == 0 || code == 1, "{stdout}{stderr}");
    assert!(stdout.contains("300 executions"), "{stdout}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(stats["seed"], 11);
    assert_eq!(stats["executions"], 300);
    assert!(
        stats["distinct_exit_reasons"].as_u64().unwrap() >= 5,
        "{stats}"
    );
    assert!(stats["exec_per_sec"].as_f64().unwrap() > 0.0);
    // Findings, if this host's KVM has any, come with reproducers.
    assert_eq!(code == 1, out.exists(), "{stdout}");
}

#[test]
fn a_reproducer_replays_and_shrinks() {
    let dir = scratch("fuzz-replay");
    // The planted bug with padding around it.
    let input = Input {
        irqchip: Irqchip::None,
        mem_64k: 2,
        vcpus: vec![VcpuSetup {
            mode: Mode::Real,
            user: false,
            gprs: [1; 8],
            interrupts: false,
            entry: 0,
            msrs: vec![(0x10, 5)],
            cpuid_edit: None,
        }],
        program: [0x90, 0x90, 0xb0, 0x5a, 0xba, 0xf0, 0x05, 0xee, 0xf4].to_vec(),
        ops: vec![
            Op::GetMsr {
                vcpu: 0,
                index: 0x10,
            },
            Op::Run { vcpu: 0 },
            Op::Nmi { vcpu: 0 },
        ],
    };
    let executor = Executor::new(fuzz::Budget::default(), true).unwrap();
    let found = fuzz::Found {
        index: 0,
        input,
        execution: fuzz::Execution {
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
        executor.supported_cpuid(),
    );
    let path = reproducer.save(&dir).unwrap();
    let path = path.to_str().unwrap();

    let (output, _) = run(&["fuzz", "--replay", path]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 1, "it still fails:\n{stdout}{stderr}");
    assert!(stdout.contains("reproduced"), "{stdout}");

    let (output, _) = run(&["fuzz", "--minimise", path]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let small = fuzz::Reproducer::load(&dir.join("panic-1-0.min.json")).unwrap();
    assert!(
        small.input.ops.len() == 1 && small.input.program.len() < 9,
        "{:?}",
        small.input
    );
    assert_eq!(small.kinds(), ["panic"]);

    let garbage = common::write(&dir, "garbage.json", b"{}");
    let (output, _) = run(&["fuzz", "--replay", &garbage]);
    let (code, _, stderr) = parts(&output);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("garbage.json") && stderr.contains("not a ktvmm fuzz reproducer"),
        "{stderr}"
    );
}

/// A `cargo fuzz` artifact (raw bytes) becomes a reproducer that replays.
#[test]
fn a_cargo_fuzz_artifact_becomes_a_reproducer() {
    let dir = scratch("fuzz-artifact");
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/kvm_api");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let bytes = std::fs::read(&files[0]).unwrap();
    let artifact = common::write(&dir, "crash-1", &bytes);
    let (output, _) = run(&["fuzz", "--artifact", &artifact]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "a corpus input finds nothing:\n{stdout}{stderr}");
    let json = dir.join("crash-1.json");
    assert!(stdout.contains("reproducer:"), "{stdout}");
    let reproducer = fuzz::Reproducer::load(&json).unwrap();
    assert!(reproducer.seed.is_none() && reproducer.findings.is_empty());
    let (output, _) = run(&["fuzz", "--replay", json.to_str().unwrap()]);
    assert_eq!(parts(&output).0, 0);
}
