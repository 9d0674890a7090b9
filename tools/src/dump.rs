//! `walctl dump`: every valid record, one per line; exit 1 after the valid prefix on damage.

use crate::output::{json_line, text_line};
use crate::{error_chain, is_broken_pipe, CmdResult, Failure};
use seglog::wal::{LogView, StdIo, TailState};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Prints records with `from <= lsn <= to`. Never prints a record that does not check out.
pub fn run(dir: &Path, from: u64, to: u64, json: bool, out: &mut dyn Write) -> CmdResult {
    if !dir.is_dir() {
        return Err(Failure::Error(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let (view, problem) = LogView::open_prefix(Arc::new(StdIo::default()), dir)?;
    let mut failure = problem.map(Failure::from);
    if failure.is_none() {
        if let (TailState::Corrupt { offset, reason }, Some(last)) =
            (&view.tail, view.segments.last())
        {
            failure = Some(Failure::Check(format!(
                "corruption in {} at offset {offset}: {reason}",
                last.path.display()
            )));
        }
    }
    let mut buf = std::io::BufWriter::with_capacity(1 << 16, out);
    for r in view.reader(from) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                failure = Some(Failure::from(e));
                break;
            }
        };
        if r.lsn > to {
            break;
        }
        let line = if json { json_line(&r) } else { text_line(&r) };
        if let Err(e) = writeln!(buf, "{line}") {
            return if is_broken_pipe(&e) {
                Ok(())
            } else {
                Err(Failure::Error(format!("writing stdout: {e}")))
            };
        }
    }
    if let Err(e) = buf.flush() {
        if !is_broken_pipe(&e) {
            return Err(Failure::Error(format!(
                "writing stdout: {}",
                error_chain(&e)
            )));
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
