//! One test per row of the recovery decision table in docs/format.md, on the simulated file
//! system with exact byte surgery: what recovery cuts, what it reports, what it refuses.

use seglog_wal::format::{
    frame_size, DurablePoint, SegmentHeader, DURABLE_LEN, FOOTER_LEN, HDR_DURABLE, HEADER_LEN,
};
use seglog_wal::sim::SimIo;
use seglog_wal::{Entry, Error, FsyncPolicy, Io, LogView, RecoveryMode, TailState, Wal, WalConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "/log";
const VALUE: usize = 40;

fn cfg(mode: RecoveryMode) -> WalConfig {
    WalConfig {
        fsync: FsyncPolicy::Always,
        segment_size_bytes: 4096,
        recovery: mode,
        ..WalConfig::default()
    }
}

fn frame() -> u64 {
    frame_size(1, VALUE) as u64
}

fn value(i: u64) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; VALUE]
}

/// A log with `n` records (single appends), left as after a crash (no CLOSED marker) unless
/// `close`.
fn log(n: u64, close: bool) -> (SimIo, Arc<dyn Io>) {
    let sim = SimIo::new(1);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    for i in 1..=n {
        wal.append(Entry::new(b"k", &value(i))).unwrap();
    }
    if close {
        wal.close().unwrap();
    } else {
        drop(wal);
        sim.process_crash();
    }
    // The next process (after a crash, the last one's calls fail).
    (sim.clone(), Arc::new(sim.restart()))
}

fn segments(io: &Arc<dyn Io>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = io
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .map(|n| Path::new(DIR).join(n))
        .collect();
    v.sort();
    v
}

fn edit(sim: &SimIo, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = sim.file_bytes(path).unwrap();
    f(&mut b);
    sim.put_file_bytes(path, b);
}

fn lsns(wal: &Wal) -> Vec<u64> {
    wal.reader(1).map(|r| r.unwrap().lsn).collect()
}

#[test]
fn clean_end_is_not_cut() {
    let (_sim, io) = log(5, false);
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.recovery_report().torn_tail, None);
    assert_eq!(lsns(&wal), (1..=5).collect::<Vec<_>>());
}

#[test]
fn torn_last_frame_is_cut_and_reported() {
    let (sim, io) = log(5, false);
    let seg = segments(&io)[0].clone();
    let last = HEADER_LEN as u64 + 4 * frame();
    // The second half of the last frame never reached the disk.
    edit(&sim, &seg, |b| {
        b[(last + frame() / 2) as usize..(last + frame()) as usize].fill(0)
    });
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    let t = wal
        .recovery_report()
        .torn_tail
        .clone()
        .expect("a torn tail");
    assert_eq!(
        (t.segment, t.offset, t.lsns_cut, t.valid_records_lost),
        (seg.clone(), last, None, false)
    );
    assert!(t.bytes_cut > 0 && t.bytes_cut <= frame());
    assert_eq!(lsns(&wal), (1..=4).collect::<Vec<_>>());
    // The cut bytes are zero now, and the next record reuses LSN 5.
    assert_eq!(wal.append(Entry::new(b"k", b"new")).unwrap(), 5);
}

#[test]
fn incomplete_batch_at_the_end_is_cut_whole() {
    let sim = SimIo::new(1);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    wal.append(Entry::new(b"k", &value(1))).unwrap();
    let vals: Vec<Vec<u8>> = (2..=4).map(value).collect();
    let batch: Vec<Entry<'_>> = vals.iter().map(|v| Entry::new(b"k", v)).collect();
    assert_eq!(wal.append_batch(&batch).unwrap(), (2, 4));
    drop(wal);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    // The batch's last frame is lost: records 2 and 3 are whole but their batch is not.
    let seg = segments(&io)[0].clone();
    let last = HEADER_LEN as u64 + 3 * frame();
    edit(&sim, &seg, |b| {
        b[last as usize..(last + frame()) as usize].fill(0)
    });
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    let t = wal
        .recovery_report()
        .torn_tail
        .clone()
        .expect("an incomplete batch is a torn tail");
    assert_eq!(t.lsns_cut, Some((2, 3)));
    assert_eq!(t.offset, HEADER_LEN as u64 + frame());
    assert_eq!(lsns(&wal), vec![1]);
}

/// The durable point in a segment's header (`format::DurablePoint`), as recovery reads it.
fn durable_point(sim: &SimIo, seg: &Path) -> Option<DurablePoint> {
    let b = sim.file_bytes(seg).unwrap();
    let first = SegmentHeader::decode(&b, seg).unwrap().first_lsn;
    DurablePoint::decode(&b, first)
}

/// Clears the durable point, so that recovery scans the segment from its first frame, as it
/// does when no fdatasync covered any of it.
fn forget_durable_point(sim: &SimIo, seg: &Path) {
    edit(sim, seg, |b| {
        b[HDR_DURABLE..HDR_DURABLE + DURABLE_LEN].fill(0)
    });
}

#[test]
fn bad_frame_followed_by_valid_ones_is_refused_in_strict_mode_and_cut_in_tail_tolerant() {
    let (sim, io) = log(6, false);
    let seg = segments(&io)[0].clone();
    // Damage after the durable point (here: no point at all) is what the scan sees.
    forget_durable_point(&sim, &seg);
    let third = HEADER_LEN as u64 + 2 * frame();
    edit(&sim, &seg, |b| b[(third + 40) as usize] ^= 0x10);
    match Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)) {
        Err(Error::Corruption {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!((segment, offset), (seg.clone(), third));
            assert!(reason.contains("valid record follows"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::TailTolerant)).unwrap();
    let t = wal.recovery_report().torn_tail.clone().unwrap();
    assert!(t.valid_records_lost);
    assert_eq!(lsns(&wal), vec![1, 2]);
}

#[test]
fn a_seal_interrupted_before_the_cut_is_finished() {
    // Enough records to roll once, then simulate a crash between writing the footer of the
    // second segment and cutting the file: rebuild that state from a sealed segment.
    let (sim, io) = log(120, false);
    let segs = segments(&io);
    assert!(segs.len() >= 2);
    let sealed = segs[0].clone();
    let bytes = sim.file_bytes(&sealed).unwrap();
    // Remove every later segment and pad the sealed one back to its capacity with zeros.
    for s in &segs[1..] {
        io.remove_file(s).unwrap();
    }
    io.sync_dir(Path::new(DIR)).unwrap();
    let mut padded = bytes.clone();
    padded.resize(4096, 0);
    // The last durable point's write was torn too (it is written after its fdatasync, and only
    // the seal's fsync covers it): the seal finished below must not keep it.
    padded[HDR_DURABLE + 5] ^= 0x40;
    sim.put_file_bytes(&sealed, padded);
    let view = LogView::open(io.clone(), Path::new(DIR)).unwrap();
    assert!(
        view.segments[0].sealed(),
        "the footer is found inside the file"
    );
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert!(wal.recovery_report().finished_seal);
    assert_eq!(
        sim.file_bytes(&sealed).unwrap().len(),
        bytes.len(),
        "cut right after the footer"
    );
    let next = wal.append(Entry::new(b"k", b"x")).unwrap();
    assert_eq!(next, view.last_lsn() + 1);
    assert_eq!(
        segments(&io).len(),
        2,
        "the next append went to a new segment"
    );
    assert_eq!(durable_point(&sim, &sealed), None, "cleared");
    drop(wal);
    sim.power_loss();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    // Sealed now and followed by another segment, its header holds no damage.
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.last_lsn(), next);
}

#[test]
fn an_unsealed_segment_followed_by_another_is_corruption() {
    let (sim, io) = log(120, false);
    let first = segments(&io)[0].clone();
    edit(&sim, &first, |b| {
        let n = b.len();
        b.truncate(n - FOOTER_LEN);
    });
    match Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)) {
        Err(Error::Corruption {
            segment, reason, ..
        }) => {
            assert_eq!(segment, first);
            assert!(reason.contains("not sealed"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_missing_segment_is_reported_with_the_gap() {
    let (_sim, io) = log(250, false);
    let segs = segments(&io);
    assert!(segs.len() >= 3, "{segs:?}");
    io.remove_file(&segs[1]).unwrap();
    match Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)) {
        Err(Error::MissingSegment { after, next, .. }) => {
            assert_eq!((after, next), (segs[0].clone(), segs[2].clone()))
        }
        other => panic!("expected a missing segment, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn tail_tolerant_keeps_the_log_up_to_a_gap_and_sets_the_rest_aside() {
    let (sim, io) = log(400, false);
    let segs = segments(&io);
    assert!(segs.len() >= 4, "{segs:?}");
    let kept_bytes = sim.file_bytes(&segs[0]).unwrap();
    io.remove_file(&segs[1]).unwrap();
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::TailTolerant)).unwrap();
    let kept = lsns(&wal);
    let end = kept.len() as u64;
    assert_eq!(kept, (1..=end).collect::<Vec<_>>(), "a prefix");
    assert!(end > 0);
    // Exactly the first segment's records: the gap is right after it.
    let first_of_missing = segs[1]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(seglog_wal::format::parse_segment_file_name)
        .unwrap();
    assert_eq!(end + 1, first_of_missing);
    let dropped: Vec<PathBuf> = segs[2..]
        .iter()
        .map(|p| PathBuf::from(format!("{}.dropped", p.display())))
        .collect();
    assert_eq!(wal.recovery_report().dropped_segments, dropped);
    for (from, to) in segs[2..].iter().zip(&dropped) {
        assert!(
            !io.exists(from) && io.exists(to),
            "{} set aside",
            from.display()
        );
    }
    assert_eq!(sim.file_bytes(&segs[0]).unwrap(), kept_bytes);
    // The log goes on from the gap, and a strict open afterwards finds nothing wrong.
    for i in 0..200 {
        wal.append(Entry::new(b"k", &value(i))).unwrap();
    }
    drop(wal);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(lsns(&wal), (1..=end + 200).collect::<Vec<_>>());
    assert!(wal.recovery_report().dropped_segments.is_empty());
}

#[test]
fn tail_tolerant_opens_a_closed_log_with_a_gap_up_to_the_gap() {
    let (_sim, io) = log(400, true);
    let segs = segments(&io);
    io.remove_file(&segs[1]).unwrap();
    assert!(matches!(
        Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)),
        Err(Error::MissingSegment { .. })
    ));
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::TailTolerant)).unwrap();
    assert_eq!(wal.recovery_report().dropped_segments.len(), segs.len() - 2);
    let end = lsns(&wal).len() as u64;
    assert_eq!(lsns(&wal), (1..=end).collect::<Vec<_>>());
    wal.append(Entry::new(b"k", b"after")).unwrap();
}

/// After a crash, recovery scans the last segment from its header's durable point: damage
/// before it is not seen by the open (as in a sealed segment), and the reader that reaches it
/// reports it with segment and offset; `LogView` (`walctl verify`) still scans and reports it.
/// Without the point, the same damage is refused by the open.
#[test]
fn recovery_starts_at_the_durable_point_and_readers_report_damage_before_it() {
    let (sim, io) = log(40, false);
    let seg = segments(&io)[0].clone();
    let point = durable_point(&sim, &seg).expect("fdatasyncs wrote a durable point");
    assert!(point.last_lsn >= 4 && point.last_lsn <= 40, "{point:?}");
    assert_eq!(
        point.records_end,
        HEADER_LEN as u64 + point.last_lsn * frame()
    );
    let second = HEADER_LEN as u64 + frame();
    edit(&sim, &seg, |b| b[(second + 40) as usize] ^= 0x10);
    let before = sim.file_bytes(&seg).unwrap();

    let view = LogView::open_prefix(io.clone(), Path::new(DIR)).unwrap().0;
    assert!(
        matches!(view.tail, TailState::Corrupt { .. }),
        "{:?}",
        view.tail
    );
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.last_lsn(), 40);
    assert_eq!(wal.recovery_report().torn_tail, None);
    let read: Vec<_> = wal.reader(1).collect();
    assert_eq!(read[0].as_ref().unwrap().lsn, 1);
    match &read[1] {
        Err(Error::Corruption {
            segment, offset, ..
        }) => {
            assert_eq!((segment, *offset), (&seg, second))
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(read.len(), 2, "nothing past the damage");
    drop(wal);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());

    // The same damage with no durable point: the open scans it and refuses.
    sim.put_file_bytes(&seg, before);
    forget_durable_point(&sim, &seg);
    assert!(matches!(
        Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)),
        Err(Error::Corruption { .. })
    ));
}

/// A durable point that fails its checksum, or that lies past the end of the file, is not
/// used: the segment is scanned from its first frame.
#[test]
fn a_damaged_or_out_of_range_durable_point_is_not_used() {
    let (sim, io) = log(40, false);
    let seg = segments(&io)[0].clone();
    let point = durable_point(&sim, &seg).unwrap();
    edit(&sim, &seg, |b| b[HDR_DURABLE] ^= 1);
    assert_eq!(durable_point(&sim, &seg), None);
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(lsns(&wal), (1..=40).collect::<Vec<_>>());
    drop(wal);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    let len = sim.file_bytes(&seg).unwrap().len() as u64;
    let far = DurablePoint {
        records_end: len + 8,
        ..point
    };
    edit(&sim, &seg, |b| {
        b[HDR_DURABLE..HDR_DURABLE + DURABLE_LEN].copy_from_slice(&far.encode(1).unwrap())
    });
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(lsns(&wal), (1..=40).collect::<Vec<_>>());
}

/// A durable point that is not one is damage where no crash can have torn it: in a sealed
/// segment (written before the seal's fsync), or in any segment of a cleanly closed log.
#[test]
fn a_damaged_durable_point_is_corruption_in_a_sealed_segment_or_a_closed_log() {
    for close in [false, true] {
        let (sim, io) = log(250, close);
        let segs = segments(&io);
        assert!(segs.len() >= 3, "{segs:?}");
        let damaged = if close {
            segs.last().unwrap()
        } else {
            &segs[0]
        };
        // A point that was there, or bytes where none was: either way not a point.
        edit(&sim, damaged, |b| b[HDR_DURABLE + 3] ^= 4);
        assert_eq!(durable_point(&sim, damaged), None);
        for r in [
            LogView::open(io.clone(), Path::new(DIR)).map(|_| ()),
            Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).map(|_| ()),
        ] {
            match r {
                Err(Error::Corruption {
                    segment, offset, ..
                }) => {
                    assert_eq!((&segment, offset), (damaged, HDR_DURABLE as u64))
                }
                other => panic!("close {close}: expected corruption, got {other:?}"),
            }
        }
    }
}

/// An open makes the recovered prefix durable and records that as the durable point, so the
/// next recovery starts at least there.
#[test]
fn an_open_after_a_crash_marks_the_recovered_end_durable() {
    let (sim, io) = log(3, false);
    let seg = segments(&io)[0].clone();
    assert_eq!(
        durable_point(&sim, &seg),
        None,
        "3 records: below the marking distance"
    );
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    let p = durable_point(&sim, &seg).expect("marked at open");
    assert_eq!(
        (p.last_lsn, p.records_end),
        (3, HEADER_LEN as u64 + 3 * frame())
    );
    assert_eq!(lsns(&wal), vec![1, 2, 3]);
}

#[test]
fn a_foreign_file_is_refused_by_name() {
    let (sim, io) = log(3, false);
    sim.write_file(&Path::new(DIR).join("notes.txt"), b"hi".to_vec());
    match Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)) {
        Err(Error::ForeignFile { path, .. }) => assert_eq!(path, Path::new(DIR).join("notes.txt")),
        other => panic!("expected a foreign file, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_damaged_header_is_refused() {
    let (sim, io) = log(3, false);
    let seg = segments(&io)[0].clone();
    edit(&sim, &seg, |b| b[20] ^= 1);
    assert!(matches!(
        Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)),
        Err(Error::Corruption { offset: 0, .. })
    ));
}

/// After a clean close, the `CLOSED` marker says where the log ends, and opening it takes the
/// end from there: damage to the last record is then not cut as a torn tail (nor found by the
/// open, as damage in a sealed segment is not): the reader that reaches it reports it, naming
/// the segment and offset, after every record before it; `LogView` (what `walctl verify` and
/// `dump` use) scans, and reports it as corruption.
#[test]
fn after_a_clean_close_a_torn_looking_tail_is_corruption_not_a_cut() {
    let (sim, io) = log(5, true);
    let seg = segments(&io)[0].clone();
    let last = HEADER_LEN as u64 + 4 * frame();
    edit(&sim, &seg, |b| b[(last + 35) as usize] ^= 1);
    let view = LogView::open_prefix(io.clone(), Path::new(DIR)).unwrap().0;
    assert!(
        matches!(view.tail, TailState::Corrupt { .. }),
        "{:?}",
        view.tail
    );
    let wal = Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.recovery_report().torn_tail, None);
    assert_eq!(wal.last_lsn(), 5);
    let read: Vec<_> = wal.reader(1).collect();
    let good: Vec<u64> = read
        .iter()
        .map_while(|r| r.as_ref().ok())
        .map(|r| r.lsn)
        .collect();
    assert_eq!(good, vec![1, 2, 3, 4]);
    assert_eq!(read.len(), 5, "nothing is read past the damage");
    match read.get(4) {
        Some(Err(Error::Corruption {
            segment, offset, ..
        })) => {
            assert_eq!((segment, *offset), (&seg, last));
        }
        other => panic!("expected the damaged record reported, got {other:?}"),
    }
}

/// A marker that does not describe the last segment is not trusted: here records follow the
/// end it names (as in a copy of the directory taken while the log was reopened and written),
/// and the open scans the segment and refuses, as before.
#[test]
fn after_a_clean_close_records_past_the_marker_are_corruption() {
    let (sim, io) = log(5, true);
    let marker = Path::new(DIR).join("CLOSED");
    let closed = sim.file_bytes(&marker).unwrap();
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    wal.append(Entry::new(b"k", &value(6))).unwrap();
    drop(wal);
    sim.write_file(&marker, closed);
    let view = LogView::open_prefix(io.clone(), Path::new(DIR)).unwrap().0;
    assert!(
        matches!(view.tail, TailState::Corrupt { .. }),
        "{:?}",
        view.tail
    );
    assert!(matches!(
        Wal::open_with_io(io, DIR, cfg(RecoveryMode::Strict)),
        Err(Error::Corruption { .. })
    ));
}

/// Reopened after a clean close, the log goes on from the marker's end: appends continue the
/// LSNs and the checksum chain, across reopens with and without a clean close.
#[test]
fn after_a_clean_close_appends_continue_the_log() {
    let (sim, io) = log(5, true);
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.recovery_report().torn_tail, None);
    for i in 6..=8 {
        assert_eq!(wal.append(Entry::new(b"k", &value(i))).unwrap(), i);
    }
    wal.close().unwrap();
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.append(Entry::new(b"k", &value(9))).unwrap(), 9);
    drop(wal);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    // A crash leaves no marker: this open scans every frame, and finds them all sound.
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.recovery_report().torn_tail, None);
    assert_eq!(lsns(&wal), (1..=9).collect::<Vec<_>>());
    let values: Vec<Vec<u8>> = wal.reader(1).map(|r| r.unwrap().value).collect();
    assert_eq!(values, (1..=9).map(value).collect::<Vec<_>>());
    drop(wal);
    LogView::open(io, Path::new(DIR))
        .unwrap()
        .verify_records()
        .unwrap();
}

#[test]
fn leftover_temporary_files_are_removed() {
    let (sim, io) = log(3, false);
    sim.write_file(&Path::new(DIR).join("next.seg.tmp"), vec![0u8; 100]);
    sim.write_file(&Path::new(DIR).join("CLOSED.tmp"), vec![1u8; 10]);
    let wal = Wal::open_with_io(io.clone(), DIR, cfg(RecoveryMode::Strict)).unwrap();
    assert_eq!(wal.recovery_report().removed_temp_files, 2);
    assert!(!io.exists(&Path::new(DIR).join("CLOSED.tmp")));
    assert_eq!(lsns(&wal), vec![1, 2, 3]);
}

/// Damage to any one frame of a segment is reported at that frame, with every record before
/// it returned, wherever the frame falls among those whose checksums a reader checks together
/// (in groups of four, batches of 64: see `SegmentCursor::check_ahead`).
#[test]
fn damage_to_any_one_frame_is_reported_at_that_frame() {
    let n = 150u64;
    let sim = SimIo::new(1);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let big = WalConfig {
        segment_size_bytes: 64 << 10,
        ..cfg(RecoveryMode::Strict)
    };
    let wal = Wal::open_with_io(io.clone(), DIR, big.clone()).unwrap();
    for i in 1..=n {
        wal.append(Entry::new(b"k", &value(i))).unwrap();
    }
    wal.close().unwrap();
    let seg = segments(&io)[0].clone();
    let clean = sim.file_bytes(&seg).unwrap();
    let marker = Path::new(DIR).join("CLOSED");
    let closed = sim.file_bytes(&marker).unwrap();
    for k in 0..n {
        let at = HEADER_LEN as u64 + k * frame();
        // Closed cleanly each time (an open removes the marker), so the open takes the log's
        // end from the marker and the reader is what reads every frame.
        sim.put_file_bytes(&seg, clean.clone());
        sim.write_file(&marker, closed.clone());
        // A byte of the value: only the checksum can tell.
        edit(&sim, &seg, |b| b[(at + 40) as usize] ^= 0x01);
        let wal = Wal::open_with_io(io.clone(), DIR, big.clone()).unwrap();
        assert_eq!(wal.last_lsn(), n, "frame {k}");
        let read: Vec<_> = wal.reader(1).collect();
        let good: Vec<u64> = read
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.lsn)
            .collect();
        assert_eq!(good, (1..=k).collect::<Vec<_>>(), "frame {k}");
        match read.last() {
            Some(Err(Error::Corruption {
                segment, offset, ..
            })) => assert_eq!((segment, *offset), (&seg, at), "frame {k}"),
            other => panic!("frame {k}: expected corruption, got {other:?}"),
        }
        drop(wal);
    }
}
