//! The fuzz harness against real KVM, in CI-sized doses: a seed gives the
//! same statistics twice, a run reaches many exits and calls, every run is
//! bounded, and the planted bug is found, saved, replayed and minimised.

use std::time::{Duration, Instant};

use ktvmm_fuzz::input::{Op, Shape, VcpuSetup};
use ktvmm_fuzz::program::Mode;
use ktvmm_fuzz::{Campaign, ExecOptions, Executor, Finding, Input, Reproducer, minimise};

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
        .join("corpus")
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

/// CPUID leaf 0's EBX, EDX, ECX for a vendor string.
fn vendor_words(name: &[u8; 12]) -> [u32; 3] {
    let word = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
    [word(0), word(4), word(8)]
}

/// KVM normalises TSC_AUX by the guest's CPUID vendor, whatever the
/// host's: every vendor is tried on this host (the default CPUID, which
/// carries the host's vendor, among them), KVM's answer is the one its
/// rule gives, and the oracle agrees with it.
#[test]
fn tsc_aux_follows_kvms_rule_for_the_guests_vendor() {
    use ktvmm_fuzz::rules::{GuestVendor, TSC_AUX};
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let leaf0 = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .copied()
        .unwrap();
    let host = [leaf0.ebx, leaf0.edx, leaf0.ecx];
    let host_vendor = GuestVendor::from_leaf0(host[0], host[1], host[2]);
    eprintln!("host vendor (KVM_GET_SUPPORTED_CPUID): {host_vendor:?}");

    let mut executor = Executor::new(ExecOptions {
        trace: true,
        ..ExecOptions::default()
    })
    .unwrap();
    let high = 0x0000_0800_0000_0000_u64;
    let cases: [(&str, Option<&[u8; 12]>, GuestVendor); 5] = [
        ("default CPUID", None, host_vendor),
        ("GenuineIntel", Some(b"GenuineIntel"), GuestVendor::Intel),
        (
            "AuthenticAMD",
            Some(b"AuthenticAMD"),
            GuestVendor::AmdCompatible,
        ),
        (
            "HygonGenuine",
            Some(b"HygonGenuine"),
            GuestVendor::AmdCompatible,
        ),
        ("ktvmmVendor!", Some(b"ktvmmVendor!"), GuestVendor::Other),
    ];
    for (name, vendor_name, vendor) in cases {
        let cpuid = vendor_name.map_or(Vec::new(), |v| {
            let want = vendor_words(v);
            // Leaf 0 registers 1 (EBX), 3 (EDX), 2 (ECX), flipped from
            // the host's value to the wanted one.
            vec![
                (0, 1, want[0] ^ host[0]),
                (0, 3, want[1] ^ host[1]),
                (0, 2, want[2] ^ host[2]),
            ]
        });
        let input = Input {
            shape: Shape {
                irqchip: false,
                extra_slots: 0,
            },
            vcpus: vec![VcpuSetup {
                cpuid,
                ..VcpuSetup::default()
            }],
            program: vec![0xf4],
            ops: vec![
                Op::SetMsr {
                    cpu: 0,
                    index: TSC_AUX,
                    value: 0x5678,
                },
                Op::SetMsr {
                    cpu: 0,
                    index: TSC_AUX,
                    value: high | 0x1234,
                },
            ],
        };
        let execution = executor.execute(&input);
        assert!(
            execution.findings.is_empty(),
            "{name}: {:?}",
            execution.findings
        );
        let seen: Vec<&String> = execution
            .trace
            .iter()
            .filter(|l| l.contains("MSR 0xc0000103 write"))
            .collect();
        assert_eq!(seen.len(), 2, "{name}: {:?}", execution.trace);
        if seen[0].contains("refused") {
            // No TSC_AUX on this host (no RDTSCP or RDPID): nothing to see.
            eprintln!("{name}: this host refuses every TSC_AUX write");
            continue;
        }
        assert!(seen[0].ends_with("read back 0x5678"), "{name}: {}", seen[0]);
        match vendor {
            GuestVendor::Intel => assert!(seen[1].ends_with("refused"), "{name}: {}", seen[1]),
            GuestVendor::AmdCompatible => {
                assert!(seen[1].ends_with("read back 0x1234"), "{name}: {}", seen[1])
            }
            GuestVendor::Other => assert!(
                seen[1].ends_with("refused") || seen[1].ends_with("read back 0x1234"),
                "{name}: {}",
                seen[1]
            ),
        }
        eprintln!("{name} ({vendor:?}): {}", seen[1]);
    }
}
