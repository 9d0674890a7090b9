//! Crash test: a child `walctl append --fsync always` is SIGKILLed at random moments, many
//! rounds on one directory. Every LSN it printed must be recovered, the log must be a gap-free
//! prefix of what was sent, with no duplicates.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

/// `io`: `std`, `io_uring` or `io_uring+direct`.
fn crash_rounds(policy: &str, io: &str, base_rounds: u64) {
    let seed = seed(&format!("crash_{policy}_{io}"));
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (backend, direct) = match io.split_once('+') {
        Some((b, _)) => (b, true),
        None => (io, false),
    };
    let config = config_file(
        tmp.path(),
        &format!("segment_size = \"64KB\"\nio = \"{backend}\"\ndirect_io = {direct}"),
    );
    // Values of the recovered log so far, by LSN - 1.
    let mut log: Vec<String> = Vec::new();
    for round in 0..rounds(base_rounds) {
        let kill_after = if rng.below(10) == 0 {
            0
        } else {
            1 + rng.below(400)
        };
        let mut child = append_cmd(&config, &dir, &["--fsync", policy])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walctl append");
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..100_000u64 {
                let line = format!("r{round}-{i}-{}", "x".repeat((i % 97) as usize));
                if writeln!(stdin, "{line}").is_err() {
                    break; // the child is gone
                }
                sent.push(line);
            }
            sent
        });
        let mut acked = Vec::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        if kill_after == 0 {
            child.kill().unwrap();
        }
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            acked.push(
                line.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("seed {seed} round {round}: bad LSN line {line:?}")),
            );
            if acked.len() as u64 == kill_after {
                child.kill().unwrap();
            }
        }
        child.wait().unwrap();
        let sent = feeder.join().unwrap();

        if !dir.exists() {
            // Killed before it created the data directory: nothing can have been acknowledged.
            assert!(
                acked.is_empty(),
                "seed {seed} round {round}: LSNs printed but no data directory"
            );
            continue;
        }
        let dump = run(walctl().args(["dump", "--json", dir.to_str().unwrap()]));
        assert!(
            dump.status.success(),
            "seed {seed} round {round}: dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let recs = parse_dump(&dump.stdout);
        let lsns: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            lsns,
            (1..=recs.len() as u64).collect::<Vec<_>>(),
            "seed {seed} round {round}: holes or duplicates"
        );
        // Earlier rounds' records are untouched.
        assert!(
            recs.len() >= log.len(),
            "seed {seed} round {round}: lost earlier records"
        );
        for (i, v) in log.iter().enumerate() {
            assert_eq!(
                &recs[i].1,
                v,
                "seed {seed} round {round}: record {} changed",
                i + 1
            );
        }
        // This round's records are a prefix of what was sent, in order.
        let new: Vec<&String> = recs[log.len()..].iter().map(|r| &r.1).collect();
        assert!(
            new.len() <= sent.len(),
            "seed {seed} round {round}: more records than were sent"
        );
        for (i, v) in new.iter().enumerate() {
            assert_eq!(
                *v,
                &sent[i],
                "seed {seed} round {round}: record {} is not line {i} sent",
                log.len() + i + 1
            );
        }
        // Every acknowledged LSN survived.
        if let Some(&max) = acked.iter().max() {
            assert!(
                max <= recs.len() as u64,
                "seed {seed} round {round}: LSN {max} was printed but the log ends at {}",
                recs.len()
            );
        }
        assert_eq!(
            acked,
            (log.len() as u64 + 1..=log.len() as u64 + acked.len() as u64).collect::<Vec<_>>(),
            "seed {seed} round {round}: printed LSNs not consecutive"
        );
        log = recs.into_iter().map(|r| r.1).collect();
    }
    let verify = run(walctl().args(["verify", dir.to_str().unwrap()]));
    assert!(
        verify.status.success(),
        "seed {seed}: verify after the crash rounds: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

fn io_uring_here() -> bool {
    let ok = seglog::wal::uring::probe().is_ok();
    if !ok {
        eprintln!("io_uring unavailable here: its crash rounds are skipped");
    }
    ok
}

#[test]
fn sigkill_never_loses_an_acknowledged_always_append() {
    crash_rounds("always", "std", 20);
}

#[test]
fn sigkill_never_loses_an_acknowledged_always_append_on_io_uring() {
    if io_uring_here() {
        crash_rounds("always", "io_uring", 20);
        crash_rounds("always", "io_uring+direct", 10);
    }
}

#[test]
fn sigkill_never_loses_a_printed_lsn_under_batch_and_never() {
    // Printed means durable (batch) or handed to the OS (never): both survive a process kill.
    crash_rounds("batch", "std", 8);
    crash_rounds("never", "std", 8);
    if io_uring_here() {
        crash_rounds("batch", "io_uring", 8);
        crash_rounds("never", "io_uring+direct", 8);
    }
}
