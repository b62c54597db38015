//! CopySpec execution.

use super::fixture::TestFn;

pub const TESTS: &[(&str, TestFn)] = &[];
