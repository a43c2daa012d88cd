//! Guest RAM: its layout below and above the PCI hole, and its allocation.

use ktvmm_abi::layout::{MAX_MAPPED_GIB, MMIO_HOLE_END, MMIO_HOLE_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM as the VMM uses it.
pub type GuestMemory = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The least RAM a guest can have: the reserved first MiB, an image, stacks.
pub const MIN_MEM_MIB: u64 = 8;
/// The most RAM the identity map can cover (the hole is not RAM).
pub const MAX_MEM_MIB: u64 = (MAX_MAPPED_GIB * GIB - (MMIO_HOLE_END - MMIO_HOLE_START)) / MIB;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Too little or too much RAM asked for.
    #[error(
        "memory size {mib} MiB is out of range: ktvmm supports {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB"
    )]
    OutOfRange {
        /// The size asked for.
        mib: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map {mib} MiB of guest memory on this host: {source}")]
    Map {
        /// The size asked for.
        mib: u64,
        /// What the host said.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Where guest RAM lives: `[0, low_end)` and, for large guests,
/// `[4 GiB, high_end)`; the PCI/MMIO hole in between is never RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    /// Total RAM in bytes.
    pub size: u64,
    /// End of RAM below the hole.
    pub low_end: u64,
    /// End of RAM above 4 GiB, or `None` when everything fits below the hole.
    pub high_end: Option<u64>,
}

impl RamLayout {
    /// The layout of `mib` MiB of RAM, or why it cannot be had.
    pub fn new(mib: u64) -> Result<Self, MemoryError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
            return Err(MemoryError::OutOfRange { mib });
        }
        let size = mib * MIB;
        let low_end = size.min(MMIO_HOLE_START);
        let high_end = (size > low_end).then(|| MMIO_HOLE_END + (size - low_end));
        Ok(Self {
            size,
            low_end,
            high_end,
        })
    }

    /// The RAM ranges as (start, length).
    pub fn ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut ranges = vec![(GuestAddress(0), self.low_end as usize)];
        if let Some(high_end) = self.high_end {
            ranges.push((
                GuestAddress(MMIO_HOLE_END),
                (high_end - MMIO_HOLE_END) as usize,
            ));
        }
        ranges
    }

    /// End of the identity map: all RAM and the 4 GiB below it.
    pub fn identity_map_end(&self) -> u64 {
        self.high_end
            .unwrap_or(0)
            .max(MMIO_HOLE_END)
            .next_multiple_of(GIB)
    }

    /// Allocates the RAM (lazily: the host backs pages when they are touched).
    pub fn allocate(&self) -> Result<GuestMemory, MemoryError> {
        GuestMemory::from_ranges(&self.ranges()).map_err(|source| MemoryError::Map {
            mib: self.size / MIB,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_live_below_the_hole() {
        let layout = RamLayout::new(128).unwrap();
        assert_eq!(layout.low_end, 128 * MIB);
        assert_eq!(layout.high_end, None);
        assert_eq!(layout.identity_map_end(), 4 * GIB);
        assert_eq!(
            layout.ranges(),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
    }

    #[test]
    fn large_guests_continue_above_4_gib() {
        let layout = RamLayout::new(5 * 1024).unwrap();
        assert_eq!(layout.low_end, MMIO_HOLE_START);
        assert_eq!(layout.high_end, Some(MMIO_HOLE_END + 2 * GIB));
        assert_eq!(layout.identity_map_end(), 6 * GIB);
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(matches!(
            RamLayout::new(0),
            Err(MemoryError::OutOfRange { mib: 0 })
        ));
        assert!(RamLayout::new(MAX_MEM_MIB + 1).is_err());
        let largest = RamLayout::new(MAX_MEM_MIB).unwrap();
        assert_eq!(largest.identity_map_end(), MAX_MAPPED_GIB * GIB);
    }
}
