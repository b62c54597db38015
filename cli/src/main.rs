//! The `kiln` binary: argument parsing and output only.

fn main() {
    eprintln!("kiln: not yet implemented");
    std::process::exit(2);
}
