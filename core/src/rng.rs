//! The node's own pseudo-random generator, seeded by the host (no entropy source in the core).

/// SplitMix64: tiny, fast and good enough for election jitter.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[lo, lo + span)`; `lo` when `span` is 0.
    pub(crate) fn in_range(&mut self, lo: u64, span: u64) -> u64 {
        if span == 0 {
            lo
        } else {
            lo + self.next_u64() % span
        }
    }
}
