//! Helpers for walctl's black-box tests: a seeded generator and the binary's path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// The seeded generator, the seed and the soak switch, shared with the engine's tests.
#[path = "../../../tests/support/random.rs"]
mod random;
// Not every test uses each of them.
#[allow(unused_imports)]
pub use random::{rounds, seed, Rng};

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
