//! Guest programs: valid encodings of the instructions that make KVM work
//! (port and MMIO accesses to the test devices, CPUID, MSRs, control and
//! debug registers, HLT, INT, VMCALL/VMMCALL, string I/O), assembled for
//! the vCPU's mode, mixed with raw random bytes.

use super::exec::layout;
use super::input::Mode;
use crate::rng::SplitMix64;

/// Most bytes a program has.
pub const MAX_LEN: usize = 1024;

/// Ports worth hitting: isa-debug-exit, COM1, pc-testdev, its IRQ ports,
/// PCI configuration, the fuzzer's planted-bug port, an unclaimed one.
const PORTS: [u16; 12] = [
    0xf4,
    0x3f8,
    0x3fd,
    0xe0,
    0xe4,
    0xe8,
    0x2000,
    0x2010,
    0xcf8,
    0xcfc,
    layout::PLANTED_BUG_PORT,
    0x1234,
];

/// MMIO worth hitting: pc-testdev's buffer and its end, the LAPIC's ID,
/// TPR, EOI, ICR, timer LVT and count, the IOAPIC's window, pci-testdev and
/// edu BARs, and unclaimed memory.
const MMIO: [u64; 14] = [
    0xff00_0000,
    0xff00_fffc,
    0xfee0_0020,
    0xfee0_0080,
    0xfee0_00b0,
    0xfee0_0300,
    0xfee0_0320,
    0xfee0_0380,
    0xfec0_0000,
    0xfec0_0010,
    layout::PCI_TESTDEV_BAR,
    layout::EDU_BAR + 0x60,
    layout::EDU_BAR + 0x80,
    0xd000_0000,
];

/// MSRs the guest reads and writes itself.
const GUEST_MSRS: [u32; 8] = [
    0x10,
    0x1b,
    0x174,
    0x277,
    0x6e0,
    0xc000_0080,
    0xc000_0102,
    0x48,
];

struct Asm {
    bytes: Vec<u8>,
    mode: Mode,
}

impl Asm {
    fn put(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// An operand-size prefix where the mode's default is 16 bits, so the
    /// instruction works on 32 bits everywhere.
    fn op32(&mut self) {
        if self.mode.is_16bit() {
            self.bytes.push(0x66);
        }
    }

    /// `mov r32, imm32` for register number `reg` (0 EAX ... 7 EDI).
    fn mov_imm32(&mut self, reg: u8, value: u32) {
        self.op32();
        self.bytes.push(0xb8 + reg);
        self.put(&value.to_le_bytes());
    }

    /// `mov dx, port`.
    fn mov_dx(&mut self, port: u16) {
        if !self.mode.is_16bit() {
            self.bytes.push(0x66);
        }
        self.bytes.push(0xba);
        self.put(&port.to_le_bytes());
    }

    /// A load or store of EAX at an absolute address.
    fn mmio(&mut self, address: u64, store: bool) {
        let opcode = if store { 0xa3 } else { 0xa1 };
        match self.mode {
            Mode::Long64 => {
                self.bytes.push(opcode);
                self.put(&address.to_le_bytes());
            }
            Mode::Protected32 | Mode::Paged32 => {
                self.bytes.push(opcode);
                self.put(&(address as u32).to_le_bytes());
            }
            // 32-bit address and operand size from 16-bit code (faults in
            // real mode past 64 KiB, which is worth doing too).
            Mode::Real | Mode::Protected16 => {
                self.put(&[0x67, 0x66, opcode]);
                self.put(&(address as u32).to_le_bytes());
            }
        }
    }
}

/// One instruction (or a short sequence that sets up its operands).
fn instruction(asm: &mut Asm, rng: &mut SplitMix64, irqchip: bool) {
    match rng.below(20) {
        0..=3 => {
            let port = *rng.pick(&PORTS);
            // Small values (commands, IRQ numbers), pattern bytes, any byte.
            let value = match rng.below(3) {
                0 => rng.below(8) as u8,
                1 => *rng.pick(&[0x00, 0x01, 0x7f, 0x80, 0xff, 0x55, 0xaa, 0x5a, 0xa5]),
                _ => rng.next() as u8,
            };
            asm.put(&[0xb0, value]);
            asm.mov_dx(port);
            match rng.below(4) {
                0 => asm.put(&[0xee]),
                1 => {
                    asm.op32();
                    asm.put(&[0xef]);
                }
                2 => asm.put(&[0xec]),
                _ => {
                    asm.op32();
                    asm.put(&[0xed]);
                }
            }
        }
        4..=6 => {
            let address = *rng.pick(&MMIO) + if irqchip { 0 } else { rng.below(4) as u64 * 4 };
            asm.mov_imm32(0, rng.next() as u32);
            asm.mmio(address, rng.one_in(2));
        }
        7 => {
            asm.mov_imm32(0, *rng.pick(&[0, 1, 7, 0xb, 0xd, 0x4000_0000, 0x8000_0001]));
            asm.mov_imm32(1, rng.below(2) as u32);
            asm.put(&[0x0f, 0xa2]);
        }
        8 => {
            asm.mov_imm32(1, *rng.pick(&GUEST_MSRS));
            if rng.one_in(2) {
                asm.put(&[0x0f, 0x32]);
            } else {
                asm.mov_imm32(0, rng.next() as u32);
                asm.mov_imm32(2, if rng.one_in(2) { 0 } else { rng.next() as u32 });
                asm.put(&[0x0f, 0x30]);
            }
        }
        9 => {
            // mov cr0/cr3/cr4, eax or back.
            let cr = *rng.pick(&[0xc0u8, 0xd8, 0xe0]);
            if rng.one_in(2) {
                asm.put(&[0x0f, 0x20, cr]);
            } else {
                asm.mov_imm32(0, rng.next() as u32);
                asm.put(&[0x0f, 0x22, cr]);
            }
        }
        10 => {
            // mov drN, eax or back.
            let dr = rng.below(8) as u8;
            asm.mov_imm32(0, rng.next() as u32);
            let opcode = if rng.one_in(2) { 0x23 } else { 0x21 };
            asm.put(&[0x0f, opcode, 0xc0 | dr << 3]);
        }
        11 => {
            const SINGLES: [&[u8]; 12] = [
                &[0xf4],             // hlt
                &[0xcc],             // int3
                &[0x0f, 0x0b],       // ud2
                &[0x0f, 0x01, 0xc1], // vmcall
                &[0x0f, 0x01, 0xd9], // vmmcall
                &[0xfb],             // sti
                &[0xfa],             // cli
                &[0xf3, 0x90],       // pause
                &[0x0f, 0x09],       // wbinvd
                &[0x0f, 0x06],       // clts
                &[0x0f, 0x33],       // rdpmc
                &[0x0f, 0x05],       // syscall
            ];
            let chosen = SINGLES[rng.below(SINGLES.len())];
            asm.put(chosen);
        }
        12 => asm.put(&[0xcd, rng.next() as u8]),
        13 => {
            // xsetbv: XCR0 in EDX:EAX.
            asm.mov_imm32(1, 0);
            asm.mov_imm32(0, *rng.pick(&[1, 3, 7, 0xe7, 2]));
            asm.mov_imm32(2, 0);
            asm.put(&[0x0f, 0x01, 0xd1]);
        }
        14 => {
            // rep outsb / rep insb between the data page and a port.
            asm.mov_dx(*rng.pick(&PORTS));
            asm.mov_imm32(1, 1 + rng.below(64) as u32);
            if rng.one_in(2) {
                asm.mov_imm32(6, layout::DATA as u32);
                asm.put(&[0xf3, 0x6e]);
            } else {
                asm.mov_imm32(7, layout::DATA as u32);
                asm.put(&[0xf3, 0x6c]);
            }
        }
        15 => {
            // A loop the exit budget or the clock must end: rare.
            if rng.one_in(16) {
                asm.put(&[0xeb, 0xfe]);
            }
        }
        _ => {
            let raw: Vec<u8> = (0..1 + rng.below(4)).map(|_| rng.next() as u8).collect();
            asm.put(&raw);
        }
    }
}

/// A program for `mode`: some instructions, then HLT (or, now and then,
/// an exit through isa-debug-exit).
pub fn generate(rng: &mut SplitMix64, mode: Mode, irqchip: bool) -> Vec<u8> {
    let mut asm = Asm {
        bytes: Vec::new(),
        mode,
    };
    for _ in 0..1 + rng.below(24) {
        instruction(&mut asm, rng, irqchip);
        if asm.bytes.len() > MAX_LEN - 16 {
            break;
        }
    }
    if rng.one_in(4) {
        asm.put(&[0xb0, rng.below(4) as u8, 0xe6, 0xf4]);
    }
    asm.put(&[0xf4]);
    asm.bytes.truncate(MAX_LEN);
    asm.bytes
}
