//! Attacks on the `tenancy` boundary (see main.rs).
