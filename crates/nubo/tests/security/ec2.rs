//! Attacks on the `ec2` boundary (see main.rs).
