//! seglog-compaction: rewriting sealed segments.
//!
//! This crate will hold the compactor: sealed segments rewritten to drop superseded records,
//! zstd-compressed, and retention by age (`[wal] max_age`) and size (`[wal] max_size`), crash-safe
//! at every step. Nothing lives here yet.
