//! SplitMix64: a small generator whose sequence for a seed is the same on
//! every machine, so a seed names the same inputs everywhere (the fuzz
//! harness, `ktvmm test --shuffle`, the fixed-seed fuzz tests).

/// The generator; its state is the seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// The generator for item `index` of a run seeded with `seed`: each
    /// item's stream depends only on both, so runs split across threads
    /// draw the same inputs as a run on one.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut mix = SplitMix64(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
        SplitMix64(mix.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed() {
        // The published SplitMix64 outputs for seed 0.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(SplitMix64(3).below(0), 0);
    }

    #[test]
    fn item_streams_differ_and_repeat() {
        let a = SplitMix64::for_item(1, 0).next();
        assert_eq!(a, SplitMix64::for_item(1, 0).next());
        assert_ne!(a, SplitMix64::for_item(1, 1).next());
        assert_ne!(a, SplitMix64::for_item(2, 0).next());
    }
}
