//! Placing a volume's or snapshot's bytes: the storage pool with the most
//! room, or a check that the one the bytes must go to has enough.

use super::{choose, Constraints, Need};
use crate::error::AppError;
use crate::Ctx;

/// Picks the host whose storage pool takes `gib` more (the one with the
/// most room), or checks that `only` does (whether or not it is up: the
/// volume lives there). Returns the host and its pool limit (the claim
/// re-checks it atomically). A refusal names each host's free space.
pub async fn place_storage(ctx: &Ctx, gib: u64, only: Option<&str>) -> Result<(String, i64), AppError> {
    let c = Constraints { pin: only, require_up: only.is_none(), ..Constraints::default() };
    let choice = choose(ctx, Need::Pool { gib }, &c).await?;
    Ok((choice.best.id, choice.best.limits.disk_gib))
}
