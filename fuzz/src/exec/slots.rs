//! Guest memory slots beyond RAM: host memory for them and the
//! `KVM_SET_USER_MEMORY_REGION` calls that place, move and delete them.

use kvm_bindings::kvm_userspace_memory_region;

use super::{Built, Calls};
use crate::program::RAM_SIZE;

/// Anonymous host memory for an extra slot.
pub(super) struct HostPages {
    pub(super) ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; KVM accesses it
// through the slot, never through the pointer.
unsafe impl Send for HostPages {}

impl HostPages {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(HostPages { ptr, len })
    }
}

impl Drop for HostPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by any VM
        // (`Built` drops its VM first).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

pub(super) fn slot_region(
    slot: u32,
    gpa: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    }
}

/// Slot 0 is RAM; slots 1-3 get 64 KiB of their own the first time.
pub(super) fn set_slot(
    built: &mut Built,
    calls: &mut Calls<'_>,
    slot: u32,
    gpa: u64,
    pages: u64,
    flags: u32,
) {
    let size = (pages * 0x1000).min(if slot == 0 { RAM_SIZE } else { 0x1_0000 });
    let host = if slot == 0 {
        built.ram_host
    } else if let Some((_, pages)) = built.extra.iter().find(|(s, _)| *s == slot) {
        pages.ptr as u64
    } else {
        let Some(pages) = HostPages::new(0x1_0000) else {
            return;
        };
        let host = pages.ptr as u64;
        built.extra.push((slot, pages));
        host
    };
    let region = slot_region(slot, gpa, size, host, flags);
    // SAFETY: the memory behind every slot lives in `built`, which drops
    // the VM fd first.
    calls.call("KVM_SET_USER_MEMORY_REGION", unsafe {
        built.vm.set_user_memory_region(region)
    });
}
