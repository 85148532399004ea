//! Attacks on the `guests` boundary (see main.rs).
