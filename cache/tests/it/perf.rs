//! Timing checks for commit speed, run by hand: `cargo test -p kiln-cache --test it perf --
//! --ignored --nocapture`. They assert generous bounds so that a pathological slowdown fails.

use cache::store::{CommitOptions, Store};
use std::fs;
use std::io::Write;
use std::time::Instant;

/// CPU seconds (user + system, all threads) this process has used: wall time is meaningless on
/// a shared, loaded machine.
fn cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
#[ignore = "benchmark; run by hand"]
fn perf_commit_20000_small_files() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    for d in 0..100 {
        let sub = upper.join(format!("dir{d:03}"));
        fs::create_dir(&sub).unwrap();
        for f in 0..200 {
            fs::write(
                sub.join(format!("file{f:03}.txt")),
                format!("file {d} {f}\n"),
            )
            .unwrap();
        }
    }
    let (t, c) = (Instant::now(), cpu());
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    let (commit, commit_cpu) = (t.elapsed(), cpu() - c);
    let (t, c) = (Instant::now(), cpu());
    let store2 = Store::open(dir.path().join("other")).unwrap();
    let f = fs::File::open(store.blob_path(&layer.diff_id)).unwrap();
    store2.unpack_layer(f, None).unwrap();
    let (unpack, unpack_cpu) = (t.elapsed(), cpu() - c);
    eprintln!(
        "20,000 files: commit {commit:?} (cpu {commit_cpu:.2}s), unpack {unpack:?} (cpu {unpack_cpu:.2}s), tar {} bytes",
        layer.size
    );
    assert!(commit.as_secs_f64() < 5.0);
}

#[test]
#[ignore = "benchmark; run by hand"]
fn perf_commit_512_mib_file() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    let mut f = fs::File::create(upper.join("big")).unwrap();
    let block: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for _ in 0..512 {
        f.write_all(&block).unwrap();
    }
    drop(f);
    let (t, c) = (Instant::now(), cpu());
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    let (commit, commit_cpu) = (t.elapsed(), cpu() - c);
    let (t, c) = (Instant::now(), cpu());
    let gz = store
        .compressed_layer(&layer.diff_id, Default::default())
        .unwrap();
    let (gzip, gzip_cpu) = (t.elapsed(), cpu() - c);
    let t = Instant::now();
    let zs = store
        .compressed_layer(
            &layer.diff_id,
            cache::store::Compression {
                codec: cache::store::Codec::Zstd,
                level: 3,
            },
        )
        .unwrap();
    let zstd = t.elapsed();
    eprintln!(
        "512 MiB: commit {commit:?} (cpu {commit_cpu:.2}s); gzip-6 {gzip:?} (cpu {gzip_cpu:.2}s, {} bytes); zstd-3 {zstd:?} ({} bytes)",
        gz.size, zs.size
    );
    assert!(commit.as_secs_f64() < 30.0);
}
