//! walctl: append to, dump, verify, inspect and benchmark seglog data directories.
//!
//! Exit codes: 0 ok; 1 a check failed (corruption, a gap, a foreign file); 2 usage or I/O error.

use clap::{Parser, Subcommand};
use seglog::wal::{parse_size, FsyncPolicy, IoChoice, WalConfig};
use seglog::Config;
use seglog_tools::{append, bench, demo, dump, error_chain, inspect, Failure};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "walctl",
    version,
    about = "Append to, dump, verify, inspect and benchmark seglog data directories"
)]
struct Cli {
    /// Config file (TOML, `[wal]` section); defaults apply to every key it does not set.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Append each stdin line as one record; print each LSN once the record is durable.
    Append {
        /// Data directory (created if missing).
        dir: PathBuf,
        /// Fsync policy: always, batch or never (overrides the config file).
        #[arg(long)]
        fsync: Option<FsyncPolicy>,
        /// Flusher interval for batch, in milliseconds (overrides the config file).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Split each line at the first occurrence of this character: key before, value after.
        #[arg(long)]
        key_sep: Option<char>,
    },
    /// Print every record (LSN, timestamp in µs, key, value), or JSON objects with --json.
    Dump {
        /// Data directory.
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last LSN to print.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// One JSON object per record.
        #[arg(long)]
        json: bool,
    },
    /// Check every segment and every record; exit 1 on damage.
    Verify {
        /// Data directory.
        dir: PathBuf,
    },
    /// Table of segments and the config in force.
    Inspect {
        /// Data directory.
        dir: PathBuf,
    },
    /// Append sample records to a data directory, verify it and run a short benchmark.
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "seglog-data")]
        dir: PathBuf,
    },
    /// Measure appends (and replay) against physical baselines in the same run.
    Bench {
        /// Fsync policy under test.
        #[arg(long, default_value = "always")]
        fsync: FsyncPolicy,
        /// Flusher interval for batch, in milliseconds.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 1)]
        writers: usize,
        /// Value bytes per record.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        /// Records in total (default: 20000 for always, 1000000 otherwise).
        #[arg(long)]
        records: Option<u64>,
        /// Working directory (its wal/ and baseline.dat are replaced).
        #[arg(long, default_value = "seglog-data/bench")]
        dir: PathBuf,
        /// Segment size.
        #[arg(long, default_value = "64MB", value_parser = parse_size)]
        segment_size: u64,
        /// Skip the replay measurement.
        #[arg(long)]
        no_replay: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Instead of one measurement, run every target of the benchmark list (docs/benchmarks.md)
        /// --runs times and print per-run figures, medians and same-run ratios.
        #[arg(long)]
        targets: bool,
        /// I/O backend of the WAL under test: auto, io_uring or std.
        #[arg(long, default_value = "auto")]
        io: IoChoice,
        /// Write the active segment with O_DIRECT.
        #[arg(long)]
        direct: bool,
        /// Instead of one measurement, compare std and io_uring on the full matrix (fsync
        /// always/batch/never x 1/4/16/64 writers x 128 B/1 KiB/4 KiB x buffered/O_DIRECT).
        #[arg(long)]
        matrix: bool,
        /// Repetitions for --targets and --matrix.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the log replayed by --targets.
        #[arg(long, default_value = "1GB", value_parser = parse_size)]
        replay_size: u64,
        /// Instead of the WAL, measure the engine: put against WAL append, reopen with and
        /// without index checkpoints against a raw read, get latency, memory per key,
        /// subscription latency (--keys keys, --record-size values, --runs repetitions).
        #[arg(long)]
        engine: bool,
        /// Keys of the --engine data set.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// With --engine: skip the put comparison (3M puts of --record-size each side and
        /// block), to measure reopen, gets, memory and subscriptions of a large data set alone.
        #[arg(long)]
        no_put: bool,
        /// (Internal to --engine: open DIR in this fresh process and print the memory it took.)
        #[arg(long, hide = true)]
        engine_open_rss: Option<PathBuf>,
    },
}

fn load_config(path: &Option<PathBuf>) -> Result<(WalConfig, String), Failure> {
    match path {
        Some(p) => Config::load(p)
            .map(|c| (c.wal, p.display().to_string()))
            .map_err(|e| Failure::Error(error_chain(&e))),
        None => Ok((WalConfig::default(), "defaults".into())),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    match cli.cmd {
        Cmd::Append {
            dir,
            fsync,
            interval_ms,
            key_sep,
        } => {
            let (mut c, _) = load_config(&cli.config)?;
            if let Some(f) = fsync {
                c.fsync = f;
            }
            if let Some(i) = interval_ms {
                c.fsync_interval_ms = i;
            }
            c.validate()?;
            let sep = match key_sep {
                Some(ch) if ch.is_ascii() => Some(ch as u8),
                Some(ch) => {
                    return Err(Failure::Error(format!(
                        "--key-sep must be an ASCII character, not {ch:?}"
                    )))
                }
                None => None,
            };
            let stdin = std::io::stdin();
            let mut input = std::io::BufReader::with_capacity(1 << 16, stdin.lock());
            append::run(&dir, c, sep, &mut input, &mut stdout.lock())
        }
        Cmd::Demo { dir } => {
            let (c, _) = load_config(&cli.config)?;
            demo::run(&dir, c, &mut stdout.lock())
        }
        Cmd::Dump {
            dir,
            from,
            to,
            json,
        } => dump::run(&dir, from, to, json, &mut stdout.lock()),
        Cmd::Verify { dir } => {
            let r = inspect::verify(&dir, &mut stdout.lock());
            if let Err(Failure::Check(m)) = &r {
                // verify's verdict goes where its summary line would have gone.
                println!("FAILED: {m}");
            }
            r
        }
        Cmd::Inspect { dir } => {
            let (c, origin) = load_config(&cli.config)?;
            inspect::inspect(&dir, &c, &origin, &mut stdout.lock())
        }
        Cmd::Bench {
            engine_open_rss: Some(data),
            segment_size,
            ..
        } => seglog_tools::engine_bench::open_rss(&data, segment_size, &mut stdout.lock()),
        Cmd::Bench {
            engine: true,
            dir,
            keys,
            no_put,
            record_size,
            runs,
            segment_size,
            ..
        } => seglog_tools::engine_bench::run(
            &seglog_tools::engine_bench::EngineBenchOptions {
                dir,
                keys,
                value_size: record_size,
                runs,
                segment_size,
                put: !no_put,
            },
            &mut stdout.lock(),
        ),
        Cmd::Bench {
            matrix: true,
            dir,
            runs,
            ..
        } => {
            let cells =
                bench::measure_matrix(&dir, runs.max(1), |m| eprintln!("walctl bench: {m}"))?;
            bench::print_matrix(&cells, &mut stdout.lock())?;
            Ok(())
        }
        Cmd::Bench {
            targets: true,
            dir,
            runs,
            replay_size,
            ..
        } => {
            let cold = bench::drop_caches();
            let rows = bench::measure_targets(&dir, runs.max(1), replay_size, |m| {
                eprintln!("walctl bench: {m}")
            })?;
            bench::print_targets(&rows, cold, &mut stdout.lock())?;
            if rows.iter().all(|r| r.met()) {
                Ok(())
            } else {
                Err(Failure::Check("a benchmark target was not met".into()))
            }
        }
        Cmd::Bench {
            fsync,
            interval_ms,
            writers,
            record_size,
            records,
            dir,
            segment_size,
            no_replay,
            json,
            io,
            direct,
            ..
        } => {
            let records = records.unwrap_or(if fsync == FsyncPolicy::Always {
                20_000
            } else {
                1_000_000
            });
            let opts = bench::BenchOptions {
                fsync,
                interval_ms,
                writers,
                record_size,
                records,
                dir,
                segment_size,
                replay: !no_replay,
                json,
                io,
                direct,
            };
            bench::run(&opts, &mut stdout.lock())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let label = match f {
                Failure::Check(_) => "check failed",
                Failure::Error(_) => "error",
            };
            eprintln!("walctl: {label}: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}
