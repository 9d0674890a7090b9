//! walctl's commands as library functions; `src/bin/walctl.rs` only parses arguments and maps
//! outcomes to exit codes (0 ok, 1 check failed, 2 usage or I/O error).

pub mod append;
pub mod bench;
pub mod demo;
pub mod dump;
pub mod engine_bench;
pub mod inspect;
pub mod output;

use std::fmt;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// The data is not what it should be (corruption, a gap, a foreign file): exit 1.
    Check(String),
    /// Bad usage, an unusable config, or an I/O error: exit 2.
    Error(String),
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Check(_) => 1,
            Failure::Error(_) => 2,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Check(m) | Failure::Error(m) => f.write_str(m),
        }
    }
}

impl From<seglog::wal::Error> for Failure {
    fn from(e: seglog::wal::Error) -> Self {
        let msg = error_chain(&e);
        if e.is_corruption() {
            Failure::Check(msg)
        } else {
            Failure::Error(msg)
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

/// An error and its causes, joined with ": ", each cause printed once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Result of a command.
pub type CmdResult = Result<(), Failure>;

/// True for the error a write to a closed pipe gives (`walctl dump | head`): not a failure.
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}
