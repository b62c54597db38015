//! `kiln run`'s storage flags, as docker's: `-v/--volume`, `--mount`, `--tmpfs`. [`parse`]
//! checks them (docker's syntax and messages: moby `volume/mounts/linux_parser.go`, docker-cli
//! `opts/mount.go`) without touching anything; [`prepare`] then makes what they need (a
//! missing `-v` host directory, a named volume on first use, an anonymous volume) and turns
//! them into the container's spec mounts. The container side is resolved inside the
//! container's root when mounted (`executor::init`), so an image's symlinks cannot move a
//! mount onto the host; the host side is the caller's choice.

use executor::spec::{ContainerMount, MountKind, MountSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One mount as the flags say it, before anything exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A host path.
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute path in the container.
        target: String,
        /// `ro`.
        readonly: bool,
        /// The mode as given (for inspect).
        mode: String,
        /// `-v` creates a missing host directory; `--mount` refuses it.
        create: bool,
    },
    /// A volume: named, or anonymous (`None`).
    Volume {
        /// Its name.
        name: Option<String>,
        /// Absolute path in the container.
        target: String,
        /// `ro`.
        readonly: bool,
        /// `nocopy` / `volume-nocopy`.
        nocopy: bool,
        /// The mode as given (for inspect).
        mode: String,
        /// `volume-label`s of a volume `--mount` creates.
        labels: BTreeMap<String, String>,
    },
    /// A tmpfs.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
        /// `size=` / `tmpfs-size`.
        size: Option<u64>,
        /// `mode=` / `tmpfs-mode`.
        mode: Option<u32>,
        /// `ro`.
        readonly: bool,
    },
}

impl Parsed {
    fn target(&self) -> &str {
        match self {
            Parsed::Bind { target, .. }
            | Parsed::Volume { target, .. }
            | Parsed::Tmpfs { target, .. } => target,
        }
    }
}

/// docker's `filepath.Clean` of an absolute container path.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The flags' mounts in the order they are mounted (shallower targets first, as docker sorts
/// them). Fails with docker's message on the first bad one.
pub fn parse(
    volumes: &[String],
    mounts: &[String],
    tmpfs: &[String],
) -> anyhow::Result<Vec<Parsed>> {
    let mut out = Vec::new();
    for v in volumes {
        out.push(parse_volume(v)?);
    }
    for m in mounts {
        out.push(parse_mount(m)?);
    }
    for t in tmpfs {
        out.push(parse_tmpfs(t)?);
    }
    let mut uniq: Vec<Parsed> = Vec::new();
    for p in out {
        match uniq.iter().find(|q| q.target() == p.target()) {
            Some(q) if *q == p => {}
            Some(_) => anyhow::bail!("Duplicate mount point: {}", p.target()),
            None => uniq.push(p),
        }
    }
    let mut out = uniq;
    out.sort_by_key(|p| p.target().split('/').filter(|c| !c.is_empty()).count());
    Ok(out)
}

const PROPAGATIONS: [&str; 6] = [
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// `-v`'s mode field: `(readonly, nocopy)`; docker's `invalid mode: X` for anything else.
fn parse_mode(mode: &str, bind: bool) -> anyhow::Result<(bool, bool)> {
    let bad = || anyhow::anyhow!("invalid mode: {mode}");
    let (mut rw, mut prop, mut label, mut copy, mut consistency) = (None, None, 0, 0, 0);
    for o in mode.split(',').filter(|o| !o.is_empty() || mode.is_empty()) {
        match o {
            "" => {}
            "ro" | "rw" if rw.is_none() => rw = Some(o == "ro"),
            "z" | "Z" => label += 1,
            "nocopy" if !bind => copy += 1,
            "consistent" | "cached" | "delegated" => consistency += 1,
            p if PROPAGATIONS.contains(&p) && prop.is_none() && bind => prop = Some(p),
            _ => return Err(bad()),
        }
    }
    if label > 1 || copy > 1 || consistency > 1 {
        return Err(bad());
    }
    if let Some(p) = prop {
        // kiln's container mounts are private (docker's default `rprivate`).
        anyhow::ensure!(
            p == "private" || p == "rprivate",
            "invalid mode: {mode}: kiln supports only private bind propagation"
        );
    }
    Ok((rw == Some(true), copy == 1))
}

fn parse_volume(raw: &str) -> anyhow::Result<Parsed> {
    let spec_err = || anyhow::anyhow!("invalid volume specification: '{raw}'");
    let parts: Vec<&str> = raw.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] if !t.is_empty() => ("", *t, ""),
        // `CTR:MODE` is no volume: a volume's mode needs its source (moby's linux parser).
        [_, t] if parse_mode(t, true).is_ok() || parse_mode(t, false).is_ok() => {
            return Err(spec_err());
        }
        [s, t] if !s.is_empty() && !t.is_empty() => (*s, *t, ""),
        [s, t, m] if !s.is_empty() && !t.is_empty() => (*s, *t, *m),
        _ => return Err(spec_err()),
    };
    let bind = source.starts_with('/');
    let kind = if bind { "bind" } else { "volume" };
    anyhow::ensure!(
        target.starts_with('/'),
        "invalid volume specification: '{raw}': invalid mount config for type \"{kind}\": invalid mount path: '{target}' mount path must be absolute"
    );
    let target = clean(target);
    anyhow::ensure!(
        target != "/",
        "invalid volume specification: '{raw}': invalid mount config for type \"{kind}\": invalid specification: destination can't be '/'"
    );
    let (readonly, nocopy) = parse_mode(mode, bind)?;
    if bind {
        return Ok(Parsed::Bind {
            source: PathBuf::from(clean(source)),
            target,
            readonly,
            mode: mode.to_owned(),
            create: true,
        });
    }
    if !source.is_empty() {
        executor::volume::check_name(source)?;
    }
    Ok(Parsed::Volume {
        name: (!source.is_empty()).then(|| source.to_owned()),
        target,
        readonly,
        nocopy,
        // docker shows a named `-v` volume's default mode as `z`.
        mode: match (source.is_empty(), mode) {
            (false, "") => "z".to_owned(),
            _ => mode.to_owned(),
        },
        labels: BTreeMap::new(),
    })
}

fn parse_bool(raw: &str, key: &str, v: Option<&str>) -> anyhow::Result<bool> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(_) => anyhow::bail!(
            "invalid argument \"{raw}\" for \"--mount\" flag: invalid value for {key}: {}",
            v.unwrap_or_default()
        ),
    }
}

fn parse_mount(raw: &str) -> anyhow::Result<Parsed> {
    let flag = |m: String| anyhow::anyhow!("invalid argument \"{raw}\" for \"--mount\" flag: {m}");
    let (mut kind, mut source, mut target) = ("volume".to_owned(), None, None);
    let (mut readonly, mut nocopy, mut size, mut mode) = (false, false, None, None);
    let mut labels = BTreeMap::new();
    let mut families: Vec<&str> = Vec::new();
    for kv in raw.split(',') {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (kv.trim().to_ascii_lowercase(), None),
        };
        let val =
            || v.ok_or_else(|| flag(format!("invalid field '{kv}' must be a key=value pair")));
        match k.as_str() {
            "type" => kind = val()?.to_owned(),
            "source" | "src" => source = Some(val()?.to_owned()),
            "target" | "dst" | "destination" => target = Some(val()?.to_owned()),
            "readonly" | "ro" => readonly = parse_bool(raw, &k, v)?,
            "bind-propagation" => {
                families.push("bind");
                let p = val()?;
                anyhow::ensure!(
                    p == "private" || p == "rprivate",
                    "invalid argument \"{raw}\" for \"--mount\" flag: kiln supports only private bind propagation"
                );
            }
            "volume-nocopy" => {
                families.push("volume");
                nocopy = parse_bool(raw, &k, v)?;
            }
            "volume-label" => {
                families.push("volume");
                let l = val()?;
                let (lk, lv) = l.split_once('=').unwrap_or((l, ""));
                labels.insert(lk.to_owned(), lv.to_owned());
            }
            "tmpfs-size" => {
                families.push("tmpfs");
                let s = val()?;
                size = Some(kroot::size::parse(s).map_err(|e| flag(e.to_string()))?);
            }
            "tmpfs-mode" => {
                families.push("tmpfs");
                let m = val()?;
                mode = Some(u32::from_str_radix(m, 8).map_err(|e| flag(e.to_string()))?);
            }
            "volume-driver" => {
                families.push("volume");
                let d = val()?;
                anyhow::ensure!(
                    d == "local",
                    "invalid argument \"{raw}\" for \"--mount\" flag: kiln has only the local volume driver"
                );
            }
            "volume-opt" => {
                return Err(flag(
                    "kiln's local volumes take no driver options (volume-opt)".to_owned(),
                ));
            }
            "consistency" => {}
            _ => return Err(flag(format!("unexpected key '{k}' in '{kv}'"))),
        }
    }
    for f in families {
        if f != kind {
            return Err(flag(format!(
                "cannot mix '{f}-*' options with mount type '{kind}'"
            )));
        }
    }
    let Some(target) = target else {
        return Err(flag("target is required".to_owned()));
    };
    let config = |m: &str| anyhow::anyhow!("invalid mount config for type \"{kind}\": {m}");
    anyhow::ensure!(
        target.starts_with('/'),
        config(&format!(
            "invalid mount path: '{target}' mount path must be absolute"
        ))
    );
    let target = clean(&target);
    match kind.as_str() {
        "bind" => {
            let Some(source) = source.filter(|s| !s.is_empty()) else {
                return Err(config("field Source must not be empty"));
            };
            anyhow::ensure!(
                source.starts_with('/'),
                config(&format!(
                    "invalid mount path: '{source}' mount path must be absolute"
                ))
            );
            anyhow::ensure!(
                Path::new(&source).exists(),
                config(&format!("bind source path does not exist: {source}"))
            );
            Ok(Parsed::Bind {
                source: PathBuf::from(clean(&source)),
                target,
                readonly,
                mode: String::new(),
                create: false,
            })
        }
        "volume" => {
            let name = source.filter(|s| !s.is_empty());
            if let Some(n) = &name {
                executor::volume::check_name(n)?;
            }
            Ok(Parsed::Volume {
                name,
                target,
                readonly,
                nocopy,
                mode: String::new(),
                labels,
            })
        }
        "tmpfs" => {
            anyhow::ensure!(
                source.is_none_or(|s| s.is_empty()),
                config("field Source must not be specified")
            );
            Ok(Parsed::Tmpfs {
                target,
                size,
                mode,
                readonly,
            })
        }
        _ => Err(config("mount type unknown")),
    }
}

fn parse_tmpfs(raw: &str) -> anyhow::Result<Parsed> {
    let (target, opts) = raw.split_once(':').unwrap_or((raw, ""));
    anyhow::ensure!(
        target.starts_with('/'),
        "invalid mount path: '{target}' mount path must be absolute"
    );
    let (mut size, mut mode, mut readonly) = (None, None, false);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", s)) => {
                size =
                    Some(kroot::size::parse(s).map_err(|e| anyhow::anyhow!("--tmpfs {raw}: {e}"))?)
            }
            Some(("mode", m)) => {
                mode = Some(
                    u32::from_str_radix(m, 8)
                        .map_err(|e| anyhow::anyhow!("--tmpfs {raw}: mode={m}: {e}"))?,
                )
            }
            None if o == "ro" || o == "rw" => readonly = o == "ro",
            // docker's defaults, which kiln always applies.
            None if matches!(o, "noexec" | "nosuid" | "nodev") => {}
            _ => anyhow::bail!(
                "--tmpfs {raw}: kiln supports the options size=, mode=, ro, rw, noexec, nosuid and nodev, not {o}"
            ),
        }
    }
    Ok(Parsed::Tmpfs {
        target: clean(target),
        size,
        mode,
        readonly,
    })
}

/// `parsed` plus an anonymous volume for each of the image's `VOLUME`s that no flag mounts, as
/// docker makes them (filled from the image, gone with `--rm` and `rm -v`), in mount order.
pub fn with_image_volumes<'a>(
    mut parsed: Vec<Parsed>,
    volumes: impl IntoIterator<Item = &'a String>,
) -> Vec<Parsed> {
    for v in volumes {
        let target = clean(v);
        if target == "/" || parsed.iter().any(|p| p.target() == target) {
            continue;
        }
        parsed.push(Parsed::Volume {
            name: None,
            target,
            readonly: false,
            nocopy: false,
            mode: String::new(),
            labels: BTreeMap::new(),
        });
    }
    parsed.sort_by_key(|p| p.target().split('/').filter(|c| !c.is_empty()).count());
    parsed
}

/// Makes what `parsed` needs (a missing `-v` host directory, volumes) and returns the spec
/// mounts. Fails when a directory or volume cannot be made.
pub fn prepare(
    parsed: &[Parsed],
    volumes: &executor::volume::Volumes,
) -> anyhow::Result<Vec<MountSpec>> {
    use anyhow::Context as _;
    let mut out = Vec::new();
    for p in parsed {
        let (target, readonly, kind) = match p {
            Parsed::Bind {
                source,
                target,
                readonly,
                mode,
                create,
            } => {
                if *create && !source.exists() {
                    // docker's -v makes a missing host directory (mode 0755).
                    std::fs::create_dir_all(source)
                        .with_context(|| format!("creating {}", source.display()))?;
                }
                let kind = ContainerMount::Bind {
                    source: source.clone(),
                    mode: mode.clone(),
                };
                (target, *readonly, kind)
            }
            Parsed::Volume {
                name,
                target,
                readonly,
                nocopy,
                mode,
                labels,
            } => {
                let v = match name {
                    Some(n) => {
                        let labels = (!labels.is_empty()).then(|| labels.clone());
                        volumes.create(n, labels)?.0
                    }
                    None => volumes.create_anonymous()?,
                };
                let kind = ContainerMount::Volume {
                    name: v.name.clone(),
                    source: v.mountpoint.clone(),
                    anonymous: name.is_none(),
                    copy_up: !nocopy,
                    mode: mode.clone(),
                };
                (target, *readonly, kind)
            }
            Parsed::Tmpfs {
                target,
                size,
                mode,
                readonly,
            } => (
                target,
                *readonly,
                ContainerMount::Tmpfs {
                    size: *size,
                    mode: *mode,
                },
            ),
        };
        out.push(MountSpec {
            target: target.clone(),
            kind: MountKind::Container(kind),
            readonly,
        });
    }
    Ok(out)
}

/// docker's `Mounts` of `kiln inspect` for a container's spec mounts (`--tmpfs` is not among
/// them, as in docker, which shows it under `HostConfig.Tmpfs`; `--mount type=tmpfs` is, and
/// kiln cannot tell the two apart afterwards, so both are shown).
pub fn inspect(mounts: &[MountSpec]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = mounts
        .iter()
        .filter_map(|m| match &m.kind {
            MountKind::Container(c) => Some((m, c)),
            _ => None,
        })
        .map(|(m, c)| match c {
            ContainerMount::Bind { source, mode } => serde_json::json!({
                "Type": "bind",
                "Source": source,
                "Destination": m.target,
                "Mode": mode,
                "RW": !m.readonly,
                "Propagation": "rprivate",
            }),
            ContainerMount::Volume {
                name, source, mode, ..
            } => serde_json::json!({
                "Type": "volume",
                "Name": name,
                "Source": source,
                "Destination": m.target,
                "Driver": "local",
                "Mode": mode,
                "RW": !m.readonly,
                "Propagation": "",
            }),
            ContainerMount::Tmpfs { .. } => serde_json::json!({
                "Type": "tmpfs",
                "Source": "",
                "Destination": m.target,
                "Mode": "",
                "RW": !m.readonly,
                "Propagation": "",
            }),
        })
        .collect();
    serde_json::Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn volume_flags_parse_as_dockers() {
        let got = parse(&v(&["/h:/src/", "data:/d:ro", "/anon"]), &[], &[]).expect("parse");
        assert_eq!(
            got,
            [
                Parsed::Bind {
                    source: "/h".into(),
                    target: "/src".into(),
                    readonly: false,
                    mode: String::new(),
                    create: true
                },
                Parsed::Volume {
                    name: Some("data".into()),
                    target: "/d".into(),
                    readonly: true,
                    nocopy: false,
                    mode: "ro".into(),
                    labels: BTreeMap::new()
                },
                Parsed::Volume {
                    name: None,
                    target: "/anon".into(),
                    readonly: false,
                    nocopy: false,
                    mode: String::new(),
                    labels: BTreeMap::new()
                },
            ]
        );
    }

    #[test]
    fn bad_volume_flags_fail_with_dockers_messages() {
        for (raw, msg) in [
            ("/a:/b:ro:z", "invalid volume specification: '/a:/b:ro:z'"),
            ("/src:ro", "invalid volume specification: '/src:ro'"),
            (
                "/a:/",
                "invalid volume specification: '/a:/': invalid mount config for type \"bind\": invalid specification: destination can't be '/'",
            ),
            ("/a:/b:ro,rw", "invalid mode: ro,rw"),
            ("/a:/b:rx", "invalid mode: rx"),
            (
                "relx:src",
                "invalid volume specification: 'relx:src': invalid mount config for type \"volume\": invalid mount path: 'src' mount path must be absolute",
            ),
        ] {
            let e = parse(&v(&[raw]), &[], &[]).expect_err(raw);
            assert_eq!(e.to_string(), msg);
        }
    }

    #[test]
    fn bad_mount_flags_fail_with_dockers_messages() {
        for (raw, msg) in [
            (
                "type=bind,target=/x",
                "invalid mount config for type \"bind\": field Source must not be empty",
            ),
            (
                "type=bind,source=/tmp",
                "invalid argument \"type=bind,source=/tmp\" for \"--mount\" flag: target is required",
            ),
            (
                "type=tmpfs,source=/x,target=/t",
                "invalid mount config for type \"tmpfs\": field Source must not be specified",
            ),
            (
                "type=foo,target=/x",
                "invalid mount config for type \"foo\": mount type unknown",
            ),
            (
                "type=bind,src=/tmp,dst=/x,readonly=maybe",
                "invalid argument \"type=bind,src=/tmp,dst=/x,readonly=maybe\" for \"--mount\" flag: invalid value for readonly: maybe",
            ),
            (
                "type=bind,src=/tmp,target=/x,bogus=1",
                "invalid argument \"type=bind,src=/tmp,target=/x,bogus=1\" for \"--mount\" flag: unexpected key 'bogus' in 'bogus=1'",
            ),
            (
                "type=volume,target=/x,tmpfs-size=1",
                "invalid argument \"type=volume,target=/x,tmpfs-size=1\" for \"--mount\" flag: cannot mix 'tmpfs-*' options with mount type 'volume'",
            ),
        ] {
            let e = parse(&[], &v(&[raw]), &[]).expect_err(raw);
            assert_eq!(e.to_string(), msg);
        }
    }

    #[test]
    fn image_volumes_are_anonymous_unless_a_flag_mounts_them() {
        let flags = parse(&v(&["/h:/data/"]), &[], &[]).expect("parse");
        let image = v(&["/data", "/var/lib/db/", "/"]);
        let got = with_image_volumes(flags, &image);
        assert_eq!(
            got.iter().map(Parsed::target).collect::<Vec<_>>(),
            ["/data", "/var/lib/db"]
        );
        assert!(matches!(&got[0], Parsed::Bind { .. }));
        assert!(matches!(&got[1], Parsed::Volume { name: None, .. }));
    }

    #[test]
    fn mounts_are_ordered_shallow_first_and_duplicates_refused() {
        let got = parse(&v(&["/h:/a/b"]), &[], &v(&["/a"])).expect("parse");
        assert_eq!(
            got.iter().map(Parsed::target).collect::<Vec<_>>(),
            ["/a", "/a/b"]
        );
        let e = parse(&v(&["/h:/a", "/g:/a"]), &[], &[]).expect_err("dup");
        assert_eq!(e.to_string(), "Duplicate mount point: /a");
        parse(&v(&["/h:/a", "/h:/a"]), &[], &[]).expect("the same mount twice is one");
    }
}
