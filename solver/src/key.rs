//! Cache keys: hand-written, fixed-order, versioned encodings of what a node's result depends on.
//!
//! A key is the SHA-256 of a tagged byte encoding (`kiln.exec.v1`, ...). Every field is written
//! in a fixed order as a length-prefixed string, a fixed-width little-endian integer, a flag
//! byte or a counted list, so two different ops can never encode to the same bytes. We never
//! hash `Debug` output, serde maps or `std::hash`: those change between releases.
//!
//! What goes in:
//! - `kiln.source.v1`: scratch, or the manifest digest of the base image; then the node's
//!   platform when it has one (the frontend sets it on every node; hand-made graphs may not).
//! - `kiln.exec.v1`: argv, env, cwd, user, network, mounts, and the keys of the inputs
//!   (root first, then mount sources, as [`Op::inputs`] lists them).
//! - `kiln.file.v1`: every action's fields, the content digest of each context COPY's sources
//!   (see [`content_digest`]), the SHA-256 of each inline (heredoc) file's bytes, and the keys
//!   of the inputs.
//!
//! What stays out (a test lists these): the progress name, the stage, the span and the instruction text
//! (they change messages, not results), `proxy_env` (BuildKit keeps proxies out of the key too),
//! secret and ssh mounts (never stored or hashed), and file mtimes in COPY sources (a `touch`
//! or a fresh checkout must not invalidate the cache).
//!
//! Changing any encoding means bumping its tag and updating the golden test in the same commit.

use crate::graph::{
    CacheSharing, CopyAction, CopySource, ExecOp, FileAction, FileOp, MountKind, NetworkMode, Node,
    NodeId, Op, SourceOp,
};
use cache::oci::{Digest, Hasher, Platform};

/// Tag of source keys.
pub const SOURCE_TAG: &str = "kiln.source.v1";
/// Tag of exec keys.
pub const EXEC_TAG: &str = "kiln.exec.v1";
/// Tag of file keys.
pub const FILE_TAG: &str = "kiln.file.v1";
/// Tag of COPY source content digests.
pub const CONTENT_TAG: &str = "kiln.content.v1";

/// The kind of a COPY source entry, as hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// The hashed metadata of one COPY source entry (mtime deliberately absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMeta {
    /// Path relative to the source root, `/`-separated.
    pub rel: String,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size in bytes (regular files).
    pub size: u64,
    /// SHA-256 of the file's content (regular files).
    pub content: Option<Digest>,
    /// Target of a symlink.
    pub link_target: Option<String>,
}

/// Fixed-order encoder feeding a hasher.
struct Enc(Hasher);

impl Enc {
    fn new(tag: &str) -> Enc {
        let mut e = Enc(Hasher::new());
        e.str(tag);
        e
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn u8(&mut self, v: u8) {
        self.0.update(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.0.update(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }
    fn flag(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn digest(&mut self, d: &Digest) {
        self.str(&d.to_string());
    }
    fn strs(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_digest(&mut self, v: Option<&Digest>) {
        match v {
            None => self.u8(0),
            Some(d) => {
                self.u8(1);
                self.digest(d);
            }
        }
    }
    fn finish(self) -> Digest {
        self.0.finish()
    }
}

/// The key of a source op. With a `platform` (a node of a platform build), its
/// `os/arch[/variant]` follows, so that every key built on the source differs per platform
/// (`scratch` too) and a stage that builds for the build platform has the same keys for
/// every target.
pub fn source_key(op: &SourceOp, platform: Option<&Platform>) -> Digest {
    let mut e = Enc::new(SOURCE_TAG);
    match op {
        SourceOp::Scratch => e.u8(0),
        SourceOp::Image { manifest, .. } => {
            e.u8(1);
            e.digest(manifest);
        }
    }
    if let Some(p) = platform {
        e.str(&p.to_string());
    }
    e.finish()
}

/// Looks up the key of an input node; keys of every input precede their users.
fn input(keys: &[Option<Digest>], n: NodeId) -> Option<&Digest> {
    keys.get(n).and_then(Option::as_ref)
}

fn copy_source(e: &mut Enc, keys: &[Option<Digest>], from: &CopySource, content: Option<&Digest>) {
    match from {
        CopySource::Context => {
            e.u8(0);
            e.opt_digest(content);
        }
        CopySource::Node(n) => {
            e.u8(1);
            e.opt_digest(input(keys, *n));
        }
        CopySource::Url { url, checksum } => {
            e.u8(2);
            e.str(url);
            e.opt_digest(checksum.as_ref());
        }
        // The commit decides the tree; the reference name stays in for `.git` (keep_git_dir
        // records it) and so that two refs never share a record by accident.
        CopySource::Git(g) => {
            e.u8(3);
            e.str(&g.remote);
            e.opt_str(g.reference.as_deref());
            e.str(&g.subdir);
            e.flag(g.keep_git_dir);
            e.flag(g.submodules);
            e.opt_str(g.commit.as_deref());
        }
    }
}

/// The key of an exec op. `keys` holds the keys of earlier nodes by id; `contents` holds, per
/// mount, the content digest of a context bind mount's source (None otherwise).
pub fn exec_key(op: &ExecOp, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
    let mut e = Enc::new(EXEC_TAG);
    e.opt_digest(input(keys, op.root));
    e.strs(&op.args);
    e.strs(&op.env);
    e.str(&op.cwd);
    e.str(&op.user);
    // An insecure step is a different op (BuildKit's security mode is in the op digest); the
    // byte is new in the network field's place, so sandboxed steps keep their keys.
    e.u8(match op.network {
        NetworkMode::Default => 0,
        NetworkMode::None => 1,
        NetworkMode::Host => 2,
    } | if op.insecure { 0x80 } else { 0 });
    let hashed: Vec<_> = op
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| !matches!(m.kind, MountKind::Secret { .. } | MountKind::Ssh { .. }))
        .collect();
    e.u64(hashed.len() as u64);
    for (i, m) in hashed {
        e.str(&m.target);
        e.flag(m.readonly);
        let content = contents.get(i).and_then(Option::as_ref);
        match &m.kind {
            MountKind::Bind { from, source } => {
                e.u8(0);
                copy_source(&mut e, keys, from, content);
                e.str(source);
            }
            MountKind::Cache {
                id,
                sharing,
                mode,
                uid,
                gid,
                from,
            } => {
                e.u8(1);
                e.str(id);
                e.u8(match sharing {
                    CacheSharing::Shared => 0,
                    CacheSharing::Private => 1,
                    CacheSharing::Locked => 2,
                });
                e.u32(*mode);
                e.u32(*uid);
                e.u32(*gid);
                match from {
                    None => e.u8(0),
                    Some((src, path)) => {
                        e.u8(1);
                        copy_source(&mut e, keys, src, content);
                        e.str(path);
                    }
                }
            }
            MountKind::Tmpfs { size } => {
                e.u8(2);
                e.u64(size.unwrap_or(0));
            }
            MountKind::Secret { .. } | MountKind::Ssh { .. } => {
                unreachable!("filtered out above")
            }
        }
    }
    e.finish()
}

fn copy_action(e: &mut Enc, keys: &[Option<Digest>], c: &CopyAction, content: Option<&Digest>) {
    copy_source(e, keys, &c.from, content);
    e.strs(&c.sources);
    e.str(&c.dest);
    e.opt_str(c.chown.as_deref());
    e.opt_str(c.chmod.as_deref());
    e.strs(&c.exclude);
    e.flag(c.parents);
    e.flag(c.link);
    e.flag(c.unpack_archives);
}

/// The key of a file op. `contents` holds, per action, the [`content_digest`] of a context
/// COPY's sources (None for other actions).
pub fn file_key(op: &FileOp, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
    let mut e = Enc::new(FILE_TAG);
    e.opt_digest(input(keys, op.root));
    e.u64(op.actions.len() as u64);
    for (i, a) in op.actions.iter().enumerate() {
        match a {
            FileAction::Copy(c) => {
                e.u8(0);
                copy_action(&mut e, keys, c, contents.get(i).and_then(Option::as_ref));
            }
            FileAction::Mkdir { path, owner } => {
                e.u8(1);
                e.str(path);
                e.str(owner);
            }
            FileAction::Inline(f) => {
                e.u8(2);
                e.str(&f.name);
                e.digest(&Digest::of(&f.data));
                e.str(&f.dest);
                e.opt_str(f.chown.as_deref());
                e.opt_str(f.chmod.as_deref());
                e.flag(f.link);
            }
        }
    }
    e.finish()
}

/// The key of any node (see the per-op functions for `keys` and `contents`).
pub fn node_key(node: &Node, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
    match &node.op {
        Op::Source(s) => source_key(s, node.platform.as_ref()),
        Op::Exec(x) => exec_key(x, keys, contents),
        Op::File(f) => file_key(f, keys, contents),
    }
}

/// The content digest of a COPY's sources: every entry's relative path, kind, mode, owner,
/// size, content hash and link target, in the order given (the walker's sorted order).
pub fn content_digest(entries: &[SourceMeta]) -> Digest {
    let mut e = Enc::new(CONTENT_TAG);
    e.u64(entries.len() as u64);
    for s in entries {
        e.str(&s.rel);
        e.u8(match s.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::Other => 3,
        });
        e.u32(s.mode);
        e.u32(s.uid);
        e.u32(s.gid);
        e.u64(s.size);
        e.opt_digest(s.content.as_ref());
        e.opt_str(s.link_target.as_deref());
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{BuildGraph, ImageTemplate, Mount, Span};
    use cache::oci::{ImageConfig, Platform};

    fn node(op: Op) -> Node {
        Node {
            op,
            name: "[stage 1/1] X".into(),
            stage: Some("stage".into()),
            span: Some(Span { line: 1, column: 1 }),
            instruction: "X".into(),
            platform: None,
        }
    }

    fn exec(root: NodeId, cmd: &str) -> ExecOp {
        ExecOp {
            root,
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            proxy_env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            mounts: vec![],
            insecure: false,
        }
    }

    fn copy(from: CopySource, src: &str, dest: &str) -> CopyAction {
        CopyAction {
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
        }
    }

    fn sample() -> BuildGraph {
        let base = Digest::of(b"base manifest");
        BuildGraph {
            nodes: vec![
                node(Op::Source(SourceOp::Image {
                    reference: "busybox".into(),
                    manifest: base,
                })),
                node(Op::Exec(exec(0, "echo a > /a"))),
                node(Op::Source(SourceOp::Scratch)),
                node(Op::File(FileOp {
                    root: 2,
                    actions: vec![
                        FileAction::Mkdir {
                            path: "/app".into(),
                            owner: String::new(),
                        },
                        FileAction::Copy(copy(CopySource::Node(1), "/a", "/app/")),
                        FileAction::Copy(copy(CopySource::Context, "src", "/app/src")),
                    ],
                })),
            ],
            target: 3,
            image: ImageTemplate {
                config: ImageConfig::empty(&Platform::host()),
                history: vec![],
            },
        }
    }

    fn meta(rel: &str, data: &[u8]) -> SourceMeta {
        SourceMeta {
            rel: rel.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            content: Some(Digest::of(data)),
            link_target: None,
        }
    }

    fn keys_of(g: &BuildGraph, content: &Digest) -> Vec<Option<Digest>> {
        let mut keys = vec![None; g.nodes.len()];
        for (id, n) in g.nodes.iter().enumerate() {
            let contents = match &n.op {
                Op::File(_) => vec![None, None, Some(content.clone())],
                _ => vec![],
            };
            keys[id] = Some(node_key(n, &keys, &contents));
        }
        keys
    }

    fn key_hex(k: &Option<Digest>) -> &str {
        k.as_ref().map_or("none", |d| d.hex())
    }

    /// A source's platform is in its key (so in every key built on it); none keeps the
    /// platform-less encoding.
    #[test]
    fn source_keys_hold_the_platform() {
        let op = SourceOp::Scratch;
        let amd = Platform::host();
        let arm = Platform {
            architecture: "arm64".into(),
            ..amd.clone()
        };
        let keys = [
            source_key(&op, None),
            source_key(&op, Some(&amd)),
            source_key(&op, Some(&arm)),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_eq!(keys[2], source_key(&op, Some(&arm)));
        let mut insecure = exec(0, "true");
        let sandboxed = exec_key(&insecure, &[Some(keys[1].clone())], &[]);
        insecure.insecure = true;
        assert_ne!(
            sandboxed,
            exec_key(&insecure, &[Some(keys[1].clone())], &[])
        );
    }

    /// Pins the key encodings. If this fails, you changed a key format: bump its tag.
    #[test]
    fn keys_of_sample_graph_are_pinned() {
        let g = sample();
        let content = content_digest(&[meta("src", b""), meta("src/main.rs", b"fn main() {}\n")]);
        let keys = keys_of(&g, &content);
        let got: Vec<&str> = keys.iter().map(key_hex).collect();
        assert_eq!(
            got, GOLDEN,
            "a key encoding changed: bump its tag and update GOLDEN"
        );
    }
    const GOLDEN: [&str; 4] = [
        "b4fbe0320543fcc139a9dcc3e565ab40acb129095471cc4ece8785f9baa1b351",
        "d195d5200ad61ea0efc6ec7a83814c868c7c3a470e70d595811609d4be3fb737",
        "9b9c4c3861684956136ecc06b0d41bd0ee54ce7237044d3e09e57d8218ae2c65",
        "16db4a6ab00f1559a667cb5db85b9e4ce9e1c4bbf3cec0bd67b7c4e8fd12a156",
    ];

    fn inline(data: &[u8]) -> FileAction {
        FileAction::Inline(crate::graph::InlineFile {
            name: "EOF".into(),
            data: data.to_vec(),
            dest: "/etc/app.conf".into(),
            chown: None,
            chmod: None,
            link: false,
            instruction: "COPY",
        })
    }

    /// Pins the encoding of inline (heredoc) files, added after [`GOLDEN`] without changing it.
    #[test]
    fn inline_file_keys_are_pinned_and_follow_the_bytes() {
        let mut g = sample();
        g.nodes.push(node(Op::File(FileOp {
            root: 0,
            actions: vec![inline(b"a=1\n")],
        })));
        let content = content_digest(&[meta("src", b""), meta("src/main.rs", b"fn main() {}\n")]);
        let mut keys = keys_of(&g, &content);
        keys[4] = Some(node_key(&g.nodes[4], &keys, &[None]));
        assert_eq!(
            key_hex(&keys[4]),
            INLINE_GOLDEN,
            "a key encoding changed: bump its tag and update INLINE_GOLDEN"
        );
        let before = keys[4].clone();
        type Edit = Box<dyn Fn(&mut crate::graph::InlineFile)>;
        let mut edits: Vec<Edit> = vec![
            Box::new(|f| f.data = b"a=2\n".to_vec()),
            Box::new(|f| f.name = "END".into()),
            Box::new(|f| f.dest = "/etc/other.conf".into()),
            Box::new(|f| f.chown = Some("1:1".into())),
            Box::new(|f| f.chmod = Some("0600".into())),
            Box::new(|f| f.link = true),
        ];
        for (i, edit) in edits.iter_mut().enumerate() {
            let mut h = g.clone();
            if let Op::File(f) = &mut h.nodes[4].op
                && let FileAction::Inline(x) = &mut f.actions[0]
            {
                edit(x);
            }
            let k = node_key(&h.nodes[4], &keys, &[None]);
            assert_ne!(Some(k), before, "inline edit {i} did not change the key");
        }
    }
    const INLINE_GOLDEN: &str = "4d130e56c1187443598cf5f293e58e75cd6dd344a0ec61b2f825957b2af64797";

    #[test]
    fn excluded_fields_do_not_change_keys() {
        let g = sample();
        let content = content_digest(&[meta("src/main.rs", b"x")]);
        let before = keys_of(&g, &content);

        // Excluded: progress name, stage, span, instruction text, proxy env, secret/ssh mounts.
        let mut h = g.clone();
        for n in &mut h.nodes {
            n.name = "renamed".into();
            n.stage = Some("other".into());
            n.span = Some(Span {
                line: 99,
                column: 7,
            });
            n.instruction = "RUN   something else".into();
        }
        if let Op::Exec(x) = &mut h.nodes[1].op {
            x.proxy_env = vec!["HTTP_PROXY=http://proxy:3128".into()];
            x.mounts.push(Mount {
                target: "/run/secrets/token".into(),
                kind: MountKind::Secret {
                    id: "token".into(),
                    required: true,
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                    env: None,
                },
                readonly: true,
            });
            x.mounts.push(Mount {
                target: "/run/ssh".into(),
                kind: MountKind::Ssh {
                    id: "default".into(),
                    required: false,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
                readonly: true,
            });
        }
        if let Op::File(f) = &mut h.nodes[3].op
            && let FileAction::Copy(c) = &mut f.actions[2]
        {
            c.instruction = "ADD";
        }
        assert_eq!(keys_of(&h, &content), before);
        // Excluded: mtimes, which SourceMeta has no field for (SourceEntry::mtime_ns is dropped).
    }

    #[test]
    fn included_fields_change_keys() {
        let g = sample();
        let content = content_digest(&[meta("src/main.rs", b"x")]);
        let base = keys_of(&g, &content);
        type Edit = Box<dyn Fn(&mut BuildGraph)>;
        let mut variants: Vec<Edit> = vec![
            Box::new(|g| {
                if let Op::Source(SourceOp::Image { manifest, .. }) = &mut g.nodes[0].op {
                    *manifest = Digest::of(b"other");
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.args[2] = "echo b > /a".into();
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.env.push("A=1".into());
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.cwd = "/tmp".into();
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.user = "nobody".into();
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.network = NetworkMode::Host;
                }
            }),
            Box::new(|g| {
                if let Op::Exec(x) = &mut g.nodes[1].op {
                    x.mounts.push(Mount {
                        target: "/t".into(),
                        kind: MountKind::Tmpfs { size: None },
                        readonly: false,
                    });
                }
            }),
            Box::new(|g| {
                if let Op::File(f) = &mut g.nodes[3].op
                    && let FileAction::Copy(c) = &mut f.actions[1]
                {
                    c.chmod = Some("755".into());
                }
            }),
            Box::new(|g| {
                if let Op::File(f) = &mut g.nodes[3].op
                    && let FileAction::Mkdir { path, .. } = &mut f.actions[0]
                {
                    *path = "/srv".into();
                }
            }),
        ];
        for (i, v) in variants.iter_mut().enumerate() {
            let mut h = g.clone();
            v(&mut h);
            assert_ne!(
                keys_of(&h, &content)[3],
                base[3],
                "variant {i} did not change the target key"
            );
        }
        let other = content_digest(&[meta("src/main.rs", b"y")]);
        assert_ne!(
            keys_of(&g, &other)[3],
            base[3],
            "content did not change the key"
        );
        assert_eq!(
            keys_of(&g, &content)[1],
            base[1],
            "content changed an unrelated key"
        );
    }

    #[test]
    fn content_digest_covers_metadata_but_not_mtime() {
        let a = meta("f", b"x");
        let d = content_digest(std::slice::from_ref(&a));
        for change in [
            |m: &mut SourceMeta| m.mode = 0o755,
            |m: &mut SourceMeta| m.uid = 1,
            |m: &mut SourceMeta| m.gid = 1,
            |m: &mut SourceMeta| m.rel = "g".into(),
            |m: &mut SourceMeta| m.kind = EntryKind::Symlink,
            |m: &mut SourceMeta| m.link_target = Some("t".into()),
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert_ne!(content_digest(&[b]), d);
        }
    }
}
