//! Corruption test: random bit flips and truncations of closed data directories. `verify` must
//! report every one (exit 1, naming a file and an offset); `dump` must never print a record that
//! differs from what was written, and must exit 0 or 1 without panicking.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn snapshot(dir: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

fn restore(dir: &std::path::Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, b) in files {
        std::fs::write(p, b).unwrap();
    }
}

#[test]
fn every_flip_and_truncation_of_a_closed_directory_is_reported() {
    let seed = seed("corruption");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = small_segments_config(tmp.path(), "8KB");
    let input: String = (0..400)
        .map(|i| format!("key{i}=value {i} {}\n", "z".repeat(i % 50)))
        .collect();
    let mut child = append_cmd(&config, &dir, &["--fsync", "never", "--key-sep", "="])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let pristine_dump = run(walctl().args(["dump", "--json", dir.to_str().unwrap()]));
    assert!(pristine_dump.status.success());
    let pristine = parse_dump(&pristine_dump.stdout);
    assert_eq!(pristine.len(), 400);
    let files = snapshot(&dir);
    // LOCK holds only a pid: not data.
    let targets: Vec<&PathBuf> = files.keys().filter(|p| !p.ends_with("LOCK")).collect();
    assert!(
        targets.len() >= 4,
        "expected several segments, got {targets:?}"
    );

    for round in 0..rounds(150) {
        restore(&dir, &files);
        let target = targets[rng.below(targets.len() as u64) as usize];
        let len = files[target].len() as u64;
        let what = if rng.below(4) == 0 {
            let at = rng.below(len);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(target)
                .unwrap();
            f.set_len(at).unwrap();
            format!("truncated {} to {at} bytes", target.display())
        } else {
            let bit = rng.below(len * 8);
            let mut b = files[target].clone();
            b[(bit / 8) as usize] ^= 1 << (bit % 8);
            std::fs::write(target, &b).unwrap();
            format!("flipped bit {bit} of {}", target.display())
        };
        let v = run(walctl().args(["verify", dir.to_str().unwrap()]));
        let stdout = String::from_utf8_lossy(&v.stdout);
        assert_eq!(
            v.status.code(),
            Some(1),
            "seed {seed} round {round}: {what}: verify said {stdout}"
        );
        assert!(
            stdout.contains("offset") || stdout.contains("foreign") || stdout.contains("missing"),
            "seed {seed} round {round}: {what}: verify did not locate it: {stdout}"
        );

        let d = run(walctl().args(["dump", "--json", dir.to_str().unwrap()]));
        assert!(
            matches!(d.status.code(), Some(0) | Some(1)),
            "seed {seed} round {round}: {what}: dump exited {:?}: {}",
            d.status,
            String::from_utf8_lossy(&d.stderr)
        );
        let got = parse_dump(&d.stdout);
        assert!(
            got.len() <= pristine.len(),
            "seed {seed} round {round}: {what}"
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r, &pristine[i],
                "seed {seed} round {round}: {what}: dump printed a record that was not written"
            );
        }
    }
}

#[test]
fn verify_and_dump_exit_codes_on_a_healthy_and_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = walctl()
        .args(["append", dir.to_str().unwrap(), "--fsync", "always"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    let v = run(walctl().args(["verify", dir.to_str().unwrap()]));
    assert_eq!(v.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("ok: LSN 1..=2, 2 records, 1 segments"));
    let missing = tmp.path().join("nope");
    assert_eq!(
        run(walctl().args(["verify", missing.to_str().unwrap()]))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(walctl().args(["dump", missing.to_str().unwrap()]))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(walctl().args(["frobnicate"])).status.code(), Some(2));
    // A foreign file is a check failure.
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
    assert_eq!(
        run(walctl().args(["verify", dir.to_str().unwrap()]))
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut first = walctl()
        .args(["append", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut stdin = first.stdin.take().unwrap();
    writeln!(stdin, "hold").unwrap();
    // Once it printed an LSN it holds the lock.
    let mut line = String::new();
    std::io::BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let second = run(walctl()
        .args(["append", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::null()));
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    drop(stdin);
    assert!(first.wait().unwrap().success());
}

/// A segment missing between two others (as in a copy of a live directory that missed one):
/// `verify` and a strict `append` refuse, naming the gap; an `append` under tail-tolerant
/// recovery keeps the log up to the gap, sets the segments after it aside (and says so), and
/// appends after it; `inspect` lists what was set aside and `verify` passes.
#[test]
fn a_missing_segment_is_refused_strictly_and_set_aside_tail_tolerant() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let strict = small_segments_config(tmp.path(), "4KB");
    let input: String = (0..400).map(|i| format!("record-{i}\n")).collect();
    let mut child = append_cmd(&strict, &dir, &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let v = run(walctl().args(["verify", dir.to_str().unwrap()]));
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stderr).contains("missing segment"));
    let a = run(append_cmd(&strict, &dir, &[]).stdin(std::process::Stdio::null()));
    assert_ne!(a.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&a.stderr).contains("missing segment"));

    std::fs::create_dir(tmp.path().join("tolerant")).unwrap();
    let tolerant = config_file(
        &tmp.path().join("tolerant"),
        "segment_size = \"4KB\"\nrecovery = \"tail-tolerant\"",
    );
    let mut child = append_cmd(&tolerant, &dir, &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"after\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("set it aside").count(), segs.len() - 2, "{err}");
    let dump = run(walctl().args(["dump", "--json", dir.to_str().unwrap()]));
    let recs = parse_dump(&dump.stdout);
    let kept = recs.len() - 1;
    assert!(kept > 0);
    assert_eq!(recs.last().unwrap().1, "after");
    for (i, (lsn, v)) in recs[..kept].iter().enumerate() {
        assert_eq!(
            (*lsn, v.as_str()),
            (i as u64 + 1, format!("record-{i}").as_str())
        );
    }
    let i = run(walctl().args(["inspect", dir.to_str().unwrap()]));
    assert_eq!(i.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&i.stdout);
    assert_eq!(
        shown.matches("set aside by tail-tolerant recovery").count(),
        segs.len() - 2,
        "{shown}"
    );
    let v = run(walctl().args(["verify", dir.to_str().unwrap()]));
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
}
