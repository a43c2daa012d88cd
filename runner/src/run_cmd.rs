//! `ktvmm run`: boot one guest, exit with its code.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ktvmm_vmm::debug::gdb::arch::RegisterFile;
use ktvmm_vmm::{KernelImage, Outcome, Vm, VmConfig, input};

use crate::cli::RunArgs;
use crate::deadline::Deadline;
use crate::{bundled, detach};
use ktvmm_vmm::host::kmsg::{KernelLog, Report};
use ktvmm_vmm::host::kvm_stats::KvmCounters;
use std::time::{Duration, Instant};

/// Reads a guest from a file, or from the binary for `bundled:NAME`; a
/// guest cannot be larger than the RAM (`mem_mib`) it is loaded into.
pub fn load_guest(guest: &str, mem_mib: u64) -> Result<KernelImage> {
    if let Some(name) = guest.strip_prefix(bundled::PREFIX) {
        let bytes = bundled::guest(name).ok_or_else(|| {
            let names: Vec<&str> = bundled::GUESTS.iter().map(|(n, _)| *n).collect();
            anyhow!(
                "{guest}: no such bundled guest (there are: {})",
                names.join(", ")
            )
        })?;
        return Ok(KernelImage {
            name: guest.to_string(),
            bytes: bytes.to_vec(),
        });
    }
    read_image(Path::new(guest), "a guest", mem_mib)
}

fn read_image(path: &Path, what: &str, mem_mib: u64) -> Result<KernelImage> {
    let what = format!("{what} for {mem_mib} MiB of RAM (-m)");
    let bytes = input::read(path, mem_mib.saturating_mul(1 << 20), &what)?;
    Ok(KernelImage {
        name: path.display().to_string(),
        bytes,
    })
}

/// Runs the VM for what is left of the deadline after setup; a timeout
/// still names the whole limit.
fn run_within(vm: &mut Vm, deadline: Option<&Deadline>, debugging: bool) -> Outcome {
    let Some(deadline) = deadline else {
        return vm.run(None);
    };
    let left = deadline.running();
    if debugging {
        // The VM's own limit stops while a debugger holds the guest; a
        // watchdog on the wall clock would not.
        deadline.done();
    }
    let mut outcome = vm.run(Some(left));
    deadline.done();
    if let Outcome::Timeout { seconds, .. } = &mut outcome {
        *seconds = deadline.limit().as_secs_f64();
    }
    outcome
}

/// Runs the guest; exits the process with the guest's exit code, or returns
/// the exit code when no VM could be built.
pub fn run(args: RunArgs) -> Result<u8> {
    let config = match vm_config(&args) {
        Ok(config) => config,
        Err(e) => {
            // The runner reads verdicts from the outcome: it says why, too.
            if let Some(path) = &args.json_outcome {
                let outcome = Outcome::VmmError {
                    message: format!("{e:#}"),
                };
                let run = Run {
                    outcome: &outcome,
                    host_log: &Report::default(),
                    wall: Duration::ZERO,
                    counters: None,
                    core: None,
                };
                write_outcome(path, &run)?;
            }
            return Err(e);
        }
    };
    let mut gdb = gdb_listener(&args)?;
    // Read only when the guest times out or hangs.
    let mut kernel_log = KernelLog::open_at_end();
    let started = Instant::now();
    let deadline = args
        .vm
        .timeout
        .map(|limit| Deadline::start(limit, args.json_outcome.clone()));
    let (outcome, vm) = match Vm::build(config) {
        Ok(mut vm) => {
            vm.keep_cpu_state(args.core.is_some());
            let debugging = gdb.is_some();
            if let Some((listener, registers)) = gdb.take() {
                vm.debug_with(listener, args.hold, registers);
            }
            (run_within(&mut vm, deadline.as_ref(), debugging), Some(vm))
        }
        Err(e) => (
            Outcome::VmmError {
                message: e.to_string(),
            },
            None,
        ),
    };
    // A hang report includes what the host kernel said meanwhile about
    // this VM, and the host-wide alarms (see ktvmm_vmm::host::kmsg).
    let host_log = match (&outcome, kernel_log.as_mut()) {
        (Outcome::Timeout { .. } | Outcome::Hung { .. }, Some(log)) => log.read(),
        _ => Default::default(),
    };
    let wall = started.elapsed();
    let core = match (&args.core, &vm) {
        (Some(path), Some(vm)) if !passed(&outcome) => Some(write_core(vm, path)),
        _ => None,
    };
    let run = Run {
        outcome: &outcome,
        host_log: &host_log,
        wall,
        counters: vm.as_ref().and_then(Vm::kvm_counters),
        core: core
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(PathBuf::as_path),
    };
    if let Some(path) = &args.json_outcome {
        write_outcome(path, &run)?;
    }
    if let Some(message) = outcome.message() {
        errln!("ktvmm: {message}");
    }
    if !host_log.is_empty() {
        // Indented, under the timeout message: the runner takes a test's
        // reason from the last line that starts with "ktvmm: ".
        errln!("  host kernel log during the run:");
        for line in host_log.lines() {
            errln!("    {line}");
        }
        if host_log.left_out > 0 {
            errln!(
                "    ({} more message(s) left out: another process's, or naming no process)",
                host_log.left_out
            );
        }
    }
    match &core {
        Some(Ok(path)) => errln!("ktvmm core: guest core written to {}", path.display()),
        Some(Err(e)) => errln!("ktvmm core: no core: {e:#}"),
        None => {}
    }
    if args.stats {
        print_stats(&run);
    }
    match vm {
        Some(vm) => detach::exit_leaving_teardown(outcome.exit_code(), vm),
        None => Ok(outcome.exit_code()),
    }
}

/// The port GDB connects to, bound before the guest starts, as `--gdb`,
/// `-gdb tcp::PORT` or `-s` ask, and the register file GDB is shown.
fn gdb_listener(args: &RunArgs) -> Result<Option<(std::net::TcpListener, RegisterFile)>> {
    let spec = match (&args.gdb, args.gdb_default) {
        (Some(spec), _) => spec.clone(),
        (None, true) => "1234".to_string(),
        (None, false) if args.hold => {
            anyhow::bail!("-S holds the vCPUs for a debugger: give -s or --gdb PORT too")
        }
        (None, false) => return Ok(None),
    };
    let address = gdb_address(&spec).ok_or_else(|| {
        anyhow!("--gdb {spec}: want PORT, ADDR:PORT (ADDR an IP address or localhost) or tcp::PORT")
    })?;
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("--gdb {spec}: cannot listen on {address}"))?;
    let shown = listener.local_addr().unwrap_or(address).to_string();
    let symbols = symbol_file(&args.guest);
    let registers = register_file(&symbols);
    errln!(
        "ktvmm gdb: waiting for GDB on {shown}{}, {} registers (gdb -ex 'target remote {shown}' {symbols})",
        if args.hold { ", vCPUs held" } else { "" },
        registers.name()
    );
    Ok(Some((listener, registers)))
}

/// The file GDB reads a guest's symbols from: the guest itself, or for a
/// kvm-unit-tests `.flat` (the multiboot ELF32 copy objcopy makes) the
/// `.elf` it was made from, beside it.
pub fn symbol_file(guest: &str) -> String {
    match guest.strip_suffix(".flat") {
        Some(stem) if Path::new(&format!("{stem}.elf")).exists() => format!("{stem}.elf"),
        _ => guest.to_string(),
    }
}

/// The register file that agrees with `symbols` for GDB: i386 for an
/// ELF32 file, x86-64 otherwise (bundled guests are ELF64).
pub fn register_file(symbols: &str) -> RegisterFile {
    use std::io::Read;
    let mut header = [0u8; 5];
    let read = fs::File::open(symbols).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) => RegisterFile::of_elf(&header),
        Err(_) => RegisterFile::X86_64,
    }
}

/// `1234`, `:1234`, `tcp::1234` -> `127.0.0.1:1234`; `ADDR:PORT` with ADDR
/// an IP address (`[::1]` for IPv6) or `localhost`. Never a name lookup:
/// the static build's glibc cannot load the resolver's modules.
fn gdb_address(spec: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr};
    let spec = spec.strip_prefix("tcp:").unwrap_or(spec);
    let (host, port) = spec.rsplit_once(':').unwrap_or(("", spec));
    let port: u16 = port.parse().ok()?;
    let ip: IpAddr = match host {
        "" | "localhost" => Ipv4Addr::LOCALHOST.into(),
        _ => {
            let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            bare.unwrap_or(host).parse().ok()?
        }
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// The VM `args` ask for, with the guest (and initrd) read in.
fn vm_config(args: &RunArgs) -> Result<VmConfig> {
    let kernel = load_guest(&args.guest, args.vm.mem_mib)?;
    let initrd = args
        .vm
        .initrd
        .as_deref()
        .map(|path| read_image(path, "an initrd", args.vm.mem_mib))
        .transpose()?;
    Ok(VmConfig {
        kernel,
        cpus: args.vm.smp,
        mem_mib: args.vm.mem_mib,
        cmdline: args.vm.append.clone(),
        initrd,
        console: Box::new(io::stdout()),
        testdevs: !args.no_testdevs,
        cpu: args.cpu.clone(),
        pit: !args.no_pit,
        boot: args.boot,
        iommu: args.iommu,
    })
}

/// What a run leaves to report.
struct Run<'a> {
    outcome: &'a Outcome,
    /// This VM's and the host-wide kernel messages (see `kmsg`).
    host_log: &'a Report,
    /// From building the VM to the end of the run.
    wall: Duration,
    counters: Option<&'a KvmCounters>,
    /// The guest core written, if any.
    core: Option<&'a Path>,
}

/// Whether a run passed or skipped by the guest's own word (no core then),
/// as `ktvmm test` judges a guest's code.
fn passed(outcome: &Outcome) -> bool {
    use crate::verdict::{Status, guest_code_status};
    let Outcome::GuestExit { code } = outcome else {
        return false;
    };
    let (status, _) = guest_code_status(u64::from(*code), crate::suite::ExitCodes::Ktvmm);
    matches!(status, Status::Pass | Status::Skip)
}

/// Writes the guest's core to `path`.
fn write_core(vm: &Vm, path: &Path) -> Result<PathBuf> {
    let mut file = fs::File::create(path)
        .with_context(|| format!("{}: cannot create the core file", path.display()))?;
    vm.write_core(&mut file)
        .with_context(|| format!("{}: cannot write the core", path.display()))?;
    Ok(path.to_path_buf())
}

/// `--json-outcome`: the outcome, plus the run's wall time, KVM's counters
/// (absent where KVM has none) and what the host kernel logged.
fn write_outcome(path: &Path, run: &Run) -> Result<()> {
    let mut json: serde_json::Value =
        serde_json::from_str(&run.outcome.to_json()).unwrap_or(serde_json::Value::Null);
    if let Some(object) = json.as_object_mut() {
        if run.wall > Duration::ZERO {
            let millis = (run.wall.as_secs_f64() * 1000.0).round() / 1000.0;
            object.insert("run_s".into(), millis.into());
        }
        if let Some(counters) = run.counters.and_then(|c| serde_json::to_value(c).ok()) {
            object.insert("kvm_stats".into(), counters);
        }
        if let Some(core) = run.core {
            object.insert("core".into(), core.display().to_string().into());
        }
        if !run.host_log.is_empty() {
            object.insert("host_kernel_log".into(), run.host_log.lines().into());
            object.insert(
                "host_kernel_log_left_out".into(),
                run.host_log.left_out.into(),
            );
        }
    }
    fs::write(path, json.to_string() + "\n")
        .with_context(|| format!("{}: cannot write the outcome", path.display()))
}

/// `--stats`: the run's time and KVM's largest counters, on stderr (stdout
/// is the guest's console).
fn print_stats(run: &Run) {
    errln!("ktvmm stats: the run took {:.3} s", run.wall.as_secs_f64());
    let Some(counters) = run.counters else {
        errln!("  KVM offers no counters here (no KVM_CAP_BINARY_STATS_FD)");
        return;
    };
    errln!(
        "  KVM counters ({} VM, {} per vCPU, summed over vCPUs), largest first:",
        counters.vm.len(),
        counters.vcpu.len()
    );
    for (name, value) in counters.top(STATS_SHOWN) {
        errln!("    {name:<32} {value:>14}");
    }
}

/// Counters `--stats` shows.
const STATS_SHOWN: usize = 16;

#[cfg(test)]
mod tests {
    use super::gdb_address;

    #[test]
    fn gdb_addresses_are_numeric_never_looked_up() {
        let shown = |spec| gdb_address(spec).map(|a| a.to_string());
        assert_eq!(shown("1234").as_deref(), Some("127.0.0.1:1234"));
        assert_eq!(shown(":1234").as_deref(), Some("127.0.0.1:1234"));
        assert_eq!(shown("tcp::1234").as_deref(), Some("127.0.0.1:1234"));
        assert_eq!(shown("localhost:1").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(shown("0.0.0.0:9").as_deref(), Some("0.0.0.0:9"));
        assert_eq!(shown("[::1]:9").as_deref(), Some("[::1]:9"));
        assert_eq!(shown("::1:9").as_deref(), Some("[::1]:9"));
        for bad in ["example.com:1234", "1234x", ":99999", ""] {
            assert_eq!(shown(bad), None, "{bad}");
        }
    }
}
