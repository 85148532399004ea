//! Test fixtures shared across crates' test targets (a dev-dependency
//! only). Fixtures that one crate's tests share stay in that crate's
//! `tests/common`; what lives here is used by tests of several crates.

pub mod slapd;
