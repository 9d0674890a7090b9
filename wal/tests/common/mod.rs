//! Shared helpers for the WAL test suite: every scenario runs on each backend.
#![allow(dead_code)]

use seglog_wal::io::Io;
use seglog_wal::sim::SimIo;
use seglog_wal::{Entry, FsyncPolicy, StdIo, Wal, WalConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// A backend under test and a data directory on it.
pub struct Env {
    pub name: &'static str,
    pub io: Arc<dyn Io>,
    pub sim: Option<SimIo>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Every backend: the real file system (std) and the simulated one.
pub fn backends() -> Vec<Env> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let sim = SimIo::new(7);
    vec![
        Env {
            name: "std",
            io: Arc::new(StdIo::default()),
            sim: None,
            dir,
            _tmp: Some(tmp),
        },
        Env {
            name: "sim",
            io: Arc::new(sim.clone()),
            sim: Some(sim),
            dir: PathBuf::from("/data"),
            _tmp: None,
        },
    ]
}

pub fn config(policy: FsyncPolicy, segment_size: u64) -> WalConfig {
    WalConfig {
        fsync: policy,
        segment_size_bytes: segment_size,
        fsync_interval_ms: 1,
        ..WalConfig::default()
    }
}

impl Env {
    pub fn open(&self, c: &WalConfig) -> Wal {
        Wal::open_with_io(self.io.clone(), &self.dir, c.clone())
            .unwrap_or_else(|e| panic!("[{}] open: {e}", self.name))
    }
}

pub fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("v{i}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    v
}

pub fn read_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.reader(1)
        .map(|r| r.map(|r| (r.lsn, r.value)))
        .collect::<Result<_, _>>()
        .expect("read")
}

pub fn entry(v: &[u8]) -> Entry<'_> {
    Entry::new(b"k", v)
}
