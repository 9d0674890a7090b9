//! Helpers shared by the engine's integration tests over closed data directories.

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::Config;
use std::path::Path;

/// Small segments (8 KiB), so that a short history seals many of them and writes many index
/// runs; no fsync; no value cache, so that every get reads the log.
pub fn config() -> Config {
    Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Never,
            segment_size_bytes: 8 << 10,
            ..WalConfig::default()
        },
        cache: seglog::CacheConfig { value_cache_mb: 0 },
    }
}

/// Copies the directory `from`, subdirectories included, to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
