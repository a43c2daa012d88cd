//! One fuzz input, as a typed description: the VM's shape, each vCPU's
//! starting state, the guest program, and the ioctls issued around the
//! runs. It is what a reproducer file holds, what `arbitrary` builds for
//! `cargo fuzz`, and what [`Input::generate`] draws from a seed.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

use super::program;
use crate::rng::SplitMix64;

/// Most vCPUs an input has.
pub const MAX_VCPUS: usize = 3;
/// Most ioctl operations after setup.
pub const MAX_OPS: usize = 24;

/// The CPU mode a vCPU starts in.
#[derive(Arbitrary, Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Real mode, CS base 0.
    Real,
    /// 16-bit protected mode, flat segments, paging off.
    Protected16,
    /// 32-bit protected mode, flat segments, paging off.
    Protected32,
    /// 32-bit protected mode with PAE paging over the identity map.
    Paged32,
    /// 64-bit long mode over the identity map.
    Long64,
}

impl Mode {
    /// Every mode, for the generator.
    pub const ALL: [Mode; 5] = [
        Mode::Real,
        Mode::Protected16,
        Mode::Protected32,
        Mode::Paged32,
        Mode::Long64,
    ];

    /// Whether code runs with 16-bit default operand size.
    pub fn is_16bit(self) -> bool {
        matches!(self, Mode::Real | Mode::Protected16)
    }
}

/// How one vCPU starts.
#[derive(Arbitrary, Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct VcpuSetup {
    /// Its mode.
    pub mode: Mode,
    /// Run at CPL 3 (not in real mode).
    pub user: bool,
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8 at entry.
    pub gprs: [u64; 8],
    /// Interrupts enabled at entry.
    pub interrupts: bool,
    /// Where in the program it starts (bytes; taken modulo its length).
    pub entry: u16,
    /// MSRs written before the first run.
    pub msrs: Vec<(u32, u64)>,
    /// A CPUID edit before the first run: leaf, register (0-3), XOR mask.
    pub cpuid_edit: Option<(u32, u8, u32)>,
}

/// One ioctl (or a run) after setup. vCPU and slot numbers are taken
/// modulo what exists, so every value means something.
#[derive(Arbitrary, Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `KVM_RUN` until the vCPU's exit budget or a final exit.
    Run {
        /// Which vCPU.
        vcpu: u8,
    },
    /// `KVM_SET_REGS` with one register changed, then `KVM_GET_REGS`.
    SetReg {
        /// Which vCPU.
        vcpu: u8,
        /// 0-15: a GPR; 16: RIP; 17: RFLAGS.
        reg: u8,
        /// The value.
        value: u64,
    },
    /// `KVM_SET_SREGS` with one field changed, then `KVM_GET_SREGS`.
    SetSreg {
        /// Which vCPU.
        vcpu: u8,
        /// 0 CR0, 1 CR2, 2 CR3, 3 CR4, 4 CR8, 5 EFER, 6 CS selector,
        /// 7 CS attributes, 8 SS attributes, 9 APIC base.
        field: u8,
        /// The value.
        value: u64,
    },
    /// `KVM_SET_MSRS` of one MSR, then `KVM_GET_MSRS` of it.
    SetMsr {
        /// Which vCPU.
        vcpu: u8,
        /// The MSR.
        index: u32,
        /// The value.
        value: u64,
    },
    /// `KVM_GET_MSRS` of one MSR.
    GetMsr {
        /// Which vCPU.
        vcpu: u8,
        /// The MSR.
        index: u32,
    },
    /// `KVM_SET_CPUID2` with one register of one leaf edited.
    SetCpuid {
        /// Which vCPU.
        vcpu: u8,
        /// Leaf, register (0-3), XOR mask.
        edit: (u32, u8, u32),
    },
    /// `KVM_SET_DEBUGREGS` with DR0-3, DR6, DR7, then `KVM_GET_DEBUGREGS`.
    SetDebugRegs {
        /// Which vCPU.
        vcpu: u8,
        /// DR0-DR3.
        db: [u64; 4],
        /// DR7.
        dr7: u64,
    },
    /// `KVM_SET_XCRS` with XCR0, then `KVM_GET_XCRS`.
    SetXcr0 {
        /// Which vCPU.
        vcpu: u8,
        /// The value.
        value: u64,
    },
    /// `KVM_GET_VCPU_EVENTS`, then `KVM_SET_VCPU_EVENTS` injecting an
    /// exception or an NMI.
    InjectEvent {
        /// Which vCPU.
        vcpu: u8,
        /// An exception vector, or `None` for an NMI.
        exception: Option<u8>,
        /// Its error code, if it has one.
        error_code: Option<u32>,
    },
    /// `KVM_SET_MP_STATE`, then `KVM_GET_MP_STATE`.
    SetMpState {
        /// Which vCPU.
        vcpu: u8,
        /// The state (any number).
        state: u32,
    },
    /// `KVM_GET_LAPIC`, one register changed, `KVM_SET_LAPIC` (with an
    /// in-kernel irqchip).
    SetLapic {
        /// Which vCPU.
        vcpu: u8,
        /// Register offset (taken modulo 1 KiB, 16-byte aligned).
        offset: u16,
        /// The value.
        value: u32,
    },
    /// `KVM_IRQ_LINE` (with an in-kernel irqchip).
    IrqLine {
        /// The GSI (any number).
        gsi: u32,
        /// The level.
        level: bool,
    },
    /// `KVM_SIGNAL_MSI` (with an in-kernel irqchip).
    SignalMsi {
        /// The address.
        address: u64,
        /// The data.
        data: u32,
    },
    /// `KVM_INTERRUPT` (without an in-kernel irqchip).
    Interrupt {
        /// Which vCPU.
        vcpu: u8,
        /// The vector.
        vector: u32,
    },
    /// `KVM_NMI`.
    Nmi {
        /// Which vCPU.
        vcpu: u8,
    },
    /// `KVM_SET_USER_MEMORY_REGION` on the extra slot while the vCPUs are
    /// stopped: map it (at a guest address, possibly read-only) or delete
    /// it.
    SetSlot {
        /// Where (page number, taken into a sane range), or `None` to
        /// delete the slot.
        page: Option<u16>,
        /// Read-only (`KVM_MEM_READONLY`).
        read_only: bool,
    },
}

/// Which interrupt controllers KVM provides.
#[derive(Arbitrary, Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub enum Irqchip {
    /// None: the VMM injects interrupts with `KVM_INTERRUPT`.
    None,
    /// `KVM_CREATE_IRQCHIP`: PIC, IOAPIC and LAPICs in the kernel.
    Kernel,
    /// `KVM_CAP_SPLIT_IRQCHIP`: LAPICs in the kernel, the rest not.
    Split,
}

impl Irqchip {
    /// Whether the LAPICs are in the kernel.
    pub fn has_lapic(self) -> bool {
        self != Irqchip::None
    }
}

/// A whole input.
#[derive(Arbitrary, Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct Input {
    /// The interrupt controllers.
    pub irqchip: Irqchip,
    /// RAM size in 64 KiB units (taken into 1..=16).
    pub mem_64k: u8,
    /// The vCPUs (1 to [`MAX_VCPUS`] are used).
    pub vcpus: Vec<VcpuSetup>,
    /// Guest code, copied to the code page (at most 4 KiB are used).
    pub program: Vec<u8>,
    /// What happens after setup.
    pub ops: Vec<Op>,
}

/// MSRs that are interesting to read and write.
pub const MSRS: [u32; 24] = [
    0x10,        // TSC
    0x1b,        // APIC_BASE
    0x3a,        // FEATURE_CONTROL
    0x48,        // SPEC_CTRL
    0x49,        // PRED_CMD
    0x8b,        // BIOS_SIGN_ID
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1d9,       // DEBUGCTL
    0x277,       // PAT
    0x2ff,       // MTRR_DEF_TYPE
    0x6e0,       // TSC_DEADLINE
    0x802,       // x2APIC ID
    0x830,       // x2APIC ICR
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0084, // FMASK
    0xc000_0100, // FS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // KVM wall clock
    0x4b56_4d02, // KVM system time
];

/// Values that tend to sit on edges.
const VALUES: [u64; 12] = [
    0,
    1,
    0xff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_8000_0000_0000,
    0x0000_7fff_ffff_f000,
    0xfee0_0000,
    u64::MAX,
];

fn value(rng: &mut SplitMix64) -> u64 {
    match rng.below(4) {
        0 => rng.next(),
        1 => rng.next() & 0xffff,
        _ => *rng.pick(&VALUES),
    }
}

/// KVM's clock MSRs make KVM write the time into guest memory at the
/// address they are given.
const CLOCK_MSRS: [u32; 4] = [0x11, 0x12, 0x4b56_4d00, 0x4b56_4d01];
/// Where the generator points them: past RAM, so the time KVM would write
/// there cannot change what an input does (stray code can run anywhere in
/// RAM).
pub const CLOCK_AREA: u64 = 0x8000_0000;

/// A value for `msr`.
fn msr_value(rng: &mut SplitMix64, msr: u32) -> u64 {
    if CLOCK_MSRS.contains(&msr) || msr == 0x4b56_4d02 {
        CLOCK_AREA | (rng.next() & 1)
    } else {
        value(rng)
    }
}

fn msr(rng: &mut SplitMix64) -> u32 {
    if rng.one_in(8) {
        rng.next() as u32
    } else {
        *rng.pick(&MSRS)
    }
}

impl VcpuSetup {
    fn generate(rng: &mut SplitMix64, program_len: usize) -> Self {
        let mode = *rng.pick(&Mode::ALL);
        let msrs = (0..rng.below(3))
            .map(|_| {
                let index = msr(rng);
                (index, msr_value(rng, index))
            })
            .collect();
        VcpuSetup {
            mode,
            user: mode != Mode::Real && rng.one_in(3),
            gprs: std::array::from_fn(|_| if rng.one_in(2) { 0 } else { value(rng) }),
            interrupts: rng.one_in(3),
            entry: if rng.one_in(4) {
                rng.below(program_len.max(1)) as u16
            } else {
                0
            },
            msrs,
            cpuid_edit: rng.one_in(6).then(|| {
                (
                    *rng.pick(&[0, 1, 7, 0xd, 0x8000_0001]),
                    rng.below(4) as u8,
                    1 << rng.below(32),
                )
            }),
        }
    }
}

impl Op {
    fn generate(rng: &mut SplitMix64, vcpus: usize, irqchip: bool) -> Self {
        let vcpu = rng.below(vcpus) as u8;
        match rng.below(if irqchip { 16 } else { 14 }) {
            0..=2 => Op::Run { vcpu },
            3 => Op::SetReg {
                vcpu,
                reg: rng.below(18) as u8,
                value: value(rng),
            },
            4 => Op::SetSreg {
                vcpu,
                field: rng.below(10) as u8,
                value: value(rng),
            },
            5 => {
                let index = msr(rng);
                Op::SetMsr {
                    vcpu,
                    index,
                    value: msr_value(rng, index),
                }
            }
            6 => Op::GetMsr {
                vcpu,
                index: msr(rng),
            },
            7 => Op::SetCpuid {
                vcpu,
                edit: (
                    *rng.pick(&[0, 1, 7, 0xd, 0x4000_0000, 0x8000_0001, 0x8000_0008]),
                    rng.below(4) as u8,
                    1 << rng.below(32),
                ),
            },
            8 => Op::SetDebugRegs {
                vcpu,
                db: std::array::from_fn(|_| value(rng)),
                dr7: *rng.pick(&[0x400, 0x401, 0x403, 0x2_0401, 0xffff_0403]),
            },
            9 => Op::SetXcr0 {
                vcpu,
                value: *rng.pick(&[1, 3, 7, 0x7, 0xe7, 0x2, 0x1_0000_0001]),
            },
            10 => Op::InjectEvent {
                vcpu,
                exception: (!rng.one_in(4)).then(|| rng.below(32) as u8),
                error_code: rng.one_in(2).then(|| rng.next() as u32 & 0xffff),
            },
            11 => Op::SetMpState {
                vcpu,
                state: if rng.one_in(4) {
                    rng.next() as u32
                } else {
                    rng.below(5) as u32
                },
            },
            12 => {
                if irqchip {
                    Op::Nmi { vcpu }
                } else {
                    Op::Interrupt {
                        vcpu,
                        vector: if rng.one_in(8) {
                            rng.next() as u32
                        } else {
                            32 + rng.below(224) as u32
                        },
                    }
                }
            }
            13 => Op::SetSlot {
                page: (!rng.one_in(3)).then(|| rng.below(0x400) as u16),
                read_only: rng.one_in(2),
            },
            14 => {
                if rng.one_in(2) {
                    Op::IrqLine {
                        gsi: if rng.one_in(8) {
                            rng.next() as u32
                        } else {
                            rng.below(24) as u32
                        },
                        level: rng.one_in(2),
                    }
                } else {
                    Op::SignalMsi {
                        address: if rng.one_in(4) {
                            value(rng)
                        } else {
                            0xfee0_0000 | (rng.below(4) as u64) << 12
                        },
                        data: if rng.one_in(4) {
                            rng.next() as u32
                        } else {
                            32 + rng.below(224) as u32
                        },
                    }
                }
            }
            _ => Op::SetLapic {
                vcpu,
                offset: (rng.below(64) * 16) as u16,
                value: rng.next() as u32,
            },
        }
    }
}

impl Input {
    /// An input drawn from `rng`: mostly well-formed machines running
    /// generated code, with a share of raw values everywhere.
    pub fn generate(rng: &mut SplitMix64) -> Self {
        // An in-kernel irqchip makes VM creation some thirty times slower
        // here (4-8 ms against 0.1 ms: its setup waits for RCU grace
        // periods), so it is the exception.
        let irqchip = match rng.below(32) {
            0 => Irqchip::Kernel,
            1 => Irqchip::Split,
            _ => Irqchip::None,
        };
        // Each vCPU costs its creation and setup ioctls: most inputs have one.
        let vcpu_count = match rng.below(8) {
            0 => MAX_VCPUS,
            1 | 2 => 2,
            _ => 1,
        };
        let mode = *rng.pick(&Mode::ALL);
        let program = program::generate(rng, mode, irqchip.has_lapic());
        let mut vcpus: Vec<VcpuSetup> = (0..vcpu_count)
            .map(|_| VcpuSetup::generate(rng, program.len()))
            .collect();
        // The program was written for one mode: most vCPUs run in it.
        for vcpu in &mut vcpus {
            if !rng.one_in(4) {
                vcpu.mode = mode;
                vcpu.user &= mode != Mode::Real;
            }
        }
        let mut ops: Vec<Op> = (0..rng.below(MAX_OPS))
            .map(|_| Op::generate(rng, vcpu_count, irqchip.has_lapic()))
            .collect();
        // Every input runs its vCPUs at least once.
        for vcpu in 0..vcpu_count {
            ops.insert(rng.below(ops.len() + 1), Op::Run { vcpu: vcpu as u8 });
        }
        Input {
            irqchip,
            mem_64k: if rng.one_in(8) {
                1 + rng.below(16) as u8
            } else {
                1 + rng.below(2) as u8
            },
            vcpus,
            program,
            ops,
        }
    }
}
