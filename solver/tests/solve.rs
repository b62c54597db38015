//! The real solver on a real store: busybox imported from /bin/busybox, RUN and COPY in real
//! sandboxes (namespaces, overlayfs), cache records, deterministic images.
//!
//! `harness = false`: `main` first dispatches `__init`, so the solver re-executes this very
//! binary as the sandbox, as `kiln` would, then hands the tests to `testutil::run` (libtest
//! compatible: `--list` lists). Tests need root, overlayfs and /bin/busybox; without them they
//! are ignored with the reason, or fail when REQUIRE_PRIVILEGED_TESTS=1.
//!
//! Usage: `cargo test -p kiln-solver --test solve [-- NAME_FILTER...]`.

use anyhow::{Context as _, bail, ensure};
use cache::oci::{Digest, ImageConfig, Platform};
use cache::store::Store;
use graph::{
    BuildGraph, CopyAction, CopySource, ExecOp, FileAction, FileOp, HistoryStep, ImageTemplate,
    NetworkMode, Node, NodeId, Op, SourceOp, Span,
};
use solver::progress::{Event, EventKind};
use solver::{SolveError, SolveOptions, Solver};
use std::path::{Path, PathBuf};

type TestFn = fn() -> anyhow::Result<()>;

const TESTS: &[(&str, TestFn)] = &[
    (
        "run_and_copy_make_layers_and_rebuild_is_all_cached",
        run_and_copy_make_layers_and_rebuild_is_all_cached,
    ),
    (
        "no_cache_rebuild_gives_the_same_manifest",
        no_cache_rebuild_gives_the_same_manifest,
    ),
    (
        "editing_a_context_file_reruns_only_steps_after_its_copy",
        editing_a_context_file_reruns_only_steps_after_its_copy,
    ),
    (
        "same_size_edit_with_the_same_mtime_is_rebuilt",
        same_size_edit_with_the_same_mtime_is_rebuilt,
    ),
    ("cache_misses_say_why", cache_misses_say_why),
    (
        "failing_run_reports_line_code_and_output",
        failing_run_reports_line_code_and_output,
    ),
    (
        "missing_copy_source_fails_before_anything_runs",
        missing_copy_source_fails_before_anything_runs,
    ),
    (
        "copy_from_another_stage_sees_its_files",
        copy_from_another_stage_sees_its_files,
    ),
];

fn privileged() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").map_err(|e| e.to_string())?;
    if !fs.contains("overlay") {
        return Err("no overlayfs".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("/bin/busybox missing (apt-get install busybox-static)".into());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__init") {
        executor::init::main(args);
    }
    testutil::run("solve", testutil::from_fns(TESTS), privileged(), None)
}

/// A temp dir with a store holding busybox, and a context dir.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
    busybox: Digest,
}

/// A rootfs tar: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group, /tmp.
fn busybox_tar() -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, std::io::empty())
    };
    for (p, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        dir(&mut b, p, m)?;
    }
    let bb = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "bin/busybox", bb.as_slice())?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (p, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(text.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, text.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

impl Fixture {
    fn new() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().join("root"))?;
        let context = dir.path().join("ctx");
        std::fs::create_dir(&context)?;
        let mut config = ImageConfig::empty(&Platform::host());
        config.config.env = vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()];
        config.config.cmd = Some(vec!["sh".into()]);
        let image = store.import_rootfs(busybox_tar()?.as_slice(), config)?;
        Ok(Fixture {
            _dir: dir,
            store,
            context,
            busybox: image.manifest_digest,
        })
    }

    fn write(&self, rel: &str, text: &str) -> anyhow::Result<()> {
        let p = self.context.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(std::fs::write(p, text)?)
    }

    fn solve(
        &self,
        graph: &BuildGraph,
        no_cache: bool,
    ) -> (Result<cache::image::Image, SolveError>, Vec<Event>) {
        let opts = SolveOptions {
            context: self.context.clone(),
            dockerignore: String::new(),
            jobs: 2,
            no_cache,
            no_cache_stages: Vec::new(),
            kiln_exe: std::env::current_exe().expect("the test binary has a path"),
            dockerfile_name: "Dockerfile".into(),
            secrets: Default::default(),
            network: Default::default(),
            ssh: Default::default(),
            bridge: None,
            security: Default::default(),
            epoch: 0,
            created: solver::ops::CreatedRule::FirstBuild,
        };
        let solver = Solver::new(self.store.clone(), opts);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let res = rt.block_on(solver.solve(graph, tx));
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (res, events)
    }

    /// The path of `rel` in the topmost layer of `image` that has it.
    fn find(&self, image: &cache::image::Image, rel: &str) -> Option<PathBuf> {
        image
            .config
            .rootfs
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.store.snapshot_path(d).join(rel))
            .find(|p| p.exists())
    }
}

fn node(op: Op, line: u32, instruction: &str) -> Node {
    Node {
        op,
        name: format!("[stage] {instruction}"),
        stage: None,
        span: Some(Span { line, column: 1 }),
        instruction: instruction.into(),
        platform: None,
    }
}

fn run(root: NodeId, line: u32, cmd: &str) -> Node {
    node(
        Op::Exec(ExecOp {
            root,
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            proxy_env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            mounts: vec![],
            insecure: false,
        }),
        line,
        &format!("RUN {cmd}"),
    )
}

fn copy(root: NodeId, line: u32, from: CopySource, src: &str, dest: &str) -> Node {
    node(
        Op::File(FileOp {
            root,
            actions: vec![FileAction::Copy(CopyAction {
                from,
                sources: vec![src.into()],
                dest: dest.into(),
                chown: None,
                chmod: None,
                exclude: vec![],
                parents: false,
                link: false,
                unpack_archives: false,
                instruction: "COPY",
            })],
        }),
        line,
        &format!("COPY {src} {dest}"),
    )
}

fn graph(f: &Fixture, mut nodes: Vec<Node>) -> BuildGraph {
    nodes.insert(
        0,
        node(
            Op::Source(SourceOp::Image {
                reference: "busybox".into(),
                manifest: f.busybox.clone(),
            }),
            1,
            "FROM busybox",
        ),
    );
    let target = nodes.len() - 1;
    let history = (1..nodes.len())
        .map(|n| HistoryStep {
            created_by: nodes[n].instruction.clone(),
            layer: Some(n),
        })
        .collect();
    BuildGraph {
        nodes,
        target,
        image: ImageTemplate {
            config: ImageConfig::empty(&Platform::host()),
            history,
        },
    }
}

fn count(events: &[Event], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind.label() == kind && e.name != "[stage] FROM busybox")
        .count()
}

/// FROM busybox; RUN echo hi > /hello; COPY a.txt /a.txt; RUN cat /a.txt /hello > /both
fn three_steps(f: &Fixture) -> BuildGraph {
    graph(
        f,
        vec![
            run(0, 2, "echo hi > /hello"),
            copy(1, 3, CopySource::Context, "a.txt", "/a.txt"),
            run(2, 4, "cat /a.txt /hello > /both"),
        ],
    )
}

fn run_and_copy_make_layers_and_rebuild_is_all_cached() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    f.write("a.txt", "from the context\n")?;
    let g = three_steps(&f);
    let (image, events) = f.solve(&g, false);
    let image = image?;
    ensure!(
        image.config.rootfs.diff_ids.len() == 4,
        "busybox + 3 layers: {:?}",
        image.config.rootfs.diff_ids
    );
    let both = f.find(&image, "both").context("/both is in a layer")?;
    ensure!(std::fs::read_to_string(both)? == "from the context\nhi\n");
    ensure!(
        count(&events, "started") == 3
            && count(&events, "done") == 3
            && count(&events, "cached") == 0
    );
    ensure!(image.config.history.len() == 3 && image.config.history.iter().all(|h| !h.empty_layer));

    let (again, events) = f.solve(&g, false);
    ensure!(
        again?.manifest_digest == image.manifest_digest,
        "a cached rebuild gives the same image"
    );
    ensure!(
        count(&events, "cached") == 3,
        "every step is cached: {events:#?}"
    );
    ensure!(count(&events, "log") == 0);
    Ok(())
}

fn no_cache_rebuild_gives_the_same_manifest() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    f.write("a.txt", "x\n")?;
    f.write("dir/sub/b.txt", "y\n")?;
    let mut g = three_steps(&f);
    g.nodes
        .push(copy(3, 5, CopySource::Context, "dir", "/app/dir/"));
    g.target = 4;
    g.image.history.push(HistoryStep {
        created_by: "COPY dir /app/dir/".into(),
        layer: Some(4),
    });
    let (first, _) = f.solve(&g, false);
    let first = first?;
    let (second, events) = f.solve(&g, true);
    let second = second?;
    ensure!(count(&events, "cached") == 0, "--no-cache runs everything");
    let a = f.store.read_blob(&first.manifest_digest)?;
    let b = f.store.read_blob(&second.manifest_digest)?;
    ensure!(
        a == b,
        "manifests differ:\n{}\n{}",
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&b)
    );
    Ok(())
}

fn editing_a_context_file_reruns_only_steps_after_its_copy() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    f.write("a.txt", "one\n")?;
    let g = three_steps(&f);
    f.solve(&g, false).0?;
    f.write("a.txt", "two\n")?;
    let (image, events) = f.solve(&g, false);
    let image = image?;
    let cached: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::Cached)
        .map(|e| e.name.as_str())
        .collect();
    ensure!(
        cached == ["[stage] RUN echo hi > /hello"],
        "only the step before the COPY is cached: {cached:?}"
    );
    ensure!(std::fs::read_to_string(f.find(&image, "both").context("/both")?)? == "two\nhi\n");
    Ok(())
}

/// The stat cache (KILN_ROOT/statcache) must not hide an edit that keeps size and mtime.
fn same_size_edit_with_the_same_mtime_is_rebuilt() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    f.write("a.txt", "one\n")?;
    let g = three_steps(&f);
    f.solve(&g, false).0?;
    ensure!(
        std::fs::read_dir(f.store.root().join("statcache"))?.count() == 1,
        "the build wrote a stat cache"
    );
    let path = f.context.join("a.txt");
    let mtime = std::fs::metadata(&path)?.modified()?;
    f.write("a.txt", "two\n")?;
    std::fs::File::options()
        .write(true)
        .open(&path)?
        .set_modified(mtime)?;
    let (image, events) = f.solve(&g, false);
    ensure!(
        count(&events, "cached") == 1,
        "the COPY and the RUN after it run again: {events:#?}"
    );
    ensure!(std::fs::read_to_string(f.find(&image?, "both").context("/both")?)? == "two\nhi\n");
    // A third build with nothing changed is fully cached.
    let (_, events) = f.solve(&g, false);
    ensure!(count(&events, "cached") == 3, "no-op rebuild: {events:#?}");
    Ok(())
}

/// The `CacheMiss` reason of every step that missed the cache, by name.
fn misses(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CacheMiss { reason } => Some((e.name.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn cache_misses_say_why() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    f.write("a.txt", "one\n")?;
    let g = three_steps(&f);
    let (_, events) = f.solve(&g, false);
    let first = misses(&events);
    ensure!(
        first.len() == 3 && first.iter().all(|(_, r)| r == "no cache entry"),
        "{first:?}"
    );
    f.write("a.txt", "two, longer\n")?;
    let (_, events) = f.solve(&g, false);
    let second = misses(&events);
    ensure!(
        second
            == [
                (
                    "[stage] COPY a.txt /a.txt".to_owned(),
                    "file changed: a.txt".to_owned()
                ),
                (
                    "[stage] RUN cat /a.txt /hello > /both".to_owned(),
                    "parent step changed".to_owned()
                ),
            ],
        "{second:?}"
    );
    // An ENV change on the last RUN.
    let mut g2 = g.clone();
    if let Op::Exec(x) = &mut g2.nodes[3].op {
        x.env.push("X=1".into());
    }
    let (_, events) = f.solve(&g2, false);
    let third = misses(&events);
    ensure!(
        third.len() == 1 && third[0].1 == "ARG or ENV X changed",
        "{third:?}"
    );
    let (_, events) = f.solve(&g2, true);
    ensure!(misses(&events).iter().all(|(_, r)| r == "--no-cache"));
    Ok(())
}

fn failing_run_reports_line_code_and_output() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let g = graph(
        &f,
        vec![run(0, 7, "echo about to fail; echo on stderr >&2; exit 3")],
    );
    let (res, events) = f.solve(&g, false);
    let Err(e) = res else {
        bail!("the build should fail")
    };
    let msg = e.to_string();
    ensure!(
        msg.starts_with(
            "Dockerfile:7: RUN echo about to fail; echo on stderr >&2; exit 3: exit code 3\n"
        ),
        "{msg}"
    );
    ensure!(
        msg.contains("about to fail") && msg.contains("on stderr"),
        "{msg}"
    );
    ensure!(count(&events, "error") == 1);
    // The store is still usable: a good build succeeds afterwards.
    let ok = graph(&f, vec![run(0, 2, "true")]);
    f.solve(&ok, false).0?;
    Ok(())
}

fn missing_copy_source_fails_before_anything_runs() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let g = graph(
        &f,
        vec![
            run(0, 2, "echo hi"),
            copy(1, 3, CopySource::Context, "nope.txt", "/"),
        ],
    );
    let (res, events) = f.solve(&g, false);
    let Err(e) = res else {
        bail!("the build should fail")
    };
    ensure!(matches!(e, SolveError::Source { .. }), "{e:?}");
    let msg = format!("{:#}", anyhow::Error::from(e));
    ensure!(msg.starts_with("Dockerfile:3: COPY nope.txt /"), "{msg}");
    ensure!(events.is_empty(), "nothing ran: {events:?}");
    Ok(())
}

fn copy_from_another_stage_sees_its_files() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    // n1: builder RUN; n2: runtime RUN on busybox; n3: COPY --from=n1 onto n2.
    let g = graph(
        &f,
        vec![
            run(0, 2, "mkdir -p /out && echo built > /out/artifact"),
            run(0, 4, "echo runtime > /rt"),
            copy(
                2,
                5,
                CopySource::Node(1),
                "/out/artifact",
                "/usr/local/bin/artifact",
            ),
        ],
    );
    let (image, _) = f.solve(&g, false);
    let image = image?;
    let art = f
        .find(&image, "usr/local/bin/artifact")
        .context("artifact copied")?;
    ensure!(std::fs::read_to_string(art)? == "built\n");
    ensure!(
        f.find(&image, "out/artifact").is_none(),
        "the builder's own files stay out"
    );
    ensure!(f.find(&image, "rt").is_some());
    Ok(())
}
