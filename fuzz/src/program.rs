//! Guest programs: valid encodings of the instructions that make KVM and
//! the VMM work (port and MMIO accesses to the real devices, CPUID, MSRs,
//! control and debug registers, HLT, software interrupts, hypercalls,
//! string I/O), mixed with raw random bytes, for the mode the code runs in.
//!
//! Instructions that read the host's clock or entropy (RDTSC, RDRAND) are
//! left out: values from them would reach devices and make a run
//! unrepeatable.

use arbitrary::Arbitrary;
use ktvmm_abi::{layout, ports};
use serde::{Deserialize, Serialize};

use super::draw;
use super::rng::SplitMix64;

/// Guest program bytes kept at most.
pub const MAX_PROGRAM: usize = 512;

/// The execution mode a vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Mode {
    /// Real mode.
    Real,
    /// 16-bit protected mode.
    Protected16,
    /// 32-bit protected mode, paging off.
    Protected32,
    /// 32-bit protected mode with two-level (4 MiB page) paging.
    Paged32,
    /// 32-bit protected mode with PAE paging.
    PagedPae,
    /// 64-bit long mode.
    Long64,
}

impl Mode {
    /// The default operand and address size of code in this mode.
    pub fn bits(self) -> u8 {
        match self {
            Mode::Real | Mode::Protected16 => 16,
            Mode::Protected32 | Mode::Paged32 | Mode::PagedPae => 32,
            Mode::Long64 => 64,
        }
    }

    /// Every mode, for generators.
    pub const ALL: [Mode; 6] = [
        Mode::Real,
        Mode::Protected16,
        Mode::Protected32,
        Mode::Paged32,
        Mode::PagedPae,
        Mode::Long64,
    ];
}

/// Where the program is placed and every vCPU starts.
pub const CODE_ADDR: u64 = 0x1_0000;
/// Top of the stack (below it, 4 KiB, inside the code segment's 64 KiB).
pub const STACK_TOP: u64 = 0x1_f000;
/// Scratch data that string instructions read and write.
pub const DATA_ADDR: u64 = 0x2_0000;
/// Guest RAM of every fuzz VM.
pub const RAM_SIZE: u64 = 2 << 20;
/// Where the first extra memory slot goes; later ones follow, 64 KiB apart.
pub const EXTRA_SLOTS_ADDR: u64 = 0x30_0000;
/// An address past RAM that no device decodes.
pub const UNCLAIMED_MMIO: u64 = 0x50_0000;

/// Ports devices answer on, and a few nothing answers on.
const PORTS: [u16; 16] = [
    ports::PC_TESTDEV_REGISTER,
    ports::PC_TESTDEV_REGISTER + 1,
    ports::PC_TESTDEV_FLUSH_PAGE,
    ports::PC_TESTDEV_REGISTER_BYTES,
    ports::PC_TESTDEV_IRQ_BASE,
    ports::PC_TESTDEV_IRQ_BASE + 5,
    ports::COM1,
    ports::COM1 + 5,
    ports::COM2,
    ports::FW_CFG,
    ports::FW_CFG + 1,
    ports::PM_TIMER,
    ports::PCI_CONFIG_ADDRESS,
    ports::PCI_CONFIG_DATA,
    0x80,
    0x1234,
];

/// Memory-mapped addresses: the pc-testdev window, the first PCI BAR
/// window, the IOAPIC, nothing at all.
fn mmio_address(rng: &mut SplitMix64) -> u64 {
    match rng.below(5) {
        0 | 1 => layout::PC_TESTDEV_IOMEM + rng.below(0x40) as u64 * 4,
        2 => ktvmm_abi::pci::MMIO_WINDOW_START + rng.below(0x20) as u64 * 4,
        3 => layout::IOAPIC_ADDR + rng.pick(&[0, 0x10]),
        _ => UNCLAIMED_MMIO + rng.below(0x100) as u64,
    }
}

/// Writes code for one mode.
struct Asm {
    bits: u8,
    out: Vec<u8>,
}

// Register numbers in x86 encodings.
const EAX: u8 = 0;
const ECX: u8 = 1;
const EDX: u8 = 2;
const EBX: u8 = 3;
const ESI: u8 = 6;
const EDI: u8 = 7;

impl Asm {
    fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// `mov reg, value` at the mode's natural width (64-bit values with
    /// REX.W in long mode).
    fn mov(&mut self, reg: u8, value: u64) {
        match self.bits {
            16 => {
                self.bytes(&[0xb8 + reg]);
                self.bytes(&(value as u16).to_le_bytes());
            }
            64 if value > u64::from(u32::MAX) => {
                self.bytes(&[0x48, 0xb8 + reg]);
                self.bytes(&value.to_le_bytes());
            }
            _ => {
                self.bytes(&[0xb8 + reg]);
                self.bytes(&(value as u32).to_le_bytes());
            }
        }
    }

    /// `mov eax, value` as a 32-bit load in every mode (with an operand-size
    /// prefix in 16-bit code).
    fn mov32(&mut self, reg: u8, value: u32) {
        if self.bits == 16 {
            self.bytes(&[0x66]);
        }
        self.bytes(&[0xb8 + reg]);
        self.bytes(&value.to_le_bytes());
    }

    /// The operand-size prefix that makes the next instruction's operand
    /// `width` bytes (2 or 4) in this mode.
    fn size_prefix(&mut self, width: usize) {
        let native = if self.bits == 16 { 2 } else { 4 };
        if width != native && width != 1 {
            self.bytes(&[0x66]);
        }
    }

    fn port_io(&mut self, rng: &mut SplitMix64, port: u16, write: bool) {
        let width = rng.pick(&[1usize, 1, 2, 4]);
        if write {
            self.mov32(EAX, draw::value(rng) as u32);
        }
        let (imm, dx) = match (write, width) {
            (true, 1) => (0xe6, 0xee),
            (true, _) => (0xe7, 0xef),
            (false, 1) => (0xe4, 0xec),
            (false, _) => (0xe5, 0xed),
        };
        if port < 0x100 && rng.one_in(2) {
            self.size_prefix(width);
            self.bytes(&[imm, port as u8]);
        } else {
            self.mov32(EDX, u32::from(port));
            self.size_prefix(width);
            self.bytes(&[dx]);
        }
    }

    /// `mov [ebx], eax` or `mov eax, [ebx]` at `address` (1, 2 or 4 bytes).
    fn mmio(&mut self, rng: &mut SplitMix64, address: u64, write: bool) {
        self.mov(EBX, address);
        if write {
            self.mov32(EAX, draw::value(rng) as u32);
        }
        let width = rng.pick(&[1usize, 2, 4, 4]);
        if self.bits == 16 {
            // 16-bit addressing has no [ebx] without an address-size prefix.
            self.bytes(&[0x67]);
        }
        self.size_prefix(width);
        let opcode = match (write, width) {
            (true, 1) => 0x88,
            (true, _) => 0x89,
            (false, 1) => 0x8a,
            (false, _) => 0x8b,
        };
        self.bytes(&[opcode, 0x03]);
    }

    /// `mov reg, crN` / `mov crN, reg` after flipping one bit.
    fn control_register(&mut self, rng: &mut SplitMix64) {
        let cr = rng.pick(&[0u8, 2, 3, 4, 8]);
        let (rex, modrm) = if cr == 8 {
            (Some(0x44), 0xc0)
        } else {
            (None, 0xc0 | cr << 3)
        };
        if cr == 8 && self.bits != 64 {
            return;
        }
        let emit = |asm: &mut Asm, op: u8| {
            if let Some(rex) = rex {
                asm.bytes(&[rex]);
            }
            asm.bytes(&[0x0f, op, modrm]);
        };
        emit(self, 0x20);
        if rng.one_in(3) {
            return;
        }
        if self.bits == 16 {
            self.bytes(&[0x66]);
        }
        self.bytes(&[0x35]);
        self.bytes(&(1u32 << rng.below(32)).to_le_bytes());
        emit(self, 0x22);
    }

    fn debug_register(&mut self, rng: &mut SplitMix64) {
        let dr = rng.pick(&[0u8, 1, 6, 7]);
        let modrm = 0xc0 | dr << 3;
        if rng.one_in(2) {
            self.bytes(&[0x0f, 0x21, modrm]);
        } else {
            self.mov32(EAX, draw::value(rng) as u32);
            self.bytes(&[0x0f, 0x23, modrm]);
        }
    }

    /// `rep outs`, `rep ins` or `rep movs` of a few elements between the
    /// scratch data and a port or MMIO.
    fn string_op(&mut self, rng: &mut SplitMix64) {
        self.mov(ECX, 1 + rng.below(8) as u64);
        let to_mmio = rng.one_in(3);
        let data = if self.bits == 16 { 0x100 } else { DATA_ADDR };
        self.mov(ESI, data);
        self.mov(
            EDI,
            if to_mmio && self.bits != 16 {
                mmio_address(rng)
            } else {
                data + 0x80
            },
        );
        self.mov32(EDX, u32::from(rng.pick(&PORTS)));
        let op = match rng.below(4) {
            0 => 0x6e, // outsb
            1 => 0x6f, // outs word/dword
            2 => 0x6c, // insb
            _ => 0xa4, // movsb
        };
        self.bytes(&[0xf3, op]);
    }

    /// Selects PCI function `slot` register `reg` and reads or writes it.
    fn pci_config(&mut self, rng: &mut SplitMix64) {
        let slot = rng.below(4) as u32;
        let reg = rng.pick(&[0u32, 4, 0x10, 0x14, 0x3c]);
        self.mov32(EAX, 0x8000_0000 | slot << 11 | reg);
        self.mov32(EDX, u32::from(ports::PCI_CONFIG_ADDRESS));
        self.size_prefix(4);
        self.bytes(&[0xef]);
        self.mov32(EDX, u32::from(ports::PCI_CONFIG_DATA));
        if rng.one_in(2) {
            // Memory and I/O decoding, bus mastering: BARs start to decode.
            self.mov32(EAX, if reg == 4 { 7 } else { draw::value(rng) as u32 });
            self.size_prefix(4);
            self.bytes(&[0xef]);
        } else {
            self.size_prefix(4);
            self.bytes(&[0xed]);
        }
    }

    fn instruction(&mut self, rng: &mut SplitMix64) {
        match rng.below(24) {
            0..=3 => {
                let port = rng.pick(&PORTS);
                self.port_io(rng, port, true);
            }
            4 | 5 => {
                let port = rng.pick(&PORTS);
                self.port_io(rng, port, false);
            }
            6 | 7 if self.bits != 16 => {
                let address = mmio_address(rng);
                self.mmio(rng, address, true);
            }
            8 if self.bits != 16 => {
                let address = mmio_address(rng);
                self.mmio(rng, address, false);
            }
            9 => {
                self.mov32(
                    EAX,
                    rng.pick(&[0, 1, 7, 0xb, 0xd, 0x4000_0000, 0x8000_0001]),
                );
                self.mov32(ECX, rng.below(2) as u32);
                self.bytes(&[0x0f, 0xa2]);
            }
            10 => {
                self.mov32(ECX, draw::msr(rng));
                self.bytes(&[0x0f, 0x32]);
            }
            11 => {
                self.mov32(ECX, draw::msr(rng));
                let v = draw::value(rng);
                self.mov32(EAX, v as u32);
                self.mov32(EDX, (v >> 32) as u32);
                self.bytes(&[0x0f, 0x30]);
            }
            12 => self.control_register(rng),
            13 => self.debug_register(rng),
            14 => self.bytes(&[0xf4]),
            15 => match rng.below(4) {
                0 => self.bytes(&[0xcc]),
                1 => self.bytes(&[0xf1]),
                _ => self.bytes(&[0xcd, rng.pick(&[0, 3, 6, 8, 13, 14, 0x20, 0x80])]),
            },
            16 => self.bytes(if rng.one_in(2) {
                &[0x0f, 0x01, 0xc1] // vmcall
            } else {
                &[0x0f, 0x01, 0xd9] // vmmcall
            }),
            17 => self.string_op(rng),
            18 => self.pci_config(rng),
            19 => {
                self.mov32(ECX, 0);
                self.mov32(EAX, rng.pick(&[1, 3, 7, 0x207, 2]));
                self.mov32(EDX, 0);
                self.bytes(&[0x0f, 0x01, 0xd1]); // xsetbv
            }
            20 => self.bytes(rng.pick(&[
                &[0xfa][..],         // cli
                &[0xfb],             // sti
                &[0x0f, 0x09],       // wbinvd
                &[0x0f, 0x0b],       // ud2
                &[0x0f, 0x05],       // syscall
                &[0x0f, 0x34],       // sysenter
                &[0xf3, 0x90],       // pause
                &[0x0f, 0x01, 0xd0], // xgetbv
                &[0x0f, 0x01, 0xf8], // swapgs
                &[0x9c, 0x58],       // pushf; pop eax
                &[0x0f, 0x00, 0xd8], // ltr ax
                &[0x8e, 0xd8],       // mov ds, eax
            ])),
            21 => {
                let address = if self.bits == 16 { 0x100 } else { DATA_ADDR };
                self.mov(EBX, address);
                if self.bits == 16 {
                    self.bytes(&[0x67]);
                }
                self.bytes(&[0x0f, 0x01, 0x3b]); // invlpg [ebx]
            }
            _ => {
                for _ in 0..1 + rng.below(6) {
                    self.bytes(&[rng.next() as u8]);
                }
            }
        }
    }
}

/// A program for a vCPU in `mode`: a few instructions, then a write to
/// isa-debug-exit (which ends the run), then `hlt`.
pub fn generate(rng: &mut SplitMix64, mode: Mode) -> Vec<u8> {
    let mut asm = Asm {
        bits: mode.bits(),
        out: Vec::new(),
    };
    for _ in 0..1 + rng.below(12) {
        asm.instruction(rng);
    }
    if !rng.one_in(8) {
        asm.bytes(&[0xe7, ports::DEBUG_EXIT as u8]);
    }
    asm.bytes(&[0xf4]);
    asm.out.truncate(MAX_PROGRAM);
    asm.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_fit_and_end_in_hlt() {
        let mut rng = SplitMix64(9);
        for mode in Mode::ALL {
            for _ in 0..200 {
                let program = generate(&mut rng, mode);
                assert!(!program.is_empty() && program.len() <= MAX_PROGRAM);
            }
        }
    }

    #[test]
    fn port_writes_are_encoded_for_the_mode() {
        let mut asm = Asm {
            bits: 64,
            out: Vec::new(),
        };
        asm.mov(EBX, 0xff00_0000);
        assert_eq!(asm.out, [0xbb, 0, 0, 0, 0xff]);
        asm.out.clear();
        asm.mov(EBX, 1 << 40);
        assert_eq!(asm.out[..2], [0x48, 0xbb]);
        let mut asm16 = Asm {
            bits: 16,
            out: Vec::new(),
        };
        asm16.mov32(EAX, 5);
        assert_eq!(asm16.out, [0x66, 0xb8, 5, 0, 0, 0]);
    }
}
