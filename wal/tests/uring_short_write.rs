//! io_uring short writes, forced for real: with RLIMIT_FSIZE set, a write that straddles the
//! limit comes back short. The backend must resubmit the rest before any fsync (here the rest
//! then fails with EFBIG), report the failure, and never report the linked fsync as done.
//! Its own test binary: the limit applies to the whole process.

use seglog_wal::io::Io;
use seglog_wal::uring::UringIo;

#[test]
fn short_write_is_resubmitted_and_its_failure_reported() {
    let Ok(io) = UringIo::new(false) else {
        eprintln!("SKIPPED: io_uring unavailable here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let file = io.create_truncate(&path).unwrap();
    // SAFETY: setting a signal disposition to SIG_IGN has no handler to be unsafe about; without
    // it, exceeding RLIMIT_FSIZE would kill the process with SIGXFSZ.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let limit = libc::rlimit {
        rlim_cur: 10_000,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; it lives across the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);

    // Within the limit: written and synced.
    file.write_and_sync(&[1u8; 4096], 0).unwrap();
    // Straddling it: the first write is short (10000 - 4096 bytes land), the resubmitted rest
    // fails with EFBIG, and the call fails instead of claiming durability.
    let err = file
        .write_and_sync(&[2u8; 8192], 4096)
        .expect_err("the rest of a short write cannot be written");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes.len(),
        10_000,
        "the short part landed, nothing beyond the limit"
    );
    assert!(bytes[..4096].iter().all(|&b| b == 1) && bytes[4096..].iter().all(|&b| b == 2));
}
