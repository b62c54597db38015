//! Sandbox integration tests: real namespaces, real overlayfs, a real busybox root.
//!
//! `harness = false`: `main` first dispatches `__init`, so the sandbox re-executes this very
//! binary as `kiln __init <json>` would, then hands the tests to `testutil::run` (libtest
//! compatible: `--list` lists). Tests need root and overlayfs; without them they are
//! ignored with the reason, or fail when REQUIRE_PRIVILEGED_TESTS=1.
//!
//! Usage: `cargo test -p kiln-executor --test sandbox [-- NAME_FILTER...]`.

mod sandbox {
    pub mod container_tests;
    pub mod copy_tests;
    pub mod device_tests;
    pub mod fixture;
    pub mod run_tests;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__init") {
        // As kiln's main: a container's cgroups are joined before `__init` forks.
        if let Some(cgroups) = executor::container::SandboxCgroups::from_env()
            && let Err(e) = cgroups.join(std::process::id())
        {
            eprintln!("kiln: {e}");
            std::process::exit(executor::init::EXIT_SETUP);
        }
        executor::init::main(args);
    }
    let mut tests = testutil::from_fns(sandbox::run_tests::TESTS);
    tests.extend(testutil::from_fns(sandbox::copy_tests::TESTS));
    tests.extend(testutil::from_fns(sandbox::device_tests::TESTS));
    tests.extend(testutil::from_fns(sandbox::container_tests::TESTS));
    let sources = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sandbox.rs"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sandbox"),
    ];
    testutil::run(
        "sandbox",
        tests,
        &sources,
        sandbox::fixture::privileged(),
        None,
    )
}
