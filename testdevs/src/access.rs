//! How QEMU's memory core cuts a guest access into pieces before a device
//! model sees them, so that our models answer odd-sized and unaligned
//! accesses exactly as QEMU's do.
//!
//! QEMU (`memory_access_size` in system/physmem.c) hands a device one
//! naturally aligned piece at a time, no wider than the region's largest
//! valid access (4 bytes when the region does not say): an 8-byte access at
//! offset 4 of edu becomes two 4-byte accesses, a 2-byte access at offset 3
//! of a byte-wide port becomes two 1-byte ones. Whether each piece is then
//! accepted is up to the device's own size rules.

/// One piece of a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Offset of the piece in the device window.
    pub offset: u64,
    /// Index of its first byte in the guest's data.
    pub start: usize,
    /// Its width: 1, 2, 4 or 8 bytes, never more than the maximum asked for.
    pub len: usize,
}

impl Piece {
    /// The piece's bytes of the guest's data.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// The pieces of an access of `len` bytes at `offset` to a region whose
/// widest access is `max` bytes (a power of two). Stops early, rather than
/// wrapping, if the access would run past the end of the address space.
pub(crate) fn pieces(offset: u64, len: usize, max: usize) -> Pieces {
    Pieces {
        offset: Some(offset),
        start: 0,
        len,
        max: max.max(1),
    }
}

/// Iterator returned by [`pieces`].
pub(crate) struct Pieces {
    offset: Option<u64>,
    start: usize,
    len: usize,
    max: usize,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let offset = self.offset?;
        let remaining = self.len.checked_sub(self.start).filter(|&r| r > 0)?;
        let mut widest = self.max;
        // Offset 0 is aligned to anything; elsewhere the lowest set bit bounds
        // the width, as QEMU's `addr & -addr`.
        if offset != 0 {
            let alignment = 1u64 << offset.trailing_zeros();
            if alignment < widest as u64 {
                widest = alignment as usize;
            }
        }
        let len = pow2_floor(remaining.min(widest));
        let piece = Piece {
            offset,
            start: self.start,
            len,
        };
        self.start += len;
        self.offset = offset.checked_add(len as u64);
        Some(piece)
    }
}

/// The largest power of two not above `n` (`n` >= 1).
fn pow2_floor(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

/// Little-endian value of up to 8 bytes.
pub(crate) fn le_value(bytes: &[u8]) -> u64 {
    let mut value = [0u8; 8];
    let n = bytes.len().min(8);
    value[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(value)
}

/// Stores the low `out.len()` bytes (at most 8) of `value` in little-endian
/// order.
pub(crate) fn put_le(out: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    let n = out.len().min(8);
    out[..n].copy_from_slice(&bytes[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(offset: u64, len: usize, max: usize) -> Vec<(u64, usize)> {
        pieces(offset, len, max)
            .map(|p| (p.offset, p.len))
            .collect()
    }

    #[test]
    fn aligned_accesses_stay_whole() {
        assert_eq!(cut(0, 8, 8), [(0, 8)]);
        assert_eq!(cut(0x80, 8, 8), [(0x80, 8)]);
        assert_eq!(cut(0x24, 4, 8), [(0x24, 4)]);
        assert_eq!(cut(2, 2, 4), [(2, 2)]);
    }

    #[test]
    fn misaligned_or_wide_accesses_are_cut_like_qemu() {
        assert_eq!(cut(0x84, 8, 8), [(0x84, 4), (0x88, 4)]);
        assert_eq!(cut(2, 4, 8), [(2, 2), (4, 2)]);
        assert_eq!(cut(1, 4, 8), [(1, 1), (2, 2), (4, 1)]);
        assert_eq!(cut(0, 8, 4), [(0, 4), (4, 4)]);
        assert_eq!(cut(0x2000, 2, 1), [(0x2000, 1), (0x2001, 1)]);
        assert_eq!(cut(6, 3, 8), [(6, 2), (8, 1)]);
        let starts: Vec<usize> = pieces(1, 4, 8).map(|p| p.start).collect();
        assert_eq!(starts, [0, 1, 3]);
    }

    #[test]
    fn nothing_wraps_past_the_end_of_the_address_space() {
        assert_eq!(cut(u64::MAX, 8, 8), [(u64::MAX, 1)]);
        assert_eq!(cut(u64::MAX - 1, 8, 8), [(u64::MAX - 1, 2)]);
        assert_eq!(cut(5, 0, 8), []);
        assert_eq!(cut(0, 3, 0), [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn little_endian_helpers() {
        assert_eq!(le_value(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
        assert_eq!(le_value(&[1; 12]), 0x0101_0101_0101_0101);
        let mut out = [0u8; 3];
        put_le(&mut out, 0xaabb_ccdd);
        assert_eq!(out, [0xdd, 0xcc, 0xbb]);
    }
}
