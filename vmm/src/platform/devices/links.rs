//! The KVM side of the traits test devices talk through: interrupt lines
//! (`KVM_IRQ_LINE`), MSIs (`KVM_SIGNAL_MSI`), DMA into guest RAM
//! (bounds-checked through vm-memory), and a device thread for deferred work.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use ktvmm_testdevs::{Deferred, DmaError, DmaMemory, InterruptLine, MsiSender, PageFlush};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

/// A level-triggered line into the in-kernel PIC/IOAPIC.
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    /// The line into global system interrupt `gsi`.
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }
}

impl InterruptLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            log::warn!("KVM_IRQ_LINE {} {high}: {e}", self.gsi);
        }
    }
}

/// MSIs through `KVM_SIGNAL_MSI`.
pub struct KvmMsi {
    vm: Arc<VmFd>,
}

impl KvmMsi {
    /// MSIs into `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm }
    }
}

/// Where MSI writes are interrupts: the LAPICs' window.
const MSI_WINDOW: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

impl MsiSender for KvmMsi {
    fn send(&self, address: u64, data: u32) {
        // Outside the window the message would be a plain memory write on
        // real hardware; KVM would still read a destination out of the
        // address bits and deliver it. ktvmm delivers nothing.
        if !MSI_WINDOW.contains(&address) {
            log::debug!("MSI to {address:#x} (not the LAPIC window) dropped");
            return;
        }
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        // A guest may program any address; KVM refusing or dropping the
        // message is the guest's problem, not ours.
        match self.vm.signal_msi(msi) {
            Ok(0) => log::debug!("MSI {address:#x}/{data:#x} was not delivered"),
            Ok(_) => {}
            Err(e) => log::debug!("KVM_SIGNAL_MSI {address:#x}/{data:#x}: {e}"),
        }
    }
}

/// Guest RAM as a DMA target: an access must lie entirely inside RAM or
/// nothing is read or written.
pub struct GuestDma {
    memory: GuestMemory,
}

impl GuestDma {
    /// DMA into `memory`.
    pub fn new(memory: GuestMemory) -> Self {
        Self { memory }
    }

    fn check(&self, addr: u64, len: usize) -> Result<GuestAddress, DmaError> {
        let error = DmaError { addr, len };
        // check_range also refuses ranges that straddle two RAM regions with
        // a hole between them (the MMIO hole).
        (len == 0 || self.memory.check_range(GuestAddress(addr), len))
            .then_some(GuestAddress(addr))
            .ok_or(error)
    }
}

impl DmaMemory for GuestDma {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let at = self.check(addr, buf.len())?;
        self.memory.read_slice(buf, at).map_err(|_| DmaError {
            addr,
            len: buf.len(),
        })
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
        let at = self.check(addr, buf.len())?;
        self.memory.write_slice(buf, at).map_err(|_| DmaError {
            addr,
            len: buf.len(),
        })
    }
}

/// Drops the host mapping of guest pages so that KVM faults them in again.
pub struct GuestPages {
    memory: GuestMemory,
}

const PAGE_SIZE: u64 = 4096;

impl GuestPages {
    /// Pages of `memory`.
    pub fn new(memory: GuestMemory) -> Self {
        Self { memory }
    }

    /// Makes the next guest access to the page holding `gpa` fault: the
    /// host page-table entries go (mprotect to nothing and back, as QEMU's
    /// pc-testdev does), KVM's MMU notifier drops its mapping, and the data
    /// stays. Returns false when `gpa` is not RAM.
    pub fn flush_page(&self, gpa: u64) -> bool {
        let page = GuestAddress(gpa & !(PAGE_SIZE - 1));
        if !self.memory.check_range(page, PAGE_SIZE as usize) {
            return false;
        }
        let Ok(host) = self.memory.get_host_address(page) else {
            return false;
        };
        let host = host.cast::<libc::c_void>();
        // SAFETY: `host` is the page-aligned start of one page inside a
        // mapping that `memory` owns and keeps alive; the protection is
        // restored at once, and nothing in this process touches guest pages
        // in between but vCPUs, which simply fault and retry in KVM.
        let ok = unsafe {
            libc::mprotect(host, PAGE_SIZE as usize, libc::PROT_NONE) == 0
                && libc::mprotect(host, PAGE_SIZE as usize, libc::PROT_READ | libc::PROT_WRITE) == 0
        };
        if !ok {
            log::warn!(
                "flushing guest page {:#x}: {}",
                page.0,
                std::io::Error::last_os_error()
            );
        }
        ok
    }
}

impl PageFlush for GuestPages {
    fn flush_page(&self, gpa: u64) {
        if !GuestPages::flush_page(self, gpa) {
            log::debug!("pc-testdev: no page to flush at {gpa:#x}");
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs device work off the vCPU threads, in order. It ends
/// when the last handle is dropped (with the VM).
pub struct DeviceThread {
    jobs: Mutex<Sender<Job>>,
}

impl DeviceThread {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(Arc::new(Self {
            jobs: Mutex::new(jobs),
        }))
    }
}

impl Deferred for DeviceThread {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        let jobs = crate::platform::bus::lock(&self.jobs);
        if jobs.send(work).is_err() {
            log::debug!("device thread is gone; dropping deferred work");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamLayout;

    #[test]
    fn dma_outside_ram_touches_nothing() {
        let memory = RamLayout::new(8).unwrap().allocate().unwrap();
        let dma = GuestDma::new(memory.clone());
        dma.write(0x1000, b"hello").unwrap();
        let mut back = [0u8; 5];
        dma.read(0x1000, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        let end = 8 << 20;
        assert!(dma.write(end - 2, b"abcd").is_err());
        let mut tail = [0u8; 2];
        memory.read_slice(&mut tail, GuestAddress(end - 2)).unwrap();
        assert_eq!(
            tail,
            [0, 0],
            "a refused write must not write a partial prefix"
        );
        assert!(dma.read(u64::MAX - 1, &mut back).is_err());
        assert!(dma.write(0xfee0_0000, b"x").is_err());
    }

    #[test]
    fn a_flushed_page_keeps_its_data() {
        let memory = RamLayout::new(8).unwrap().allocate().unwrap();
        memory.write_slice(b"kept", GuestAddress(0x5004)).unwrap();
        let pages = GuestPages::new(memory.clone());
        assert!(pages.flush_page(0x5004));
        let mut back = [0u8; 4];
        memory.read_slice(&mut back, GuestAddress(0x5004)).unwrap();
        assert_eq!(&back, b"kept");
        assert!(!pages.flush_page(8 << 20), "past the end of RAM");
        assert!(!pages.flush_page(u64::MAX));
    }

    #[test]
    fn deferred_work_runs_in_order_on_the_device_thread() {
        let thread = DeviceThread::start().unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            thread.defer(Box::new(move || {
                tx.send((i, thread::current().name().map(String::from)))
                    .unwrap();
            }));
        }
        let got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got[2], (2, Some("devices".to_string())));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
