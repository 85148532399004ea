//! Attacks on the `host_liveness` boundary (see main.rs).
