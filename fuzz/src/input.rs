//! One fuzz input: the VM's shape, each vCPU's starting state, a guest
//! program, and the KVM calls to make, with guest runs among them.
//!
//! Every field is a plain value (no KVM structures) so an input serialises
//! to a reproducer as it is, derives `Arbitrary` for libFuzzer, and is
//! drawn from a seed by [`Input::generate`]. Out-of-range values (a vCPU
//! index past the last vCPU, a register number past the last register)
//! are folded into range where they are used, so any value is an input.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

use super::draw::{msr, value};
use super::program::{self, MAX_PROGRAM, Mode};
use super::rng::SplitMix64;

/// vCPUs an input may have (KVM's recommended count on the machines here).
pub const MAX_VCPUS: usize = 2;
/// Operations kept at most.
pub const MAX_OPS: usize = 48;

/// The whole input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Input {
    /// The VM.
    pub shape: Shape,
    /// Each vCPU's starting state (at least one is created).
    pub vcpus: Vec<VcpuSetup>,
    /// Guest code, placed at the code address every vCPU starts at.
    pub program: Vec<u8>,
    /// What to do, in order, once the VM is built.
    pub ops: Vec<Op>,
}

/// The VM's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Shape {
    /// An in-kernel irqchip (PIC, IOAPIC, LAPIC) and with it every
    /// platform and test device; without it, the devices that need no
    /// interrupt wiring.
    pub irqchip: bool,
    /// Extra 64 KiB memory slots above RAM (at most 2).
    pub extra_slots: u8,
}

/// A vCPU's starting state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct VcpuSetup {
    /// The mode.
    pub mode: Mode,
    /// Start at CPL 3 (protected and long modes only).
    pub user: bool,
    /// RAX, RBX, RCX, RDX, RSI, RDI at entry.
    pub gprs: [u64; 6],
    /// Bits flipped in the mode's CR0 (0: the architectural value).
    pub cr0_flip: u32,
    /// Bits flipped in the mode's CR4.
    pub cr4_flip: u32,
    /// Bits flipped in the mode's EFER.
    pub efer_flip: u16,
    /// MSRs written before the first run.
    pub msrs: Vec<(u32, u64)>,
    /// CPUID edits: (leaf, register 0-3 = EAX..EDX, bits flipped).
    pub cpuid: Vec<(u32, u8, u32)>,
}

/// One step of an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Op {
    /// `KVM_RUN` vCPU `cpu` until it ends its run or has exited `exits`
    /// times to the VMM.
    Run {
        /// The vCPU.
        cpu: u8,
        /// Exits handled at most.
        exits: u8,
    },
    /// Read-modify-write of one general register (0-15 GPRs, 16 RIP,
    /// 17 RFLAGS) through `KVM_GET_REGS`/`KVM_SET_REGS`, then read back.
    SetReg {
        /// The vCPU.
        cpu: u8,
        /// The register.
        reg: u8,
        /// Its new value.
        value: u64,
    },
    /// `KVM_GET_REGS`.
    GetRegs {
        /// The vCPU.
        cpu: u8,
    },
    /// Read-modify-write of one special-register field through
    /// `KVM_GET_SREGS`/`KVM_SET_SREGS` (see `exec::SREG_FIELDS`).
    SetSreg {
        /// The vCPU.
        cpu: u8,
        /// The field.
        field: u8,
        /// Its new value.
        value: u64,
    },
    /// `KVM_GET_SREGS`.
    GetSregs {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_SET_MSRS` of one MSR, then `KVM_GET_MSRS` of it.
    SetMsr {
        /// The vCPU.
        cpu: u8,
        /// The MSR.
        index: u32,
        /// The value.
        value: u64,
    },
    /// `KVM_GET_MSRS` of one MSR.
    GetMsr {
        /// The vCPU.
        cpu: u8,
        /// The MSR.
        index: u32,
    },
    /// `KVM_SET_CPUID2` with one more edit (after a run KVM refuses changes).
    SetCpuid {
        /// The vCPU.
        cpu: u8,
        /// The leaf.
        leaf: u32,
        /// EAX..EDX as 0-3.
        reg: u8,
        /// Bits flipped.
        flip: u32,
    },
    /// `KVM_GET_CPUID2`.
    GetCpuid {
        /// The vCPU.
        cpu: u8,
    },
    /// One LAPIC register (its 16-byte slot number) changed through
    /// `KVM_GET_LAPIC`/`KVM_SET_LAPIC`; the timer registers are left alone
    /// so that no wall-clock interrupt makes a run unrepeatable.
    SetLapic {
        /// The vCPU.
        cpu: u8,
        /// The register slot (0-63).
        reg: u8,
        /// Its value.
        value: u32,
    },
    /// `KVM_GET_LAPIC`.
    GetLapic {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_SET_XCRS` of XCR0.
    SetXcr0 {
        /// The vCPU.
        cpu: u8,
        /// The value.
        value: u64,
    },
    /// `KVM_GET_XCRS`.
    GetXcrs {
        /// The vCPU.
        cpu: u8,
    },
    /// One of DR0-3, DR6, DR7 (0-5) through `KVM_GET/SET_DEBUGREGS`.
    SetDebugReg {
        /// The vCPU.
        cpu: u8,
        /// The register.
        reg: u8,
        /// Its value.
        value: u64,
    },
    /// `KVM_GET_DEBUGREGS`.
    GetDebugRegs {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_SET_VCPU_EVENTS`: an exception, interrupt or NMI to inject.
    SetEvents {
        /// The vCPU.
        cpu: u8,
        /// 0 exception, 1 interrupt, 2 NMI, 3 clear everything.
        kind: u8,
        /// The vector.
        vector: u8,
        /// Whether an exception carries an error code.
        error_code: bool,
    },
    /// `KVM_GET_VCPU_EVENTS`.
    GetEvents {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_SET_MP_STATE`.
    SetMpState {
        /// The vCPU.
        cpu: u8,
        /// The state.
        state: u8,
    },
    /// `KVM_GET_MP_STATE`.
    GetMpState {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_IRQ_LINE`.
    IrqLine {
        /// The GSI.
        irq: u8,
        /// Its level.
        level: bool,
    },
    /// `KVM_SIGNAL_MSI`.
    SignalMsi {
        /// The address (low 32 bits).
        address: u32,
        /// The data.
        data: u32,
    },
    /// `KVM_SET_USER_MEMORY_REGION`: slot 1-3 (re)placed, or deleted when
    /// `pages` is 0; slot 0 (RAM) only moved or made read-only.
    SetSlot {
        /// The slot.
        slot: u8,
        /// Guest-physical address in 64 KiB units.
        gpa: u16,
        /// Size in 4 KiB pages.
        pages: u8,
        /// Read-only (`KVM_MEM_READONLY`).
        readonly: bool,
        /// Dirty logging (`KVM_MEM_LOG_DIRTY_PAGES`).
        dirty_log: bool,
    },
    /// `KVM_SET_GUEST_DEBUG`.
    GuestDebug {
        /// The vCPU.
        cpu: u8,
        /// Single-step.
        single_step: bool,
        /// Hardware breakpoint at this address (DR0), or none when 0.
        breakpoint: u64,
    },
    /// Ask for `KVM_EXIT_IRQ_WINDOW_OPEN` on the next run (no irqchip).
    RequestIrqWindow {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)`: unknown and refused
    /// MSR accesses exit to the VMM.
    UserSpaceMsr,
    /// `KVM_NMI`.
    Nmi {
        /// The vCPU.
        cpu: u8,
    },
    /// `KVM_TRANSLATE`.
    Translate {
        /// The vCPU.
        cpu: u8,
        /// The linear address.
        address: u64,
    },
}

fn cpu(rng: &mut SplitMix64, cpus: usize) -> u8 {
    rng.below(cpus) as u8
}

impl Input {
    /// The input a seeded generator draws: mostly well-formed, sometimes
    /// odd, so that runs get past setup and still reach the edges.
    pub fn generate(rng: &mut SplitMix64) -> Self {
        let cpus = if rng.one_in(4) { 2 } else { 1 };
        let shape = Shape {
            irqchip: !rng.one_in(3),
            extra_slots: if rng.one_in(4) { rng.below(3) as u8 } else { 0 },
        };
        let vcpus: Vec<VcpuSetup> = (0..cpus).map(|_| VcpuSetup::generate(rng)).collect();
        let program = program::generate(rng, vcpus[0].mode);
        let count = 1 + rng.below(10);
        let mut ops: Vec<Op> = (0..count).map(|_| Op::generate(rng, cpus)).collect();
        // Every input runs its guest at least once, and usually last.
        if !ops.iter().any(|op| matches!(op, Op::Run { .. })) || rng.below(3) != 0 {
            ops.push(Op::Run {
                cpu: 0,
                exits: 16 + rng.below(48) as u8,
            });
        }
        Input {
            shape,
            vcpus,
            program,
            ops,
        }
    }

    /// The input cut down to the sizes the executor takes.
    pub fn clamped(mut self) -> Self {
        self.vcpus.truncate(MAX_VCPUS);
        if self.vcpus.is_empty() {
            self.vcpus.push(VcpuSetup::default());
        }
        for vcpu in &mut self.vcpus {
            vcpu.msrs.truncate(8);
            vcpu.cpuid.truncate(8);
        }
        self.program.truncate(MAX_PROGRAM);
        self.ops.truncate(MAX_OPS);
        self.shape.extra_slots = self.shape.extra_slots.min(2);
        self
    }
}

impl Default for VcpuSetup {
    fn default() -> Self {
        VcpuSetup {
            mode: Mode::Long64,
            user: false,
            gprs: [0; 6],
            cr0_flip: 0,
            cr4_flip: 0,
            efer_flip: 0,
            msrs: Vec::new(),
            cpuid: Vec::new(),
        }
    }
}

impl VcpuSetup {
    fn generate(rng: &mut SplitMix64) -> Self {
        let mode = rng.pick(&Mode::ALL);
        let user = mode != Mode::Real && rng.one_in(4);
        let mut gprs = [0u64; 6];
        for g in &mut gprs {
            *g = value(rng);
        }
        let flip32 = |rng: &mut SplitMix64| {
            if rng.one_in(12) {
                1u32 << rng.below(32)
            } else {
                0
            }
        };
        let cr0_flip = flip32(rng);
        let cr4_flip = flip32(rng);
        let efer_flip = if rng.one_in(16) {
            1u16 << rng.below(16)
        } else {
            0
        };
        let mut msrs = Vec::new();
        for _ in 0..rng.below(3) {
            if rng.one_in(2) {
                msrs.push((msr(rng), value(rng)));
            }
        }
        let cpuid = if rng.one_in(6) {
            vec![(
                rng.pick(&[0, 1, 7, 0xd, 0x8000_0001, 0x4000_0001]),
                rng.below(4) as u8,
                1 << rng.below(32),
            )]
        } else {
            Vec::new()
        };
        VcpuSetup {
            mode,
            user,
            gprs,
            cr0_flip,
            cr4_flip,
            efer_flip,
            msrs,
            cpuid,
        }
    }
}

impl Op {
    fn generate(rng: &mut SplitMix64, cpus: usize) -> Self {
        let c = cpu(rng, cpus);
        match rng.below(30) {
            0..=5 => Op::Run {
                cpu: c,
                exits: 1 + rng.below(32) as u8,
            },
            6 => Op::SetReg {
                cpu: c,
                reg: rng.below(18) as u8,
                value: value(rng),
            },
            7 => Op::GetRegs { cpu: c },
            8 | 9 => Op::SetSreg {
                cpu: c,
                field: rng.below(16) as u8,
                value: value(rng),
            },
            10 => Op::GetSregs { cpu: c },
            11 | 12 => Op::SetMsr {
                cpu: c,
                index: msr(rng),
                value: value(rng),
            },
            13 => Op::GetMsr {
                cpu: c,
                index: msr(rng),
            },
            14 => Op::SetCpuid {
                cpu: c,
                leaf: rng.pick(&[0, 1, 7, 0xd, 0x8000_0001]),
                reg: rng.below(4) as u8,
                flip: 1 << rng.below(32),
            },
            15 => Op::GetCpuid { cpu: c },
            16 => Op::SetLapic {
                cpu: c,
                reg: rng.pick(&[2, 3, 8, 0xb, 0xd, 0xe, 0xf, 0x28, 0x30, 0x31, 0x35]),
                value: value(rng) as u32,
            },
            17 => Op::GetLapic { cpu: c },
            18 => Op::SetXcr0 {
                cpu: c,
                value: rng.pick(&[1, 3, 7, 0x207, 0, 2, 0xe7]),
            },
            19 => Op::GetXcrs { cpu: c },
            20 => Op::SetDebugReg {
                cpu: c,
                reg: rng.below(6) as u8,
                value: value(rng),
            },
            21 => Op::GetDebugRegs { cpu: c },
            22 => Op::SetEvents {
                cpu: c,
                kind: rng.below(4) as u8,
                vector: rng.pick(&[0, 1, 2, 3, 6, 8, 13, 14, 18, 32, 0x80, 0xff]),
                error_code: rng.one_in(2),
            },
            23 => Op::GetEvents { cpu: c },
            24 => {
                if rng.one_in(2) {
                    Op::SetMpState {
                        cpu: c,
                        state: rng.below(9) as u8,
                    }
                } else {
                    Op::GetMpState { cpu: c }
                }
            }
            25 => {
                if rng.one_in(2) {
                    Op::IrqLine {
                        irq: rng.below(26) as u8,
                        level: rng.one_in(2),
                    }
                } else {
                    Op::SignalMsi {
                        address: 0xfee0_0000 | (rng.below(4) as u32) << 12,
                        data: rng.pick(&[0x20, 0x30, 0x4000 | 0x40, 0x400, 0x500, 0x600])
                            | rng.below(0x100) as u32,
                    }
                }
            }
            26 => Op::SetSlot {
                slot: rng.below(4) as u8,
                gpa: rng.pick(&[0x30, 0x40, 0x41, 0x50, 0, 0x10]),
                pages: rng.pick(&[0, 1, 4, 16]),
                readonly: rng.one_in(3),
                dirty_log: rng.one_in(4),
            },
            27 => Op::GuestDebug {
                cpu: c,
                single_step: rng.one_in(2),
                breakpoint: if rng.one_in(2) {
                    0
                } else {
                    program::CODE_ADDR + rng.below(32) as u64
                },
            },
            28 => {
                if rng.one_in(2) {
                    Op::RequestIrqWindow { cpu: c }
                } else {
                    Op::UserSpaceMsr
                }
            }
            _ => {
                if rng.one_in(2) {
                    Op::Nmi { cpu: c }
                } else {
                    Op::Translate {
                        cpu: c,
                        address: program::CODE_ADDR + value(rng) % 0x40_0000,
                    }
                }
            }
        }
    }

    /// The vCPU the operation is about, if any.
    pub fn cpu(&self) -> Option<u8> {
        match *self {
            Op::Run { cpu, .. }
            | Op::SetReg { cpu, .. }
            | Op::GetRegs { cpu }
            | Op::SetSreg { cpu, .. }
            | Op::GetSregs { cpu }
            | Op::SetMsr { cpu, .. }
            | Op::GetMsr { cpu, .. }
            | Op::SetCpuid { cpu, .. }
            | Op::GetCpuid { cpu }
            | Op::SetLapic { cpu, .. }
            | Op::GetLapic { cpu }
            | Op::SetXcr0 { cpu, .. }
            | Op::GetXcrs { cpu }
            | Op::SetDebugReg { cpu, .. }
            | Op::GetDebugRegs { cpu }
            | Op::SetEvents { cpu, .. }
            | Op::GetEvents { cpu }
            | Op::SetMpState { cpu, .. }
            | Op::GetMpState { cpu }
            | Op::GuestDebug { cpu, .. }
            | Op::RequestIrqWindow { cpu }
            | Op::Nmi { cpu }
            | Op::Translate { cpu, .. } => Some(cpu),
            Op::IrqLine { .. } | Op::SignalMsi { .. } | Op::SetSlot { .. } | Op::UserSpaceMsr => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_input() {
        let a = Input::generate(&mut SplitMix64::for_item(7, 3));
        let b = Input::generate(&mut SplitMix64::for_item(7, 3));
        assert_eq!(a, b);
        let c = Input::generate(&mut SplitMix64::for_item(7, 4));
        assert_ne!(a, c);
    }

    #[test]
    fn inputs_round_trip_through_json_and_clamp() {
        let input = Input::generate(&mut SplitMix64(1));
        let text = serde_json::to_string(&input).unwrap();
        let back: Input = serde_json::from_str(&text).unwrap();
        assert_eq!(back, input);
        let empty = Input {
            shape: Shape {
                irqchip: false,
                extra_slots: 200,
            },
            vcpus: Vec::new(),
            program: vec![0; 4096],
            ops: Vec::new(),
        }
        .clamped();
        assert_eq!(empty.vcpus.len(), 1);
        assert_eq!(empty.program.len(), MAX_PROGRAM);
        assert_eq!(empty.shape.extra_slots, 2);
    }
}
