//! Randomness for the tests that run rounds against real processes and files: a seeded
//! generator, the seed (`SEGLOG_SEED` replays a run) and the soak switch (`SEGLOG_SOAK=1`).
//! Shared by the engine's tests and walctl's (included by path).
#![allow(dead_code)]

/// splitmix64: small, seeded, good enough to pick offsets and counts.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The seed: `SEGLOG_SEED` if set, else the clock. Printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("SEGLOG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {s} (replay with SEGLOG_SEED={s})");
    s
}

/// Rounds for a test: `base`, or `base * 10` with SEGLOG_SOAK=1.
pub fn rounds(base: u64) -> u64 {
    if std::env::var("SEGLOG_SOAK").is_ok_and(|v| v == "1") {
        base * 10
    } else {
        base
    }
}
