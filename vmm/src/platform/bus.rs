//! One bus type for port I/O and for MMIO: address windows mapped to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use ktvmm_testdevs::{Action, BusDevice};

/// The port and memory buses every vCPU dispatches to.
#[derive(Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device window could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A window of length zero.
    #[error("device window at {0:#x} has zero length")]
    ZeroLength(u64),
    /// The window runs past the end of the address space.
    #[error("device window at {base:#x} of {len:#x} bytes overflows the address space")]
    Overflow {
        /// Start of the window.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The window overlaps one that is already there.
    #[error("device window {base:#x}+{len:#x} overlaps the one at {other:#x}")]
    Overlap {
        /// Start of the refused window.
        base: u64,
        /// Its length.
        len: u64,
        /// Start of the window it collides with.
        other: u64,
    },
}

/// Part of an access: its bytes, and the device and offset they go to
/// (`None`: nothing decodes them).
type Piece = (std::ops::Range<usize>, Option<(SharedDevice, u64)>);

struct Window {
    len: u64,
    device: SharedDevice,
}

/// Address windows, each owned by one device; windows never overlap.
///
/// Windows can come and go while vCPUs dispatch (a guest moving a PCI BAR),
/// so the map sits behind a lock that is never held while a device runs:
/// a device may itself move windows.
#[derive(Default)]
pub struct Bus {
    windows: RwLock<BTreeMap<u64, Window>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        // The only candidate is the window starting at or below `last` with
        // the highest base: windows do not overlap each other.
        if let Some((&other, window)) = windows.range(..=last).next_back()
            && other + (window.len - 1) >= base
        {
            return Err(BusError::Overlap { base, len, other });
        }
        windows.insert(base, Window { len, device });
        Ok(())
    }

    /// Removes the window that starts at `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        windows.remove(&base).is_some()
    }

    /// Puts what `wrap` makes of the device at `base` in its place (a
    /// wrapper that watches or changes its accesses); returns whether a
    /// window starts at `base`.
    pub fn wrap(&self, base: u64, wrap: impl FnOnce(SharedDevice) -> SharedDevice) -> bool {
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        match windows.get_mut(&base) {
            Some(window) => {
                window.device = wrap(window.device.clone());
                true
            }
            None => false,
        }
    }

    /// The device whose window holds the whole access `[addr, addr + size)`,
    /// and the offset of `addr` inside that window.
    fn resolve(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let (&base, window) = windows.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= window.len).then(|| (window.device.clone(), offset))
    }

    /// An access that does not fit one window, cut where windows begin and
    /// end, as QEMU's memory core cuts it: each piece is `(bytes of the
    /// access, device and offset)` or `(bytes, None)` where nothing decodes.
    fn split(&self, addr: u64, size: usize) -> Vec<Piece> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < size {
            let Some(at) = addr.checked_add(done as u64) else {
                // Past the top of the address space: nothing decodes.
                pieces.push((done..size, None));
                break;
            };
            let left = (size - done) as u64;
            let inside = windows
                .range(..=at)
                .next_back()
                .filter(|(base, w)| at - **base < w.len);
            let (len, target) = match inside {
                Some((&base, w)) => {
                    let len = left.min(w.len - (at - base));
                    (len, Some((w.device.clone(), at - base)))
                }
                None => {
                    let next = windows.range(at..).next().map(|(&b, _)| b - at);
                    (next.map_or(left, |n| n.min(left)), None)
                }
            };
            let len = len as usize;
            pieces.push((done..done + len, target));
            done += len;
        }
        pieces
    }

    /// A guest read. Bytes no device decodes read as all-ones, as on a PC
    /// bus with nothing behind it; returns whether a device answered.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some((device, offset)) = self.resolve(addr, data.len()) {
            data.fill(0);
            lock(&device).read(offset, data);
            return true;
        }
        let mut answered = false;
        for (range, target) in self.split(addr, data.len()) {
            let piece = &mut data[range];
            match target {
                Some((device, offset)) => {
                    piece.fill(0);
                    lock(&device).read(offset, piece);
                    answered = true;
                }
                None => piece.fill(0xff),
            }
        }
        if !answered {
            log::debug!("unclaimed read of {} bytes at {addr:#x}", data.len());
        }
        answered
    }

    /// A guest write. Bytes no device decodes are dropped; the first piece
    /// that ends the VM decides the action.
    pub fn write(&self, addr: u64, data: &[u8]) -> Action {
        if let Some((device, offset)) = self.resolve(addr, data.len()) {
            return lock(&device).write(offset, data);
        }
        let mut action = Action::Continue;
        for (range, target) in self.split(addr, data.len()) {
            match target {
                Some((device, offset)) => {
                    let result = lock(&device).write(offset, &data[range]);
                    if action == Action::Continue {
                        action = result;
                    }
                }
                None => log::debug!("unclaimed write of {} bytes at {addr:#x}", range.len()),
            }
        }
        action
    }
}

/// A device whose lock was poisoned by a panic on another vCPU thread still
/// holds consistent register state for our purposes: the run is ending anyway.
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access and answers reads with its offset.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Action {
            self.last_write = Some((offset, data.to_vec()));
            Action::Exit(7)
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn refuses_zero_length_overflow_and_overlap() {
        let bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(), 0x10, 0),
            Err(BusError::ZeroLength(0x10))
        );
        assert!(matches!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        bus.insert(recorder(), 0x10, 0x10).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x0, 0x100), (0x14, 2)] {
            assert!(
                matches!(
                    bus.insert(recorder(), base, len),
                    Err(BusError::Overlap { other: 0x10, .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(recorder(), 0x8, 8).unwrap();
        bus.insert(recorder(), 0x20, 1).unwrap();
        bus.insert(recorder(), u64::MAX, 1).unwrap();
    }

    #[test]
    fn removed_windows_stop_decoding_and_free_their_range() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x100).unwrap();
        assert!(bus.remove(0x1000));
        assert!(!bus.remove(0x1000));
        let mut data = [0u8; 1];
        assert!(!bus.read(0x1000, &mut data));
        bus.insert(recorder(), 0x1080, 0x100).unwrap();
    }

    #[test]
    fn dispatches_with_window_offsets() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
        assert_eq!(bus.write(0x3fd, &[9]), Action::Exit(7));
        assert_eq!(dev.lock().unwrap().last_write, Some((5, vec![9])));
    }

    #[test]
    fn unclaimed_accesses_read_all_ones() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x10, 4).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x100, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.write(0x100, &[1, 2]), Action::Continue);
    }

    #[test]
    fn straddling_accesses_reach_the_part_inside() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x10, 4).unwrap();
        // A word write at the window's last byte: the first byte lands.
        assert_eq!(bus.write(0x13, &[1, 2]), Action::Exit(7));
        assert_eq!(dev.lock().unwrap().last_write, Some((3, vec![1])));
        // A read starting below the window: unclaimed bytes are all-ones.
        let mut data = [0u8; 4];
        assert!(bus.read(0xe, &mut data));
        assert_eq!(data, [0xff, 0xff, 0, 0]);
        // Two adjacent windows share one access.
        let other = recorder();
        bus.insert(other.clone(), 0x14, 4).unwrap();
        assert_eq!(bus.write(0x12, &[1, 2, 3, 4]), Action::Exit(7));
        assert_eq!(dev.lock().unwrap().last_write, Some((2, vec![1, 2])));
        assert_eq!(other.lock().unwrap().last_write, Some((0, vec![3, 4])));
    }

    #[test]
    fn accesses_at_the_top_of_the_address_space_do_not_wrap() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), u64::MAX, 1).unwrap();
        bus.insert(recorder(), 0, 4).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(u64::MAX - 1, &mut data));
        assert_eq!(data, [0xff, 0, 0xff, 0xff]);
        assert_eq!(bus.write(u64::MAX, &[5, 6]), Action::Exit(7));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![5])));
    }
}
