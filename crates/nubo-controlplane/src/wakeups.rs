//! Wake-ups across servers. An agent long-polls one server for its host's
//! desired state, but with several servers on one PostgreSQL the change
//! that concerns it may be made through another. So on PostgreSQL every
//! bump of a generation ([`crate::Ctx::bump_host`], [`crate::Ctx::bump`])
//! is also a `NOTIFY`, and every server LISTENs and bumps its own
//! generations for the changes the others made. On SQLite (one server)
//! this is all skipped.
//!
//! A notification is `"<server> <host>"`, or `"<server> *"` for every
//! host; a server ignores its own. When the listening connection breaks,
//! notifications may have been missed, so the server wakes every agent
//! once (they fetch again and lose nothing) and reconnects.

use crate::store::Backend;
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

/// The PostgreSQL channel the servers notify on.
pub const CHANNEL: &str = "nubo_desired";

/// What a notification says: which server sent it and which host it concerns.
#[derive(Debug, PartialEq)]
pub enum Wake<'a> {
    Host(&'a str),
    Every,
}

/// The payload of a notification from `server` about `wake`.
pub fn payload(server: &str, wake: &Wake<'_>) -> String {
    match wake {
        Wake::Host(h) => format!("{server} {h}"),
        Wake::Every => format!("{server} *"),
    }
}

/// The sender and the wake of a payload; `None` for one not of this form.
pub fn parse(payload: &str) -> Option<(&str, Wake<'_>)> {
    let (server, what) = payload.split_once(' ')?;
    Some((server, if what == "*" { Wake::Every } else { Wake::Host(what) }))
}

/// Tells the other servers (on PostgreSQL), without waiting. Called after
/// the change is committed, so a woken agent reads it.
pub fn notify(ctx: &Ctx, wake: Wake<'_>) {
    if ctx.store.backend() != Backend::Postgres {
        return;
    }
    // Outside a runtime (a unit test's synchronous code) nobody listens.
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let pool = ctx.store.pool.clone();
    let text = payload(&ctx.server_id, &wake);
    rt.spawn(async move {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&text).execute(&pool).await {
            // The other servers' agents then see the change at their next
            // long-poll timeout instead of at once.
            tracing::warn!(error = %e, "cannot notify the other servers of a desired-state change");
        }
    });
}

/// Listens for the other servers' changes until the process ends (on
/// PostgreSQL; returns at once on SQLite).
pub async fn listen(ctx: Arc<Ctx>) {
    let Some(url) = ctx.config.database.clone().filter(|_| ctx.store.backend() == Backend::Postgres) else {
        return;
    };
    let mut first = true;
    loop {
        let Err(e) = listen_once(&ctx, &url, &mut first).await;
        tracing::warn!(error = %e, "lost the notifications of the other servers; reconnecting");
        // Whatever was missed meanwhile: every agent fetches again.
        ctx.bump_local(Wake::Every);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(ctx: &Ctx, url: &str, first: &mut bool) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    if *first {
        tracing::info!(server = %ctx.server_id, "listening for the other servers' changes");
        *first = false;
    } else {
        tracing::info!("listening for the other servers' changes again");
        ctx.bump_local(Wake::Every);
    }
    loop {
        let n = listener.recv().await?;
        match parse(n.payload()) {
            Some((server, _)) if server == ctx.server_id => {}
            Some((_, wake)) => ctx.bump_local(wake),
            None => tracing::warn!(payload = n.payload(), "ignored a notification not of the form '<server> <host>'"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse(&payload("s1", &Wake::Host("h-1"))), Some(("s1", Wake::Host("h-1"))));
        assert_eq!(parse(&payload("s1", &Wake::Every)), Some(("s1", Wake::Every)));
        assert_eq!(parse("garbage"), None);
    }
}
