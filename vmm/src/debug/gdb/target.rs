//! The guest as GDB sees it (`gdbstub`'s `Target`): each vCPU a thread,
//! the register file of [`RegisterFile`] with control registers and EFER,
//! memory by virtual address through the guest's page tables (or by
//! physical address, QEMU's `Qqemu.PhyMemMode`), hardware breakpoints and
//! watchpoints in the debug registers, `int3` breakpoints where the host
//! can stop on them, single-step, and `monitor` commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSingleStep,
    MultiThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
    kvm_guest_debug, kvm_regs,
};
use vm_memory::{Bytes, GuestAddress};

use super::arch::{GuestArch, GuestRegs, RegisterFile, SystemRegs, low_half};
use super::control::{Control, StopEvent};
use super::paging::Paging;
use crate::debug::core_dump::CpuState;
use crate::memory::GuestMemory;

/// The x86 debug registers' four address slots.
const SLOTS: usize = 4;
const INT3: u8 = 0xcc;

/// What a debug-register slot watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Exec(u64),
    Watch {
        addr: u64,
        len: u64,
        kind: WatchKind,
    },
}

/// How a vCPU goes on when resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// GDB said nothing of it: it continues, or with scheduler locking,
    /// stays stopped.
    Unsaid,
    Continue,
    Step,
}

/// GDB's view of the VM.
pub struct GuestTarget {
    control: Arc<Control>,
    memory: GuestMemory,
    vcpus: usize,
    slots: [Option<Slot>; SLOTS],
    /// `int3` breakpoints: virtual address -> (physical address, the byte
    /// it replaced).
    sw: BTreeMap<u64, (u64, u8)>,
    resume: Vec<Resume>,
    /// GDB's scheduler locking: unmentioned vCPUs stay stopped.
    locked: bool,
    exit_code: Arc<Mutex<Option<u8>>>,
    registers: RegisterFile,
    /// Memory addresses are guest-physical (QEMU's `Qqemu.PhyMemMode:1`,
    /// `monitor phys on`).
    physical: Arc<AtomicBool>,
}

fn tid(cpu: usize) -> Tid {
    Tid::new(cpu + 1).unwrap_or(Tid::new(1).expect("1 is not 0"))
}

fn cpu_of(tid: Tid) -> usize {
    tid.get() - 1
}

impl GuestTarget {
    /// GDB's view of a VM of `vcpus` vCPUs.
    pub fn new(
        control: Arc<Control>,
        memory: GuestMemory,
        vcpus: usize,
        exit_code: Arc<Mutex<Option<u8>>>,
        registers: RegisterFile,
        physical: Arc<AtomicBool>,
    ) -> Self {
        GuestTarget {
            registers,
            physical,
            control,
            memory,
            vcpus,
            slots: [None; SLOTS],
            sw: BTreeMap::new(),
            resume: vec![Resume::Unsaid; vcpus],
            locked: false,
            exit_code,
        }
    }

    /// The vCPU threads' parking.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// How many vCPUs (GDB threads).
    pub fn vcpus(&self) -> usize {
        self.vcpus
    }

    /// Whether memory addresses are guest-physical.
    pub fn physical(&self) -> bool {
        self.physical.load(Ordering::Relaxed)
    }

    /// Makes memory addresses guest-physical, or virtual again.
    pub fn set_physical(&mut self, on: bool) {
        self.physical.store(on, Ordering::Relaxed);
    }

    /// What holds each breakpoint, for `monitor breakpoints`.
    pub fn breakpoints(&self) -> String {
        let mut out = String::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let what = match slot {
                None => "free".to_string(),
                Some(Slot::Exec(addr)) => format!("breakpoint at {addr:#x}"),
                Some(Slot::Watch { addr, len, kind }) => {
                    format!("{kind:?} watchpoint on {len} byte(s) at {addr:#x}")
                }
            };
            out.push_str(&format!("DR{i}: {what}\n"));
        }
        for addr in self.sw.keys() {
            out.push_str(&format!("int3 at {addr:#x}\n"));
        }
        match super::int3::usable() {
            Ok(()) => out.push_str("int3 breakpoints work on this host (used once DR0-DR3 are taken)"),
            Err(why) => out.push_str(&format!(
                "int3 breakpoints are not used on this host: {why}; breakpoints beyond four are refused"
            )),
        }
        out
    }

    /// The guest's exit code, once the run is over.
    pub fn exit_code(&self) -> u8 {
        self.exit_code.lock().map(|c| c.unwrap_or(0)).unwrap_or(0)
    }

    /// Stops every vCPU; false when the run ended instead.
    pub fn stop_world(&self) -> bool {
        self.control.request_stop();
        self.control
            .wait_all_parked(std::time::Duration::from_secs(10))
    }

    /// What GDB is told about a vCPU's debug exit.
    pub fn stop_reason(
        &self,
        cpu: u32,
        event: StopEvent,
    ) -> gdbstub::stub::MultiThreadStopReason<u64> {
        use gdbstub::stub::MultiThreadStopReason as Stop;
        let tid = tid(cpu as usize);
        let StopEvent::Debug { exception, dr6 } = event;
        if exception == 3 {
            return Stop::SwBreak(tid);
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if dr6 & (1 << i) == 0 {
                continue;
            }
            match slot {
                Some(Slot::Exec(_)) => return Stop::HwBreak(tid),
                Some(Slot::Watch { addr, kind, .. }) => {
                    return Stop::Watch {
                        tid,
                        kind: *kind,
                        addr: *addr,
                    };
                }
                None => {}
            }
        }
        // No slot's bit: a single step (DR6.BS), or a trap GDB did not set.
        Stop::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        }
    }

    /// KVM_SET_GUEST_DEBUG for vCPU `cpu`: the breakpoints and watchpoints,
    /// and single-step when it is to step.
    fn guest_debug(&self, cpu: usize) -> kvm_guest_debug {
        let mut debug = kvm_guest_debug::default();
        let mut dr7 = 0u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let (addr, rw, len) = match *slot {
                Slot::Exec(addr) => (addr, 0b00, 0b00),
                Slot::Watch { addr, len, kind } => {
                    let rw = match kind {
                        WatchKind::Write => 0b01,
                        // x86 has no read-only watch: reads and writes.
                        WatchKind::Read | WatchKind::ReadWrite => 0b11,
                    };
                    let len = match len {
                        1 => 0b00,
                        2 => 0b01,
                        8 => 0b10,
                        _ => 0b11,
                    };
                    (addr, rw, len)
                }
            };
            debug.arch.debugreg[i] = addr;
            dr7 |= 1 << (i * 2) | (rw | len << 2) << (16 + i * 4);
        }
        debug.arch.debugreg[7] = dr7;
        debug.control = KVM_GUESTDBG_ENABLE;
        if dr7 != 0 {
            debug.control |= KVM_GUESTDBG_USE_HW_BP;
        }
        // Only while GDB has int3 breakpoints: otherwise the guest's own
        // int3 (exception tests use it) must reach the guest.
        if !self.sw.is_empty() {
            debug.control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if self.resume.get(cpu) == Some(&Resume::Step) {
            debug.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        debug
    }

    /// Clears every breakpoint from the vCPUs and lets the guest run on:
    /// what a detach leaves.
    pub fn detach(&mut self) {
        for (gva, (gpa, byte)) in std::mem::take(&mut self.sw) {
            let _ = self.memory.write_obj(byte, GuestAddress(gpa));
            log::debug!("gdb: removed the breakpoint at {gva:#x}");
        }
        self.slots = [None; SLOTS];
        for cpu in 0..self.vcpus {
            self.control.on_vcpu(cpu, |fd| {
                let _ = fd.set_guest_debug(&kvm_guest_debug::default());
            });
        }
        self.control.resume();
    }

    fn paging(&self, cpu: usize) -> Result<Paging, TargetError<&'static str>> {
        self.control
            .on_vcpu(cpu, |fd| fd.get_sregs().ok())
            .flatten()
            .map(|s| Paging {
                cr0: s.cr0,
                cr3: s.cr3,
                cr4: s.cr4,
                efer: s.efer,
            })
            .ok_or(TargetError::NonFatal)
    }

    /// Calls `f(gpa, offset_in_data, len)` for each physically contiguous
    /// piece of `len` bytes at `gva` (a physical address itself in
    /// physical mode); stops at the first unmapped page.
    fn each_piece(
        &self,
        cpu: usize,
        gva: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> bool,
    ) -> Result<usize, TargetError<&'static str>> {
        let paging = if self.physical.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.paging(cpu)?)
        };
        let mut done = 0;
        while done < len {
            let at = gva.wrapping_add(done as u64);
            let piece = match &paging {
                Some(paging) => paging.translate(&self.memory, at),
                None => Some((at, 0x1000 - (at & 0xfff))),
            };
            let Some((gpa, room)) = piece else {
                break;
            };
            let n = (len - done).min(room as usize);
            if !f(gpa, done, n) {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

impl Target for GuestTarget {
    type Arch = GuestArch;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl TargetDescriptionXmlOverride for GuestTarget {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let xml = self.registers.target_xml();
        let xml = xml.as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
        let n = (xml.len() - start).min(length).min(buf.len());
        buf[..n].copy_from_slice(&xml[start..start + n]);
        Ok(n)
    }
}

impl MonitorCmd for GuestTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let text = String::from_utf8_lossy(cmd);
        let said = super::monitor::run(self, text.trim());
        for line in said.lines() {
            gdbstub::outputln!(out, "{line}");
        }
        Ok(())
    }
}

impl MultiThreadBase for GuestTarget {
    fn read_registers(&mut self, regs: &mut GuestRegs, tid: Tid) -> TargetResult<(), Self> {
        let read = self
            .control
            .on_vcpu(cpu_of(tid), |fd| {
                Some((CpuState::read(fd)?, fd.get_fpu().ok()))
            })
            .flatten();
        let Some((state, fpu)) = read else {
            return Err(TargetError::NonFatal);
        };
        let (r, s) = (&state.regs, &state.sregs);
        regs.file = self.registers;
        let core = &mut regs.core;
        core.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        core.rip = r.rip;
        core.eflags = r.rflags as u32;
        core.segments.cs = u32::from(s.cs.selector);
        core.segments.ss = u32::from(s.ss.selector);
        core.segments.ds = u32::from(s.ds.selector);
        core.segments.es = u32::from(s.es.selector);
        core.segments.fs = u32::from(s.fs.selector);
        core.segments.gs = u32::from(s.gs.selector);
        if let Some(fpu) = fpu {
            for (xmm, bytes) in core.xmm.iter_mut().zip(fpu.xmm.iter()) {
                *xmm = u128::from_le_bytes(*bytes);
            }
            core.mxcsr = fpu.mxcsr;
        }
        regs.system = SystemRegs {
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            k_gs_base: state.kernel_gs_base,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
        };
        Ok(())
    }

    /// Writes the general registers, and the control registers, EFER and
    /// segment bases when GDB changed them (`set $cr0 = ...`); with the
    /// i386 file, only the low halves.
    fn write_registers(&mut self, regs: &GuestRegs, tid: Tid) -> TargetResult<(), Self> {
        let narrow = regs.file == RegisterFile::I386;
        let (g, rip, rflags, new) = (
            regs.core.regs,
            regs.core.rip,
            u64::from(regs.core.eflags),
            regs.system,
        );
        let written = self.control.on_vcpu(cpu_of(tid), move |fd| {
            let Ok(old) = fd.get_regs() else {
                return false;
            };
            let merge = |old: u64, new: u64| if narrow { low_half(old, new) } else { new };
            let r = kvm_regs {
                rax: merge(old.rax, g[0]),
                rbx: merge(old.rbx, g[1]),
                rcx: merge(old.rcx, g[2]),
                rdx: merge(old.rdx, g[3]),
                rsi: merge(old.rsi, g[4]),
                rdi: merge(old.rdi, g[5]),
                rbp: merge(old.rbp, g[6]),
                rsp: merge(old.rsp, g[7]),
                r8: if narrow { old.r8 } else { g[8] },
                r9: if narrow { old.r9 } else { g[9] },
                r10: if narrow { old.r10 } else { g[10] },
                r11: if narrow { old.r11 } else { g[11] },
                r12: if narrow { old.r12 } else { g[12] },
                r13: if narrow { old.r13 } else { g[13] },
                r14: if narrow { old.r14 } else { g[14] },
                r15: if narrow { old.r15 } else { g[15] },
                rip: merge(old.rip, rip),
                rflags: merge(old.rflags, rflags),
            };
            if fd.set_regs(&r).is_err() {
                return false;
            }
            let Ok(mut s) = fd.get_sregs() else {
                return false;
            };
            let before = s;
            s.fs.base = merge(s.fs.base, new.fs_base);
            s.gs.base = merge(s.gs.base, new.gs_base);
            s.cr0 = merge(s.cr0, new.cr0);
            s.cr2 = merge(s.cr2, new.cr2);
            s.cr3 = merge(s.cr3, new.cr3);
            s.cr4 = merge(s.cr4, new.cr4);
            s.cr8 = merge(s.cr8, new.cr8);
            s.efer = merge(s.efer, new.efer);
            // Only when GDB changed one: KVM refuses inconsistent values.
            let same = (before.fs.base, before.gs.base, before.cr0, before.cr2)
                == (s.fs.base, s.gs.base, s.cr0, s.cr2)
                && (before.cr3, before.cr4, before.cr8, before.efer)
                    == (s.cr3, s.cr4, s.cr8, s.efer);
            same || fd.set_sregs(&s).is_ok()
        });
        match written {
            Some(true) => Ok(()),
            _ => Err(TargetError::NonFatal),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let memory = self.memory.clone();
        let n = self.each_piece(cpu_of(tid), start, data.len(), |gpa, at, len| {
            memory
                .read_slice(&mut data[at..at + len], GuestAddress(gpa))
                .is_ok()
        })?;
        // Nothing readable at all is an error; a partial read is fine.
        if n == 0 && !data.is_empty() {
            return Err(TargetError::NonFatal);
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let memory = self.memory.clone();
        let n = self.each_piece(cpu_of(tid), start, data.len(), |gpa, at, len| {
            memory
                .write_slice(&data[at..at + len], GuestAddress(gpa))
                .is_ok()
        })?;
        if n == data.len() {
            Ok(())
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for cpu in 0..self.vcpus {
            register(tid(cpu));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for GuestTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        for cpu in 0..self.vcpus {
            let debug = self.guest_debug(cpu);
            let set = self
                .control
                .on_vcpu(cpu, move |fd| fd.set_guest_debug(&debug).is_ok());
            if set == Some(false) {
                return Err("KVM_SET_GUEST_DEBUG failed");
            }
        }
        let which: Vec<bool> = self
            .resume
            .iter()
            .map(|r| !(self.locked && *r == Resume::Unsaid))
            .collect();
        self.control.resume_only(&which);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.resume.fill(Resume::Unsaid);
        self.locked = false;
        Ok(())
    }

    fn support_scheduler_locking(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::multithread::MultiThreadSchedulerLockingOps<'_, Self>>
    {
        Some(self)
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, signal, Resume::Continue)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl gdbstub::target::ext::base::multithread::MultiThreadSchedulerLocking for GuestTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for GuestTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, signal, Resume::Step)
    }
}

impl Breakpoints for GuestTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GuestTarget {
    /// A debug register while one is free, `int3` after that where the
    /// host can stop on one (see [`super::int3`]): a debug register works
    /// on every host and leaves guest memory untouched. With neither, the
    /// breakpoint is refused (GDB says it cannot insert it) rather than
    /// written where it would end the guest.
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw.contains_key(&addr) || self.slots.contains(&Some(Slot::Exec(addr))) {
            return Ok(true);
        }
        if self.take_slot(Slot::Exec(addr)) {
            return Ok(true);
        }
        if let Err(why) = super::int3::usable() {
            log::warn!(
                "gdb: breakpoint at {addr:#x} refused: the {SLOTS} debug registers are taken and {why}"
            );
            return Ok(false);
        }
        let paging = self.paging(0)?;
        let Some((gpa, _)) = paging.translate(&self.memory, addr) else {
            return Ok(false);
        };
        let Ok(byte) = self.memory.read_obj::<u8>(GuestAddress(gpa)) else {
            return Ok(false);
        };
        if self.memory.write_obj(INT3, GuestAddress(gpa)).is_err() {
            return Ok(false);
        }
        self.sw.insert(addr, (gpa, byte));
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some((gpa, byte)) = self.sw.remove(&addr) else {
            return Ok(self.free_slot(|s| s == Slot::Exec(addr)));
        };
        Ok(self.memory.write_obj(byte, GuestAddress(gpa)).is_ok())
    }
}

impl HwBreakpoint for GuestTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.take_slot(Slot::Exec(addr)))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.free_slot(|s| s == Slot::Exec(addr)))
    }
}

impl HwWatchpoint for GuestTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // The debug registers watch 1, 2, 4 or 8 aligned bytes.
        if !matches!(len, 1 | 2 | 4 | 8) || !addr.is_multiple_of(len) {
            return Ok(false);
        }
        Ok(self.take_slot(Slot::Watch { addr, len, kind }))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.free_slot(|s| s == Slot::Watch { addr, len, kind }))
    }
}

impl GuestTarget {
    fn set_action(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
        how: Resume,
    ) -> Result<(), &'static str> {
        if signal.is_some() {
            return Err("a guest cannot be sent a signal");
        }
        if let Some(action) = self.resume.get_mut(cpu_of(tid)) {
            *action = how;
        }
        Ok(())
    }

    fn take_slot(&mut self, slot: Slot) -> bool {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    fn free_slot(&mut self, matches: impl Fn(Slot) -> bool) -> bool {
        match self.slots.iter_mut().find(|s| s.is_some_and(&matches)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }
}
