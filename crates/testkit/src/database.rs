//! A fresh database per test.

use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

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
    /// Creates `test_<label>_<random>`.
    pub async fn create(label: &str) -> Self {
        let name = format!("test_{label}_{}", Uuid::new_v4().simple());
        let server = server_url();
        let mut conn = PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {server}: {e}; run scripts/test, which starts it")
        });
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

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping runs outside any async context a test may be tearing down.
        let _ = std::thread::spawn(move || {
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
        })
        .join();
    }
}
