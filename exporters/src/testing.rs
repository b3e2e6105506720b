//! Test support: a fresh PostgreSQL database per test (not part of the API).
//!
//! Uses `TALLY_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! when nothing answers there, a private server is started (or reused) under
//! `<CARGO_TARGET_TMPDIR or the temp folder>/tally-test-pg` and left running for
//! later test processes.

use std::path::PathBuf;

use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::postgres::embedded::PrivatePostgres;
use crate::postgres::{connect, migrate};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static ADMIN_URL: OnceCell<String> = OnceCell::const_new();

/// A database `tally_test_<random>` that is dropped (`WITH (FORCE)`) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL of the test database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database. Panics with the reason on failure.
    pub async fn create() -> TestDatabase {
        let admin_url = ADMIN_URL.get_or_init(admin_url).await.clone();
        let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
        let (client, _) = connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("test database server at {admin_url}: {e}"));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating test database {name}: {}",
                    crate::postgres::PgError::from(e)
                )
            });
        TestDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Creates a fresh database and applies the migrations.
    pub async fn migrated() -> TestDatabase {
        let db = TestDatabase::create().await;
        let client = db.client().await;
        migrate(&client)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", db.name));
        db
    }

    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
            .0
    }

    /// A new connection to the server's maintenance database (not this one).
    pub async fn admin_client(&self) -> Client {
        connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server: {e}"))
            .0
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with a runtime of its own.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                match connect(&admin_url).await {
                    Ok((client, _)) => {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        if let Err(e) = client.batch_execute(&sql).await {
                            eprintln!("dropping test database {name}: {e:?}");
                        }
                    }
                    Err(e) => eprintln!("dropping test database {name}: {e}"),
                }
            });
        });
        let _ = dropper.join();
    }
}

async fn admin_url() -> String {
    let url = std::env::var("TALLY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    match connect(&url).await {
        Ok(_) => url,
        Err(error) => {
            let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join("tally-test-pg");
            eprintln!(
                "no PostgreSQL at {url} ({error}); using a private server in {}",
                dir.display()
            );
            let server = PrivatePostgres::start(&dir)
                .await
                .unwrap_or_else(|e| panic!("starting a private PostgreSQL for tests: {e}"));
            server.superuser_url()
        }
    }
}

/// Every `table.column (hits)` of the current schema's base tables whose text,
/// jsonb, text[] or varchar value contains `needle` (a scan of the whole schema,
/// for the erasure tests: an erased value must be nowhere). Panics when the
/// schema cannot be read or holds fewer than 30 such columns (then the scan
/// would prove little).
pub async fn columns_holding(client: &Client, needle: &str) -> Vec<String> {
    let columns = client
        .query(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c \
             JOIN information_schema.tables t USING (table_schema, table_name) \
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
               AND c.data_type IN ('text', 'jsonb', 'ARRAY', 'character varying') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("listing the columns: {e}"));
    assert!(columns.len() > 30, "the scan covers the schema");
    let mut found = Vec::new();
    for column in &columns {
        let (table, name): (String, String) = (column.get(0), column.get(1));
        let hits: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM \"{table}\" WHERE strpos(\"{name}\"::text, $1) > 0"),
                &[&needle],
            )
            .await
            .unwrap_or_else(|e| panic!("scanning {table}.{name}: {e}"))
            .get(0);
        if hits > 0 {
            found.push(format!("{table}.{name} ({hits})"));
        }
    }
    found
}

/// `url` with its database replaced by `database` (URL or key=value form).
fn with_database(url: &str, database: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let query_start = rest.find('?').unwrap_or(rest.len());
        let authority_end = rest[..query_start].find('/').unwrap_or(query_start);
        format!(
            "{}{}/{}{}",
            &url[..rest_start],
            &rest[..authority_end],
            database,
            &rest[query_start..]
        )
    } else {
        format!("{url} dbname={database}")
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(
            with_database("host=h user=u", "x"),
            "host=h user=u dbname=x"
        );
    }
}
