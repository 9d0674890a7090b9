//! seglog-snapshot: consistent checkpoints of a live data directory.
//!
//! This crate will hold snapshots (checkpoint directories taken while the engine writes), the
//! rules that make a hot rsync copy of a data directory restorable, and restore. Nothing lives
//! here yet.
