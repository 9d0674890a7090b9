//! `walctl demo`: the quick start's main job on an embedded default. Appends sample records to a
//! data directory under the working tree with the config in force, verifies it, and runs a short
//! benchmark against the physical baselines.

use crate::bench::{self, BenchOptions};
use crate::{append, inspect, CmdResult};
use seglog::wal::{FsyncPolicy, WalConfig};
use std::io::{BufReader, Write};
use std::path::Path;

/// Runs the demo in `dir`.
pub fn run(dir: &Path, config: WalConfig, out: &mut dyn Write) -> CmdResult {
    let records = 10_000;
    let input: String = (0..records)
        .map(|i| format!("device-{}=event {i} from the demo\n", i % 100))
        .collect();
    writeln!(
        out,
        "== append: {records} records to {} (fsync = {:?})",
        dir.display(),
        config.fsync
    )?;
    let mut lsns = Vec::new();
    append::run(
        dir,
        config,
        Some(b'='),
        &mut BufReader::new(input.as_bytes()),
        &mut lsns,
    )?;
    let text = String::from_utf8_lossy(&lsns);
    writeln!(
        out,
        "acknowledged LSNs {}..={}",
        text.lines().next().unwrap_or("-"),
        text.lines().last().unwrap_or("-")
    )?;
    writeln!(out, "== verify")?;
    inspect::verify(dir, out)?;
    for (fsync, writers, record_size, records) in [
        (FsyncPolicy::Always, 1, 1024, 3000),
        (FsyncPolicy::Always, 64, 1024, 40_000),
        (FsyncPolicy::Never, 1, 100, 2_000_000),
    ] {
        writeln!(out, "== bench")?;
        let opts = BenchOptions {
            fsync,
            interval_ms: 10,
            writers,
            record_size,
            records,
            dir: dir.with_file_name(format!(
                "{}-bench",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )),
            segment_size: 64 << 20,
            replay: fsync == FsyncPolicy::Never,
            json: false,
            io: seglog::wal::IoChoice::Auto,
            direct: false,
        };
        bench::run(&opts, out)?;
    }
    Ok(())
}
