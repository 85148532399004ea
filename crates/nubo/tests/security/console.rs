//! Attacks on the `console` boundary (see main.rs).
