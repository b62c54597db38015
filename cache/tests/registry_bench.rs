//! One registry operation per process, for bench/registry.sh (which measures time and peak
//! RSS around it). Ignored by `cargo test`; the script runs it with `--ignored --exact`.
//!
//! Environment: KILN_BENCH_OP (`make`, `save`, `push`, `pull`, `unpack`, `ingest`), KILN_BENCH_ROOT (the store),
//! KILN_BENCH_REF (registry reference, push/pull), KILN_BENCH_SIZE_MIB (make),
//! KILN_BENCH_OUT (save: the tar to write), KILN_BENCH_BLOB (unpack, ingest: the input file).

use cache::oci::{ImageConfig, Platform};
use cache::reference::Reference;
use cache::registry::{self, RegistryOptions, auth::DockerConfig};
use cache::store::Store;
use std::io::Write;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (run bench/registry.sh)"))
}

/// Fills `buf` with data that gzip shrinks to about half: random 4 KiB blocks alternating with
/// repetitive text.
fn fill(buf: &mut [u8], state: &mut u64) {
    for (i, block) in buf.chunks_mut(4096).enumerate() {
        if i % 2 == 0 {
            for c in block.chunks_mut(8) {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                let b = state.to_le_bytes();
                c.copy_from_slice(&b[..c.len()]);
            }
        } else {
            for (j, b) in block.iter_mut().enumerate() {
                *b = b"the quick brown fox jumps over the lazy dog\n"[j % 44];
            }
        }
    }
}

#[test]
#[ignore = "run by bench/registry.sh"]
fn registry_bench_op() {
    let op = env("KILN_BENCH_OP");
    let store = Store::open(env("KILN_BENCH_ROOT")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = RegistryOptions::new(DockerConfig::anonymous());
    opts.retries = 0;
    match op.as_str() {
        "make" => {
            let size: u64 = env("KILN_BENCH_SIZE_MIB").parse::<u64>().unwrap() << 20;
            let tmp = tempfile::NamedTempFile::new_in(store.root()).unwrap();
            {
                let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(size);
                h.set_cksum();
                let mut w = b.append_writer(&mut h, "data.bin").unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut state = 0x9e3779b97f4a7c15u64;
                for _ in 0..(size >> 20) {
                    fill(&mut buf, &mut state);
                    w.write_all(&buf).unwrap();
                }
                w.finish().unwrap();
                b.into_inner().unwrap().flush().unwrap();
            }
            let f = std::fs::File::open(tmp.path()).unwrap();
            let image = store
                .import_rootfs(
                    std::io::BufReader::new(f),
                    ImageConfig::empty(&Platform::host()),
                )
                .unwrap();
            store.tag("bench:latest", &image.manifest_digest).unwrap();
            println!("made {}", image.manifest_digest);
        }
        "save" => {
            let image = store.resolve("bench:latest").unwrap().unwrap();
            let out = std::fs::File::create(env("KILN_BENCH_OUT")).unwrap();
            store
                .save(
                    &[("bench:latest".to_owned(), image.manifest_digest)],
                    std::io::BufWriter::new(out),
                )
                .unwrap();
        }
        "push" => {
            let image = store.resolve("bench:latest").unwrap().unwrap();
            let r = Reference::parse(&env("KILN_BENCH_REF")).unwrap();
            let d = rt
                .block_on(registry::push(&store, &image, &r, &opts))
                .unwrap();
            println!("pushed {d}");
        }
        "pull" => {
            let r = Reference::parse(&env("KILN_BENCH_REF")).unwrap();
            let image = rt
                .block_on(registry::pull(&store, &r, &Platform::host(), &opts))
                .unwrap();
            println!("pulled {}", image.manifest_digest);
        }
        "unpack" => {
            // The unpack half of a pull alone: a (compressed) layer file into the store.
            let f = std::fs::File::open(env("KILN_BENCH_BLOB")).unwrap();
            let layer = store.unpack_layer(std::io::BufReader::with_capacity(1 << 20, f), None).unwrap();
            println!("unpacked {}", layer.diff_id);
        }
        "ingest" => {
            // The download half's disk side: hash and store a blob.
            let f = std::fs::File::open(env("KILN_BENCH_BLOB")).unwrap();
            let (d, n) = store.ingest_blob(std::io::BufReader::with_capacity(1 << 20, f), None).unwrap();
            println!("ingested {d} {n}");
        }
        other => panic!("unknown KILN_BENCH_OP {other}"),
    }
}
