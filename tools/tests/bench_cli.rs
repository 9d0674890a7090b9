//! `walctl bench --engine`'s command line: what it measures on a small data set (the figures
//! themselves are timings and are not checked here; see docs/benchmarks.md).

mod common;

use common::{run, walctl};

/// `--no-put` skips the put comparison and still measures the reopen rows of the data set it
/// wrote: every key once, so a full replay reads exactly `--keys` records, and the memory
/// line counts that many keys (the rows after a tail checkpoint update keys, add none).
#[test]
fn engine_bench_without_puts_measures_the_data_set_it_wrote() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(walctl()
        .args(["bench", "--engine", "--no-put", "--keys", "20000"])
        .args([
            "--record-size",
            "100",
            "--runs",
            "1",
            "--segment-size",
            "1MB",
        ])
        .arg("--dir")
        .arg(tmp.path().join("bench")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walctl failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("put vs raw WAL append: skipped (--no-put)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(" never "),
        "a put row was printed: {stdout}"
    );
    for row in [
        "with checkpoints, after a clean close",
        "with checkpoints, after a crash",
        "full replay (no checkpoints), clean close",
        "with checkpoints, crash 4 MiB past a tail checkpoint",
    ] {
        assert!(stdout.contains(row), "no row {row:?}: {stdout}");
    }
    assert!(
        stdout.contains("full: OpenReport { run_files: 0, segments_from_checkpoints: 0")
            && stdout.contains("records_replayed: 20000 }"),
        "the full replay did not read every key once: {stdout}"
    );
    assert!(stdout.contains("(fresh process, 20000 keys)"), "{stdout}");
}
