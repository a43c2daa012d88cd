//! Mutated and truncated kernel images, from fixed seeds: the loaders
//! refuse them with an error or accept them, and never panic.

use ktvmm_fuzz::parsers::loaders;
use ktvmm_fuzz::rng::SplitMix64 as Rng;
use ktvmm_vmm::boot::test_images::{elf32_multiboot, elf64, exit_with};

const ROUNDS: usize = 20_000;

/// A few bytes of `image` changed: header fields, sizes and offsets are
/// near the start, so mutations favour it.
fn mutate(image: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = image.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if rng.below(4) == 0 {
            rng.below(out.len())
        } else {
            rng.below(out.len().min(0x80))
        };
        out[at] = match rng.below(4) {
            0 => 0xff,
            1 => 0,
            2 => out[at].wrapping_add(1),
            _ => rng.next() as u8,
        };
    }
    if rng.below(5) == 0 {
        out.truncate(rng.below(out.len() + 1));
    }
    out
}

#[test]
fn mutated_images_never_panic_the_loaders() {
    let seeds = [
        elf64(0x10_0000, &exit_with(0), 0x1000),
        elf32_multiboot(0x40_0000, &exit_with(0), 0x1000),
    ];
    let mut rng = Rng(0x10ad);
    let mut accepted = 0;
    for round in 0..ROUNDS {
        let image = mutate(&seeds[round % seeds.len()], &mut rng);
        if loaders(&image) {
            accepted += 1;
        }
    }
    // Some mutations leave a valid image (a changed code byte, say): the
    // fuzzing reaches the accepting paths too.
    assert!(
        accepted > 0 && accepted < ROUNDS,
        "accepted {accepted} of {ROUNDS}"
    );
}

#[test]
fn the_loaders_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/loaders");
    let mut accepted = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        if loaders(&std::fs::read(entry.unwrap().path()).unwrap()) {
            accepted += 1;
        }
    }
    // The corpus holds one valid image of each kind.
    assert!(accepted >= 2, "accepted {accepted}");
}
