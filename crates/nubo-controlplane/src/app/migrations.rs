//! Operations on migrations (being moved here from `api::migrations`).
