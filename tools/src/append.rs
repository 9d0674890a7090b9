//! `walctl append`: one record per stdin line; each LSN printed once the record is durable under
//! the chosen policy (under `never`: once handed to the OS).
//!
//! Lines already buffered on stdin are submitted together and acknowledged together, so a fast
//! producer gets group commit; a line-at-a-time producer gets one fsync per line under `always`.

use crate::{is_broken_pipe, CmdResult, Failure};
use seglog::wal::{Entry, FsyncPolicy, Wal, WalConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// Appends stdin's lines to the log in `dir`.
pub fn run<R: Read>(
    dir: &Path,
    config: WalConfig,
    key_sep: Option<u8>,
    input: &mut BufReader<R>,
    out: &mut dyn Write,
) -> CmdResult {
    let policy = config.fsync;
    let wal = Wal::open(dir, config)?;
    if let Some(t) = &wal.recovery_report().torn_tail {
        eprintln!(
            "walctl: recovered {}: cut a torn tail of {} bytes at offset {} ({})",
            t.segment.display(),
            t.bytes_cut,
            t.offset,
            t.reason
        );
    }
    for p in &wal.recovery_report().dropped_segments {
        eprintln!(
            "walctl: recovered {}: a segment was missing before this one; set it aside as {} (its records are not in the log)",
            dir.display(),
            p.display()
        );
    }
    let mut unacked: Vec<u64> = Vec::new();
    let mut line = Vec::new();
    let mut out_open = true;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::Error(format!("reading stdin: {e}")))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let (key, value) = match key_sep.and_then(|s| line.iter().position(|&b| b == s)) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..0], &line[..]),
        };
        match wal.submit(Entry {
            kind: 0,
            key,
            value,
        }) {
            Ok(lsn) => unacked.push(lsn),
            Err(e) => {
                // Records submitted before the failure may well be durable (a failed roll seals
                // the segment first): acknowledge those that are, then report the failure.
                if let Err(ack) = acknowledge(&wal, policy, &mut unacked, out, out_open) {
                    eprintln!("walctl: could not acknowledge earlier records: {ack}");
                }
                return Err(e.into());
            }
        }
        // Acknowledge once no further complete line is already buffered. `buffer()` looks
        // without reading: a producer that waits for its LSN must get it now.
        if !input.buffer().contains(&b'\n') {
            out_open = acknowledge(&wal, policy, &mut unacked, out, out_open)?;
        }
    }
    acknowledge(&wal, policy, &mut unacked, out, out_open)?;
    wal.sync()?;
    wal.close()?;
    Ok(())
}

/// Waits until the submitted records are durable (written, under `never`) and prints their
/// LSNs. Returns false once stdout is a closed pipe (records keep being appended).
fn acknowledge(
    wal: &Wal,
    policy: FsyncPolicy,
    lsns: &mut Vec<u64>,
    out: &mut dyn Write,
    out_open: bool,
) -> Result<bool, Failure> {
    let Some(&last) = lsns.last() else {
        return Ok(out_open);
    };
    match policy {
        FsyncPolicy::Never => {
            wal.flush()?;
        }
        FsyncPolicy::Always | FsyncPolicy::Batch => wal.wait_durable(last)?,
    }
    let mut open = out_open;
    if open {
        let mut text = String::with_capacity(lsns.len() * 8);
        for l in lsns.iter() {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if !is_broken_pipe(&e) {
                return Err(Failure::Error(format!("writing stdout: {e}")));
            }
            open = false;
        }
    }
    lsns.clear();
    Ok(open)
}
