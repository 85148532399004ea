//! Operations on networks (being moved here from `api::networks`).
