//! The registers GDB is shown, and their target description (`target.xml`).
//!
//! GDB reads the description once per connection and insists that its
//! architecture agree with the symbol file it loaded: an ELF32 file with
//! an x86-64 description (QEMU's only choice for `qemu-system-x86_64`)
//! gives "Selected architecture i386 is not compatible" and "Remote 'g'
//! packet reply is too long". So the register file is chosen per guest, to
//! match its symbol file ([`RegisterFile`]), not per vCPU mode, which
//! changes under GDB's feet. Beyond GDB's general registers it carries
//! what QEMU's `i386-64bit.xml` adds: the FS/GS bases, KERNEL_GS_BASE, the
//! control registers and EFER (`info registers cr0`, `info all-registers`).

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::{X86_64CoreRegs, X86CoreRegs};

/// Which register file GDB sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegisterFile {
    /// `i386:x86-64`: for ELF64 symbol files (ktvmm's guests, and
    /// kvm-unit-tests' `x86/NAME.elf` of an x86_64 build, whose 32-bit
    /// startup code GDB then shows with 64-bit registers, as with QEMU).
    #[default]
    X86_64,
    /// `i386`: for ELF32 symbol files (kvm-unit-tests built for i386,
    /// 32-bit multiboot kernels).
    I386,
}

impl RegisterFile {
    /// The register file for a symbol file that starts with `header`:
    /// i386 for ELF32, x86-64 otherwise.
    pub fn of_elf(header: &[u8]) -> Self {
        const ELFCLASS32: u8 = 1;
        if header.starts_with(b"\x7fELF") && header.get(4) == Some(&ELFCLASS32) {
            RegisterFile::I386
        } else {
            RegisterFile::X86_64
        }
    }

    /// The width of its registers, in bytes.
    fn word(self) -> usize {
        match self {
            RegisterFile::X86_64 => 8,
            RegisterFile::I386 => 4,
        }
    }

    /// GDB's name for it.
    pub fn name(self) -> &'static str {
        match self {
            RegisterFile::X86_64 => "i386:x86-64",
            RegisterFile::I386 => "i386",
        }
    }

    /// Its `target.xml`.
    pub fn target_xml(self) -> String {
        let (template, size) = match self {
            RegisterFile::X86_64 => (TARGET_XML_64_TEMPLATE, "8"),
            RegisterFile::I386 => (TARGET_XML_32_TEMPLATE, "4"),
        };
        template
            .replace("EFLAGS", EFLAGS)
            .replace("X87", X87)
            .replace("SSE_TYPES", SSE_TYPES)
            .replace("CR_FLAGS", &CR_FLAGS.replace("SIZE", size))
    }
}

/// The registers beyond GDB's general ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemRegs {
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// `MSR_KERNEL_GS_BASE` (only in the x86-64 file).
    pub k_gs_base: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (the TPR).
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
}

/// One vCPU's registers in the file GDB was given. The general registers
/// are always kept 64 bits wide; the i386 file shows their low halves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// Which layout the `g`/`G` packets use.
    pub file: RegisterFile,
    /// General, segment, x87 and SSE registers.
    pub core: X86_64CoreRegs,
    /// Control registers, EFER, segment bases.
    pub system: SystemRegs,
}

const CORE_32_LEN: usize = 0x134;
const CORE_64_LEN: usize = 0x218;
/// fs_base, gs_base, cr0, cr2, cr3, cr4, cr8, efer at 4 bytes.
const SYSTEM_32_LEN: usize = 8 * 4;
/// The same and k_gs_base at 8 bytes.
const SYSTEM_64_LEN: usize = 9 * 8;

impl SystemRegs {
    /// The registers in `file`'s order, after the core and SSE ones.
    fn in_order(&mut self, file: RegisterFile) -> Vec<&mut u64> {
        let s = self;
        let mut order = vec![&mut s.fs_base, &mut s.gs_base];
        if file == RegisterFile::X86_64 {
            order.push(&mut s.k_gs_base);
        }
        order.extend([
            &mut s.cr0,
            &mut s.cr2,
            &mut s.cr3,
            &mut s.cr4,
            &mut s.cr8,
            &mut s.efer,
        ]);
        order
    }
}

impl GuestRegs {
    fn core32(&self) -> X86CoreRegs {
        let r = &self.core.regs;
        let mut xmm = [0u128; 8];
        xmm.copy_from_slice(&self.core.xmm[..8]);
        X86CoreRegs {
            eax: r[0] as u32,
            ebx: r[1] as u32,
            ecx: r[2] as u32,
            edx: r[3] as u32,
            esi: r[4] as u32,
            edi: r[5] as u32,
            ebp: r[6] as u32,
            esp: r[7] as u32,
            eip: self.core.rip as u32,
            eflags: self.core.eflags,
            segments: self.core.segments.clone(),
            st: self.core.st,
            fpu: self.core.fpu.clone(),
            xmm,
            mxcsr: self.core.mxcsr,
        }
    }
}

/// `value`'s low 32 bits replaced by `low`'s: what a 32-bit write leaves.
pub fn low_half(value: u64, low: u64) -> u64 {
    (value & !0xffff_ffff) | (low & 0xffff_ffff)
}

impl Registers for GuestRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        match self.file {
            RegisterFile::X86_64 => self.core.gdb_serialize(&mut write_byte),
            RegisterFile::I386 => self.core32().gdb_serialize(&mut write_byte),
        }
        let size = self.file.word();
        let mut system = self.system;
        for value in system.in_order(self.file) {
            value.to_le_bytes()[..size]
                .iter()
                .for_each(|b| write_byte(Some(*b)));
        }
    }

    /// Takes the layout from the length: a `G` packet carries no more.
    /// The i386 layout fills the low halves; the target keeps the vCPU's
    /// upper halves when it writes them.
    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let words = |bytes: &[u8], size: usize| -> Vec<u64> {
            bytes
                .chunks_exact(size)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..size].copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect()
        };
        let (file, core_len) = if bytes.len() == CORE_64_LEN + SYSTEM_64_LEN {
            (RegisterFile::X86_64, CORE_64_LEN)
        } else if bytes.len() == CORE_32_LEN + SYSTEM_32_LEN {
            (RegisterFile::I386, CORE_32_LEN)
        } else {
            return Err(());
        };
        self.file = file;
        match file {
            RegisterFile::X86_64 => self.core.gdb_deserialize(&bytes[..core_len])?,
            RegisterFile::I386 => {
                let mut c = X86CoreRegs::default();
                c.gdb_deserialize(&bytes[..core_len])?;
                let r = &mut self.core.regs;
                [r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]] =
                    [c.eax, c.ebx, c.ecx, c.edx, c.esi, c.edi, c.ebp, c.esp].map(u64::from);
                self.core.rip = u64::from(c.eip);
                self.core.eflags = c.eflags;
                self.core.segments = c.segments;
                self.core.st = c.st;
                self.core.fpu = c.fpu;
                self.core.xmm[..8].copy_from_slice(&c.xmm);
                self.core.mxcsr = c.mxcsr;
            }
        }
        let values = words(&bytes[core_len..], file.word());
        for (reg, value) in self.system.in_order(file).into_iter().zip(values) {
            *reg = value;
        }
        Ok(())
    }
}

/// ktvmm's x86 for `gdbstub`: the register file is picked at run time
/// (see [`RegisterFile`]); the description comes from the target.
pub enum GuestArch {}

impl Arch for GuestArch {
    type Usize = u64;
    type Registers = GuestRegs;
    type RegId = gdbstub_arch::x86::reg::id::X86_64CoreRegId;
    type BreakpointKind = usize;
}

const EFLAGS: &str = r#"<flags id="i386_eflags" size="4"><field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/><field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/></flags>"#;

const X87: &str = r#"<reg name="st0" bitsize="80" type="i387_ext"/><reg name="st1" bitsize="80" type="i387_ext"/><reg name="st2" bitsize="80" type="i387_ext"/><reg name="st3" bitsize="80" type="i387_ext"/><reg name="st4" bitsize="80" type="i387_ext"/><reg name="st5" bitsize="80" type="i387_ext"/><reg name="st6" bitsize="80" type="i387_ext"/><reg name="st7" bitsize="80" type="i387_ext"/><reg name="fctrl" bitsize="32" type="int" group="float"/><reg name="fstat" bitsize="32" type="int" group="float"/><reg name="ftag" bitsize="32" type="int" group="float"/><reg name="fiseg" bitsize="32" type="int" group="float"/><reg name="fioff" bitsize="32" type="int" group="float"/><reg name="foseg" bitsize="32" type="int" group="float"/><reg name="fooff" bitsize="32" type="int" group="float"/><reg name="fop" bitsize="32" type="int" group="float"/>"#;

const SSE_TYPES: &str = r#"<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/><vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/><vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/><union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union><flags id="i386_mxcsr" size="4"><field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/><field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/><field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/></flags>"#;

const CR_FLAGS: &str = r#"<flags id="x86_cr0" size="SIZE"><field name="PE" start="0" end="0"/><field name="MP" start="1" end="1"/><field name="EM" start="2" end="2"/><field name="TS" start="3" end="3"/><field name="ET" start="4" end="4"/><field name="NE" start="5" end="5"/><field name="WP" start="16" end="16"/><field name="AM" start="18" end="18"/><field name="NW" start="29" end="29"/><field name="CD" start="30" end="30"/><field name="PG" start="31" end="31"/></flags><flags id="x86_cr4" size="SIZE"><field name="VME" start="0" end="0"/><field name="PVI" start="1" end="1"/><field name="TSD" start="2" end="2"/><field name="DE" start="3" end="3"/><field name="PSE" start="4" end="4"/><field name="PAE" start="5" end="5"/><field name="MCE" start="6" end="6"/><field name="PGE" start="7" end="7"/><field name="PCE" start="8" end="8"/><field name="OSFXSR" start="9" end="9"/><field name="OSXMMEXCPT" start="10" end="10"/><field name="UMIP" start="11" end="11"/><field name="LA57" start="12" end="12"/><field name="VMXE" start="13" end="13"/><field name="SMXE" start="14" end="14"/><field name="FSGSBASE" start="16" end="16"/><field name="PCIDE" start="17" end="17"/><field name="OSXSAVE" start="18" end="18"/><field name="SMEP" start="20" end="20"/><field name="SMAP" start="21" end="21"/><field name="PKE" start="22" end="22"/></flags><flags id="x86_efer" size="SIZE"><field name="SCE" start="0" end="0"/><field name="LME" start="8" end="8"/><field name="LMA" start="10" end="10"/><field name="NXE" start="11" end="11"/><field name="SVME" start="12" end="12"/><field name="FFXSR" start="14" end="14"/></flags>"#;

macro_rules! target_xml {
    ($arch:literal, $gprs:literal, $pc:literal, $xmm:literal, $system:literal) => {
        concat!(
            r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0"><architecture>"#,
            $arch,
            r#"</architecture><feature name="org.gnu.gdb.i386.core">"#,
            "EFLAGS",
            $gprs,
            $pc,
            r#"<reg name="eflags" bitsize="32" type="i386_eflags"/><reg name="cs" bitsize="32" type="int32"/><reg name="ss" bitsize="32" type="int32"/><reg name="ds" bitsize="32" type="int32"/><reg name="es" bitsize="32" type="int32"/><reg name="fs" bitsize="32" type="int32"/><reg name="gs" bitsize="32" type="int32"/>"#,
            "X87",
            r#"</feature><feature name="org.gnu.gdb.i386.sse">"#,
            "SSE_TYPES",
            $xmm,
            r#"<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/></feature>"#,
            $system,
            "</target>"
        )
    };
}

const TARGET_XML_64_TEMPLATE: &str = target_xml!(
    "i386:x86-64",
    r#"<reg name="rax" bitsize="64" type="int64"/><reg name="rbx" bitsize="64" type="int64"/><reg name="rcx" bitsize="64" type="int64"/><reg name="rdx" bitsize="64" type="int64"/><reg name="rsi" bitsize="64" type="int64"/><reg name="rdi" bitsize="64" type="int64"/><reg name="rbp" bitsize="64" type="data_ptr"/><reg name="rsp" bitsize="64" type="data_ptr"/><reg name="r8" bitsize="64" type="int64"/><reg name="r9" bitsize="64" type="int64"/><reg name="r10" bitsize="64" type="int64"/><reg name="r11" bitsize="64" type="int64"/><reg name="r12" bitsize="64" type="int64"/><reg name="r13" bitsize="64" type="int64"/><reg name="r14" bitsize="64" type="int64"/><reg name="r15" bitsize="64" type="int64"/>"#,
    r#"<reg name="rip" bitsize="64" type="code_ptr"/>"#,
    r#"<reg name="xmm0" bitsize="128" type="vec128"/><reg name="xmm1" bitsize="128" type="vec128"/><reg name="xmm2" bitsize="128" type="vec128"/><reg name="xmm3" bitsize="128" type="vec128"/><reg name="xmm4" bitsize="128" type="vec128"/><reg name="xmm5" bitsize="128" type="vec128"/><reg name="xmm6" bitsize="128" type="vec128"/><reg name="xmm7" bitsize="128" type="vec128"/><reg name="xmm8" bitsize="128" type="vec128"/><reg name="xmm9" bitsize="128" type="vec128"/><reg name="xmm10" bitsize="128" type="vec128"/><reg name="xmm11" bitsize="128" type="vec128"/><reg name="xmm12" bitsize="128" type="vec128"/><reg name="xmm13" bitsize="128" type="vec128"/><reg name="xmm14" bitsize="128" type="vec128"/><reg name="xmm15" bitsize="128" type="vec128"/>"#,
    r#"<feature name="org.gnu.gdb.i386.segments"><reg name="fs_base" bitsize="64" type="int"/><reg name="gs_base" bitsize="64" type="int"/></feature><feature name="org.ktvmm.x86.system">CR_FLAGS<reg name="k_gs_base" bitsize="64" type="int" group="system"/><reg name="cr0" bitsize="64" type="x86_cr0" group="system"/><reg name="cr2" bitsize="64" type="data_ptr" group="system"/><reg name="cr3" bitsize="64" type="int" group="system"/><reg name="cr4" bitsize="64" type="x86_cr4" group="system"/><reg name="cr8" bitsize="64" type="int" group="system"/><reg name="efer" bitsize="64" type="x86_efer" group="system"/></feature>"#
);

const TARGET_XML_32_TEMPLATE: &str = target_xml!(
    "i386",
    r#"<reg name="eax" bitsize="32" type="int32"/><reg name="ecx" bitsize="32" type="int32"/><reg name="edx" bitsize="32" type="int32"/><reg name="ebx" bitsize="32" type="int32"/><reg name="esp" bitsize="32" type="data_ptr"/><reg name="ebp" bitsize="32" type="data_ptr"/><reg name="esi" bitsize="32" type="int32"/><reg name="edi" bitsize="32" type="int32"/>"#,
    r#"<reg name="eip" bitsize="32" type="code_ptr"/>"#,
    r#"<reg name="xmm0" bitsize="128" type="vec128"/><reg name="xmm1" bitsize="128" type="vec128"/><reg name="xmm2" bitsize="128" type="vec128"/><reg name="xmm3" bitsize="128" type="vec128"/><reg name="xmm4" bitsize="128" type="vec128"/><reg name="xmm5" bitsize="128" type="vec128"/><reg name="xmm6" bitsize="128" type="vec128"/><reg name="xmm7" bitsize="128" type="vec128"/>"#,
    // GDB 13's i386 (unlike its amd64) asserts on the segments feature:
    // the bases go with the system registers.
    r#"<feature name="org.ktvmm.x86.system">CR_FLAGS<reg name="fs_base" bitsize="32" type="int" group="system"/><reg name="gs_base" bitsize="32" type="int" group="system"/><reg name="cr0" bitsize="32" type="x86_cr0" group="system"/><reg name="cr2" bitsize="32" type="data_ptr" group="system"/><reg name="cr3" bitsize="32" type="int" group="system"/><reg name="cr4" bitsize="32" type="x86_cr4" group="system"/><reg name="cr8" bitsize="32" type="int" group="system"/><reg name="efer" bitsize="32" type="x86_efer" group="system"/></feature>"#
);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(file: RegisterFile) -> GuestRegs {
        let mut regs = GuestRegs {
            file,
            ..GuestRegs::default()
        };
        // i386 has no r8-r15.
        let gprs = if file == RegisterFile::X86_64 { 16 } else { 8 };
        regs.core.regs = std::array::from_fn(|i| if i < gprs { 0x1111_0000 + i as u64 } else { 0 });
        regs.core.rip = 0x40_0005;
        regs.core.eflags = 0x202;
        regs.system = SystemRegs {
            fs_base: 0x10,
            gs_base: 0x20,
            k_gs_base: if file == RegisterFile::X86_64 {
                0x30
            } else {
                0
            },
            cr0: 0x8000_0011,
            cr2: 0x40,
            cr3: 0x3000,
            cr4: 0x20,
            cr8: 0,
            efer: 0x500,
        };
        regs
    }

    /// What GDB reads it writes back unchanged, in either layout, at the
    /// length its target.xml describes.
    #[test]
    fn both_layouts_round_trip() {
        for (file, len) in [
            (RegisterFile::X86_64, CORE_64_LEN + SYSTEM_64_LEN),
            (RegisterFile::I386, CORE_32_LEN + SYSTEM_32_LEN),
        ] {
            let regs = sample(file);
            let mut bytes = Vec::new();
            regs.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
            assert_eq!(bytes.len(), len, "{file:?}");
            let mut back = GuestRegs::default();
            back.gdb_deserialize(&bytes).unwrap();
            assert_eq!(back, regs, "{file:?}");
        }
        // i386 order: eax, ecx, edx, ebx; EIP after the eight.
        let mut bytes = Vec::new();
        sample(RegisterFile::I386).gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes[4..8], 0x1111_0002u32.to_le_bytes());
        assert_eq!(bytes[32..36], 0x40_0005u32.to_le_bytes());
        assert!(GuestRegs::default().gdb_deserialize(&bytes[1..]).is_err());
    }

    #[test]
    fn the_file_follows_the_elf_class_and_names_every_register() {
        assert_eq!(RegisterFile::of_elf(b"\x7fELF\x01"), RegisterFile::I386);
        assert_eq!(RegisterFile::of_elf(b"\x7fELF\x02"), RegisterFile::X86_64);
        assert_eq!(RegisterFile::of_elf(b"MZ"), RegisterFile::X86_64);
        for (file, regs) in [
            (RegisterFile::X86_64, 16 + 1 + 1 + 6 + 16 + 16 + 1 + 9),
            (RegisterFile::I386, 8 + 1 + 1 + 6 + 16 + 8 + 1 + 8),
        ] {
            let xml = file.target_xml();
            assert_eq!(xml.matches("<reg ").count(), regs, "{file:?}");
            assert!(!xml.contains("SIZE") && !xml.contains("X87"), "{file:?}");
            assert!(xml.contains(&format!("<architecture>{}</architecture>", file.name())));
        }
    }
}
