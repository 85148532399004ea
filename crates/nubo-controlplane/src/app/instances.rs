//! Operations on instances (being moved here from `api::instances`).
