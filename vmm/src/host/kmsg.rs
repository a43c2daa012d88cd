//! The host kernel's log (`/dev/kmsg`) during a run, for hang reports (a
//! KVM warning or a soft lockup on the host is often the reason a guest
//! stopped making progress) and for the fuzz harness's oracles. Needs
//! permission to read `/dev/kmsg`; without it there is simply nothing to
//! add.
//!
//! The kernel log is the whole host's: with other VMs running (the other
//! lanes of `ktvmm test -j 2`, other users), most of what KVM logs during
//! a run is about someone else's guest. A report keeps only
//! - messages that name a task of this process: KVM's `kvm [PID]:`
//!   (`kvm_pr_unimpl`, `vcpu_unimpl`, `kvm_err`), `kvm_pvm`'s
//!   `kvm-pvm: pid TID vcpuN:`, KVM's debugfs `duplicate directory
//!   PID-FD`, or the record's `caller=T<TID>` when the kernel records
//!   callers (`CONFIG_PRINTK_CALLER`): marked `[this VM]`;
//! - kernel-wide alarms (a WARN, BUG, Oops, lockup, RCU stall, hung task,
//!   taint, and the register and call-trace dump that follows one),
//!   whoever caused them: marked `[host-wide]`.
//!
//! Everything else (KVM's and `kvm_pvm`'s per-guest lines that name no
//! task, such as triple-fault dumps and `INTERNAL_ERROR` RIPs, and lines
//! of other processes) is left out and only counted: it cannot be told
//! apart from another guest's. In a PID namespace other than the host's
//! (a container) the PIDs the kernel prints are not ours to compare, and
//! only the host-wide alarms are kept.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

/// Messages kept at most (the last ones).
const MAX_LINES: usize = 40;

/// Where a kept message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It names a task of this process.
    ThisVm,
    /// A kernel-wide alarm, or part of its dump: whoever caused it.
    HostWide,
}

impl Origin {
    /// The mark a report puts before the message.
    pub fn mark(self) -> &'static str {
        match self {
            Origin::ThisVm => "[this VM]",
            Origin::HostWide => "[host-wide]",
        }
    }
}

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Whose it is.
    pub origin: Origin,
    /// The message's first line, as the kernel wrote it.
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.origin.mark(), self.text)
    }
}

/// What the kernel logged since the last read, as far as a report about
/// this process's VMs may use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The messages kept, the last [`MAX_LINES`] of them, in order.
    pub messages: Vec<Message>,
    /// Messages left out: another process's, or ones that name none.
    pub left_out: usize,
}

impl Report {
    /// Nothing kept and nothing left out.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.left_out == 0
    }

    /// The messages with their marks, for text and JSON reports.
    pub fn lines(&self) -> Vec<String> {
        self.messages.iter().map(ToString::to_string).collect()
    }
}

/// Threads that have made KVM calls for this process and may have ended
/// by the time the log is read (vCPU threads are joined before a timeout
/// is reported): their ids still tie the kernel's messages to this VM.
/// They end with the run, just before the log is read, so another process
/// has had next to no time to be given the same id.
static CLAIMED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Records the calling thread as one whose kernel messages are this
/// process's. Call it on every thread that makes KVM calls.
pub fn claim_this_thread() {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // A poisoned lock still holds a valid set.
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    claimed.insert(tid as u32);
}

/// The inode of the initial PID namespace (include/linux/proc_ns.h,
/// PROC_PID_INIT_INO): the kernel logs PIDs as that namespace numbers them.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Whether this process numbers PIDs as the kernel's log does. In a
/// container with its own PID namespace our PID is another number than the
/// one the kernel prints, and may equal another process's: there no
/// message is tied to this VM by its PID.
fn pids_are_global() -> bool {
    static GLOBAL: OnceLock<bool> = OnceLock::new();
    *GLOBAL.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns.as_os_str() == INIT_PID_NS)
    })
}

/// Whether `id` (a PID or TID the kernel printed) is this process or one
/// of its threads, now or earlier.
fn is_this_process(id: u32) -> bool {
    if !pids_are_global() {
        return false;
    }
    if id == std::process::id() {
        return true;
    }
    let claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    claimed.contains(&id) || std::path::Path::new(&format!("/proc/self/task/{id}")).exists()
}

/// Decides, record by record, what a report keeps.
pub struct Classifier<F> {
    is_ours: F,
    /// The last kept message was an alarm or part of its dump.
    in_dump: bool,
}

impl<F: Fn(u32) -> bool> Classifier<F> {
    /// A classifier that ties ids for which `is_ours` holds to this VM.
    pub fn new(is_ours: F) -> Self {
        Classifier {
            is_ours,
            in_dump: false,
        }
    }

    /// Classifies one record (`prio,seq,usec,flags[,caller=T<id>];text`,
    /// as `/dev/kmsg` gives it); `None`: leave it out.
    pub fn classify(&mut self, record: &str) -> Option<Message> {
        let (header, text) = record.split_once(';').unwrap_or(("", record));
        let text = text.lines().next().unwrap_or("").trim_end();
        let continues_dump = self.in_dump && is_dump_line(text);
        // An alarm opens a dump (registers, call trace) that its end
        // line, or the first line of another kind, closes.
        self.in_dump = !text.starts_with("---[ end trace") && (continues_dump || is_alarm(text));
        let named = named_task(text).or_else(|| caller(header));
        let origin = match named {
            Some(id) if (self.is_ours)(id) => Origin::ThisVm,
            _ if continues_dump || is_alarm(text) => Origin::HostWide,
            _ => return None,
        };
        Some(Message {
            origin,
            text: text.to_string(),
        })
    }
}

/// Kernel log messages that mean the kernel hit a bug or got stuck,
/// whoever's VM (or no VM) it was about.
const ALARMS: [&str; 14] = [
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection fault",
    "Call Trace",
    "soft lockup",
    "hard LOCKUP",
    "detected stall",
    "blocked for more than",
    "Kernel panic",
    "Tainted:",
    "UBSAN:",
    "KASAN:",
    "---[ end trace",
];

/// Whether `text` is a kernel-wide alarm (a WARN, BUG, lockup, taint...).
pub fn is_alarm(text: &str) -> bool {
    // "traps: prog[PID] general protection fault ip:...": a user process
    // crashed, the kernel is fine.
    !text.starts_with("traps: ") && ALARMS.iter().any(|alarm| text.contains(alarm))
}

/// Whether `text` looks like a line of the dump that follows an alarm:
/// registers, modules, a stack frame (indented), the trace's end.
fn is_dump_line(text: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "Modules linked in",
        "CPU:",
        "Hardware name",
        "Code:",
        "Call Trace",
        "---[ end trace",
        "Workqueue:",
        "irq event stamp",
        "hardirqs last",
        "softirqs last",
        "Sending NMI",
        "NMI backtrace",
    ];
    if text.starts_with([' ', '\t', '<']) || PREFIXES.iter().any(|p| text.starts_with(p)) {
        return true;
    }
    // Register lines: "RIP: 0010:...", "RAX: ...", "R13: ...", "CR2: ...".
    let name = text.split_once(": ").map_or("", |(name, _)| name);
    (2..=4).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The task a message names, in the forms KVM and `kvm_pvm` print.
fn named_task(text: &str) -> Option<u32> {
    // kvm_err(), kvm_pr_unimpl(), vcpu_unimpl(): "kvm [PID]: ...", after
    // the module's prefix ("kvm: ", "kvm_amd: ").
    if let Some(at) = text.find("kvm [") {
        let rest = &text[at + "kvm [".len()..];
        return rest.split_once("]:").and_then(|(id, _)| id.parse().ok());
    }
    // kvm_pvm: "kvm-pvm: pid TID vcpuN: ...".
    if let Some(rest) = text.strip_prefix("kvm-pvm: pid ") {
        return leading_number(rest);
    }
    // KVM's debugfs directory, named "PID-FD" after the creating task.
    if let Some(rest) = text.strip_prefix("KVM: debugfs: duplicate directory ") {
        return leading_number(rest);
    }
    None
}

/// The caller a record's header names (`caller=T<id>`; `C<cpu>` is an
/// interrupt context, no task).
fn caller(header: &str) -> Option<u32> {
    header
        .split(',')
        .find_map(|field| field.strip_prefix("caller=T"))
        .and_then(|id| id.parse().ok())
}

fn leading_number(text: &str) -> Option<u32> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// A reader positioned at the end of the kernel log when it was opened.
pub struct KernelLog {
    file: File,
    classifier: Classifier<fn(u32) -> bool>,
}

impl KernelLog {
    /// Opens `/dev/kmsg` and skips what is already there. `None` when it
    /// cannot be read (not root, say).
    pub fn open_at_end() -> Option<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        // SAFETY: lseek on a descriptor we own; SEEK_END on /dev/kmsg moves
        // to the next record to be written.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        // The thread that opens the log is usually the one that builds
        // the VM (KVM's debugfs line names it).
        claim_this_thread();
        Some(KernelLog {
            file,
            classifier: Classifier::new(is_this_process),
        })
    }

    /// What was logged since, as far as this process's VMs go.
    pub fn read(&mut self) -> Report {
        let mut report = Report::default();
        let mut record = vec![0u8; 8192];
        loop {
            // Each read returns one record: "prio,seq,usec,flags;message\n".
            match self.file.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    match self.classifier.classify(&text) {
                        Some(message) => {
                            report.messages.push(message);
                            if report.messages.len() > MAX_LINES {
                                report.messages.remove(0);
                                report.left_out += 1;
                            }
                        }
                        None => report.left_out += 1,
                    }
                }
                // Records overwritten while we read: carry on from the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u32 = 4242;
    const VCPU_THREAD: u32 = 4245;

    fn classify_all(records: &[&str]) -> Vec<String> {
        let mut classifier = Classifier::new(|id| id == US || id == VCPU_THREAD);
        records
            .iter()
            .filter_map(|r| classifier.classify(r))
            .map(|m| m.to_string())
            .collect()
    }

    #[test]
    fn lines_naming_this_process_are_this_vms_and_another_pids_are_dropped() {
        let kept = classify_all(&[
            "3,100,5000,-;kvm: kvm [4242]: vcpu0, guest rIP: 0x10040 ignored rdmsr: 0x4b564d05 data 0x0",
            "3,101,5001,-;kvm: kvm [5151]: vcpu0, guest rIP: 0x10040 ignored rdmsr: 0x4b564d05 data 0x0",
            "4,102,5002,-;kvm-pvm: pid 4245 vcpu0: guest CR3 0x40003000 had no memory slot behind it (a CR3 outside guest memory, or a slot the VMM moved or deleted); shutting the vCPU down (KVM_EXIT_SHUTDOWN)",
            "4,103,5003,-;kvm-pvm: pid 5151 vcpu1: the VMM set CR0.PG with EFER.LME clear (32-bit or PAE paging); kvm-pvm supports paging only in long mode, so CR0.PG stays clear and the vCPU shuts down when it next runs (KVM_EXIT_SHUTDOWN)",
            "4,104,5004,-;KVM: debugfs: duplicate directory 4242-11",
            "4,105,5005,-;KVM: debugfs: duplicate directory 5151-6",
            "3,106,5006,-;kvm_amd: kvm [5151]: vcpu1, guest rIP: 0xfff0 unimplemented wrmsr: 0x1d9 data 0x1",
        ]);
        assert_eq!(
            kept,
            [
                "[this VM] kvm: kvm [4242]: vcpu0, guest rIP: 0x10040 ignored rdmsr: 0x4b564d05 data 0x0",
                "[this VM] kvm-pvm: pid 4245 vcpu0: guest CR3 0x40003000 had no memory slot behind it (a CR3 outside guest memory, or a slot the VMM moved or deleted); shutting the vCPU down (KVM_EXIT_SHUTDOWN)",
                "[this VM] KVM: debugfs: duplicate directory 4242-11",
            ]
        );
    }

    #[test]
    fn guest_lines_that_name_no_task_are_dropped() {
        // What kvm_pvm prints for any guest's triple fault or emulation
        // failure: nothing says whose guest it was.
        let kept = classify_all(&[
            "6,200,6000,-;kvm-pvm: triple fault delivering vec=8 err=0 cpl=0 rip=1000f e.vec=13 e.err=42 idt=0/0",
            "6,201,6001,-;kvm-pvm: deliver[1]: vec=13 err=0x12 type=1 cpl=0 rip=0x10000 rsp=0x1f000 cr3=0x0 cr2=0x0 cs=0x18 nent=0",
            "3,202,6002,-;kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x412a55 cpl=0 cr3=0x180000",
            "6,203,6003,-;kvm-pvm: trace dump vcpu0 (#DF/escalation): not printed: this host already printed 5 flight-recorder dumps in full within 300 seconds; kvm_pvm.verbose=1 (/sys/module/kvm_pvm/parameters/verbose) prints later ones in full",
            "4,204,6004,-;pvm_deliver_pending_event: 518 callbacks suppressed",
            "6,205,6005,-;ktvmm-test-marker-99",
        ]);
        assert!(kept.is_empty(), "{kept:?}");
    }

    #[test]
    fn kernel_wide_alarms_and_their_dumps_are_host_wide() {
        let kept = classify_all(&[
            "4,300,7000,-;------------[ cut here ]------------",
            "4,301,7001,-;WARNING: CPU: 1 PID: 5151 at arch/x86/kvm/x86.c:11455 kvm_arch_vcpu_ioctl_run+0x5d2/0x6f0 [kvm]",
            "4,302,7002,-;Modules linked in: kvm_pvm kvm",
            "4,303,7003,-;CPU: 1 UID: 0 PID: 5151 Comm: vcpu0 Tainted: G        W          6.18.44 #1",
            "4,304,7004,-;RIP: 0010:kvm_arch_vcpu_ioctl_run+0x5d2/0x6f0 [kvm]",
            "4,305,7005,-;Call Trace:",
            "4,306,7006,-; <TASK>",
            "4,307,7007,-; kvm_vcpu_ioctl+0x2a1/0x6b0 [kvm]",
            "4,308,7008,-; </TASK>",
            "4,309,7009,-;---[ end trace 0000000000000000 ]---",
            "6,310,7010,-;kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x3 cpl=0 cr3=0x0",
            "0,311,7011,-;watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [qemu-system-x86:777]",
            // A user process's crash is not the kernel's.
            "6,312,7012,-;traps: a.out[5151] general protection fault ip:401136 sp:7ffd0 error:0 in a.out[1136,401000+1000]",
        ]);
        assert_eq!(kept.len(), 10, "{kept:#?}");
        assert!(
            kept.iter().all(|l| l.starts_with("[host-wide] ")),
            "{kept:#?}"
        );
        assert!(kept[0].contains("WARNING: CPU: 1 PID: 5151"));
        assert!(kept[5].contains("<TASK>"));
        assert!(kept[8].contains("---[ end trace"));
        assert!(kept[9].contains("soft lockup"));
    }

    #[test]
    fn the_records_caller_ties_a_message_when_the_kernel_gives_one() {
        let kept = classify_all(&[
            "6,400,8000,-,caller=T4245;kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x10040 cpl=0 cr3=0x3000",
            "6,401,8001,-,caller=T5151;kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x3 cpl=0 cr3=0x0",
            "6,402,8002,-,caller=C1;kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x3 cpl=0 cr3=0x0",
        ]);
        assert_eq!(
            kept,
            ["[this VM] kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x10040 cpl=0 cr3=0x3000"]
        );
    }

    #[test]
    fn a_claimed_thread_stays_this_process_after_it_ends() {
        let tid = std::thread::spawn(|| {
            claim_this_thread();
            // SAFETY: gettid takes no arguments and cannot fail.
            unsafe { libc::gettid() as u32 }
        })
        .join()
        .unwrap();
        // In a container's own PID namespace no PID can be trusted.
        let global = pids_are_global();
        assert_eq!(is_this_process(tid), global);
        assert_eq!(is_this_process(std::process::id()), global);
        // PID 1 is init's, never a test's.
        assert!(!is_this_process(1));
    }
}
