//! The harness of kiln's privileged test binaries (`executor --test sandbox`, `executor --test
//! net`, `solver --test solve`).
//!
//! Those binaries are `harness = false` because the code under test re-executes the test binary
//! itself (as the sandbox's `kiln __init <json>`, or as net's `--ipam-child`): their `main` must
//! dispatch that before any harness runs, which libtest's generated `main` cannot do. They hand
//! their tests to [`run`], built on `libtest-mimic`, so that they behave like libtest binaries:
//! `--list` lists without running, filters, `--exact` and `--skip` work, and the summary counts
//! every test.
//!
//! A test left out of a binary's list would silently never run (`dead_code` does not see it
//! when another function calls it, and a name can be paired with the wrong function). So [`run`]
//! adds one test of its own, `every_test_function_is_registered`, that runs on every host (no
//! precondition): it reads the binary's source files and fails naming each test function
//! (see [`test_functions`]) that no registered test is named after.
//!
//! Preconditions (root, overlayfs, busybox, nft ...) are checked once. When they are missing,
//! every test is reported as ignored with the reason, or fails with it when
//! `REQUIRE_PRIVILEGED_TESTS=1` (CI).
//!
//! Tests run one at a time on the main thread, as before: they fork children, enter namespaces
//! and share host state (bridges, nft tables, cgroups), and `fork` is only sound in a
//! single-threaded process. `--test-threads` is therefore ignored.

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// A test body. It fails by returning `Err` or by panicking.
pub type Body = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// A test function, as the binaries' tables list them.
pub type TestFn = fn() -> anyhow::Result<()>;

/// One test: its name and its body.
pub type Test = (&'static str, Body);

/// A check run once after the tests (e.g. that nothing was left behind).
pub type After = Box<dyn FnOnce() -> Result<(), String>>;

/// Whether `REQUIRE_PRIVILEGED_TESTS=1` turns a missing precondition into a failure.
pub fn privileged_required() -> bool {
    std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1")
}

/// The name of the registration guard test that [`run`] adds.
pub const GUARD: &str = "every_test_function_is_registered";

/// Runs `tests` as a libtest-compatible harness and returns the process exit code's success.
///
/// `sources` are the binary's source files or directories (every `*.rs` below them), absolute
/// (`concat!(env!("CARGO_MANIFEST_DIR"), "/tests/x.rs")`): the guard test [`GUARD`] fails when
/// one of their test functions has no registered test of its name. `precondition` is
/// `Err(reason)` when the tests cannot run on this host. `after` runs once after the tests that
/// ran (e.g. a check that nothing was left behind) and may add a failure.
pub fn run(
    suite: &str,
    tests: Vec<Test>,
    sources: &[&str],
    precondition: Result<(), String>,
    after: Option<After>,
) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let listing = args.list;
    if let Err(why) = &precondition
        && !listing
    {
        if privileged_required() {
            eprintln!("{suite}: REQUIRE_PRIVILEGED_TESTS=1 but {why}");
        } else {
            eprintln!("{suite}: skipping every test: {why}");
        }
    }
    let registered: Vec<&'static str> = tests.iter().map(|&(name, _)| name).collect();
    let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
    let guard = Trial::test(GUARD, move || {
        let missing = unregistered(&sources, &registered).map_err(Failed::from)?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Failed::from(format!(
                "test functions not in the binary's table (they would never run): {}",
                missing.join(", ")
            )))
        }
    });
    let trials = std::iter::once(guard)
        .chain(tests.into_iter().map(|(name, body)| {
            let precondition = precondition.clone();
            Trial::ignorable_test(name, move || match precondition {
                Err(why) if privileged_required() => Err(Failed::from(format!(
                    "REQUIRE_PRIVILEGED_TESTS=1 but {why}"
                ))),
                Err(why) => Ok(Completion::ignored_with(why)),
                Ok(()) => body()
                    .map(|()| Completion::Completed)
                    .map_err(|e| Failed::from(format!("{e:#}"))),
            })
        }))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut ok = !conclusion.has_failed();
    if let Some(after) = after
        && !listing
        && precondition.is_ok()
        && conclusion.num_passed + conclusion.num_failed > 0
    {
        if let Err(e) = after() {
            eprintln!("{suite}: {e}");
            ok = false;
        }
    }
    std::process::exit(if ok { 0 } else { 101 })
}

/// The tests of a `&[(name, fn)]` table.
pub fn from_fns(table: &[(&'static str, TestFn)]) -> Vec<Test> {
    table
        .iter()
        .map(|&(name, f)| {
            (
                name,
                Box::new(f) as Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
            )
        })
        .collect()
}

/// The test functions that `sources` define and `registered` does not name, sorted.
///
/// Fails when a source cannot be read (the guard must not pass by reading nothing).
pub fn unregistered(sources: &[String], registered: &[&str]) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    for s in sources {
        rs_files(std::path::Path::new(s), &mut files)?;
    }
    let mut missing = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        for name in test_functions(&text) {
            if !registered.contains(&name.as_str()) {
                missing.push(format!("{name} ({})", f.display()));
            }
        }
    }
    missing.sort();
    Ok(missing)
}

fn rs_files(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), String> {
    let err = |e: std::io::Error| format!("reading {}: {e}", path.display());
    if !path.is_dir() {
        std::fs::metadata(path).map_err(err)?;
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort();
    for p in entries {
        if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
            rs_files(&p, out)?;
        }
    }
    Ok(())
}

/// The names of the test functions in a test binary's source: functions at the start of a line
/// (optionally `pub`) that take no arguments and return `()`, `Result<()>` or
/// `anyhow::Result<()>`, the shapes the tables hold; `main` excluded. Helpers that take
/// arguments or return a value are not tests.
pub fn test_functions(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("fn ") {
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        let head = &rest[line_start..at];
        let after = &rest[at + 3..];
        rest = after;
        if !(head.is_empty() || head == "pub ") {
            continue;
        }
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let (name, sig) = after.split_at(name_len);
        let Some(sig) = sig.strip_prefix("()") else {
            continue;
        };
        let Some(body) = sig.find(['{', ';']) else {
            continue;
        };
        let ret: String = sig[..body].split_whitespace().collect::<Vec<_>>().join(" ");
        if name != "main" && matches!(ret.as_str(), "" | "-> Result<()>" | "-> anyhow::Result<()>")
        {
            out.push(name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_table_shapes_and_skips_helpers() {
        let src = "fn main() {}\n\
                   fn a_test() -> anyhow::Result<()> {\n    inner();\n}\n\
                   fn unit_test() {}\n\
                   pub fn res_test() -> Result<()> {}\n\
                   fn wrapped_test()\n-> anyhow::Result<()>\n{}\n\
                   fn helper(x: u32) -> Result<()> {}\n\
                   fn value() -> Result<Vec<u8>> {}\n\
                   fn pre() -> Result<(), String> {}\n\
                   impl X {\n    fn new() -> Result<()> {}\n}\n";
        assert_eq!(
            test_functions(src),
            ["a_test", "unit_test", "res_test", "wrapped_test"]
        );
    }

    #[test]
    fn an_unregistered_test_is_named_and_a_missing_source_fails() {
        let dir = std::env::temp_dir().join(format!("testutil-guard-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.rs"), "fn one() {}\nfn two() {}\n").unwrap();
        std::fs::write(
            dir.join("sub/b.rs"),
            "fn three() -> anyhow::Result<()> {}\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "fn four() {}\n").unwrap();
        let srcs = [dir.to_string_lossy().into_owned()];
        let missing = unregistered(&srcs, &["one", "three"]).unwrap();
        assert_eq!(missing, [format!("two ({})", dir.join("a.rs").display())]);
        assert!(
            unregistered(&srcs, &["one", "two", "three"])
                .unwrap()
                .is_empty()
        );
        let gone = [dir.join("gone.rs").to_string_lossy().into_owned()];
        assert!(unregistered(&gone, &[]).unwrap_err().contains("gone.rs"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
