//! Fuzz target: arbitrary bytes as the segment files of a data directory, through the read-only
//! view, verify, readers and recovery. Run: `cargo +nightly fuzz run segment_files` in `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says how many segment files the rest is cut into (1 to 4).
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 4) + 1;
    let chunk = rest.len() / n + 1;
    let files: Vec<(String, Vec<u8>)> = rest
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| (format!("{:020}.seg", 1 + i * 50), c.to_vec()))
        .collect();
    let _ = seglog_wal::sim::exercise_directory(&files);
});
