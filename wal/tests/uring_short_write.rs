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
    // The limit applies to every file this process writes, stdout too when it is redirected to
    // a file (as CI does): nothing may be printed, not even by a failing assertion, until it is
    // lifted again right after the two writes.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives across the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut old) }, 0);
    let limit = libc::rlimit {
        rlim_cur: 10_000,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; it lives across the call.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) };
    // Within the limit: written and synced. Straddling it: the first write is short (10000 -
    // 4096 bytes land), the resubmitted rest fails with EFBIG, and the call must fail instead
    // of claiming durability.
    let within = file.write_and_sync(&[1u8; 4096], 0);
    let straddling = file.write_and_sync(&[2u8; 8192], 4096);
    // SAFETY: as above.
    let restored = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
    assert_eq!((set, restored), (0, 0));
    within.unwrap();
    let err = straddling.expect_err("the rest of a short write cannot be written");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes.len(),
        10_000,
        "the short part landed, nothing beyond the limit"
    );
    assert!(bytes[..4096].iter().all(|&b| b == 1) && bytes[4096..].iter().all(|&b| b == 2));
}
