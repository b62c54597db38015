//! Container names as docker's: `--name N`, or one made up for the container
//! (`adjective_surname`, as docker's `eager_turing`, from kiln's own word lists), each held by
//! one container at a time.
//!
//! A name is reserved in `KILN_ROOT/names` ([`kroot::Dir::Names`]): `<name>` is a symlink to
//! the id of the container holding it, made under an exclusive flock of `names/.lock` (no
//! container name starts with a dot), so two `kiln run --name N` at once never both get `N`:
//! the second sees the first's link and fails with docker's Conflict error. `rm` (and `--rm`)
//! removes the link. A link whose container directory is gone (a crash between reserving and
//! removing) is stale and taken over; a container is reserved only once its directory
//! exists, so a reservation in progress is never taken for a stale one.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors of reserving a name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// Another container holds the name (docker's message).
    #[error(
        "Conflict. The container name \"/{name}\" is already in use by container \"{holder}\". You have to remove (or rename) that container to be able to reuse that name."
    )]
    Conflict {
        /// The name.
        name: String,
        /// The id of the container holding it.
        holder: String,
    },
    /// The name cannot be a container name.
    #[error(transparent)]
    Invalid(#[from] crate::names::NameError),
    /// The names directory or its lock could not be used.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, NameError>;

/// First halves of generated names.
const ADJECTIVES: &[&str] = &[
    "amber", "ardent", "bold", "brave", "bright", "brisk", "calm", "candid", "clever", "cosy",
    "crisp", "daring", "deft", "eager", "earnest", "fervent", "fierce", "gentle", "glowing",
    "golden", "hardy", "humble", "jolly", "keen", "kind", "lively", "lucid", "mellow", "merry",
    "nimble", "patient", "plucky", "proud", "quick", "quiet", "radiant", "ready", "rustic",
    "serene", "sharp", "shiny", "smoky", "snug", "steady", "sturdy", "sunny", "swift", "tidy",
    "vivid", "warm", "wise", "witty", "zesty",
];

/// Second halves: potters, ceramicists and the people who measured their kilns.
const SURNAMES: &[&str] = &[
    "arneson",
    "autio",
    "bottger",
    "cardew",
    "chojiro",
    "cliff",
    "coper",
    "cooper",
    "doulton",
    "grueby",
    "hamada",
    "kaneshige",
    "kawai",
    "kenzan",
    "leach",
    "martinez",
    "minton",
    "nampeyo",
    "ninsei",
    "odundo",
    "ohr",
    "orton",
    "palissy",
    "rhodes",
    "rie",
    "robbia",
    "seger",
    "soldner",
    "spode",
    "tomimoto",
    "tschirnhaus",
    "voulkos",
    "wedgwood",
    "wildenhain",
    "natzler",
    "pleydell",
    "staite",
    "batterham",
    "casson",
    "fritsch",
    "hepburn",
    "koie",
    "lowndes",
    "magdalene",
    "mcnicoll",
    "nakazato",
    "pollex",
    "shimaoka",
    "takaezu",
    "woodman",
    "zeisel",
];

/// `n` random bytes from `/dev/urandom`, or from the clock and pid where it cannot be read.
fn random(n: usize) -> Vec<u8> {
    use std::io::Read as _;
    let mut b = vec![0u8; n];
    let read = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    b
}

/// A made-up name, `adjective_surname` (`eager_hamada`).
pub fn generate() -> String {
    let r = random(4);
    let a = usize::from(u16::from_le_bytes([r[0], r[1]]));
    let s = usize::from(u16::from_le_bytes([r[2], r[3]]));
    format!(
        "{}_{}",
        ADJECTIVES[a % ADJECTIVES.len()],
        SURNAMES[s % SURNAMES.len()]
    )
}

/// The names directory of the `KILN_ROOT` whose `containers` directory is `containers`.
pub fn names_dir(containers: &Path) -> PathBuf {
    let root = containers.parent().unwrap_or(containers);
    kroot::Dir::Names.path(root)
}

/// The exclusive lock of the names directory `dir` (created).
fn lock(dir: &Path) -> Result<File> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NameError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(&path)(e.into()))?;
    Ok(f)
}

/// The id of the container holding `name`, if a live one does (its directory under
/// `containers` exists); a stale link is removed. Caller holds the lock.
fn holder(containers: &Path, entry: &Path) -> Option<String> {
    let target = std::fs::read_link(entry).ok()?;
    let id = target.to_str().map(str::to_owned);
    match id {
        Some(id) if crate::names::check_container(&id).is_ok() && containers.join(&id).is_dir() => {
            Some(id)
        }
        _ => {
            let _ = std::fs::remove_file(entry);
            None
        }
    }
}

/// Reserves `name` for container `id`, whose directory under `containers` exists. Fails with
/// [`NameError::Conflict`] when another container holds it (also one from before names were
/// reserved, found by its state); reserving a name `id` already holds succeeds.
pub fn reserve(containers: &Path, name: &str, id: &str) -> Result<()> {
    crate::names::check_container(name)?;
    let dir = names_dir(containers);
    let _l = lock(&dir)?;
    let entry = dir.join(name);
    if let Some(h) = holder(containers, &entry) {
        if h == id {
            return Ok(());
        }
        return Err(NameError::Conflict {
            name: name.to_owned(),
            holder: h,
        });
    }
    // Containers made before names were reserved have no link.
    if let Some((_, s)) = super::state::all(containers)
        .into_iter()
        .find(|(_, s)| s.id != id && s.name() == name)
    {
        return Err(NameError::Conflict {
            name: name.to_owned(),
            holder: s.id,
        });
    }
    match std::os::unix::fs::symlink(id, &entry) {
        Ok(()) => Ok(()),
        // Not under our lock (a kiln without it): someone else's all the same.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(NameError::Conflict {
            name: name.to_owned(),
            holder: std::fs::read_link(&entry)
                .map(|t| t.display().to_string())
                .unwrap_or_default(),
        }),
        Err(source) => Err(NameError::Io {
            path: entry,
            source,
        }),
    }
}

/// Reserves a made-up name for container `id` (see [`reserve`]) and returns it. A name that
/// is taken is tried again with a digit added, as docker does.
pub fn reserve_generated(containers: &Path, id: &str) -> Result<String> {
    let mut last = None;
    for attempt in 0..16 {
        let mut name = generate();
        if attempt > 0 {
            name.push(char::from(b'0' + random(1)[0] % 10));
        }
        match reserve(containers, &name, id) {
            Ok(()) => return Ok(name),
            Err(e @ NameError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("invariant: sixteen attempts ran"))
}

/// Gives `name` back when container `id` holds it (`rm`, `--rm`, a failed `run`). Best
/// effort: a link left behind is stale once the container's directory is gone.
pub fn release(containers: &Path, name: &str, id: &str) {
    if crate::names::check_container(name).is_err() {
        return;
    }
    let dir = names_dir(containers);
    let Ok(_l) = lock(&dir) else {
        return;
    };
    let entry = dir.join(name);
    if std::fs::read_link(&entry).is_ok_and(|t| t == Path::new(id)) {
        let _ = std::fs::remove_file(&entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_container_names() {
        for _ in 0..200 {
            let n = generate();
            crate::names::check_container(&n).expect(&n);
            let (a, s) = n.split_once('_').expect("adjective_surname");
            assert!(ADJECTIVES.contains(&a) && SURNAMES.contains(&s), "{n}");
        }
    }

    #[test]
    fn a_name_is_held_once_released_and_stale_links_are_taken_over() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let (a, b) = (super::super::state::new_id(), super::super::state::new_id());
        for id in [&a, &b] {
            std::fs::create_dir_all(containers.join(id)).expect("mkdir");
        }
        reserve(&containers, "web", &a).expect("first");
        reserve(&containers, "web", &a).expect("again by its holder");
        match reserve(&containers, "web", &b) {
            Err(NameError::Conflict { holder, .. }) => assert_eq!(holder, a),
            other => panic!("{other:?}"),
        }
        release(&containers, "web", &b);
        assert!(
            reserve(&containers, "web", &b).is_err(),
            "b cannot release a's name"
        );
        release(&containers, "web", &a);
        reserve(&containers, "web", &b).expect("free again");
        // b's directory goes without a release: the link is stale.
        std::fs::remove_dir(containers.join(&b)).expect("rmdir");
        reserve(&containers, "web", &a).expect("stale link taken over");
        assert!(reserve(&containers, "../x", &a).is_err());
        let g = reserve_generated(&containers, &a).expect("generated");
        assert!(names_dir(&containers).join(&g).is_symlink(), "{g}");
    }

    #[test]
    fn of_racing_reservations_exactly_one_wins() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let ids: Vec<String> = (0..8).map(|_| super::super::state::new_id()).collect();
        for id in &ids {
            std::fs::create_dir_all(containers.join(id)).expect("mkdir");
        }
        let won = std::thread::scope(|s| {
            let hs: Vec<_> = ids
                .iter()
                .map(|id| s.spawn(|| reserve(&containers, "race", id).is_ok()))
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok())
                .filter(|won| *won)
                .count()
        });
        assert_eq!(won, 1);
    }
}
