//! GDB's `monitor` commands: what the register file cannot say (each
//! vCPU's mode, its segments and descriptor tables) and switches GDB has
//! no command for (physical addresses).

use std::fmt::Write as _;

use kvm_bindings::kvm_segment;

use super::target::GuestTarget;
use crate::boot::long_mode;
use crate::debug::core_dump::CpuState;

const HELP: &str = "\
ktvmm monitor commands:
  mode             each vCPU's mode (real, protected, long...) and code size
  regs             each vCPU's control registers, EFER, segments, GDTR, IDTR
  phys [on|off]    memory addresses are guest-physical (QEMU's
                   'maint packet Qqemu.PhyMemMode:1') or virtual (default)
  breakpoints      what holds each breakpoint, and whether int3 works here";

/// Runs `command`; what it says for GDB's console.
pub fn run(target: &mut GuestTarget, command: &str) -> String {
    let mut words = command.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None | Some("help"), None, None) => HELP.to_string(),
        (Some("mode"), None, None) => {
            each_vcpu(target, |cpu, s| format!("vCPU {cpu}: {}", mode_line(s)))
        }
        (Some("regs"), None, None) => each_vcpu(target, regs),
        (Some("phys"), None, None) => phys_line(target.physical()),
        (Some("phys"), Some(on @ ("on" | "off")), None) => {
            target.set_physical(on == "on");
            phys_line(target.physical())
        }
        (Some("breakpoints"), None, None) => target.breakpoints(),
        _ => format!("unknown monitor command '{command}'\n{HELP}"),
    }
}

fn phys_line(physical: bool) -> String {
    if physical {
        "memory addresses are guest-physical".to_string()
    } else {
        "memory addresses are virtual (through the selected vCPU's page tables)".to_string()
    }
}

fn each_vcpu(target: &GuestTarget, say: impl Fn(usize, &CpuState) -> String) -> String {
    let mut out = String::new();
    for cpu in 0..target.vcpus() {
        match target.control().on_vcpu(cpu, CpuState::read).flatten() {
            Some(state) => out.push_str(&say(cpu, &state)),
            None => {
                let _ = write!(out, "vCPU {cpu}: registers unreadable");
            }
        }
        out.push('\n');
    }
    out
}

/// `long mode, 64-bit code` and the like.
fn mode_line(state: &CpuState) -> String {
    let s = &state.sregs;
    let mode = long_mode::mode(s.cr0, s.efer, s.cs.l);
    let code = match (s.cs.l, s.cs.db) {
        (1, _) => 64,
        (_, 1) => 32,
        _ => 16,
    };
    let paging = if s.cr0 & crate::boot::long_mode::CR0_PG != 0 {
        "paging on"
    } else {
        "paging off"
    };
    format!(
        "{mode} mode, {code}-bit code, {paging}, RIP {:#x}",
        state.regs.rip
    )
}

fn segment(name: &str, seg: &kvm_segment) -> String {
    format!(
        "{name:<4}{:#06x} base {:#x} limit {:#x} type {:#x}{}{}{}",
        seg.selector,
        seg.base,
        seg.limit,
        seg.type_,
        if seg.l == 1 { " L" } else { "" },
        if seg.db == 1 { " D" } else { "" },
        if seg.unusable == 1 || seg.present == 0 {
            " unusable"
        } else {
            ""
        },
    )
}

fn regs(cpu: usize, state: &CpuState) -> String {
    let s = &state.sregs;
    let mut out = format!("vCPU {cpu}: {}\n", mode_line(state));
    let _ = writeln!(
        out,
        "  CR0 {:#x}  CR2 {:#x}  CR3 {:#x}  CR4 {:#x}  CR8 {:#x}  EFER {:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer
    );
    for (name, seg) in [
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("ES", &s.es),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("TR", &s.tr),
        ("LDT", &s.ldt),
    ] {
        let _ = writeln!(out, "  {}", segment(name, seg));
    }
    let _ = write!(
        out,
        "  GDTR {:#x} limit {:#x}  IDTR {:#x} limit {:#x}  KERNEL_GS_BASE {:#x}  APIC base {:#x}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit, state.kernel_gs_base, s.apic_base
    );
    out
}
