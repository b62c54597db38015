//! Placeholder library so the tests package builds.
