//! The directory re-check: at the LDAP settings' refresh interval every
//! LDAP user is read again, so one deleted from the directory, or dropped
//! from every mapped group, loses its roles and credentials within one
//! interval (see `ldap_sync`). Runs on every server, as it always has:
//! the re-check only makes users match the directory, so two servers
//! doing it agree. Without LDAP settings there is no such task.

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::ldap::LdapConfig;
use crate::Ctx;
use std::sync::Arc;

pub struct LdapRefresh {
    cfg: LdapConfig,
}

impl LdapRefresh {
    pub fn of(config: &crate::Config) -> Option<Self> {
        config.ldap.clone().map(|cfg| Self { cfg })
    }
}

impl Task for LdapRefresh {
    fn info(&self) -> Info {
        Info {
            name: "ldap_refresh",
            about: "re-reads every LDAP user; users gone from the directory or its groups lose roles and credentials",
            scope: Scope::Server,
            every: self.cfg.refresh(),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            let round = crate::ldap_sync::refresh_once(ctx, &self.cfg)
                .await
                .map_err(|e| TaskError::new("LDAP re-check stopped, nothing was concluded this round", e))?;
            tracing::debug!(?round, "LDAP re-check done");
            Ok(())
        })
    }
}
