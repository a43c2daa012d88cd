//! Random access sequences against every device's register interface, from
//! fixed seeds (the same sequences every run): no panic, whatever the guest
//! writes, and the invariants a guest relies on keep holding.

use std::sync::Arc;

use ktvmm_testdevs::fuzzing::{FakeRam, NoLinks as Nothing};
use ktvmm_testdevs::pci::reg;
use ktvmm_testdevs::{
    BusDevice, Edu, EduLinks, InterruptLine, PcTestdevIomem, PcTestdevIrqs, PcTestdevPorts,
    PciDevice, PciTestdev, Postfix,
};

/// Operations per device and seed.
const OPS: usize = 20_000;
const SEEDS: [u64; 4] = [1, 2, 0x5eed, 0xdead_beef];

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An access width as guests make them (1, 2, 4, 8), now and then an
    /// odd one a string instruction could produce.
    fn width(&mut self) -> usize {
        match self.below(10) {
            0 => 3,
            1 | 2 => 1,
            3 | 4 => 2,
            5..=7 => 4,
            _ => 8,
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        // Mostly all-ones, zeroes and small values, which reach the
        // interesting paths (sizing, enables, starts) more often than noise.
        (0..len)
            .map(|_| match self.below(4) {
                0 => 0xff,
                1 => 0,
                2 => self.below(8) as u8,
                _ => self.next() as u8,
            })
            .collect()
    }
}

/// Random configuration-space and BAR traffic; the IDs never change.
fn fuzz_pci(device: &mut dyn PciDevice, rng: &mut Rng, bar_span: u64) {
    let mut id = [0u8; 4];
    device.config_read(reg::VENDOR_ID, &mut id);
    for _ in 0..OPS {
        let len = rng.width().min(4);
        match rng.below(4) {
            0 => {
                let offset = rng.below(0x110) as usize;
                let data = rng.bytes(len);
                device.config_write(offset, &data);
            }
            1 => {
                let offset = rng.below(0x110) as usize;
                let mut data = vec![0u8; len];
                device.config_read(offset, &mut data);
            }
            2 => {
                let (bar, offset) = (rng.below(7) as usize, rng.below(bar_span));
                let width = rng.width();
                let data = rng.bytes(width);
                let _ = device.bar_write(bar, offset, &data);
            }
            _ => {
                let (bar, offset) = (rng.below(7) as usize, rng.below(bar_span));
                let mut data = vec![0u8; rng.width()];
                device.bar_read(bar, offset, &mut data);
            }
        }
        let mut now = [0u8; 4];
        device.config_read(reg::VENDOR_ID, &mut now);
        assert_eq!(now, id, "vendor/device ID changed");
    }
}

/// Random port or memory traffic on a bus device.
fn fuzz_bus(device: &mut dyn BusDevice, rng: &mut Rng, span: u64) {
    for _ in 0..OPS {
        let offset = rng.below(span);
        if rng.below(2) == 0 {
            let width = rng.width();
            let data = rng.bytes(width);
            let _ = device.write(offset, &data);
        } else {
            let mut data = vec![0u8; rng.width()];
            device.read(offset, &mut data);
        }
    }
}

#[test]
fn edu_survives_any_register_traffic() {
    for seed in SEEDS {
        let ram = Arc::new(FakeRam::new(64 << 10));
        let links = EduLinks {
            intx: Arc::new(Nothing),
            msi: Arc::new(Nothing),
            dma: ram.clone(),
            deferred: Arc::new(Nothing),
        };
        let mut edu = Edu::new(links);
        let mut rng = Rng(seed);
        // Bus mastering on and decoding on, so DMA paths run too.
        edu.config_write(reg::COMMAND, &[0x07, 0x00]);
        fuzz_pci(&mut edu, &mut rng, 0x10_0000 + 0x100);
        let mut id = [0u8; 4];
        edu.bar_read(0, 0, &mut id);
        assert_eq!(
            u32::from_le_bytes(id),
            0x0100_00ed,
            "seed {seed}: edu's ID register"
        );
    }
}

#[test]
fn pci_testdev_survives_any_register_traffic() {
    for seed in SEEDS {
        let mut dev = PciTestdev::new();
        fuzz_pci(&mut dev, &mut Rng(seed), 0x1100);
    }
}

#[test]
fn pc_testdev_and_postfix_survive_any_traffic() {
    for seed in SEEDS {
        let mut rng = Rng(seed);
        fuzz_bus(&mut PcTestdevPorts::new(Arc::new(Nothing)), &mut rng, 0x20);
        let lines: Vec<Box<dyn InterruptLine>> = (0..24)
            .map(|_| Box::new(Nothing) as Box<dyn InterruptLine>)
            .collect();
        fuzz_bus(&mut PcTestdevIrqs::new(lines), &mut rng, 0x20);
        fuzz_bus(&mut PcTestdevIomem::new(), &mut rng, 0x1_0010);

        // The postfix parser: random bytes, mostly digits, spaces and its
        // commands, must never panic; any exit it asks for is a u32.
        let mut postfix = Postfix::new();
        for _ in 0..OPS {
            let byte = match rng.below(6) {
                0 => b'0' + rng.below(10) as u8,
                1 => b' ',
                2 => b"+-*/qcdx\n\t"[rng.below(10) as usize],
                _ => rng.next() as u8,
            };
            let _ = postfix.push(byte);
        }
    }
}

/// The checked-in cargo-fuzz corpus, then a fixed-seed batch of random
/// access streams, through the same player the fuzz target uses.
#[test]
fn the_register_corpus_and_a_seeded_batch_replay() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/testdev_registers");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        ktvmm_testdevs::fuzzing::play(&std::fs::read(entry.unwrap().path()).unwrap());
        files += 1;
    }
    assert!(files > 0);
    let mut rng = Rng(0xfeed);
    for _ in 0..500 {
        let len = rng.below(512) as usize;
        let bytes = rng.bytes(len);
        ktvmm_testdevs::fuzzing::play(&bytes);
    }
}
