//! kiln's end-to-end tests: one binary, each test with its own temp dir and KILN_ROOT.
