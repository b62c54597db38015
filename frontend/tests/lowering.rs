//! Golden lowering tests: `testdata/lower/<case>/Dockerfile` (+ optional `options`) lowered
//! against synthetic base images, compared with `graph.snap` (or `error.snap` for negative
//! cases). `UPDATE_GOLDEN=1 cargo test -p kiln-frontend --test lowering` rewrites them.
//!
//! `options` lines: `target NAME`, `arg K=V`, `missing REF` (a base the store lacks).

use cache::oci::{Digest, ImageConfig, Platform};
use frontend::{BaseImage, BuildOptions};
use graph::{FileAction, Op};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn platform() -> Platform {
    Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    }
}

/// A stand-in for a store image: fixed ENV and CMD; references containing `onbuild` carry
/// ONBUILD triggers.
fn base(reference: &str) -> BaseImage {
    let mut config = ImageConfig::empty(&platform());
    config.config.env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".into(), "BASE=1".into()];
    config.config.cmd = Some(vec!["sh".into()]);
    if reference.contains("onbuild") {
        config.config.on_build = vec![
            "RUN echo from-base-trigger".into(),
            "ENV TRIGGERED=yes".into(),
        ];
    }
    BaseImage {
        manifest: Digest::of(reference.as_bytes()),
        config,
    }
}

fn options(dir: &Path) -> (BuildOptions, Vec<String>) {
    let mut missing = Vec::new();
    let mut opts = BuildOptions::new(platform());
    if let Ok(text) = std::fs::read_to_string(dir.join("options")) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once(' ').expect("`key value` option line");
            match k {
                "target" => opts.target = Some(v.to_owned()),
                "arg" => {
                    let (a, b) = v.split_once('=').expect("arg K=V");
                    opts.build_args.insert(a.to_owned(), b.to_owned());
                }
                "missing" => missing.push(v.to_owned()),
                other => panic!("unknown option {other}"),
            }
        }
    }
    (opts, missing)
}

fn render(src: &str, opts: &BuildOptions, missing: &[String]) -> Result<String, frontend::Error> {
    let df = frontend::parse(src)?;
    let refs = frontend::base_images(&df, opts)?;
    let bases: BTreeMap<String, BaseImage> = refs
        .iter()
        .filter(|r| !missing.contains(&r.reference))
        .map(|r| (r.reference.clone(), base(&r.reference)))
        .collect();
    let g = frontend::lower(&df, opts, &bases)?;
    // Only what the target needs is lowered, in topological order.
    assert_eq!(
        g.reachable().len(),
        g.nodes.len(),
        "unreachable nodes were lowered:\n{}",
        g.dump()
    );
    for (i, n) in g.nodes.iter().enumerate() {
        assert!(
            n.op.inputs().iter().all(|&j| j < i),
            "node n{i} uses a later node"
        );
    }
    for n in &g.nodes {
        assert_eq!(
            n.stage.as_deref(),
            stage_in_name(&n.name),
            "the stage of {:?} is not what its name shows",
            n.name
        );
    }
    let mut out = String::new();
    for r in &refs {
        let _ = writeln!(out, "base {} (line {})", r.reference, r.span.line);
    }
    out.push_str("--- graph\n");
    out.push_str(&g.dump());
    out.push_str("--- details\n");
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Exec(e) => {
                if !e.proxy_env.is_empty() {
                    let _ = writeln!(out, "n{i} proxy_env={:?}", e.proxy_env);
                }
                for m in &e.mounts {
                    let _ = writeln!(
                        out,
                        "n{i} mount {:?} ro={} {:?}",
                        m.target, m.readonly, m.kind
                    );
                }
            }
            Op::File(f) => {
                for a in &f.actions {
                    if let FileAction::Copy(c) = a {
                        if c.link || c.parents || c.unpack_archives || !c.exclude.is_empty() {
                            let _ = writeln!(
                                out,
                                "n{i} {} link={} parents={} unpack={} exclude={:?}",
                                c.instruction, c.link, c.parents, c.unpack_archives, c.exclude
                            );
                        }
                        if let graph::CopySource::Url {
                            checksum: Some(d), ..
                        } = &c.from
                        {
                            let _ = writeln!(out, "n{i} checksum {d}");
                        }
                        if let graph::CopySource::Git(g) = &c.from {
                            let _ = writeln!(out, "n{i} git {g:?}");
                        }
                    }
                }
            }
            Op::Source(_) => {}
        }
    }
    out.push_str("--- config\n");
    let mut cfg = serde_json::to_value(&g.image.config.config).expect("config serialises");
    if let Some(author) = &g.image.config.author {
        cfg["author"] = serde_json::Value::String(author.clone());
    }
    out.push_str(&serde_json::to_string_pretty(&cfg).expect("json"));
    out.push_str("\n--- history\n");
    for h in &g.image.history {
        let _ = writeln!(
            out,
            "{} [{}]",
            h.created_by,
            h.layer.map_or("empty".to_owned(), |n| format!("n{n}"))
        );
    }
    Ok(out)
}

/// The stage label a progress name shows: `builder` for `[builder 2/4] RUN make`, `""` for
/// `[2/3] RUN make` (a single-stage build), `None` for names that are not stage steps.
fn stage_in_name(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('[')?.split_once("] ")?.0;
    let (label, pos) = inner.rsplit_once(' ').unwrap_or(("", inner));
    let (i, n) = pos.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(i) && digits(n)).then_some(label)
}

#[test]
fn stage_in_name_reads_the_label_of_stage_steps_only() {
    assert_eq!(stage_in_name("[builder 2/4] RUN make"), Some("builder"));
    assert_eq!(stage_in_name("[2/3] COPY . ."), Some(""));
    assert_eq!(stage_in_name("[stage-1 1/2] FROM busybox"), Some("stage-1"));
    assert_eq!(stage_in_name("[internal] load busybox"), None);
    assert_eq!(
        stage_in_name("[b internal] preparing inline document for line 3"),
        None
    );
    assert_eq!(stage_in_name("plain"), None);
}

#[test]
fn every_step_carries_its_stage_label() {
    // No options file there: the default options.
    let (opts, _) = options(Path::new("/nonexistent"));
    let src = "FROM busybox AS Builder\nRUN make\nFROM busybox\nCOPY --from=builder /a /a\n";
    let df = frontend::parse(src).expect("parses");
    let refs = frontend::base_images(&df, &opts).expect("refs");
    let bases = refs
        .iter()
        .map(|r| (r.reference.clone(), base(&r.reference)))
        .collect();
    let g = frontend::lower(&df, &opts, &bases).expect("lowers");
    let stages: Vec<(&str, Option<&str>)> = g
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.stage.as_deref()))
        .collect();
    assert!(
        stages.contains(&("[builder 2/2] RUN make", Some("builder"))),
        "{stages:?}"
    );
    assert!(
        stages.contains(&("[stage-1 2/2] COPY --from=builder /a /a", Some("stage-1"))),
        "{stages:?}"
    );
}

#[test]
fn lowering_goldens_match() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/lower");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // A run that rewrites its goldens proves nothing: under CI it writes them, then fails.
    let ci = std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1");
    let mut rewritten = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "too few golden cases");
    let mut failures = Vec::new();
    for dir in dirs {
        let src = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
        let (opts, missing) = options(&dir);
        let (file, got) = match render(&src, &opts, &missing) {
            Ok(s) => ("graph.snap", s),
            Err(e) => ("error.snap", format!("{e}\n")),
        };
        let other = if file == "graph.snap" {
            "error.snap"
        } else {
            "graph.snap"
        };
        if update {
            if std::fs::read_to_string(dir.join(file)).ok().as_deref() != Some(got.as_str()) {
                rewritten.push(format!("{}/{file}", dir.display()));
            }
            std::fs::write(dir.join(file), &got).expect("write snap");
            let _ = std::fs::remove_file(dir.join(other));
            continue;
        }
        match std::fs::read_to_string(dir.join(file)) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}/{file} differs:\n--- want\n{want}--- got\n{got}",
                dir.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no {file} (got:\n{got}); run with UPDATE_GOLDEN=1",
                dir.display()
            )),
        }
    }
    assert!(
        !(update && ci),
        "UPDATE_GOLDEN is set in a CI run (CI=true or REQUIRE_PRIVILEGED_TESTS=1): the goldens \
         were rewritten ({} changed: {rewritten:?}) and this run verifies nothing; unset it",
        rewritten.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
