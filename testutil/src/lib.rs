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
//! A test left out of a binary's list is a private function nobody calls: `dead_code` warns and
//! clippy (`-D warnings`) fails, so no test silently stops running.
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

/// Runs `tests` as a libtest-compatible harness and returns the process exit code's success.
///
/// `precondition` is `Err(reason)` when the tests cannot run on this host. `after` runs once
/// after the tests that ran (e.g. a check that nothing was left behind) and may add a failure.
pub fn run(
    suite: &str,
    tests: Vec<Test>,
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
    let trials = tests
        .into_iter()
        .map(|(name, body)| {
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
        })
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
