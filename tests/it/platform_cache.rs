//! `--cache-to` / `--cache-from` with several `--platform`s: one cache holds every
//! platform's records (the platform is in every key), as BuildKit exports a multi-platform
//! build, on every backend (the CNCF registry, an OCI layout, moto's S3, azurite) and inline
//! (each platform's records in its own image config). A fresh runner importing it builds both
//! platforms with no RUN step and the exporting build's index digest, and its export back
//! sends nothing; a one-platform build gets its platform's hits. The arm64 side runs through qemu-user-static (see
//! [`crate::platforms`]). The cache artifacts are read back with skopeo.

use crate::cache_backends::{Kind, Server};
use crate::harness::{TestDir, cached, events, executed_runs, privileged, text};
use crate::platforms::{arm64_deb, index_platforms, multi_base, skopeo};
use anyhow::Context as _;
use serde_json::Value;
use std::process::Output;

/// A build-platform stage (runs natively once, the same key for both targets) and a target
/// stage whose RUN says which architecture ran it.
const APP: &str = "\
FROM --platform=$BUILDPLATFORM BASE AS tool
RUN uname -m > /buildarch && echo \"tool ran on $(uname -m)\"
FROM BASE
COPY --from=tool /buildarch /
RUN uname -m > /arch && echo \"final ran on $(uname -m)\"
";

const BOTH: &str = "linux/amd64,linux/arm64";

/// One build's outcome: the RUN steps that executed, the `ran on` lines their output
/// printed (sorted), the id `--iidfile` wrote, and stderr.
struct Outcome {
    runs: Vec<String>,
    /// RUN steps reported CACHED (names, each once).
    cached_runs: std::collections::BTreeSet<String>,
    said: Vec<String>,
    iid: String,
    stderr: String,
}

/// `kiln build --progress rawjson --platform PLATFORMS --iidfile ... EXTRA... CTX` in `t`
/// (its own KILN_ROOT), which must succeed.
fn build(t: &TestDir, platforms: &str, extra: &[&str]) -> anyhow::Result<Outcome> {
    let iidfile = t.dir.path().join(format!("iid-{}", rand_suffix()));
    let ctx = t.ctx.to_str().context("utf-8")?;
    let iid_arg = iidfile.to_str().context("utf-8")?;
    let mut args = vec![
        "build",
        "--progress",
        "rawjson",
        "--platform",
        platforms,
        "--iidfile",
        iid_arg,
    ];
    args.extend_from_slice(extra);
    args.push(ctx);
    let out: Output = t.ok(&args)?;
    let ev = events(&out)?;
    let mut said: Vec<String> = ev
        .iter()
        .filter(|e| e["kind"] == "log")
        .filter_map(|e| e["data"].as_str())
        .flat_map(str::lines)
        .filter(|l| l.contains(" ran on "))
        .map(str::to_owned)
        .collect();
    said.sort();
    Ok(Outcome {
        runs: executed_runs(&ev),
        cached_runs: cached(&ev)
            .into_iter()
            .filter(|n| n.contains("] RUN "))
            .collect(),
        said,
        iid: std::fs::read_to_string(&iidfile)
            .with_context(|| format!("--iidfile after:\n{}", text(&out)))?,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A distinct name per call (several builds share a test dir).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The manifest digest of `arch`'s entry in the index `index` of `t`'s store.
fn entry(t: &TestDir, index: &str, arch: &str) -> anyhow::Result<String> {
    let hex = index.strip_prefix("sha256:").context("a sha256 digest")?;
    let bytes = std::fs::read(t.root.join("blobs/sha256").join(hex))?;
    let v: Value = serde_json::from_slice(&bytes)?;
    v["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no {arch} entry in {v:#}"))
}

/// One `exporting cache to LOCATION done: N records, B blobs (U uploaded, ...), ...,
/// manifest DIGEST in ...` line: (records, uploaded, manifest).
type Exported = (usize, usize, String);

/// The export lines of `stderr`, in `--cache-to` order.
fn exports(stderr: &str) -> Vec<Exported> {
    stderr
        .lines()
        .filter(|l| l.starts_with("exporting cache to "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" done: ")?;
            let records = rest.split(' ').next()?.parse().ok()?;
            let (_, up) = rest.split_once(" blobs (")?;
            let uploaded = up.split(' ').next()?.parse().ok()?;
            let (_, m) = rest.split_once(", manifest ")?;
            Some((records, uploaded, m.split(' ').next()?.to_owned()))
        })
        .collect()
}

/// A fresh runner (empty KILN_ROOT) with the app's Dockerfile.
fn runner(base: &str) -> TestDir {
    let t = TestDir::new();
    t.write("Dockerfile", &APP.replace("BASE", base));
    t
}

/// Asserts that `b` ran no RUN step and printed no RUN output, reported the final stage's
/// RUN of each of `platforms` CACHED, and the build-platform stage's too with a `max` cache
/// (a `min` cache has no record of it, and a stage that only feeds hits is neither run nor
/// reported), and built `iid`.
fn all_cached(b: &Outcome, platforms: &[&str], mode: &str, iid: &str, what: &str) {
    assert_eq!(b.runs, Vec::<String>::new(), "{what}:\n{}", b.stderr);
    let tool = (mode == "max").then_some("tool 2/2");
    let mut want: Vec<String> = match platforms {
        [_] => ["stage-1 3/3"]
            .into_iter()
            .chain(tool)
            .map(|s| format!("[{s}] RUN"))
            .collect(),
        _ => platforms
            .iter()
            .map(|p| format!("[{p} stage-1 3/3] RUN"))
            .chain(tool.map(|t| format!("[linux/amd64 {t}] RUN")))
            .collect(),
    };
    let got: Vec<&str> = b
        .cached_runs
        .iter()
        .filter_map(|n| n.get(..n.find("] RUN ")? + 5))
        .collect();
    want.sort();
    assert_eq!(got, want, "{what}: RUN steps reported CACHED");
    assert_eq!(b.said, Vec::<String>::new(), "{what}:\n{}", b.stderr);
    assert_eq!(b.iid, iid, "{what}: not the exporting build's image");
}

#[test]
fn a_two_platform_cache_on_every_backend_serves_both_platforms_and_one() -> anyhow::Result<()> {
    let mut tools = vec!["docker-registry", "skopeo", "dpkg-deb"];
    tools.extend_from_slice(Server::tools(Kind::S3));
    tools.extend_from_slice(Server::tools(Kind::Azblob));
    if !privileged(&tools) {
        return Ok(());
    }
    let Some(deb) = arm64_deb() else {
        return Ok(());
    };
    let t = TestDir::new();
    let (reg, base) = multi_base(&t, &deb)?;
    let insecure = format!("127.0.0.1:{}", reg.port);
    let s3 = Server::start(Kind::S3, t.dir.path())?;
    let az = Server::start(Kind::Azblob, t.dir.path())?;
    let cache_ref = format!("127.0.0.1:{}/kiln/cache:multi", reg.port);
    let layout = t.dir.path().join("layout-cache");
    // (--cache-to, --cache-from, mode): max on the registry and S3, min on the layout and
    // azblob.
    let backends = [
        (
            format!("type=registry,ref={cache_ref},mode=max"),
            format!("type=registry,ref={cache_ref}"),
            "max",
        ),
        (
            format!("type=local,dest={},mode=min", layout.display()),
            format!("type=local,src={}", layout.display()),
            "min",
        ),
        (s3.spec("multi", "mode=max"), s3.spec("multi", ""), "max"),
        (az.spec("multi", "mode=min"), az.spec("multi", ""), "min"),
    ];

    // The exporting runner: each platform's RUN ran once, the build-platform stage once.
    let a = runner(&base);
    let mut extra = vec!["--insecure-registry", &insecure];
    for (to, _, _) in &backends {
        extra.extend(["--cache-to", to.as_str()]);
    }
    let first = build(&a, BOTH, &extra)?;
    assert_eq!(
        first.said,
        [
            "final ran on aarch64",
            "final ran on x86_64",
            "tool ran on x86_64"
        ],
        "{}",
        first.stderr
    );
    // One cache per destination with both platforms' records: max has the tool's RUN (once:
    // the same key for both targets) and each platform's COPY and RUN; min each platform's
    // COPY and RUN.
    let first_exports = exports(&first.stderr);
    let records: Vec<usize> = first_exports.iter().map(|e| e.0).collect();
    assert_eq!(records, [5, 4, 5, 4], "{}", first.stderr);
    // The same cache, byte for byte, on every backend of one mode.
    assert_eq!(first_exports[0].2, first_exports[2].2);
    assert_eq!(first_exports[1].2, first_exports[3].2);
    // What others see: one OCI manifest (not an index per platform), kiln's artifact type.
    for cache in [
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache_ref}"),
        ])?,
        skopeo(&[
            "inspect",
            "--raw",
            &format!("oci:{}:kiln-cache", layout.display()),
        ])?,
    ] {
        assert_eq!(
            cache["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{cache:#}"
        );
        assert_eq!(cache["artifactType"], "application/vnd.kiln.cache.v1");
    }
    let arm64 = entry(&a, &first.iid, "arm64")?;
    let amd64 = entry(&a, &first.iid, "amd64")?;
    assert_ne!(arm64, amd64);

    for ((to, from, mode), exported) in backends.iter().zip(&first_exports) {
        // Both platforms on an empty root, importing and exporting back (the CI pattern):
        // nothing runs, the same index, and the re-export sends nothing (the layers it never
        // downloaded are already there).
        let b = runner(&base);
        let both = build(
            &b,
            BOTH,
            &[
                "--insecure-registry",
                &insecure,
                "--cache-from",
                from,
                "--cache-to",
                to,
            ],
        )?;
        assert_eq!(
            exports(&both.stderr),
            [(exported.0, 0, exported.2.clone())],
            "re-export to {to}:\n{}",
            both.stderr
        );
        all_cached(
            &both,
            &["linux/amd64", "linux/arm64"],
            mode,
            &first.iid,
            &format!("both platforms from {from} ({mode})"),
        );
        // One platform on another empty root: its hits only, the same manifest as the
        // exporting build's entry for it.
        let c = runner(&base);
        let one = build(
            &c,
            "linux/arm64",
            &["--insecure-registry", &insecure, "--cache-from", from],
        )?;
        all_cached(
            &one,
            &["linux/arm64"],
            mode,
            &arm64,
            &format!("linux/arm64 from {from} ({mode})"),
        );
    }

    // A cache of one platform serves that platform only: the other's RUN runs.
    let d = runner(&base);
    let one_ref = format!("127.0.0.1:{}/kiln/cache:amd64", reg.port);
    let amd64_only = build(
        &d,
        "linux/amd64",
        &[
            "--insecure-registry",
            &insecure,
            "--cache-to",
            &format!("type=registry,ref={one_ref},mode=max"),
        ],
    )?;
    let e = runner(&base);
    let partial = build(
        &e,
        BOTH,
        &[
            "--insecure-registry",
            &insecure,
            "--cache-from",
            &format!("type=registry,ref={one_ref}"),
        ],
    )?;
    assert_eq!(partial.said, ["final ran on aarch64"], "{}", partial.stderr);
    // Its amd64 image is the one-platform build's (dated by that build).
    assert_eq!(entry(&e, &partial.iid, "amd64")?, amd64_only.iid);
    Ok(())
}

/// The inline cache of a two-platform image: each platform's image config carries its own
/// records (BuildKit's layout); `--cache-from` naming the pushed index reads them all.
#[test]
fn an_inline_cache_of_two_platforms_is_in_each_config_and_serves_both() -> anyhow::Result<()> {
    if !privileged(&["docker-registry", "skopeo", "dpkg-deb"]) {
        return Ok(());
    }
    let Some(deb) = arm64_deb() else {
        return Ok(());
    };
    let t = TestDir::new();
    let (reg, base) = multi_base(&t, &deb)?;
    let insecure = format!("127.0.0.1:{}", reg.port);
    let image = format!("127.0.0.1:{}/kiln/app:inline", reg.port);
    let a = runner(&base);
    let inline = [
        "--insecure-registry",
        &insecure,
        "--cache-to",
        "type=inline",
    ];
    // With provenance, the pushed index also lists attestation manifests (no inline cache:
    // the import passes over them).
    let first = build(
        &a,
        BOTH,
        &[
            &inline[..],
            &["--provenance=mode=min", "--push", "-t", &image],
        ]
        .concat(),
    )?;
    assert_eq!(first.said.len(), 3, "{}", first.stderr);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ])?;
    assert_eq!(
        index_platforms(&raw),
        [
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "unknown/unknown"
        ]
    );
    for arch in ["amd64", "arm64"] {
        let config = skopeo(&[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            "--override-arch",
            arch,
            &format!("docker://{image}"),
        ])?;
        assert_eq!(config["architecture"], arch);
        // This platform's final steps: its COPY and its RUN (mode=min).
        let records = config["kiln.cache.v1"]["records"]
            .as_array()
            .with_context(|| format!("no inline cache in the {arch} config: {config:#}"))?;
        assert_eq!(records.len(), 2, "{arch}: {config:#}");
    }

    // A fresh runner importing the pushed index, writing the inline cache too: nothing runs,
    // the same index (inline records included).
    let b = runner(&base);
    // The base index first: two images without an inline cache, a warning, not an error.
    let both = build(
        &b,
        BOTH,
        &[
            &inline[..],
            &["--cache-from", &base, "--cache-from", &image],
        ]
        .concat(),
    )?;
    all_cached(
        &both,
        &["linux/amd64", "linux/arm64"],
        "min",
        &first.iid,
        "both platforms from the inline index",
    );
    assert!(
        both.stderr.contains(&format!(
            "warning: cache not imported: cache {base}: the image index (no platform's image \
             has an inline cache) is not a kiln cache"
        )),
        "{}",
        both.stderr
    );
    assert!(
        both.stderr.contains("importing cache manifest from")
            && both.stderr.contains(": 4 records"),
        "{}",
        both.stderr
    );
    let c = runner(&base);
    let one = build(
        &c,
        "linux/arm64",
        &[&inline[..], &["--cache-from", &image]].concat(),
    )?;
    all_cached(
        &one,
        &["linux/arm64"],
        "min",
        &entry(&a, &first.iid, "arm64")?,
        "linux/arm64 from the inline index",
    );
    Ok(())
}
