//! Attacks on the `webhooks` boundary (see main.rs).
