//! The `kiln` binary: argument parsing and output only.

// Wired into clap by the integration engineer; until then only its tests use it.
#[allow(dead_code)]
mod registry;

fn main() {
    eprintln!("kiln: not yet implemented");
    std::process::exit(2);
}
