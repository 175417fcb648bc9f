//! PostgreSQL over TLS (`sslmode=require`): baton's connections are encrypted and everything
//! works as over plain TCP; a certificate that cannot be verified is refused under `verify-full`.

use std::time::Duration;

use baton::{Announcement, Step, Workflow};

use crate::support::{Backend, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_use_tls_when_asked_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let raw = db.raw().await;
    let url = format!("{}?sslmode=require", db.url());
    let baton = baton::Baton::builder()
        .database_url(&url)
        .migrate(true)
        .sweep_interval(Duration::from_secs(600))
        .connect()
        .await
        .expect("connecting over TLS (the local server has ssl = on)");
    let id = baton
        .insert_workflow(Workflow::new("tls").step(Step::new("only", "nobody")))
        .await
        .unwrap();
    raw.set_all_states(id, "completed").await;
    assert!(matches!(
        baton.announce(id).await.unwrap(),
        Announcement::Finished(_)
    ));
    let (encrypted, plain) = (
        raw.scalar(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE datname = current_database() AND application_name LIKE 'baton%' AND ssl",
        )
        .await,
        raw.scalar(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE datname = current_database() AND application_name LIKE 'baton%' AND NOT ssl",
        )
        .await,
    );
    assert!(encrypted >= 1, "no encrypted baton connection");
    assert_eq!(plain, 0, "a baton connection without TLS");
    baton.shutdown().await;

    // The local server's certificate is self-signed: full verification refuses it, clearly.
    let err = baton::Baton::builder()
        .database_url(format!("{}?sslmode=verify-full", db.url()))
        .connect()
        .await
        .expect_err("a self-signed certificate passed verify-full");
    assert!(err.to_string().contains("certificate"), "{err}");
}
