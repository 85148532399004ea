//! Throwaway PostgreSQL databases for tests: each test that runs against
//! PostgreSQL (`NUBO_TEST_DATABASE=postgres://...`, an admin connection)
//! gets a database of its own, created empty and dropped when the guard
//! goes, so tests never see each other's rows and can run in parallel.
//! Without the variable, tests use SQLite in their data directory; set
//! but empty or not a PostgreSQL URL, it is an error: a run meant for
//! PostgreSQL that quietly ran on SQLite would pass without testing it.

use crate::store::{redact, StoreError};
use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

/// The environment variable naming the PostgreSQL server tests use.
pub const ENV: &str = "NUBO_TEST_DATABASE";

/// One test's own database; dropped (connections and all) with the guard.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database, for `Config::database`.
    pub url: String,
}

/// Why the tests cannot have the database they were asked for.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    #[error(
        "NUBO_TEST_DATABASE is set but empty: set it to a PostgreSQL admin URL \
         (e.g. \"$(scripts/postgres.sh)\") to run on PostgreSQL, or unset it to run on SQLite"
    )]
    Empty,
    #[error(
        "NUBO_TEST_DATABASE={0} is not a PostgreSQL URL: give postgres://USER:PASSWORD@HOST/postgres \
         (e.g. \"$(scripts/postgres.sh)\"), or unset it to run on SQLite"
    )]
    NotPostgres(String),
    #[error("NUBO_TEST_DATABASE is not valid UTF-8: give postgres://USER:PASSWORD@HOST/postgres, or unset it")]
    NotUnicode,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh database when `NUBO_TEST_DATABASE` is set; none when it is
/// unset; an error when it is set to anything but a PostgreSQL URL.
pub async fn from_env() -> Result<Option<TestDatabase>, TestDbError> {
    match admin_url(std::env::var(ENV))? {
        Some(url) => Ok(Some(TestDatabase::create(&url).await?)),
        None => Ok(None),
    }
}

/// The admin URL the variable's value names: None when unset.
fn admin_url(value: Result<String, std::env::VarError>) -> Result<Option<String>, TestDbError> {
    let url = match value {
        Ok(url) => url,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => return Err(TestDbError::NotUnicode),
    };
    let url = url.trim();
    if url.is_empty() {
        return Err(TestDbError::Empty);
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return Err(TestDbError::NotPostgres(redact(url)));
    }
    Ok(Some(url.to_string()))
}

impl TestDatabase {
    /// Creates an empty database through the server at `admin_url` (any
    /// database there the user may connect to, e.g. `.../postgres`).
    pub async fn create(admin_url: &str) -> Result<Self, StoreError> {
        let name = format!("nubo_test_{:016x}", rand::random::<u64>());
        // C collation: text sorts by bytes, as it does in SQLite, so
        // listings come back in the same order on both.
        admin(
            admin_url,
            &format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"),
        )
        .await?;
        let url = with_database(admin_url, &name)
            .ok_or_else(|| StoreError::BadUrl { url: redact(admin_url), reason: "it has no host part".into() })?;
        Ok(Self { admin_url: admin_url.to_string(), name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime (a test's end) or outside it; a
        // thread with its own runtime works in both.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(admin(&admin_url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test database {}; drop it by hand", self.name);
        }
    }
}

async fn admin(admin_url: &str, sql: &str) -> Result<(), StoreError> {
    sqlx::any::install_default_drivers();
    let connect = |e: sqlx::Error| StoreError::Connect { url: redact(admin_url), cause: e.to_string() };
    let opts = AnyConnectOptions::from_str(admin_url).map_err(connect)?.disable_statement_logging();
    let mut conn = opts.connect().await.map_err(connect)?;
    sqlx::Executor::execute(&mut conn, sql).await.map_err(connect)?;
    conn.close().await.map_err(connect)?;
    Ok(())
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let host = rest.split('/').next()?;
    Some(match query {
        Some(q) => format!("{scheme}://{host}/{name}?{q}"),
        None => format!("{scheme}://{host}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::{admin_url, with_database, TestDbError};
    use std::env::VarError;

    #[test]
    fn unset_means_sqlite_and_a_postgres_url_is_taken() {
        assert_eq!(admin_url(Err(VarError::NotPresent)).unwrap(), None);
        for url in ["postgres://u:p@h/postgres", "postgresql://u@h:5432/postgres", "POSTGRES://u:p@h/db"] {
            assert_eq!(admin_url(Ok(url.into())).unwrap().as_deref(), Some(url));
        }
    }

    #[test]
    fn set_but_empty_or_not_postgres_is_refused() {
        for empty in ["", " ", "\n"] {
            let e = admin_url(Ok(empty.into())).unwrap_err();
            assert!(matches!(e, TestDbError::Empty), "{empty:?}: {e}");
            assert!(e.to_string().contains("unset it to run on SQLite"), "{e}");
        }
        for other in ["sqlite:///tmp/x.db", "mysql://u:secret@h/db", "127.0.0.1:5432", "nubo"] {
            let e = admin_url(Ok(other.into())).unwrap_err();
            assert!(matches!(e, TestDbError::NotPostgres(_)), "{other:?}: {e}");
            assert!(!e.to_string().contains("secret"), "the password is not shown: {e}");
        }
        let not_unicode = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(vec![0x70, 0xff]);
        let e = admin_url(Err(VarError::NotUnicode(not_unicode))).unwrap_err();
        assert!(matches!(e, TestDbError::NotUnicode), "{e}");
    }

    #[test]
    fn replaces_the_database() {
        assert_eq!(with_database("postgres://u:p@h/postgres", "x").as_deref(), Some("postgres://u:p@h/x"));
        assert_eq!(with_database("postgres://u:p@h:5432", "x").as_deref(), Some("postgres://u:p@h:5432/x"));
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x").as_deref(),
            Some("postgres://u:p@h/x?sslmode=disable")
        );
    }
}
