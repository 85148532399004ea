//! Attacks on the `identity` boundary (see main.rs).
