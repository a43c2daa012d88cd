//! `ktvmm run --gdb`: GDB (Debian's, scripted in batch mode) attached to
//! real guests under KVM, and a raw remote-protocol client for what batch
//! GDB cannot do (Ctrl-C) and for hostile packets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{guest_file, ktvmm, scratch, write};
use ktvmm_vmm::boot::test_images::{SPIN_WITH_INTERRUPTS_OFF, elf32_multiboot, elf64};

const LOAD_ADDR: u64 = 0x10_0000;
const MULTIBOOT_ADDR: u64 = 0x40_0000;
/// `mov $1, %eax; out %eax, $0xf4; hlt`: exits with whatever RAX holds at
/// the `out`, so a register written by the debugger shows in the exit code.
const EXIT_WITH_EAX_SET_TO_1: [u8; 8] = [0xb8, 0x01, 0x00, 0x00, 0x00, 0xe7, 0xf4, 0xf4];

/// `ktvmm run GUEST --gdb 0 ARGS` in the background, and the port it
/// listens on (from its first stderr line).
fn start(guest: &str, args: &[&str]) -> (Child, u16, BufReader<std::process::ChildStderr>) {
    let mut child = ktvmm()
        .args(["run", guest, "--gdb", "0", "--timeout", "60"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in: {line}"));
    (child, port, stderr)
}

/// GDB in batch mode against `port`, with `symbols` and `commands`.
fn gdb(port: u16, symbols: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    // A 32-bit multiboot file would make GDB pick i386; the stub speaks
    // x86-64 registers whatever the vCPU's mode.
    cmd.args(["-batch", "-nx", "-ex", "set pagination off"])
        .args(["-ex", "set architecture i386:x86-64"])
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd.arg(symbols).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn exit_code(mut child: Child) -> i32 {
    child.wait().unwrap().code().unwrap()
}

/// Held at the first instruction: read registers and memory, single-step,
/// write a register that changes the guest's exit code, detach.
#[test]
fn gdb_steps_a_held_guest_and_its_register_write_changes_the_exit_code() {
    if !common::gdb_usable("gdb_steps_a_held_guest") {
        return;
    }
    let dir = scratch("gdb-step");
    // Every ELF64 vCPU starts at the entry, where each would exit with its
    // own RAX: one vCPU there; under multiboot the others wait for a SIPI.
    let cases = [
        (
            "elf64",
            LOAD_ADDR,
            "1",
            elf64(LOAD_ADDR, &EXIT_WITH_EAX_SET_TO_1, 0),
        ),
        // Multiboot: the boot CPU starts in 32-bit protected mode.
        (
            "multiboot",
            MULTIBOOT_ADDR,
            "2",
            elf32_multiboot(MULTIBOOT_ADDR as u32, &EXIT_WITH_EAX_SET_TO_1, 0),
        ),
    ];
    for (name, entry, smp, image) in cases {
        let guest = write(&dir, name, &image);
        let (child, port, _stderr) = start(&guest, &["-S", "-smp", smp]);
        let said = gdb(
            port,
            &guest,
            &[
                "info threads",
                "x/1xb $pc",
                "stepi",
                "info registers rip rax",
                "set $rax = 7",
                "detach",
            ],
        );
        assert!(
            said.contains(&format!("Thread 1.{smp}")),
            "{name}: a thread per vCPU:\n{said}"
        );
        assert!(
            said.contains(":\t0xb8"),
            "{name}: memory at the entry:\n{said}"
        );
        let rip = format!("{:#x}", entry + 5);
        assert!(
            said.contains(&format!("rip            {rip}")),
            "{name}:\n{said}"
        );
        assert!(said.contains("rax            0x1 "), "{name}:\n{said}");
        assert_eq!(exit_code(child), 7, "{name}: {said}");
    }
}

/// A hardware breakpoint on a symbol of a bundled guest, a software
/// breakpoint, and the guest's own exit reported to GDB.
#[test]
fn gdb_breakpoints_stop_a_bundled_guest_at_its_symbols() {
    if !common::gdb_usable("gdb_breakpoints_stop_a_bundled_guest") {
        return;
    }
    let guest = guest_file("exitcode");
    let guest = guest.to_str().unwrap();
    let (child, port, _stderr) = start(guest, &["-S", "-append", "code=3"]);
    let said = gdb(
        port,
        guest,
        &[
            "hbreak ktest_main",
            "continue",
            "info registers rip",
            "delete",
            "break *ktest_main+1",
            "continue",
            "info registers rip",
            "delete",
            "continue",
        ],
    );
    assert!(said.contains("Breakpoint 1, 0x"), "{said}");
    assert!(said.contains("Breakpoint 2, 0x"), "{said}");
    assert!(said.contains("<ktest_main+1>"), "{said}");
    assert!(said.contains("in ktest_main"), "{said}");
    assert!(said.contains("exited with code 03"), "{said}");
    assert_eq!(exit_code(child), 3);
}

/// A raw remote-protocol client.
struct Rsp(TcpStream);

impl Rsp {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Rsp(stream)
    }

    fn send(&mut self, data: &str) {
        let sum = data.bytes().fold(0u8, u8::wrapping_add);
        write!(self.0, "${data}#{sum:02x}").unwrap();
    }

    /// The next packet's payload (acks skipped, acknowledged).
    fn reply(&mut self) -> String {
        let mut byte = [0u8];
        loop {
            self.0.read_exact(&mut byte).unwrap();
            if byte[0] == b'$' {
                break;
            }
        }
        let mut payload = Vec::new();
        loop {
            self.0.read_exact(&mut byte).unwrap();
            if byte[0] == b'#' {
                break;
            }
            payload.push(byte[0]);
        }
        let mut sum = [0u8; 2];
        self.0.read_exact(&mut sum).unwrap();
        self.0.write_all(b"+").unwrap();
        // Run-length encoding: `X*n` is X and n - 29 more of it.
        let mut out = Vec::new();
        let mut i = 0;
        while i < payload.len() {
            if payload[i] == b'*' && i + 1 < payload.len() {
                let last = *out.last().unwrap_or(&b'0');
                out.extend(std::iter::repeat_n(last, usize::from(payload[i + 1] - 29)));
                i += 2;
            } else {
                out.push(payload[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Ctrl-C stops a guest spinning with interrupts off; hostile requests
/// (unmapped memory, an enormous length, a malformed packet) are refused
/// without taking ktvmm or the guest down.
#[test]
fn the_stub_interrupts_a_spinning_guest_and_refuses_hostile_requests() {
    let dir = scratch("gdb-interrupt");
    let guest = write(
        &dir,
        "spin.elf",
        &elf64(LOAD_ADDR, &SPIN_WITH_INTERRUPTS_OFF, 0),
    );
    let (mut child, port, _stderr) = start(&guest, &["-smp", "2", "-m", "16"]);
    let mut rsp = Rsp::connect(port);
    rsp.send("qSupported:swbreak+;hwbreak+");
    assert!(rsp.reply().contains("PacketSize"));
    rsp.send("?");
    assert!(rsp.reply().starts_with('T'), "stopped on attach");
    rsp.send("vCont;c");
    std::thread::sleep(Duration::from_millis(500));
    rsp.0.write_all(&[0x03]).unwrap();
    let stop = rsp.reply();
    assert!(stop.starts_with("T02"), "{stop}");
    // The spinning vCPU stopped where it spins.
    rsp.send("g");
    let regs = rsp.reply();
    // RIP follows the 16 general registers, 8 little-endian bytes each.
    let rip = u64::from_str_radix(&regs[256..272], 16)
        .map(u64::swap_bytes)
        .unwrap();
    assert!(rip - LOAD_ADDR < 3, "{rip:#x}");
    // Unmapped memory: an error, not a crash.
    rsp.send("mffffffff00000000,10");
    assert!(rsp.reply().starts_with('E'));
    // An enormous length: the stub reads on to the end of guest RAM (the
    // last 64 KiB here) and no further.
    rsp.send("mff0000,ffffffffffffffff");
    let reply = rsp.reply();
    // (Give or take a few characters of this client's run-length decoding.)
    assert!(
        reply.len().abs_diff(2 * 0x1_0000) < 8,
        "{} characters",
        reply.len()
    );
    assert!(child.try_wait().unwrap().is_none(), "ktvmm still runs");
    // Gone at once: the guest runs on until its timeout is cut short here.
    drop(rsp);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a detach lets the guest run on"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `ktvmm test --gdb NAME`: one test of a suite waits for GDB, with the
/// command to attach printed (symbols included); a held test has no time
/// limit, and it passes once GDB lets it run.
#[test]
fn one_test_of_a_suite_waits_for_gdb() {
    if !common::gdb_usable("one_test_of_a_suite_waits_for_gdb") {
        return;
    }
    let dir = scratch("test-gdb");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = ktvmm()
        .args([
            "test",
            "--gdb",
            "exitcode-pass",
            "--gdb-port",
            &port.to_string(),
        ])
        .args(["--timeout", "1", "-o", dir.join("out").to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut attach) = (String::new(), String::new());
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut attach).unwrap();
    assert!(first.starts_with("exitcode-pass waits for GDB"), "{first}");
    let symbols = attach.split_whitespace().last().unwrap().to_string();
    assert!(
        attach.contains(&format!("target remote 127.0.0.1:{port}")),
        "{attach}"
    );
    // Longer than --timeout: the held test is not stopped meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    let said = gdb(
        port,
        &symbols,
        &["hbreak ktest_main", "continue", "delete", "continue"],
    );
    assert!(said.contains("in ktest_main"), "{said}");
    assert!(said.contains("exited normally"), "{said}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("1 passed"), "{rest}");
}
