//! Operations on hosts (being moved here from `api::hosts`).
