//! Operations on identity (being moved here from `api::identity`).
