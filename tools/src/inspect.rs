//! `walctl verify` and `walctl inspect`.

use crate::{CmdResult, Failure};
use seglog::wal::{LogView, StdIo, TailState, WalConfig};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

fn tail_note(view: &LogView) -> Option<String> {
    match (&view.tail, view.segments.last()) {
        (TailState::Torn { offset, reason, .. }, Some(s)) => Some(format!(
            "torn tail in {} at offset {offset} ({reason}); the next open cuts it",
            s.path.display()
        )),
        _ => None,
    }
}

/// Checks every segment and every record. Prints a one-line summary.
pub fn verify(dir: &Path, out: &mut dyn Write) -> CmdResult {
    if !dir.is_dir() {
        return Err(Failure::Error(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let view = LogView::open(Arc::new(StdIo::default()), dir)?;
    let records = view.verify_records()?;
    let range = if records == 0 {
        "empty log".to_string()
    } else {
        format!("LSN {}..={}", view.first_lsn(), view.last_lsn())
    };
    let mut line = format!(
        "ok: {range}, {records} records, {} segments",
        view.segments.len()
    );
    if let Some(n) = tail_note(&view) {
        line.push_str(&format!("; {n}"));
    }
    writeln!(out, "{line}")?;
    Ok(())
}

/// Prints the segment table and the configuration in force.
pub fn inspect(
    dir: &Path,
    config: &WalConfig,
    config_origin: &str,
    out: &mut dyn Write,
) -> CmdResult {
    if !dir.is_dir() {
        return Err(Failure::Error(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let (view, problem) = LogView::open_prefix(Arc::new(StdIo::default()), dir)?;
    writeln!(out, "data directory: {}", dir.display())?;
    writeln!(
        out,
        "closed cleanly: {}",
        if view.closed.is_some() {
            "yes"
        } else {
            "no (open, or the last writer crashed)"
        }
    )?;
    let backend = match seglog::wal::io::open_backend(config) {
        Ok(io) => io.name().to_string(),
        Err(e) => format!("unavailable: {e}"),
    };
    writeln!(out, "io backend (for the config in force): {backend}")?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<26} {:>12} {:>12} {:>10} {:>12}  state",
        "segment", "first_lsn", "last_lsn", "records", "bytes"
    )?;
    let n = view.segments.len();
    for (i, s) in view.segments.iter().enumerate() {
        let state = if s.sealed() {
            "sealed"
        } else if i + 1 == n {
            "active"
        } else {
            "damaged"
        };
        let name = s
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        writeln!(
            out,
            "{:<26} {:>12} {:>12} {:>10} {:>12}  {state}",
            name,
            s.first_lsn(),
            s.last_lsn,
            s.records(),
            s.file_len
        )?;
    }
    let mut dropped = view.dropped.clone();
    dropped.sort();
    for p in &dropped {
        writeln!(
            out,
            "{}  set aside by tail-tolerant recovery after a missing segment: not part of the log",
            p.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        )?;
    }
    writeln!(out)?;
    match (&view.tail, tail_note(&view)) {
        (_, Some(n)) => writeln!(out, "tail: {n}")?,
        (TailState::Corrupt { offset, reason }, _) => {
            writeln!(out, "tail: CORRUPT at offset {offset}: {reason}")?
        }
        _ => writeln!(out, "tail: clean")?,
    }
    writeln!(out)?;
    writeln!(out, "config in force ({config_origin}):")?;
    writeln!(out, "{}", config_toml(config))?;
    match problem {
        Some(e) => Err(Failure::from(e)),
        None => Ok(()),
    }
}

/// The `[wal]` section as TOML.
pub fn config_toml(c: &WalConfig) -> String {
    let fsync = match c.fsync {
        seglog::wal::FsyncPolicy::Always => "always",
        seglog::wal::FsyncPolicy::Batch => "batch",
        seglog::wal::FsyncPolicy::Never => "never",
    };
    let recovery = match c.recovery {
        seglog::wal::RecoveryMode::Strict => "strict",
        seglog::wal::RecoveryMode::TailTolerant => "tail-tolerant",
    };
    let io = match c.io {
        seglog::wal::IoChoice::Auto => "auto",
        seglog::wal::IoChoice::IoUring => "io_uring",
        seglog::wal::IoChoice::Std => "std",
    };
    format!(
        "[wal]\nsegment_size = {}\nfsync = \"{fsync}\"\nfsync_interval_ms = {}\nmax_age = \"{}s\"\nmax_size = {}\npreallocate = {}\nrecovery = \"{recovery}\"\nio = \"{io}\"\ndirect_io = {}",
        c.segment_size_bytes, c.fsync_interval_ms, c.max_age_secs, c.max_size_bytes, c.preallocate, c.direct_io
    )
}
