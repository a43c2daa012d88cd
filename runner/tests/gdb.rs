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
    // No `set architecture`: the stub's target.xml agrees with the file.
    cmd.args(["-batch", "-nx", "-ex", "set pagination off"])
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd.arg(symbols).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The bundled `exitcode` guest asked to exit with 3, held for GDB: its
/// file (for symbols), process, port and stderr.
fn held_exitcode_3() -> (String, Child, u16, BufReader<std::process::ChildStderr>) {
    let guest = guest_file("exitcode").to_str().unwrap().to_string();
    let (child, port, stderr) = start(&guest, &["-S", "-append", "code=3"]);
    (guest, child, port, stderr)
}

fn exit_code(mut child: Child) -> i32 {
    child.wait().unwrap().code().unwrap()
}

/// Held at the first instruction: read registers (control registers and
/// the mode included) and memory, single-step, write a register that
/// changes the guest's exit code, detach. GDB is given the guest file
/// alone, as a user would: an ELF32 multiboot file gets i386 registers
/// (no `set architecture`), an ELF64 one x86-64's.
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
            ("rip", "rax"),
            "long mode, 64-bit code, paging on",
            elf64(LOAD_ADDR, &EXIT_WITH_EAX_SET_TO_1, 0),
        ),
        // Multiboot: the boot CPU starts in 32-bit protected mode.
        (
            "multiboot",
            MULTIBOOT_ADDR,
            "2",
            ("eip", "eax"),
            "protected mode, 32-bit code, paging off",
            elf32_multiboot(MULTIBOOT_ADDR as u32, &EXIT_WITH_EAX_SET_TO_1, 0),
        ),
    ];
    for (name, entry, smp, (pc, ax), mode, image) in cases {
        let guest = write(&dir, name, &image);
        let (child, port, _stderr) = start(&guest, &["-S", "-smp", smp]);
        let said = gdb(
            port,
            &guest,
            &[
                "info threads",
                "x/1xb $pc",
                "stepi",
                &format!("info registers {pc} {ax} cr0"),
                "monitor mode",
                &format!("set ${ax} = 7"),
                "detach",
            ],
        );
        assert!(!said.contains("not compatible"), "{name}:\n{said}");
        assert!(
            said.contains(&format!("Thread 1.{smp}")),
            "{name}: a thread per vCPU:\n{said}"
        );
        assert!(
            said.contains(":\t0xb8"),
            "{name}: memory at the entry:\n{said}"
        );
        let at = format!("{:#x}", entry + 5);
        assert!(
            said.contains(&format!("{pc}            {at}")),
            "{name}:\n{said}"
        );
        assert!(
            said.contains(&format!("{ax}            0x1 ")),
            "{name}:\n{said}"
        );
        // Protected mode (PE) in both; paging only in long mode.
        let cr0 = said.lines().find(|l| l.starts_with("cr0")).unwrap_or("");
        assert!(cr0.contains("[ PE"), "{name}: {cr0}\n{said}");
        assert_eq!(cr0.contains(" PG "), name == "elf64", "{name}: {cr0}");
        assert!(said.contains(&format!("vCPU 0: {mode}")), "{name}:\n{said}");
        assert_eq!(exit_code(child), 7, "{name}: {said}");
    }
}

/// Physical addresses (QEMU's `maint packet Qqemu.PhyMemMode:1`): with CR3
/// pointed at an empty page by the debugger, the guest's code cannot be
/// read by its virtual address, but can by its physical one; CR3 put back,
/// the guest runs on to its exit code.
#[test]
fn gdb_reads_guest_physical_memory_and_writes_control_registers() {
    if !common::gdb_usable("gdb_reads_guest_physical_memory") {
        return;
    }
    let dir = scratch("gdb-phys");
    let guest = write(
        &dir,
        "exit.elf",
        &elf64(LOAD_ADDR, &EXIT_WITH_EAX_SET_TO_1, 0),
    );
    let (child, port, _stderr) = start(&guest, &["-S"]);
    let entry = format!("{LOAD_ADDR:#x}");
    let said = gdb(
        port,
        &guest,
        &[
            "set $cr3 = 0x200000",
            "info registers cr3",
            &format!("x/1xb {entry}"),
            "maint packet Qqemu.PhyMemMode:1",
            &format!("x/1xb {entry}"),
            "monitor phys",
            "maint packet Qqemu.PhyMemMode:0",
            "set $cr3 = 0x3000",
            &format!("x/1xb {entry}"),
            "continue",
        ],
    );
    assert!(said.contains("cr3            0x200000"), "{said}");
    assert!(
        said.contains(&format!("Cannot access memory at address {entry}")),
        "unmapped with CR3 on an empty page:\n{said}"
    );
    assert_eq!(
        said.matches(":\t0xb8").count(),
        2,
        "read physically, then virtually again:\n{said}"
    );
    assert!(
        said.contains("memory addresses are guest-physical"),
        "{said}"
    );
    assert!(said.contains("exited with code 01"), "{said}");
    assert_eq!(exit_code(child), 1);
}

/// A hardware breakpoint on a symbol of a bundled guest, a software
/// breakpoint, and the guest's own exit reported to GDB.
#[test]
fn gdb_breakpoints_stop_a_bundled_guest_at_its_symbols() {
    if !common::gdb_usable("gdb_breakpoints_stop_a_bundled_guest") {
        return;
    }
    let (guest, child, port, _stderr) = held_exitcode_3();
    let guest = guest.as_str();
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

    /// The next byte (an acknowledgement).
    fn byte(&mut self) -> u8 {
        let mut byte = [0u8];
        self.0.read_exact(&mut byte).unwrap();
        byte[0]
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
    // An enormous length: one reply's worth (2016 bytes), not more.
    rsp.send("mff0000,ffffffffffffffff");
    let reply = rsp.reply();
    // (Give or take a few characters of this client's run-length decoding.)
    assert!(
        reply.len().abs_diff(2 * 2016) < 8,
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

/// Breakpoints beyond the four debug registers become `int3`s only where
/// the host stops on one (asked the way the stub asks: a scratch VM); on
/// a host that cannot (kvm_pvm), the breakpoint is refused and the guest
/// is not harmed. Either way the guest ends with its own exit code.
#[test]
fn a_fifth_breakpoint_is_an_int3_only_where_the_host_stops_on_one() {
    if !common::gdb_usable("a_fifth_breakpoint_is_an_int3") {
        return;
    }
    let int3 = ktvmm_vmm::debug::gdb::int3::usable();
    let (guest, child, port, _stderr) = held_exitcode_3();
    let guest = guest.as_str();
    // Four never-run addresses below ktest_main take the debug registers
    // (GDB inserts in address order); ktest_main's is the fifth.
    let said = gdb(
        port,
        guest,
        &[
            "break *0x1000",
            "break *0x1001",
            "break *0x1002",
            "break *0x1003",
            "break *ktest_main",
            "continue",
            "info registers rip",
            "monitor breakpoints",
            "delete",
            "continue",
        ],
    );
    match &int3 {
        Ok(()) => {
            assert!(said.contains("Breakpoint 5, "), "{said}");
            assert!(said.contains("<ktest_main>"), "{said}");
            assert!(said.contains("int3 breakpoints work"), "{said}");
        }
        Err(why) => {
            assert!(said.contains("Cannot insert breakpoint 5"), "{said}");
            assert!(said.contains(why.as_str()), "{why}:\n{said}");
        }
    }
    assert!(said.contains("exited with code 03"), "{int3:?}:\n{said}");
    assert_eq!(exit_code(child), 3);
}

/// Hostile input over a raw connection (noise between packets, a bad
/// checksum, an oversized packet, packets the stub cannot parse, an
/// enormous read, unmapped memory): each gets its error or is dropped, the
/// session goes on, and afterwards GDB attaches and the guest ends as it
/// would have.
#[test]
fn hostile_packets_get_errors_and_a_normal_session_follows() {
    if !common::gdb_usable("hostile_packets_get_errors") {
        return;
    }
    let dir = scratch("gdb-hostile");
    // `jmp .`, then the exit: the guest spins until a debugger moves it on.
    let code = [&[0xeb, 0xfe][..], &EXIT_WITH_EAX_SET_TO_1].concat();
    let guest = write(&dir, "spin-exit.elf", &elf64(LOAD_ADDR, &code, 0));
    let (mut child, port, _stderr) = start(&guest, &["-S", "-m", "16"]);
    let mut rsp = Rsp::connect(port);
    rsp.0.write_all(b"hello\r\n+++").unwrap();
    rsp.send("qSupported:multiprocess+;swbreak+;hwbreak+");
    assert!(rsp.reply().contains("PacketSize=1000"));
    // A bad checksum: the protocol's retransmission request.
    rsp.0.write_all(b"$g#00").unwrap();
    assert_eq!(rsp.byte(), b'-');
    // Longer than the PacketSize announced.
    rsp.send(&"X".repeat(5000));
    assert_eq!(rsp.reply(), "E07");
    // Packets gdbstub cannot parse: refused, the session goes on.
    for bad in ["Hz1", "g123", "m,", "Z9,zz,1", "vCont;q", "qSupported:;;"] {
        rsp.send(bad);
        assert!(rsp.reply().starts_with('E'), "{bad}");
    }
    // An enormous length: one reply's worth (2016 bytes here).
    rsp.send("m100000,ffffffffffffffff");
    let reply = rsp.reply();
    assert!(reply.starts_with("ebfeb801000000"), "{reply:.40}");
    assert!(reply.len().abs_diff(2 * 2016) < 8, "{}", reply.len());
    rsp.send("mffffffffffffff00,100");
    assert!(rsp.reply().starts_with('E'));
    rsp.send("Hg1");
    assert_eq!(rsp.reply(), "OK");
    rsp.send("g");
    let regs = rsp.reply();
    let rip = u64::from_str_radix(&regs[256..272], 16)
        .map(u64::swap_bytes)
        .unwrap();
    assert_eq!(rip, LOAD_ADDR);
    drop(rsp);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "ktvmm still runs");
    // A normal session: Ctrl-C-free attach to the spinning guest, which
    // GDB moves past its loop to the exit.
    let said = gdb(
        port,
        &guest,
        &["info registers rip", "set $pc = 0x100002", "continue"],
    );
    assert!(said.contains("rip            0x100000"), "{said}");
    assert!(said.contains("exited with code 01"), "{said}");
    assert_eq!(exit_code(child), 1);
}
