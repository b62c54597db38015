//! Sandbox integration tests: real namespaces, real overlayfs, a real busybox root.
//!
//! `harness = false`: `main` first dispatches `__init`, so the sandbox re-executes this very
//! binary as `kiln __init <json>` would. Tests need root and overlayfs; without them they are
//! skipped with a reason, or fail when REQUIRE_PRIVILEGED_TESTS=1.
//!
//! Usage: `cargo test -p kiln-executor --test sandbox [-- NAME_FILTER...]`.

mod sandbox {
    pub mod copy_tests;
    pub mod device_tests;
    pub mod fixture;
    pub mod run_tests;
}

use std::time::Instant;

use sandbox::fixture::TestFn;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__init") {
        executor::init::main(args);
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let mut tests: Vec<(&str, TestFn)> = Vec::new();
    tests.extend(sandbox::run_tests::TESTS);
    tests.extend(sandbox::copy_tests::TESTS);
    tests.extend(sandbox::device_tests::TESTS);
    let selected: Vec<_> = tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();

    if let Err(reason) = sandbox::fixture::privileged() {
        if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
            eprintln!("FAIL: privileged tests required but {reason}");
            std::process::exit(1);
        }
        eprintln!("skipping {} sandbox tests: {reason}", selected.len());
        println!("0 passed, 0 failed, {} skipped", selected.len());
        return;
    }

    let (mut passed, mut failed) = (0, 0);
    for (name, test) in selected {
        let start = Instant::now();
        match test() {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.0?})", start.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e:#}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
