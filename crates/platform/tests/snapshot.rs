//! `platform::db::snapshot`: statements in one snapshot agree with each other, whatever commits
//! between them, and the snapshot writes nothing.

use testkit::database::TestDatabase;

#[tokio::test]
async fn reads_in_a_snapshot_do_not_see_what_commits_between_them() {
    let database = TestDatabase::create("snapshot").await;
    let pool = database.connect().await;
    sqlx::query("CREATE TABLE moves (n INT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO moves VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    let count = "SELECT count(*) FROM moves";

    let mut snapshot = platform::db::snapshot(&pool).await.unwrap();
    let before: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *snapshot)
        .await
        .unwrap();
    // Another connection moves on meanwhile.
    sqlx::query("INSERT INTO moves VALUES (2)")
        .execute(&pool)
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *snapshot)
        .await
        .unwrap();
    assert_eq!((before, after), (1, 1));
    let write = sqlx::query("INSERT INTO moves VALUES (3)")
        .execute(&mut *snapshot)
        .await;
    assert!(write.is_err(), "a snapshot is read only");
    drop(snapshot);

    let now: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
    assert_eq!(now, 2);
}
