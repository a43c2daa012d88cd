//! `ktvmm run`: real guests under KVM, every outcome, every bad input.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{guest_file, ktvmm, parts, run, scratch, write};
use ktvmm_vmm::boot::test_images::{
    EXIT_WITH_CMDLINE_BYTE, EXIT_WITH_EAX, SPIN_WITH_INTERRUPTS_OFF, SleepGuest, elf32_multiboot,
    elf64, exit_with, exit_with_fw_cfg_byte, exit_with_multiboot_field, exit_with_pci_config,
    exit_with_word_at, sleep_and_resume, start_aps_and_count,
};
use ktvmm_vmm::platform::acpi::FACS_ADDR;

const LOAD_ADDR: u64 = 0x10_0000;

#[test]
fn guest_exit_codes_pass_through_unchanged() {
    for (args, code) in [
        ("pass", 0),
        ("fail", 1),
        ("skip", 77),
        ("code=42", 42),
        ("code=200", 200),
    ] {
        let (output, _) = run(&["run", "bundled:exitcode", "-append", args]);
        let (got, stdout, stderr) = parts(&output);
        assert_eq!(
            got, code,
            "exitcode {args}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stderr.is_empty(),
            "a guest's own exit prints nothing on stderr: {stderr}"
        );
    }
}

#[test]
fn an_unexpected_exception_or_panic_in_the_guest_fails_with_a_reason() {
    for (mode, needle) in [
        ("exception", "FAIL: unexpected exception #"),
        ("panic", "FAIL: panic on CPU 0"),
    ] {
        let (output, _) = run(&["run", "bundled:exitcode", "-append", mode]);
        let (code, stdout, _) = parts(&output);
        assert_eq!(code, 1, "{mode}: {stdout}");
        assert!(stdout.contains(needle), "{mode}: {stdout}");
    }
}

#[test]
fn report_lines_and_summary_come_out_on_stdout() {
    let (output, _) = run(&["run", "bundled:exitcode", "-append", "fail"]);
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 1);
    assert!(stdout.contains("FAIL: "), "{stdout}");
    assert!(
        stdout.contains("SUMMARY: 1 tests, 1 unexpected failures"),
        "{stdout}"
    );
}

#[test]
fn a_guest_file_boots_as_well_as_a_bundled_one() {
    let path = guest_file("selftest");
    let path = path.to_str().unwrap();
    let (output, _) = run(&[
        "run",
        path,
        "-smp",
        "4",
        "-m",
        "256",
        "-append",
        "smp=4 mem=256 x y",
    ]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn gnu_style_options_work_too() {
    let (output, _) = run(&[
        "run",
        "bundled:selftest",
        "--smp",
        "2",
        "--memory",
        "64",
        "--append",
        "smp=2 mem=64",
    ]);
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn every_cpu_is_stopped_on_timeout_even_spinning_with_interrupts_off() {
    let dir = scratch("timeout");
    let spin = write(
        &dir,
        "spin.elf",
        &elf64(LOAD_ADDR, &SPIN_WITH_INTERRUPTS_OFF, 0),
    );
    for guest in [spin.as_str(), "bundled:hang"] {
        let json = dir.join("outcome.json");
        let (output, took) = run(&[
            "run",
            guest,
            "-smp",
            "4",
            "--timeout",
            "1",
            "--json-outcome",
            json.to_str().unwrap(),
        ]);
        let (code, _, stderr) = parts(&output);
        assert_eq!(code, 124, "{guest}: {stderr}");
        assert!(stderr.contains("timed out after 1 s"), "{stderr}");
        assert!(
            took < Duration::from_secs(5),
            "{guest}: stopping took {took:?}"
        );
        let outcome: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(outcome["kind"], "timeout");
        assert_eq!(outcome["exit_code"], 124);
        // Where each vCPU was: in the message and in the JSON.
        for cpu in 0..4 {
            assert!(stderr.contains(&format!("\n  vCPU {cpu}: ")), "{stderr}");
        }
        let vcpus = outcome["vcpus"].as_array().expect("vcpus in the outcome");
        assert_eq!(vcpus.len(), 4);
        if guest == spin {
            // Spinning at the entry point of the in-memory image.
            assert!(
                vcpus
                    .iter()
                    .all(|v| v["rip"].as_u64().unwrap() - LOAD_ADDR < 3),
                "{outcome}"
            );
            assert!(
                vcpus
                    .iter()
                    .all(|v| v["rflags"].as_u64().unwrap() & 0x200 == 0)
            );
        }
    }
}

/// `cli; hlt` on every vCPU: nothing can ever wake the guest.
const HALT_WITH_INTERRUPTS_OFF: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];

/// Runs `args` with `--json-outcome`; returns exit code, stderr, outcome
/// and how long it took.
fn run_with_outcome(
    dir: &std::path::Path,
    args: &[&str],
) -> (i32, String, serde_json::Value, Duration) {
    let json = dir.join("outcome.json");
    let mut all = args.to_vec();
    let path = json.display().to_string();
    all.extend(["--json-outcome", &path]);
    let (output, took) = run(&all);
    let (code, _, stderr) = parts(&output);
    let outcome = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (code, stderr, outcome, took)
}

/// A guest that can never run again (every vCPU halted with interrupts
/// off, or the rest waiting for a SIPI) ends at once with its own outcome
/// and a hang report; one that spins, or sleeps with a timer armed, does
/// not. Times are bounds far from both sides: dead guests end after about
/// a second, the limit is a minute.
#[test]
fn a_guest_that_can_never_run_again_ends_at_once() {
    let dir = scratch("hung");
    let elf64_halt = write(
        &dir,
        "halt.elf",
        &elf64(LOAD_ADDR, &HALT_WITH_INTERRUPTS_OFF, 0),
    );
    for guest in [elf64_halt.as_str(), "bundled:hang"] {
        let args = [
            "run",
            guest,
            "-smp",
            "2",
            "-append",
            "halt",
            "--timeout",
            "60",
        ];
        let (code, stderr, outcome, took) = run_with_outcome(&dir, &args);
        assert_eq!(code, 120, "{guest}: {stderr}");
        assert!(took < Duration::from_secs(20), "{guest}: took {took:?}");
        assert_eq!(outcome["kind"], "hung", "{outcome}");
        assert_eq!(outcome["reason"], "every vCPU halted with interrupts off");
        assert_eq!(
            outcome["vcpus"].as_array().map(Vec::len),
            Some(2),
            "{outcome}"
        );
        assert!(stderr.contains("guest hung: every vCPU halted"), "{stderr}");
        assert!(stderr.contains("\n  vCPU 1: halted"), "{stderr}");
    }
    // Multiboot: the boot CPU halts, the other never gets its SIPI.
    let multiboot = write(
        &dir,
        "halt.flat",
        &elf32_multiboot(0x40_0000, &HALT_WITH_INTERRUPTS_OFF, 0),
    );
    let (code, stderr, outcome, _) =
        run_with_outcome(&dir, &["run", &multiboot, "-smp", "2", "--timeout", "60"]);
    assert_eq!(code, 120, "{stderr}");
    assert!(
        outcome["reason"].as_str().unwrap().contains("SIPI"),
        "{outcome}"
    );

    // Idle, not dead: woken by its timer after 1.5 s (three checks).
    let (code, stderr, outcome, _) = run_with_outcome(
        &dir,
        &[
            "run",
            "bundled:hang",
            "-smp",
            "2",
            "-append",
            "sleep=1500",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(
        (code, &outcome["kind"]),
        (0, &"guest_exit".into()),
        "{stderr}"
    );
    // Spinning with interrupts off is not provably dead: its timeout ends it.
    let spin = write(
        &dir,
        "spin.elf",
        &elf64(LOAD_ADDR, &SPIN_WITH_INTERRUPTS_OFF, 0),
    );
    let (code, stderr, outcome, took) =
        run_with_outcome(&dir, &["run", &spin, "-smp", "2", "--timeout", "3"]);
    assert_eq!(
        (code, &outcome["kind"]),
        (124, &"timeout".into()),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
}

/// `--core FILE`: a guest that did not pass leaves an ELF core that GDB
/// opens with the guest's symbols: a thread per vCPU, the registers where
/// it stopped, its memory. A passing guest leaves none.
#[test]
fn a_guest_that_does_not_pass_leaves_a_core_gdb_opens() {
    let dir = scratch("core");
    let core = dir.join("hang.core");
    let (code, stderr, outcome, _) = run_with_outcome(
        &dir,
        &[
            "run",
            "bundled:hang",
            "-smp",
            "2",
            "--timeout",
            "1",
            "--core",
            core.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 124, "{stderr}");
    assert!(stderr.contains("guest core written to"), "{stderr}");
    assert_eq!(outcome["core"], core.display().to_string());
    let bytes = std::fs::read(&core).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 4, "ET_CORE");
    // All 128 MiB of RAM are in it (as holes where the guest left zeroes).
    assert!(bytes.len() as u64 > 128 << 20, "{}", bytes.len());

    let passing = dir.join("pass.core");
    run(&[
        "run",
        "bundled:exitcode",
        "--core",
        passing.to_str().unwrap(),
    ]);
    assert!(!passing.exists(), "a passing guest leaves no core");

    if !common::gdb_usable("a_guest_that_does_not_pass_leaves_a_core_gdb_opens") {
        return;
    }
    let gdb = std::process::Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "info threads",
            "-ex",
            "info registers rip eflags",
        ])
        .args(["-ex", "x/2xb $rip"])
        .arg(guest_file("hang"))
        .arg(&core)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&gdb.stdout);
    assert!(said.contains("  2    "), "a thread per vCPU:\n{said}");
    assert!(said.contains("in hang::spin"), "{said}");
    // `jmp .` (0xeb 0xfe) is where a spinning vCPU stopped.
    assert!(said.contains("0xeb\t0xfe"), "{said}");
}

#[test]
fn a_triple_fault_is_reported_as_a_shutdown() {
    let (output, _) = run(&["run", "bundled:triple-fault", "--timeout", "10"]);
    let (code, _, stderr) = parts(&output);
    assert_eq!(code, 121, "{stderr}");
    assert!(stderr.contains("shut down"), "{stderr}");
    assert!(stderr.contains("RIP 0x"), "{stderr}");
}

#[test]
fn json_outcome_records_the_guest_exit() {
    let dir = scratch("json");
    let json = dir.join("o.json");
    let (output, _) = run(&[
        "run",
        "bundled:exitcode",
        "-append",
        "code=3",
        "--json-outcome",
        json.to_str().unwrap(),
    ]);
    assert_eq!(parts(&output).0, 3);
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(outcome["kind"], "guest_exit");
    assert_eq!(outcome["code"], 3);
    assert_eq!(outcome["exit_code"], 3);
}

#[test]
fn an_in_memory_image_exits_with_its_code() {
    let dir = scratch("tiny");
    let tiny = write(
        &dir,
        "tiny.elf",
        &elf64(LOAD_ADDR, &exit_with(0xff), 0x1000),
    );
    let (output, _) = run(&["run", &tiny]);
    assert_eq!(parts(&output).0, 0xff);
}

/// `mov $0x100, %eax; mov $0xf6, %dx; out %eax, %dx; 1: hlt; jmp 1b`: a
/// 4-byte write that starts in the middle of isa-debug-exit's window, so
/// only its low half (0x100) reaches the device.
const EXIT_0X100_STRADDLING_0XF6: [u8; 13] = [
    0xb8, 0x00, 0x01, 0x00, 0x00, 0x66, 0xba, 0xf6, 0x00, 0xef, 0xf4, 0xeb, 0xfd,
];

/// A guest code wider than an exit status is never its low byte (256 would
/// pass): `ktvmm run` exits 123 and says why; the outcome has the value.
#[test]
fn a_guest_code_too_wide_for_an_exit_status_never_passes() {
    let dir = scratch("wide-codes");
    let straddling = write(
        &dir,
        "straddle.elf",
        &elf64(LOAD_ADDR, &EXIT_0X100_STRADDLING_0XF6, 0x1000),
    );
    let by_args = ["code=256", "code=2147483648", "code=511"];
    let cases = by_args
        .iter()
        .map(|a| {
            (
                vec!["bundled:exitcode", "-append", a],
                a[5..].parse().unwrap(),
            )
        })
        .chain([(vec![straddling.as_str()], 0x100u64)]);
    for (guest_args, code) in cases {
        let mut args = vec!["run"];
        args.extend(&guest_args);
        let (got, stderr, outcome, _) = run_with_outcome(&dir, &args);
        assert_eq!(got, 123, "{guest_args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("exit code {code}")) && stderr.contains("does not fit"),
            "{stderr}"
        );
        assert_eq!(outcome["kind"], "guest_exit");
        assert_eq!(outcome["code"], code);
        assert_eq!(outcome["exit_code"], 123);
    }
}

/// Runs `ktvmm` with `args` and expects exit 125 and one stderr line that
/// contains every `needle`.
fn expect_error(args: &[&str], needles: &[&str]) {
    let (output, _) = run(args);
    let (code, _, stderr) = parts(&output);
    assert_eq!(code, 125, "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_guest_files_get_one_clear_message() {
    let dir = scratch("bad-files");
    let good = std::fs::read(guest_file("exitcode")).unwrap();

    let missing = dir.join("missing.elf").display().to_string();
    expect_error(&["run", &missing], &[&missing, "cannot read"]);

    let text = write(&dir, "script.sh", b"#!/bin/sh\necho hi\n");
    expect_error(&["run", &text], &[&text, "not an ELF file"]);

    let truncated = write(&dir, "truncated.elf", &good[..100]);
    expect_error(&["run", &truncated], &[&truncated, "truncated"]);

    let mut aarch64 = good.clone();
    aarch64[18..20].copy_from_slice(&183u16.to_le_bytes());
    let aarch64 = write(&dir, "aarch64.elf", &aarch64);
    expect_error(&["run", &aarch64], &[&aarch64, "AARCH64", "x86-64"]);

    let high = write(&dir, "high.elf", &elf64(0x4000_0000, &exit_with(0), 0));
    expect_error(&["run", &high, "-m", "128"], &[&high, "outside guest RAM"]);

    let low = write(&dir, "low.elf", &elf64(0x8000, &exit_with(0), 0));
    expect_error(&["run", &low], &[&low, "VMM-reserved", "0x100000"]);

    let stack = write(
        &dir,
        "stack.elf",
        &elf64((64 << 20) - 0x1000, &exit_with(0), 0),
    );
    expect_error(&["run", &stack, "-m", "64"], &[&stack, "vCPU boot stacks"]);

    let missing_initrd = dir.join("env.txt").display().to_string();
    expect_error(
        &["run", "bundled:exitcode", "-initrd", &missing_initrd],
        &[&missing_initrd],
    );

    expect_error(
        &["run", "bundled:nosuch"],
        &["bundled:nosuch", "no such bundled guest", "exitcode"],
    );
}

#[test]
fn bad_machine_shapes_get_one_clear_message() {
    expect_error(&["run", "bundled:exitcode", "-smp", "0"], &["vCPU count 0"]);
    expect_error(
        &["run", "bundled:exitcode", "-smp", "100000"],
        &["100000 vCPUs", "at most"],
    );
    expect_error(
        &["run", "bundled:exitcode", "-m", "0"],
        &["memory size 0 MiB is out of range"],
    );
    expect_error(
        &["run", "bundled:exitcode", "-m", "1000G"],
        &["out of range"],
    );
    expect_error(
        &["run", "bundled:exitcode", "-m", "8", "-smp", "128"],
        &["too small for 128 vCPU stacks"],
    );
    expect_error(&["run", "bundled:exitcode", "-smp", "two"], &["two"]);
    // Echoed as typed, without advice to pass it as a value.
    expect_error(&["run", "bundled:exitcode", "-bogus"], &["'-bogus'"]);
    expect_error(&["run"], &["GUEST"]);
}

#[test]
fn the_initrd_reaches_the_guest() {
    let dir = scratch("initrd");
    let initrd = write(&dir, "env.txt", b"KEY=value\nOTHER=1\n");
    let (output, _) = run(&["run", "bundled:selftest", "-initrd", &initrd]);
    let (code, stdout, _) = parts(&output);
    assert_eq!(code, 0, "{stdout}");
    // The guest reports the length and first bytes it found ("KEY=").
    assert!(
        stdout.contains("initrd: 18 bytes, starting [4b, 45, 59, 3d"),
        "{stdout}"
    );
    assert!(!stdout.contains("SKIP: selftest: no initrd"), "{stdout}");
}

#[test]
fn pci_configuration_space_answers_for_present_and_absent_slots() {
    let dir = scratch("pci");
    let config_address = |slot: u32, offset: u32| 0x8000_0000 | slot << 11 | offset;
    for (name, address, expected, extra) in [
        // Host bridge vendor 0x8086 (the low half of the register).
        ("bridge.elf", config_address(0, 0), 0x8086, None),
        // An empty slot reads all-ones.
        ("empty.elf", config_address(31, 0), 0xffff, None),
        // Another bus reads all-ones too.
        ("bus1.elf", 0x8001_0000, 0xffff, None),
        // The bare platform still has the host bridge.
        (
            "bare.elf",
            config_address(0, 0),
            0x8086,
            Some("--no-testdevs"),
        ),
    ] {
        let guest = write(
            &dir,
            name,
            &elf64(LOAD_ADDR, &exit_with_pci_config(address), 0),
        );
        let mut args = vec!["run", guest.as_str()];
        args.extend(extra);
        let (_, _, outcome, _) = run_with_outcome(&dir, &args);
        let code = outcome["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {outcome}"));
        assert_eq!(code & 0xffff, expected, "{name}: {code:#x}");
    }
}

#[test]
fn the_serial_testdev_on_com2_ends_the_vm_with_its_argument() {
    let dir = scratch("serial-testdev");
    // Writes "5q" to COM2 (mov $c, %al; mov $0x2f8, %dx; out %al, %dx), then
    // exits with 1 through isa-debug-exit if the VM is still running.
    let mut code = Vec::new();
    for c in *b" 5 q" {
        code.extend_from_slice(&[0xb0, c, 0x66, 0xba, 0xf8, 0x02, 0xee]);
    }
    code.extend_from_slice(&exit_with(1));
    let guest = write(&dir, "com2.elf", &elf64(LOAD_ADDR, &code, 0));
    let (output, _) = run(&["run", &guest]);
    assert_eq!(parts(&output).0, 5);
    // Without test devices nothing listens on COM2.
    let (output, _) = run(&["run", &guest, "--no-testdevs"]);
    assert_eq!(parts(&output).0, 1);
}

#[test]
fn the_exit_devices_pass_codes_0_1_and_77_through() {
    for guest in ["bundled:serial-testdev", "bundled:debug-exit"] {
        for code in [0, 1, 77] {
            let append = format!("code={code}");
            let (output, _) = run(&["run", guest, "-append", &append]);
            let (got, stdout, _) = parts(&output);
            assert_eq!(got, code, "{guest} {append}: {stdout}");
            // The guest prints FAIL and exits 1 itself when the device did not end the VM.
            assert!(!stdout.contains("FAIL"), "{guest} {append}: {stdout}");
        }
    }
}

/// Boots `code` as a multiboot kernel at 4 MiB (as kvm-unit-tests links
/// its `.flat` files) and returns the full 32-bit exit value.
fn multiboot_exit(dir: &std::path::Path, name: &str, code: &[u8], extra: &[&str]) -> u64 {
    let kernel = write(dir, name, &elf32_multiboot(0x40_0000, code, 0));
    let json = dir.join(format!("{name}.json"));
    let mut args = vec![
        "run",
        kernel.as_str(),
        "--json-outcome",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (output, _) = run(&args);
    let (_, stdout, stderr) = parts(&output);
    let outcome: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("{stdout}{stderr}")),
    )
    .unwrap();
    assert_eq!(outcome["kind"], "guest_exit", "{outcome}\n{stderr}");
    outcome["code"].as_u64().unwrap()
}

#[test]
fn multiboot_kernels_start_in_32_bit_mode_with_the_information() {
    let dir = scratch("multiboot");
    assert_eq!(
        multiboot_exit(&dir, "magic.elf", &EXIT_WITH_EAX, &[]),
        0x2bad_b002,
        "EAX holds the loader magic"
    );
    // mem_upper: KiB above 1 MiB.
    assert_eq!(
        multiboot_exit(
            &dir,
            "mem.elf",
            &exit_with_multiboot_field(8),
            &["-m", "64"]
        ),
        63 * 1024
    );
    // The command line starts with the kernel's name (KUT's argv[0]).
    let first = multiboot_exit(&dir, "cmd.elf", &EXIT_WITH_CMDLINE_BYTE, &["-append", "x"]);
    assert_eq!(first, u64::from(b'/'), "the kernel path comes first");
    // The initrd is module 0.
    let env = write(&dir, "env.txt", b"ERRATA_X=y\n");
    assert_eq!(
        multiboot_exit(
            &dir,
            "mods.elf",
            &exit_with_multiboot_field(20),
            &["-initrd", &env]
        ),
        1,
        "mods_count"
    );
    assert_eq!(
        multiboot_exit(&dir, "nomods.elf", &exit_with_multiboot_field(20), &[]),
        0
    );
}

#[test]
fn multiboot_aps_wait_for_init_and_sipi_and_then_run() {
    let dir = scratch("multiboot-smp");
    let started = Instant::now();
    assert_eq!(
        multiboot_exit(
            &dir,
            "smp.elf",
            &start_aps_and_count(3),
            &["-smp", "4", "--timeout", "10"]
        ),
        3,
        "three APs started through INIT/SIPI at the real-mode trampoline"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn fw_cfg_and_the_acpi_rsdp_are_where_kvm_unit_tests_looks() {
    let dir = scratch("firmware");
    assert_eq!(
        multiboot_exit(&dir, "sig.elf", &exit_with_fw_cfg_byte(0), &[]),
        u64::from(b'Q')
    );
    assert_eq!(
        multiboot_exit(&dir, "cpus.elf", &exit_with_fw_cfg_byte(5), &["-smp", "3"]),
        3,
        "fw_cfg NB_CPUS"
    );
    assert_eq!(
        multiboot_exit(&dir, "rsdp.elf", &exit_with_word_at(0xe_0000), &[]),
        u64::from(u32::from_le_bytes(*b"RSD ")),
        "the RSDP signature at 0xe0000"
    );
}

#[test]
fn an_elf32_image_without_a_multiboot_header_is_refused() {
    let dir = scratch("elf32");
    let mut image = elf32_multiboot(0x40_0000, &EXIT_WITH_EAX, 0);
    let at = image
        .windows(4)
        .position(|w| w == 0x1bad_b002u32.to_le_bytes())
        .unwrap();
    image[at] = 0;
    let path = write(&dir, "plain32.elf", &image);
    expect_error(
        &["run", &path],
        &[&path, "32-bit kernels only with a multiboot header"],
    );
}

/// `xor eax, eax; cpuid; mov eax, ebx; out 0xf4, eax; 1: hlt; jmp 1b`: exits
/// with the first four characters of the CPU vendor.
const EXIT_WITH_VENDOR: [u8; 11] = [
    0x31, 0xc0, 0x0f, 0xa2, 0x89, 0xd8, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd,
];

/// `mov eax, LEAF; cpuid; out 0xf4, eax; 1: hlt; jmp 1b`: exits with
/// CPUID.LEAF:EAX.
fn exit_with_cpuid_eax(leaf: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&leaf.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0xa2, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    code
}

/// Runs `kernel` under `ktvmm run -cpu CPU`: the guest's exit code, or the
/// error ktvmm gave.
fn exit_code_under(dir: &Path, kernel: &str, cpu: &str) -> Result<u32, String> {
    let json = dir.join("o.json");
    let _ = std::fs::remove_file(&json);
    let (output, _) = run(&[
        "run",
        kernel,
        "-cpu",
        cpu,
        "--json-outcome",
        json.to_str().unwrap(),
    ]);
    let (_, _, stderr) = parts(&output);
    let outcome: serde_json::Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .ok_or_else(|| stderr.clone())?;
    outcome["code"]
        .as_u64()
        .map(|c| c as u32)
        .ok_or_else(|| format!("{outcome} {stderr}"))
}

#[test]
fn the_cpu_model_is_what_the_guest_sees() {
    let dir = scratch("cpu-model");
    let kernel = write(&dir, "vendor.elf", &elf64(LOAD_ADDR, &EXIT_WITH_VENDOR, 0));
    let vendor = |cpu: &str| {
        let code = exit_code_under(&dir, &kernel, cpu).unwrap_or_else(|e| panic!("{cpu}: {e}"));
        String::from_utf8_lossy(&code.to_le_bytes()).into_owned()
    };
    assert_eq!(vendor("qemu64"), "Auth", "qemu64 is an AMD model");
    assert_eq!(vendor("qemu64,vendor=GenuineIntel"), "Genu");
    assert_eq!(vendor("Opteron_G1"), "Auth");
    assert_eq!(vendor("IvyBridge"), "Genu");
    assert_eq!(vendor("Skylake-Server"), "Genu");
    // `max` is the host's own vendor, whichever it is (GenuineIntel,
    // AuthenticAMD, HygonGenuine...): checked against the host, not a list.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let host_vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .expect("/proc/cpuinfo names the vendor");
    assert_eq!(vendor("max"), host_vendor[..4], "host vendor {host_vendor}");
    expect_error(
        &["run", &kernel, "-cpu", "Westmere"],
        &["Westmere", "not supported", "Opteron_G1"],
    );
    expect_error(
        &["run", &kernel, "-cpu", "max,+warp-drive"],
        &["warp-drive"],
    );
}

#[test]
fn a_named_model_gives_qemus_family_model_stepping() {
    let dir = scratch("cpu-signature");
    let kernel = write(
        &dir,
        "leaf1.elf",
        &elf64(LOAD_ADDR, &exit_with_cpuid_eax(1), 0),
    );
    // Family 15 model 6 stepping 1; family 6 model 58 (extended model 3)
    // stepping 9; family 6 model 85 stepping 4.
    for (cpu, signature) in [
        ("Opteron_G1", 0x0f61),
        ("IvyBridge", 0x0003_06a9),
        ("Skylake-Server", 0x0005_0654),
    ] {
        assert_eq!(exit_code_under(&dir, &kernel, cpu), Ok(signature), "{cpu}");
    }
}

#[test]
fn phys_bits_reach_the_guest_where_kvm_allows_fewer_than_the_host() {
    let dir = scratch("cpu-phys-bits");
    let kernel = write(
        &dir,
        "leaf80000008.elf",
        &elf64(LOAD_ADDR, &exit_with_cpuid_eax(0x8000_0008), 0),
    );
    let host = exit_code_under(&dir, &kernel, "max").unwrap() & 0xff;
    assert!(host > 36, "the host has {host} physical address bits");
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let cpu = "IvyBridge,phys-bits=36,host-phys-bits=off";
    if ktvmm_vmm::cpu::model::smaller_maxphyaddr(&kvm) {
        let eax = exit_code_under(&dir, &kernel, cpu).unwrap();
        assert_eq!(eax & 0xff, 36, "{eax:#x}");
    } else {
        expect_error(
            &["run", &kernel, "-cpu", cpu],
            &["phys-bits=36", "KVM_CAP_SMALLER_MAXPHYADDR"],
        );
    }
    // More than the host has is refused everywhere.
    if host < 52 {
        let wider = format!("max,phys-bits={}", host + 1);
        expect_error(&["run", &kernel, "-cpu", &wider], &[&wider[4..], "host's"]);
    }
}

#[test]
fn an_endless_interrupt_storm_ends_at_the_timeout() {
    let (output, took) = run(&[
        "run",
        "bundled:pci-hostile",
        "-append",
        "storm=forever",
        "--timeout",
        "1",
    ]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 124, "{stdout}\n{stderr}");
    assert!(stdout.contains("raising edu's INTx forever"), "{stdout}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
}

#[test]
fn a_write_that_runs_past_isa_debug_exit_ends_the_vm_with_its_part() {
    let dir = scratch("debug-exit-straddle");
    // mov $0x105, %ax; mov $0xf7, %dx; out %ax, %dx: the byte at 0xf7 (5)
    // is the last port of the device, 0x01 goes to 0xf8 (nothing there).
    let mut past_end = vec![0x66, 0xb8, 0x05, 0x01, 0x66, 0xba, 0xf7, 0x00, 0x66, 0xef];
    past_end.extend_from_slice(&exit_with(1));
    // mov $0x90000, %eax; out %eax, $0xf2: ports 0xf4-0xf5 get 0x0009.
    let mut before_start = vec![0xb8, 0x00, 0x00, 0x09, 0x00, 0xe7, 0xf2];
    before_start.extend_from_slice(&exit_with(1));
    for (name, code, expected) in [
        ("past-end.elf", past_end, 5),
        ("before-start.elf", before_start, 9),
    ] {
        let guest = write(&dir, name, &elf64(LOAD_ADDR, &code, 0));
        let (output, _) = run(&["run", &guest]);
        assert_eq!(parts(&output).0, expected, "{name}");
    }
}

#[test]
fn a_hang_report_carries_the_host_kernel_log_of_the_run() {
    let dir = scratch("kmsg");
    let json = dir.join("o.json");
    let child = ktvmm()
        .args([
            "run",
            "bundled:hang",
            "--timeout",
            "1.5",
            "--json-outcome",
            json.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Lines in the form KVM logs a guest's trouble in ("kvm [PID]: ..."):
    // one naming the hung VM's process, one naming another (PID 1, init,
    // never a VMM here) as another lane's guest would, and one naming no
    // process at all. Only the first is this VM's. (No fake WARNING: other
    // tests on the machine watch the kernel log for real ones.)
    let marker = format!("ktvmm-test-marker-{}", std::process::id());
    let ours = format!("kvm [{}]: {marker}-ours", child.id());
    let theirs = format!("kvm [1]: {marker}-theirs");
    let nobody = format!("{marker}-nobody");
    // Writing the kernel log needs root; reading it (what ktvmm does) too.
    let wrote = [&ours, &theirs, &nobody]
        .iter()
        .all(|line| std::fs::write("/dev/kmsg", format!("{line}\n")).is_ok());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(124), "{stderr}");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    if wrote {
        assert!(
            stderr.contains("host kernel log during the run:"),
            "{stderr}"
        );
        let lines: Vec<&str> = outcome["host_kernel_log"]
            .as_array()
            .expect("host_kernel_log")
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        // Every line is marked as this VM's or as a host-wide alarm.
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("[this VM] ") || l.starts_with("[host-wide] ")),
            "{outcome}"
        );
        // The report keeps the last 40 lines: on a host whose kernel keeps
        // logging this VM's trouble or host-wide alarms, the marker may be
        // older than that; otherwise it must be there.
        // In a container's own PID namespace ktvmm cannot tie PIDs (the
        // kernel prints the host's numbers): then nothing is this VM's.
        let pids_are_global = std::fs::read_link("/proc/self/ns/pid")
            .is_ok_and(|ns| ns.as_os_str() == "pid:[4026531836]");
        if lines.len() < 40 && pids_are_global {
            let want = format!("[this VM] {ours}");
            assert!(lines.contains(&want.as_str()), "{outcome}");
            assert!(stderr.contains(&want), "{stderr}");
        }
        // Another process's line, and one that names none, never are.
        assert!(
            !stderr.contains("-theirs") && !stderr.contains("-nobody"),
            "{stderr}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("-theirs") || l.contains("-nobody")),
            "{outcome}"
        );
        let left_out = outcome["host_kernel_log_left_out"].as_u64();
        assert!(left_out >= Some(2), "{outcome}");
        assert!(stderr.contains("left out"), "{stderr}");
    } else {
        assert!(outcome.get("host_kernel_log").is_none(), "{outcome}");
    }
    // The timeout stays the last "ktvmm:" line, which the runner reports.
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ktvmm: "))
        .unwrap();
    assert!(last.contains("timed out"), "{stderr}");
}

/// A ktest guest boots through its multiboot header too: its own 32-bit
/// entry reads the multiboot information, fw_cfg and the MADT, and starts
/// the APs with INIT/SIPI; the initrd arrives as module 0.
#[test]
fn a_ktest_guest_boots_the_multiboot_way() {
    let dir = scratch("boot-multiboot");
    let initrd = write(&dir, "initrd", b"KEY=VALUE\n");
    let (output, _) = run(&[
        "run",
        "bundled:selftest",
        "--boot",
        "multiboot",
        "-smp",
        "3",
        "-m",
        "96",
        "-append",
        "smp=3 mem=96 x",
        "-initrd",
        &initrd,
    ]);
    let (code, stdout, stderr) = parts(&output);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("on every CPU (mask 0x7)"), "{stdout}");
    assert!(stdout.contains("initrd: 10 bytes"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");

    // An ELF64 file without a multiboot header cannot be booted that way,
    // and an unknown protocol is a usage error.
    let plain = write(&dir, "plain.elf", &elf64(LOAD_ADDR, &exit_with(0), 0));
    let (output, _) = run(&["run", &plain, "--boot", "multiboot"]);
    let (code, _, stderr) = parts(&output);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("plain.elf") && stderr.contains("no multiboot header"),
        "{stderr}"
    );
    let (output, _) = run(&["run", "bundled:exitcode", "--boot", "bios"]);
    let (code, _, stderr) = parts(&output);
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("not a boot protocol"), "{stderr}");
}

/// A guest entering S3 as kvm-unit-tests' `s3` does, waking on the RTC
/// alarm (every second); `run_with_outcome` on it.
fn sleep(
    dir: &std::path::Path,
    name: &str,
    guest: SleepGuest,
    extra: &[&str],
) -> (i32, String, serde_json::Value) {
    let kernel = write(
        dir,
        name,
        &elf32_multiboot(0x40_0000, &sleep_and_resume(guest), 0),
    );
    let mut args = vec!["run", kernel.as_str(), "--timeout", "60"];
    args.extend_from_slice(extra);
    let (code, stderr, outcome, _) = run_with_outcome(dir, &args);
    (code, stderr, outcome)
}

const S3: SleepGuest = SleepGuest {
    facs: FACS_ADDR as u32,
    vector: 0x8010,
    x_vector: false,
    rtc_alarm: true,
    slp_typ: 1,
    marker: 0x42,
};

/// S3 through PM1a control: every vCPU reset, the boot CPU resumed in real
/// mode at the FACS waking vector (CS 0x801, IP 0 for 0x8010), RAM kept
/// (the marker written before the sleep is read after it, and the loop
/// after the PM1 write never ran), woken by the RTC alarm.
#[test]
fn s3_resumes_at_the_waking_vector_in_real_mode_with_ram_kept() {
    let dir = scratch("s3");
    for smp in ["1", "3"] {
        let (code, stderr, outcome) = sleep(&dir, "s3.elf", S3, &["-smp", smp]);
        assert_eq!(
            outcome["kind"], "guest_exit",
            "-smp {smp}: {outcome}\n{stderr}"
        );
        assert_eq!(
            outcome["code"].as_u64(),
            Some(0x42 + (0x801 << 8)),
            "-smp {smp}: marker 0x42, CR0.PE 0, CS 0x801: {outcome}"
        );
        assert_eq!(code, 123, "a code above 255");
    }
    // X_Firmware_Waking_Vector: flat 32-bit protected mode.
    let x = SleepGuest {
        x_vector: true,
        vector: 0x9000,
        ..S3
    };
    let (_, stderr, outcome) = sleep(&dir, "s3x.elf", x, &[]);
    assert_eq!(
        outcome["code"].as_u64(),
        Some(0x42 + 1 + (0x08 << 8)),
        "CR0.PE 1: {outcome}\n{stderr}"
    );
}

/// S3 that nothing wakes ends at once as hung (it would time out under
/// QEMU); S5 is a power-off, which is no exit code: a failure with its
/// reason.
#[test]
fn s3_with_no_wake_event_and_s5_end_with_a_clear_outcome() {
    let dir = scratch("s3-ends");
    let no_alarm = SleepGuest {
        rtc_alarm: false,
        ..S3
    };
    let (code, stderr, outcome) = sleep(&dir, "s3-no-alarm.elf", no_alarm, &[]);
    assert_eq!((code, &outcome["kind"]), (120, &"hung".into()), "{stderr}");
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .contains("no wake event"),
        "{outcome}"
    );
    let s5 = SleepGuest { slp_typ: 0, ..S3 };
    let (code, stderr, outcome) = sleep(&dir, "s5.elf", s5, &[]);
    assert_eq!(
        (code, &outcome["kind"]),
        (121, &"system_event".into()),
        "{stderr}"
    );
    assert_eq!(outcome["event"], "power off (S5)");
    // No waking vector in the FACS: firmware would boot afresh.
    let no_vector = SleepGuest { facs: 0x6000, ..S3 };
    let (code, _, outcome) = sleep(&dir, "s3-no-vector.elf", no_vector, &[]);
    assert_eq!(code, 121);
    assert!(
        outcome["event"]
            .as_str()
            .unwrap()
            .contains("no waking vector"),
        "{outcome}"
    );
}
