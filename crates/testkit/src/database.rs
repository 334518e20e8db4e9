//! A fresh database per test.

use std::sync::mpsc;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How long dropping a database may hold up the test's thread.
const DROP_WAIT: Duration = Duration::from_secs(3);
/// Test databases older than this are left-overs of runs that ended before dropping them.
const LEFT_OVER_AFTER: Duration = Duration::from_secs(3600);

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("HALLMARK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://hallmark:hallmark@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test and is dropped (with any connections still open to it)
/// when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `test_<label>_<UUIDv7>` (the id says when, for [`drop_left_overs`]).
    pub async fn create(label: &str) -> Self {
        let name = format!("test_{label}_{}", Uuid::now_v7().simple());
        let server = server_url();
        let mut conn = PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {server}: {e}; run scripts/test, which starts it")
        });
        static SWEPT: OnceCell<()> = OnceCell::const_new();
        SWEPT.get_or_init(|| drop_left_overs(&mut conn)).await;
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("cannot create a test database");
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("HALLMARK_TEST_DATABASE_URL must end with a database name"),
        };
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn connect(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("cannot connect to the test database")
    }
}

/// When the test database `name` was created, from the UUIDv7 in its name.
fn created_at(name: &str) -> Option<std::time::SystemTime> {
    let id = Uuid::try_parse(name.rsplit('_').next()?).ok()?;
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    Some(std::time::UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Drops the test databases of earlier runs that ended before they could (once per process).
async fn drop_left_overs(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar(r"SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let now = std::time::SystemTime::now();
    for name in names {
        let old = created_at(&name)
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|age| age > LEFT_OVER_AFTER);
        if old {
            let _ = conn
                .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                .await;
        }
    }
}

impl Drop for TestDatabase {
    /// Drops the database, with any connections still open to it.
    ///
    /// It waits at most [`DROP_WAIT`]: a connection the test's own runtime was still opening
    /// when the test ended holds `DROP DATABASE … WITH (FORCE)` until the server's
    /// authentication timeout (60 s), because that runtime — blocked right here — never finishes
    /// the handshake. Once the runtime is gone, so are those connections, and the drop finishes
    /// on its own thread; a database whose drop never finished is swept by a later run.
    fn drop(&mut self) {
        let name = self.name.clone();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&server_url()).await {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(DROP_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_databases_name_says_when_it_was_created() {
        let before = std::time::SystemTime::now() - Duration::from_millis(2);
        let name = format!("test_shop_{}", Uuid::now_v7().simple());
        let at = created_at(&name).unwrap();
        assert!(at >= before && at <= std::time::SystemTime::now(), "{name}");
        assert_eq!(created_at("test_shop_not-an-id"), None);
        assert_eq!(created_at("postgres"), None);
    }
}
