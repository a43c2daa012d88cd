//! The raw KVM floor: the least any VMM must do to run guest code (open KVM,
//! create a VM with one page of memory and one vCPU, run six real-mode
//! instructions to `HLT`). `ktvmm bench` measures ktvmm against it.

use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemory;

const CODE_ADDR: u64 = 0x1000;
/// mov ax, 0x1234; add ax, 1; mov bx, ax; inc bx; nop; hlt
const CODE: [u8; 10] = [0xb8, 0x34, 0x12, 0x05, 0x01, 0x00, 0x89, 0xc3, 0x43, 0xf4];

/// Runs the floor once; an error says which step failed.
pub fn run_once() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 0x2000)])
        .map_err(|e| format!("guest memory: {e}"))?;
    memory
        .write_slice(&CODE, GuestAddress(CODE_ADDR))
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
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    let result = match vcpu.run() {
        Ok(VcpuExit::Hlt) => Ok(()),
        Ok(other) => Err(format!("expected HLT, got {other:?}")),
        Err(e) => Err(format!("KVM_RUN: {e}")),
    };
    drop(vcpu);
    drop(vm);
    result
}
