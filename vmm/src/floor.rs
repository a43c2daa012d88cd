//! The raw KVM floor: the least any VMM must do to run guest code (open KVM,
//! create a VM with one page of memory and one vCPU, run six real-mode
//! instructions to `HLT`). `ktvmm bench` measures ktvmm against it.

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::long_mode;
use crate::memory::GuestMemory;

const CODE_ADDR: u64 = 0x1000;
/// Room for the code, long mode's tables and a stack.
const SCRATCH_RAM: u64 = 0x20_0000;
/// Long mode's IDT: every exception vector leads to a `hlt` at HANDLER_ADDR.
const IDT_ADDR: u64 = 0x2000;
const EXCEPTIONS: usize = 32;
/// Where long mode's exception handler (`hlt`) is.
pub const HANDLER_ADDR: u64 = 0x1800;
const HALT: [u8; 1] = [0xf4];

/// 64-bit interrupt gates to HANDLER_ADDR for the exception vectors.
fn idt() -> Vec<u8> {
    let gate = u128::from(HANDLER_ADDR & 0xffff)
        | u128::from(ktvmm_abi::gdt::KERNEL_CODE) << 16
        // Present, DPL 0, 64-bit interrupt gate.
        | 0x8e << 40
        | u128::from(HANDLER_ADDR >> 16) << 48;
    (0..EXCEPTIONS).flat_map(|_| gate.to_le_bytes()).collect()
}
/// mov ax, 0x1234; add ax, 1; mov bx, ax; inc bx; nop; hlt
const CODE: [u8; 10] = [0xb8, 0x34, 0x12, 0x05, 0x01, 0x00, 0x89, 0xc3, 0x43, 0xf4];

/// Runs the floor once; an error says which step failed.
pub fn run_once() -> Result<(), String> {
    run_code(
        &CODE,
        Mode::Real,
        |_| Ok(()),
        |exit| match exit {
            Ok(VcpuExit::Hlt) => Ok(()),
            Ok(other) => Err(format!("expected HLT, got {other:?}")),
            Err(e) => Err(format!("KVM_RUN: {e}")),
        },
    )?
}

/// The mode a scratch VM's code starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Real mode at 0:0x1000, as a CPU comes out of reset (but for CS).
    Real,
    /// 64-bit long mode at 0x1000, identity-mapped, with ktvmm's ELF64
    /// entry state; an exception the code raises runs a `hlt` at
    /// [`HANDLER_ADDR`].
    Long,
}

/// Runs `code` at 0x1000 in a VM of its own (2 MiB of memory, one vCPU,
/// `prepare` done on the vCPU first) up to its first exit, which `judge`
/// reads. For questions about what this host's KVM does.
pub fn run_code<T>(
    code: &[u8],
    mode: Mode,
    prepare: impl FnOnce(&VcpuFd) -> Result<(), String>,
    judge: impl FnOnce(Result<VcpuExit<'_>, kvm_ioctls::Error>) -> T,
) -> Result<T, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let memory = GuestMemory::from_ranges(&[(GuestAddress(0), SCRATCH_RAM as usize)])
        .map_err(|e| format!("guest memory: {e}"))?;
    memory
        .write_slice(code, GuestAddress(CODE_ADDR))
        .map_err(|e| format!("write code: {e}"))?;
    let region = memory.iter().next().ok_or("no memory region")?;
    let slot = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: `memory` outlives the VM fd, which is dropped first below.
    unsafe { vm.set_user_memory_region(slot) }.map_err(|e| format!("memory slot: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let regs = match mode {
        Mode::Real => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            kvm_bindings::kvm_regs {
                rip: CODE_ADDR,
                rflags: 2,
                ..Default::default()
            }
        }
        Mode::Long => {
            let gdt_limit = long_mode::write_page_tables(&memory, 1 << 30)
                .and_then(|()| long_mode::write_gdt_and_tss(&memory, 1, |_| SCRATCH_RAM))
                .and_then(|limit| {
                    memory.write_slice(&HALT, GuestAddress(HANDLER_ADDR))?;
                    memory.write_slice(&idt(), GuestAddress(IDT_ADDR))?;
                    Ok(limit)
                })
                .map_err(|e| format!("long-mode tables: {e}"))?;
            sregs = long_mode::sregs(sregs, 0, gdt_limit);
            sregs.idt.base = IDT_ADDR;
            sregs.idt.limit = (EXCEPTIONS * 16 - 1) as u16;
            long_mode::regs(CODE_ADDR, 0, SCRATCH_RAM)
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    prepare(&vcpu)?;
    let result = judge(vcpu.run());
    drop(vcpu);
    drop(vm);
    Ok(result)
}
