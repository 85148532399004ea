//! Test fixtures shared across crates' test targets (a dev-dependency
//! only). Fixtures that one crate's tests share stay in that crate's
//! `tests/common`; what lives here is used by tests of several crates.
//! Like all test code it may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod slapd;
