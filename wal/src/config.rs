//! WAL configuration: the `[wal]` section of the TOML config, and the durability policy.
//!
//! Sizes are written `"64MB"`, `"512KiB"`, `"20GB"` or as a plain number of bytes; `KB`, `MB`
//! and `GB` are binary multiples (1 MB = 1 MiB), as operators use them for segment sizes.
//! Durations are written `"180d"`, `"12h"`, `"30m"`, `"45s"`.

use crate::error::{Error, Result};
use crate::format::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use serde::{Deserialize, Deserializer};

/// When an append counts as done. Each variant says what survives what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns after an fdatasync covering the record: it survives a process crash and
    /// power loss. Concurrent appenders share one write and one fdatasync (group commit).
    Always,
    /// `append` returns once the record is buffered; a background flusher writes and fdatasyncs
    /// every `interval_ms`. A process crash or power loss loses at most the last interval.
    /// `Wal::wait_durable(lsn)` blocks until a given record is durable.
    Batch {
        /// Time between fsyncs, in milliseconds.
        interval_ms: u64,
    },
    /// `append` returns once the record is buffered; the flusher hands buffered records to the
    /// OS every interval and never fsyncs them (segments are still fsynced when they seal).
    /// `Wal::flush` makes records survive a process crash; only `Wal::sync` makes them survive
    /// power loss.
    Never,
}

/// The fsync policy as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// See [`Durability::Always`].
    Always,
    /// See [`Durability::Batch`].
    Batch,
    /// See [`Durability::Never`].
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "batch" => Ok(FsyncPolicy::Batch),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy {other:?}: expected always, batch or never"
            )),
        }
    }
}

/// Which I/O backend writes the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoChoice {
    /// Per fsync policy, the backend that measured faster on the reference machine
    /// ([`crate::io::auto_prefers_io_uring`]; today std for all three). Where io_uring is
    /// preferred it is probed at open, with a fall back to std and one warning naming the
    /// reason when it cannot be set up.
    #[default]
    Auto,
    /// io_uring; opening fails when it cannot be set up.
    IoUring,
    /// Portable `pwrite`/`fdatasync`.
    Std,
}

impl std::str::FromStr for IoChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(IoChoice::Auto),
            "io_uring" => Ok(IoChoice::IoUring),
            "std" => Ok(IoChoice::Std),
            other => Err(format!(
                "unknown io backend {other:?}: expected auto, io_uring or std"
            )),
        }
    }
}

/// What recovery does with a damaged last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    /// Cut a torn tail (an incomplete write at the end of the last segment, the normal result of
    /// a crash); refuse to open on anything else: a bad record followed by valid ones, a damaged
    /// sealed segment, a missing segment, a foreign file.
    #[default]
    Strict,
    /// Like `Strict`, but a bad record in the last segment is cut together with everything after
    /// it even when valid records follow, and when a segment is missing between two others the
    /// segments after the gap are set aside (renamed `*.seg.dropped`, never deleted): the log is
    /// kept up to the first damage. What is lost is reported ([`crate::RecoveryReport`]).
    TailTolerant,
}

/// The `[wal]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// `segment_size`: a segment rolls when the next record would not fit. Default `"64MB"`;
    /// bounds 4KiB..=1GiB.
    #[serde(rename = "segment_size", deserialize_with = "de_size")]
    pub segment_size_bytes: u64,
    /// `fsync`: `"always"`, `"batch"` or `"never"`. Default `"batch"`.
    pub fsync: FsyncPolicy,
    /// `fsync_interval_ms`: flusher period for `batch` (and write-out period for `never`).
    /// Default 10; bounds 1..=60000.
    pub fsync_interval_ms: u64,
    /// `max_age`: retention by age, applied by compaction. Default `"180d"`; at least `"1s"`.
    #[serde(rename = "max_age", deserialize_with = "de_duration")]
    pub max_age_secs: u64,
    /// `max_size`: retention by total log size, applied by compaction. Default `"20GB"`; at
    /// least one segment.
    #[serde(rename = "max_size", deserialize_with = "de_size")]
    pub max_size_bytes: u64,
    /// `preallocate`: reserve each segment's space when it is created, and zero-fill it ahead of
    /// time under `always` and `batch` so durable overwrites need no metadata update. Default
    /// true.
    pub preallocate: bool,
    /// `recovery`: `"strict"` or `"tail-tolerant"`. Default `"strict"`.
    pub recovery: RecoveryMode,
    /// `io`: `"auto"`, `"io_uring"` or `"std"`. Default `"auto"`.
    pub io: IoChoice,
    /// `direct_io`: write the active segment with O_DIRECT (aligned 4 KiB blocks, the partial
    /// last block rewritten from memory). Opening fails with a clear error where the file
    /// system refuses O_DIRECT (tmpfs does). Default false.
    pub direct_io: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size_bytes: 64 << 20,
            fsync: FsyncPolicy::Batch,
            fsync_interval_ms: 10,
            max_age_secs: 180 * 86_400,
            max_size_bytes: 20 << 30,
            preallocate: true,
            recovery: RecoveryMode::Strict,
            io: IoChoice::Auto,
            direct_io: false,
        }
    }
}

impl WalConfig {
    /// The durability policy these settings describe.
    pub fn durability(&self) -> Durability {
        match self.fsync {
            FsyncPolicy::Always => Durability::Always,
            FsyncPolicy::Batch => Durability::Batch {
                interval_ms: self.fsync_interval_ms,
            },
            FsyncPolicy::Never => Durability::Never,
        }
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size_bytes) {
            return Err(Error::Config {
                key: "wal.segment_size",
                message: format!(
                    "{} bytes is out of bounds: must be between 4KiB and 1GiB",
                    self.segment_size_bytes
                ),
            });
        }
        if !(1..=60_000).contains(&self.fsync_interval_ms) {
            return Err(Error::Config {
                key: "wal.fsync_interval_ms",
                message: format!(
                    "{} is out of bounds: must be between 1 and 60000",
                    self.fsync_interval_ms
                ),
            });
        }
        if self.max_age_secs == 0 {
            return Err(Error::Config {
                key: "wal.max_age",
                message: "must be at least 1s".into(),
            });
        }
        if self.max_size_bytes < self.segment_size_bytes {
            return Err(Error::Config {
                key: "wal.max_size",
                message: format!(
                    "{} bytes is smaller than one segment ({} bytes)",
                    self.max_size_bytes, self.segment_size_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Parses `"64MB"`, `"4 KiB"`, `"1048576"`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected a whole number with an optional unit B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}; expected B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `"180d"`, `"12h"`, `"30m"`, `"45s"` into seconds.
pub fn parse_duration_secs(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "invalid duration {s:?}: expected a whole number with a unit s, m, h or d (\"180d\")"
        )
    })?;
    let mult = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: expected a unit s, m, h or d (\"180d\")"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_duration_secs(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("20GB"), Ok(20 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12QB").is_err());
        assert!(parse_size("MB").is_err());
        assert_eq!(parse_duration_secs("180d"), Ok(180 * 86_400));
        assert!(parse_duration_secs("3y").is_err());
    }

    #[test]
    fn bounds_name_the_key() {
        let c = WalConfig {
            segment_size_bytes: 10,
            ..WalConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("wal.segment_size"), "{e}");
        let c = WalConfig {
            fsync_interval_ms: 0,
            ..WalConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("wal.fsync_interval_ms"));
        WalConfig::default().validate().unwrap();
    }
}
