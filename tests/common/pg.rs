//! PostgreSQL for the tests: a fresh database per test, dropped when the test is done, and the
//! rule for when PostgreSQL is not there.
//!
//! `STREAMHUB_TEST_POSTGRES_URL` names the admin connection (default
//! [`DEFAULT_POSTGRES_URL`]); every test database is created and dropped through it. When it
//! cannot be reached, the PostgreSQL tests print one `skipped: …` line (once per test binary, past
//! the harness's output capture, so a plain `cargo test` shows it) and pass, unless
//! `STREAMHUB_REQUIRE_POSTGRES=1` (CI), which makes that a failure.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::time::Duration;
use streamhub::secret::redact_url;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long the reachability check and each admin connection may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The admin URL the tests create their databases through.
pub fn admin_url() -> String {
    std::env::var("STREAMHUB_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string())
}

/// Whether an unreachable PostgreSQL fails the test instead of skipping it.
pub fn postgres_required() -> bool {
    std::env::var("STREAMHUB_REQUIRE_POSTGRES").is_ok_and(|v| v.trim() == "1")
}

async fn admin_connection(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_LIMIT, PgConnection::connect(url)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err(format!("no connection within {CONNECT_LIMIT:?}")),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether PostgreSQL answers at [`admin_url`]: `Err` carries why not. Checked once per test
/// binary; every test that asks afterwards gets the same answer at once.
pub async fn reachable() -> Result<(), String> {
    static ANSWER: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    ANSWER
        .get_or_init(|| async {
            let mut connection = admin_connection(&admin_url()).await?;
            sqlx::query("SELECT 1")
                .execute(&mut connection)
                .await
                .map_err(|e| one_line(&e.to_string()))?;
            let _ = connection.close().await;
            Ok::<(), String>(())
        })
        .await
        .clone()
}

/// The skip rule: `true` when PostgreSQL is reachable. Otherwise prints one `skipped:` line to
/// the terminal (once per test binary) and answers `false` (the test returns and passes), or panics when
/// `STREAMHUB_REQUIRE_POSTGRES=1`. Never prints a password.
pub async fn postgres_ready() -> bool {
    match reachable().await {
        Ok(()) => true,
        Err(reason) => {
            let url = redact_url(&admin_url());
            if postgres_required() {
                panic!(
                    "PostgreSQL unreachable at {url} ({reason}) and STREAMHUB_REQUIRE_POSTGRES=1"
                );
            }
            // Once per test binary, so a run without PostgreSQL says so once per file.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                super::say_skipped(&format!(
                    "this file's PostgreSQL tests: PostgreSQL unreachable at {url} ({reason}); \
                     set STREAMHUB_TEST_POSTGRES_URL"
                ))
            });
            false
        }
    }
}

/// `url` with its database name replaced by `database` (user, password, host, port and query
/// stay).
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = authority_start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after_path = url[authority_end..]
        .find(['?', '#'])
        .map_or(url.len(), |i| authority_end + i);
    format!("{}/{database}{}", &url[..authority_end], &url[after_path..])
}

/// A database of its own for one test: `streamhub_t_<random hex>`, created through the admin
/// connection and dropped (`WITH (FORCE)`, so connections still open do not keep it) when the
/// last handle goes.
pub struct TestDb {
    name: String,
    url: String,
    admin: String,
}

impl TestDb {
    /// Creates a fresh database; panics when PostgreSQL refuses. Callers that may run without
    /// PostgreSQL check [`postgres_ready`] first (or use [`TestDb::for_test`]).
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("streamhub_t_{}", uuid::Uuid::new_v4().simple());
        let mut connection = admin_connection(&admin).await.unwrap_or_else(|reason| {
            panic!(
                "connect to PostgreSQL at {} to create a test database: {reason}",
                redact_url(&admin)
            )
        });
        // The name is `streamhub_t_` and hex digits of our own making: nothing to inject.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = connection.close().await;
        let url = with_database(&admin, &name);
        TestDb { name, url, admin }
    }

    /// The skip rule, then a fresh database: `None` when the test should return (skipped).
    pub async fn for_test() -> Option<TestDb> {
        if postgres_ready().await {
            Some(Self::create().await)
        } else {
            None
        }
    }

    /// The database's URL, for `DATABASE_URL` (it may carry the admin URL's password: never
    /// print it; see [`redact_url`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection of the test's own to the database, for looking at what the server stored.
    pub async fn connect(&self) -> PgConnection {
        admin_connection(&self.url)
            .await
            .unwrap_or_else(|reason| panic!("connect to {}: {reason}", self.name))
    }
}

async fn drop_database(admin: &str, name: &str) -> Result<(), String> {
    let mut connection = admin_connection(admin).await?;
    // `name` is a TestDb name: `streamhub_t_` and hex digits.
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut connection)
    .await;
    let _ = connection.close().await;
    dropped.map(|_| ()).map_err(|e| one_line(&e.to_string()))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside (or after) a test's runtime: drop the database
        // from a thread of its own with a runtime of its own.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(drop_database(&admin, &name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => eprintln!("could not drop test database {}: {reason}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}
