//! Helpers for walctl's black-box tests: a seeded generator and the binary's path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

pub fn walctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walctl"))
}

/// Writes a config file with a small segment size and returns its path.
pub fn small_segments_config(dir: &Path, segment_size: &str) -> PathBuf {
    let p = dir.join("seglog.toml");
    std::fs::write(&p, format!("[wal]\nsegment_size = \"{segment_size}\"\n"))
        .expect("write config");
    p
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run walctl")
}

/// Parses `walctl dump --json` output into (lsn, value).
pub fn parse_dump(out: &[u8]) -> Vec<(u64, String)> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad dump line {l:?}: {e}"));
            (
                v["lsn"].as_u64().expect("lsn"),
                v["value"].as_str().expect("value").to_string(),
            )
        })
        .collect()
}

/// Writes a config file whose `[wal]` section holds `lines` and returns its path.
pub fn config_file(dir: &Path, lines: &str) -> PathBuf {
    let p = dir.join("seglog.toml");
    std::fs::write(&p, format!("[wal]\n{lines}\n")).expect("write config");
    p
}

/// `walctl --config CONFIG append DIR EXTRA...`, ready to have its stdio set and be spawned.
pub fn append_cmd(config: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut c = walctl();
    c.arg("--config")
        .arg(config)
        .arg("append")
        .arg(dir)
        .args(extra);
    c
}
