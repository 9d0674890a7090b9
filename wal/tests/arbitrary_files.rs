//! No file content makes the WAL panic: arbitrary bytes, and valid logs with random damage, go
//! through the read-only view, verify, readers and recovery (the same code the fuzz target runs).

use proptest::prelude::*;
use seglog_wal::sim::{exercise_directory, SimIo};
use seglog_wal::{Entry, FsyncPolicy, Io, Wal, WalConfig};
use std::path::Path;
use std::sync::Arc;

/// A real small log's files, to damage.
fn real_log(records: u64) -> Vec<(String, Vec<u8>)> {
    let sim = SimIo::new(2);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let wal = Wal::open_with_io(
        io.clone(),
        "/l",
        WalConfig {
            segment_size_bytes: 4096,
            fsync: FsyncPolicy::Never,
            ..WalConfig::default()
        },
    )
    .unwrap();
    for i in 0..records {
        wal.append(Entry::new(
            format!("k{i}").as_bytes(),
            &vec![i as u8; (i % 90) as usize],
        ))
        .unwrap();
    }
    wal.close().unwrap();
    io.list_dir(Path::new("/l"))
        .unwrap()
        .into_iter()
        .filter(|n| n != "LOCK")
        .map(|n| {
            let b = sim.file_bytes(&Path::new("/l").join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_segment_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _any_outcome_but_a_panic = exercise_directory(&[("00000000000000000001.seg".into(), bytes)]);
    }

    #[test]
    fn damaged_real_logs_never_panic(records in 1u64..120, picks in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u8..3), 1..4)) {
        let mut files = real_log(records);
        for (f, at, how) in picks {
            let idx = (f % files.len() as u64) as usize;
            let b = &mut files[idx].1;
            if b.is_empty() {
                continue;
            }
            let pos = (at % b.len() as u64) as usize;
            match how {
                0 => b[pos] ^= 1 << (at % 8),
                1 => b.truncate(pos),
                _ => b[pos..].iter_mut().take(16).for_each(|x| *x = 0xA5),
            }
        }
        let _any_outcome_but_a_panic = exercise_directory(&files);
    }
}
