//! `save` checked with the real tools: skopeo reads the OCI archive, umoci unpacks the same tree.

use crate::{describe_tree, is_root, precondition};
use cache::oci::{ImageConfig, Platform};
use cache::store::{Codec, CommitOptions, Compression, Store};
use std::fs;
use std::io::Read;
use std::process::Command;

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn saved_archive_is_read_by_skopeo_and_unpacked_by_umoci_to_the_same_tree() {
    if !precondition(is_root(), "needs root (devices, chown)")
        || !precondition(tool("skopeo"), "skopeo not installed")
        || !precondition(tool("umoci"), "umoci not installed")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    crate::layers::make_upper(&upper, 1_600_000_000);
    let mut expected = describe_tree(&upper, true);
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    let mut cfg = ImageConfig::empty(&Platform::host());
    cfg.rootfs.diff_ids.push(layer.diff_id.clone());
    cfg.config.cmd = Some(vec!["/bin/tool".into()]);
    let img = store.write_image(&cfg).unwrap();
    let out = dir.path().join("img.tar");
    let images = [("kiln-test/app:v1".to_string(), img.manifest_digest.clone())];
    store
        .save(&images, fs::File::create(&out).unwrap())
        .unwrap();

    // Saving again reuses the memoized gzip blob and gives the same bytes.
    let mut again = Vec::new();
    store.save(&images, &mut again).unwrap();
    assert_eq!(fs::read(&out).unwrap(), again);
    let gz = store
        .compressed_layer(&layer.diff_id, Compression::default())
        .unwrap();
    assert_eq!(gz.media_type, cache::oci::MEDIA_TYPE_LAYER_GZIP);

    let o = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", out.display()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inspect["Layers"][0], gz.digest.to_string(), "{inspect}");

    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    tar::Archive::new(fs::File::open(&out).unwrap())
        .unpack(&layout)
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "kiln-test/app:v1");
    assert!(
        layout
            .join(manifest[0]["Layers"][0].as_str().unwrap())
            .is_file()
    );
    assert!(
        layout
            .join(manifest[0]["Config"].as_str().unwrap())
            .is_file()
    );
    let bundle = dir.path().join("bundle");
    let o = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A whiteout in the only layer deletes nothing; the opaque marker and overlay xattrs are
    // overlay-format details that umoci does not materialise.
    expected.remove("etc/deleted");
    for v in expected.values_mut() {
        *v = v
            .replace("trusted.overlay.origin=junk,", "")
            .replace("trusted.overlay.opaque=y", "");
    }
    let got = describe_tree(&bundle.join("rootfs"), true);
    assert_eq!(got, expected);
}

#[test]
fn zstd_and_gzip_copies_are_memoized_and_decompress_to_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    fs::write(upper.join("f"), vec![7u8; 3 << 20]).unwrap();
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    let raw = fs::read(store.blob_path(&layer.diff_id)).unwrap();
    for c in [
        Compression {
            codec: Codec::Zstd,
            level: 3,
        },
        Compression {
            codec: Codec::Gzip,
            level: 1,
        },
    ] {
        let d = store.compressed_layer(&layer.diff_id, c).unwrap();
        let blob = fs::read(store.blob_path(&d.digest)).unwrap();
        let mut back = Vec::new();
        match c.codec {
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(&blob[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Codec::Gzip => {
                flate2::read::MultiGzDecoder::new(&blob[..])
                    .read_to_end(&mut back)
                    .unwrap();
            }
        }
        assert_eq!(back, raw);
        // Memoized: the blob is not rewritten (its mtime stays) and the descriptor is the same.
        let before = fs::metadata(store.blob_path(&d.digest))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(store.compressed_layer(&layer.diff_id, c).unwrap(), d);
        assert_eq!(
            fs::metadata(store.blob_path(&d.digest))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
        // And unpack_layer reads the compressed form, giving back the same diff_id.
        let store2 = Store::open(dir.path().join(c.codec.name())).unwrap();
        assert_eq!(
            store2
                .unpack_layer(&blob[..], Some(&layer.diff_id))
                .unwrap(),
            layer
        );
    }
}
