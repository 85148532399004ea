//! Operations on images (being moved here from `api::images`).
