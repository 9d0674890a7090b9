//! The seglog config file (TOML).
//!
//! ```toml
//! [wal]
//! segment_size = "64MB"      # 4KiB..=1GiB
//! fsync = "batch"            # always | batch | never
//! fsync_interval_ms = 10     # 1..=60000
//! max_age = "180d"
//! max_size = "20GB"
//! preallocate = true
//! recovery = "strict"        # strict | tail-tolerant
//! ```
//!
//! Every key is optional and defaults as documented on [`seglog_wal::WalConfig`]. An unknown
//! section or key, or a malformed value, is an error naming it and the accepted form. The
//! `[threads]`, `[cache]`, `[limits]` and `[server]` sections arrive with the parts of seglog
//! that use them.

use seglog_wal::WalConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The `[wal]` section.
    pub wal: WalConfig,
    /// The `[cache]` section.
    pub cache: CacheConfig,
}

/// The `[cache]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `value_cache_mb`: memory for recently read values, in MiB. Default 64; 0 disables it;
    /// at most 1048576 (1 TiB).
    pub value_cache_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { value_cache_mb: 64 }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or has a bad value.
    #[error("config {origin}: {message}")]
    Parse {
        /// The file, or "text".
        origin: String,
        /// toml's message: it quotes the line with the key and says what is accepted.
        message: String,
    },
    /// A value is out of its bounds.
    #[error("config {origin}: {source}")]
    Invalid {
        /// The file, or "text".
        origin: String,
        /// The error naming the key.
        #[source]
        source: seglog_wal::Error,
    },
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "text")
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        c.wal.validate().map_err(|source| ConfigError::Invalid {
            origin: origin.to_string(),
            source,
        })?;
        if c.cache.value_cache_mb > 1 << 20 {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                source: seglog_wal::Error::Config {
                    key: "cache.value_cache_mb",
                    message: format!(
                        "{} is out of bounds: at most 1048576",
                        c.cache.value_cache_mb
                    ),
                },
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seglog_wal::FsyncPolicy;

    #[test]
    fn operator_config_parses() {
        let c = Config::from_toml_str(
            "[wal]\nsegment_size = \"64MB\"\nfsync = \"batch\"\nfsync_interval_ms = 10\nmax_age = \"180d\"\nmax_size = \"20GB\"\n",
        )
        .unwrap();
        assert_eq!(c.wal.segment_size_bytes, 64 << 20);
        assert_eq!(c.wal.fsync, FsyncPolicy::Batch);
        assert_eq!(c.wal.max_age_secs, 180 * 86_400);
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[wal]\nsegment_sise = \"64MB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment_sise"), "{e}");
        let e = Config::from_toml_str("[wall]\n").unwrap_err().to_string();
        assert!(e.contains("wall"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_form() {
        let e = Config::from_toml_str("[wal]\nsegment_size = \"64QB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment_size") && e.contains("MB"), "{e}");
        let e = Config::from_toml_str("[wal]\nfsync = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fsync") && e.contains("always"), "{e}");
        let e = Config::from_toml_str("[wal]\nsegment_size = \"1KB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wal.segment_size") && e.contains("4KiB"), "{e}");
    }
}
