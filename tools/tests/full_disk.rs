//! A full disk: `walctl append` fails with a clear error and exit 2, every record it acknowledged
//! is in the log, every record in the log was acknowledged, the log verifies, and appends resume
//! once there is space again. Needs a small tmpfs (root); skipped, loudly, where it cannot mount.

mod common;
#[path = "../../tests/support/tmpfs.rs"]
mod tmpfs;
use common::*;
use std::io::Write;
use std::process::Stdio;
use tmpfs::Tmpfs;

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(disk) = Tmpfs::mount(&mnt, "1M") else {
        return;
    };
    let config = small_segments_config(tmp.path(), "64KB");
    let dir = mnt.join("data");
    let input: String = (0..100_000).map(|i| format!("record-{i}\n")).collect();
    let mut child = append_cmd(&config, &dir, &["--fsync", "always"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _stops_when_walctl_exits = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(2), "a full disk is an I/O error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    let acked: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(!acked.is_empty());
    let v = run(walctl().args(["verify", dir.to_str().unwrap()]));
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let dump = run(walctl().args(["dump", "--json", dir.to_str().unwrap()]));
    let recs = parse_dump(&dump.stdout);
    assert_eq!(
        recs.len(),
        acked.len(),
        "every acknowledged record is in the log and every record in it was acknowledged"
    );
    for (i, (lsn, v)) in recs.iter().enumerate() {
        assert_eq!(
            (*lsn, v.as_str()),
            (i as u64 + 1, format!("record-{i}").as_str())
        );
    }
    // Space again: appends resume after the last record.
    disk.resize("8M");
    let mut child = append_cmd(&config, &dir, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"after\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (acked.len() + 1).to_string()
    );
}
