//! Model test: random sequences of appends, batches, syncs, clean reopens, process crashes,
//! power losses (through the simulated backend) and torn writes. After every reopen the log must
//! equal a prefix of what was appended that holds every record that was durable.

mod common;
use common::*;
use proptest::prelude::*;
use seglog_wal::sim::{Faults, SimIo};
use seglog_wal::{Entry, Error, FsyncPolicy, Io, Wal};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Batch(Vec<usize>),
    Sync,
    Flush,
    Reopen,
    /// A clean close, then power fails before the next open.
    CloseThenPowerLoss,
    ProcessCrash,
    PowerLoss,
    /// The next write is torn after this fraction (per mille) of its bytes, then power fails.
    TornWriteThenPowerLoss(u16, usize),
    FailSyncThenPowerLoss(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0usize..300).prop_map(Op::Append),
        3 => proptest::collection::vec(0usize..200, 1..6).prop_map(Op::Batch),
        2 => Just(Op::Sync),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::CloseThenPowerLoss),
        1 => Just(Op::ProcessCrash),
        2 => Just(Op::PowerLoss),
        1 => (0u16..1000, 0usize..300).prop_map(|(t, n)| Op::TornWriteThenPowerLoss(t, n)),
        1 => (0usize..300).prop_map(Op::FailSyncThenPowerLoss),
    ]
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![
        Just(FsyncPolicy::Always),
        Just(FsyncPolicy::Batch),
        Just(FsyncPolicy::Never)
    ]
}

struct Model {
    /// Everything appended and not known lost: values by LSN - 1.
    appended: Vec<Vec<u8>>,
    /// Records that were durable (acknowledged under Always, or covered by a sync).
    durable: u64,
}

fn check_after_reopen(wal: &Wal, m: &mut Model, seed: u64) {
    let got: Vec<(u64, Vec<u8>)> = wal
        .reader(1)
        .map(|r| r.map(|r| (r.lsn, r.value)))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("seed {seed}: read after reopen failed: {e}"));
    assert!(
        got.len() as u64 >= m.durable,
        "seed {seed}: {} records recovered, {} were durable",
        got.len(),
        m.durable
    );
    assert!(
        got.len() <= m.appended.len(),
        "seed {seed}: recovered more than appended"
    );
    for (i, (lsn, v)) in got.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "seed {seed}: hole or duplicate");
        assert_eq!(v, &m.appended[i], "seed {seed}: record {lsn} differs");
    }
    m.appended.truncate(got.len());
    m.durable = got.len() as u64;
}

fn run(seed: u64, policy: FsyncPolicy, ops: Vec<Op>) {
    let sim = SimIo::new(seed);
    let c = config(policy, 4096);
    // Each open is the next process (after a power loss or a crash, the last one's calls fail).
    let open = |m: &mut Model| {
        let io: Arc<dyn Io> = Arc::new(sim.restart());
        let w = Wal::open_with_io(io, "/wal", c.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: open failed: {e}"));
        check_after_reopen(&w, m, seed);
        w
    };
    let mut m = Model {
        appended: Vec::new(),
        durable: 0,
    };
    let mut wal = Some(open(&mut m));
    let mut counter = 0u64;
    for op in ops {
        let w = wal.as_ref().expect("open");
        let mut next_value = |len: usize| {
            counter += 1;
            value(counter, len)
        };
        match op {
            Op::Append(len) => {
                let v = next_value(len);
                match w.append(entry(&v)) {
                    Ok(lsn) => {
                        assert_eq!(lsn, m.appended.len() as u64 + 1, "seed {seed}");
                        m.appended.push(v);
                        if policy == FsyncPolicy::Always {
                            m.durable = lsn;
                        }
                    }
                    // Refused before anything was written.
                    Err(Error::Poisoned { .. }) => {}
                    // Failed in flight: it may or may not be in the log.
                    Err(_) => m.appended.push(v),
                }
            }
            Op::Batch(lens) => {
                let vals: Vec<Vec<u8>> = lens.iter().map(|&l| next_value(l)).collect();
                let entries: Vec<Entry<'_>> = vals.iter().map(|v| entry(v)).collect();
                match w.append_batch(&entries) {
                    Ok((_, last)) => {
                        m.appended.extend(vals);
                        if policy == FsyncPolicy::Always {
                            m.durable = last;
                        }
                    }
                    Err(Error::Poisoned { .. }) => {}
                    Err(_) => m.appended.extend(vals),
                }
            }
            Op::Sync => {
                if let Ok(d) = w.sync() {
                    m.durable = d;
                }
            }
            Op::Flush => {
                let _written = w.flush();
            }
            Op::Reopen => {
                let w = wal.take().expect("open");
                if w.close().is_ok() {
                    m.durable = m.appended.len() as u64;
                }
                wal = Some(open(&mut m));
            }
            Op::CloseThenPowerLoss => {
                let w = wal.take().expect("open");
                if w.close().is_ok() {
                    m.durable = m.appended.len() as u64;
                }
                sim.power_loss();
                wal = Some(open(&mut m));
            }
            Op::ProcessCrash => {
                // Buffered records may be lost; written ones survive. Drop without close.
                let written = w.written_lsn();
                sim.process_crash();
                drop(wal.take());
                m.durable = m.durable.max(written);
                wal = Some(open(&mut m));
            }
            Op::PowerLoss => {
                m.durable = m.durable.max(w.durable_lsn());
                sim.power_loss();
                drop(wal.take());
                wal = Some(open(&mut m));
            }
            Op::TornWriteThenPowerLoss(per_mille, len) => {
                let v = next_value(len);
                let frame = seglog_wal::format::frame_size(1, len);
                sim.set_faults(Faults {
                    tear_next_write_at: Some(frame * per_mille as usize / 1000),
                    only_files_ending: Some(".seg".into()),
                    ..Faults::default()
                });
                // Whether or not the torn append reports an error, the record may have landed
                // whole (a tear inside the padding) or not at all.
                let r = w.append(entry(&v));
                if !matches!(r, Err(Error::Poisoned { .. })) {
                    m.appended.push(v);
                }
                let _sync_result_irrelevant = w.sync();
                m.durable = m.durable.max(w.durable_lsn());
                sim.power_loss();
                drop(wal.take());
                wal = Some(open(&mut m));
            }
            Op::FailSyncThenPowerLoss(len) => {
                let v = next_value(len);
                m.durable = m.durable.max(w.durable_lsn());
                sim.set_faults(Faults {
                    fail_sync_in: Some(1),
                    only_files_ending: Some(".seg".into()),
                    ..Faults::default()
                });
                if w.submit(entry(&v)).is_ok() {
                    m.appended.push(v);
                }
                assert!(
                    w.sync().is_err(),
                    "seed {seed}: the injected fsync failure must surface"
                );
                assert!(
                    w.append(entry(b"x")).is_err(),
                    "seed {seed}: poisoned log accepted a write"
                );
                sim.power_loss();
                drop(wal.take());
                wal = Some(open(&mut m));
            }
        }
    }
}

/// The model on a real backend: no power loss or injected faults (only the simulated file
/// system can do those), but every write, sync, roll and reopen goes through the backend.
fn run_real(backend: usize, policy: FsyncPolicy, ops: Vec<Op>) {
    let envs = backends();
    let Some(env) = envs.into_iter().filter(|e| e.sim.is_none()).nth(backend) else {
        return;
    };
    let c = config(policy, 4096);
    let open = |m: &mut Model| {
        let w = Wal::open_with_io(env.io.clone(), &env.dir, c.clone())
            .unwrap_or_else(|e| panic!("[{}] open failed: {e}", env.name));
        check_after_reopen(&w, m, 0);
        w
    };
    let mut m = Model {
        appended: Vec::new(),
        durable: 0,
    };
    let mut wal = Some(open(&mut m));
    let mut counter = 0u64;
    for op in ops {
        let w = wal.as_ref().expect("open");
        match op {
            Op::Append(len) => {
                counter += 1;
                let v = value(counter, len);
                w.append(entry(&v))
                    .unwrap_or_else(|e| panic!("[{}] append: {e}", env.name));
                m.appended.push(v);
            }
            Op::Batch(lens) => {
                let vals: Vec<Vec<u8>> = lens
                    .iter()
                    .map(|&l| {
                        counter += 1;
                        value(counter, l)
                    })
                    .collect();
                let entries: Vec<Entry<'_>> = vals.iter().map(|v| entry(v)).collect();
                w.append_batch(&entries)
                    .unwrap_or_else(|e| panic!("[{}] batch: {e}", env.name));
                m.appended.extend(vals);
            }
            Op::Sync => {
                m.durable = w
                    .sync()
                    .unwrap_or_else(|e| panic!("[{}] sync: {e}", env.name))
            }
            Op::Flush => {
                w.flush()
                    .unwrap_or_else(|e| panic!("[{}] flush: {e}", env.name));
            }
            // No power loss here: a close then power failure is a close.
            Op::Reopen | Op::CloseThenPowerLoss => {
                wal.take()
                    .expect("open")
                    .close()
                    .unwrap_or_else(|e| panic!("[{}] close: {e}", env.name));
                m.durable = m.appended.len() as u64;
                wal = Some(open(&mut m));
            }
            // A process crash: drop without close. Written records survive (the page cache does).
            _ => {
                m.durable = m.durable.max(w.written_lsn());
                drop(wal.take());
                wal = Some(open(&mut m));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn real_backends_recover_a_prefix_holding_every_durable_record(
        backend in 0usize..4,
        policy in policy(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_real(backend, policy, ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn recovered_log_is_a_prefix_holding_every_durable_record(
        seed in any::<u64>(),
        policy in policy(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(seed, policy, ops);
    }
}
