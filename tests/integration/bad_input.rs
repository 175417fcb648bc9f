//! Bad input: invalid workflows write nothing, a database without migrations and a bad URL fail
//! clearly (never showing a password), and names that look like SQL are stored verbatim.

use std::time::Duration;

use baton::{Baton, Error, Outcome, Runner, Step, StepContext, StepError, Topic, Workflow};

use crate::support::{Backend, Raw, Table, both_backends, subscribe};

async fn row_counts(raw: &Raw) -> [i64; 4] {
    [
        raw.count(Table::Workflows).await,
        raw.count(Table::Steps).await,
        raw.count(Table::StepDeps).await,
        raw.count(Table::Completions).await,
    ]
}

both_backends! {
    async fn invalid_workflows_write_nothing(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let invalid = [
            (
                "cycle",
                Workflow::new("cycle")
                    .step(Step::new("a", "k").depends_on(["c"]))
                    .step(Step::new("b", "k").depends_on(["a"]))
                    .step(Step::new("c", "k").depends_on(["b"])),
            ),
            ("self-cycle", Workflow::new("self").step(Step::new("a", "k").depends_on(["a"]))),
            (
                "duplicate",
                Workflow::new("dup").step(Step::new("a", "k")).step(Step::new("a", "k")),
            ),
            (
                "unknown dependency",
                Workflow::new("unknown").step(Step::new("a", "k").depends_on(["ghost"])),
            ),
            ("empty workflow name", Workflow::new("").step(Step::new("a", "k"))),
            ("blank workflow name", Workflow::new("  ")),
            ("empty step name", Workflow::new("w").step(Step::new("", "k"))),
            ("zero attempts", Workflow::new("w").step(Step::new("a", "k").max_attempts(0))),
        ];
        for (what, wf) in invalid {
            let id = wf.id();
            match baton.insert_workflow(wf).await {
                Err(Error::InvalidWorkflow(msg)) => println!("{what}: {msg}"),
                other => panic!("{what}: expected InvalidWorkflow, got {other:?}"),
            }
            assert_eq!(row_counts(&raw).await, [0; 4], "{what} wrote rows");
            assert!(matches!(baton.status(id).await, Err(Error::WorkflowNotFound(_))));
        }

        // A database-level failure rolls back the whole insert: re-inserting the same workflow.
        let wf = Workflow::new("twice")
            .step(Step::new("a", "k"))
            .step(Step::new("b", "k").depends_on(["a"]));
        baton.insert_workflow(wf.clone()).await.unwrap();
        let after_first = row_counts(&raw).await;
        assert_eq!(after_first, [1, 2, 1, 0]);
        let again = baton.insert_workflow(wf).await;
        assert!(matches!(again, Err(Error::Database { .. })), "{again:?}");
        assert_eq!(row_counts(&raw).await, after_first);
        baton.shutdown().await;
    }
}

both_backends! {
    async fn unmigrated_database_and_bad_urls_fail_clearly(db: TestDb) {
        // A fresh database without baton's schema.
        let err = Baton::builder()
            .database_url(db.url())
            .connect()
            .await
            .expect_err("connected to a database without migrations");
        assert!(matches!(err, Error::NotMigrated), "{err:?}");
        assert!(err.to_string().contains("baton migrate"), "{err}");

        // Migrating makes it usable.
        let baton = db.baton().await;
        baton.shutdown().await;
        let baton = Baton::builder().database_url(db.url()).connect().await.unwrap();
        baton.shutdown().await;

        let secret = "hunter2-s3cret";
        let mut bad_urls = vec![
            format!("mysql://app:{secret}@localhost/db"),
            format!("postgres//app:{secret}@localhost/db"),
            format!("app:{secret}@localhost/db"),
            format!("postgres:app:{secret}@localhost/db"),
            format!("postgres://app:{secret}"),
            String::new(),
        ];
        match db.backend() {
            Backend::Postgres => {
                bad_urls.push(format!("postgres://app:{secret}@localhost:notaport/db"));
                bad_urls.push(format!("postgresql://app:{secret}@localhost/db?sslmode=sometimes"));
            }
            Backend::Sqlite => {
                bad_urls.push(format!("sqlite://app:{secret}@x.db?mode=sometimes"));
            }
        }
        for url in bad_urls {
            let err = Baton::builder()
                .database_url(url.clone())
                .connect()
                .await
                .expect_err("connected with an invalid URL");
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(secret), "the password leaked: {shown}");
            println!("{}: {err}", baton::redact_url(&url));
        }
    }
}

both_backends! {
    async fn sql_looking_names_are_stored_verbatim(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let wf_name = "'); DROP TABLE baton_steps; --";
        let ok_name = "x'); DELETE FROM baton_workflows WHERE ('1'='1";
        let bad_name = "\"; DROP TABLE baton_workflow_completions; -- ünïcode 🚀";
        let kind = "k'); DROP TABLE baton_step_deps; --";
        let events = subscribe(&baton, Topic::Name(wf_name.into())).await;
        let runner = Runner::builder()
            .handler(kind, |ctx: StepContext| async move {
                if ctx.name.starts_with('"') {
                    Err(StepError::permanent("fails on purpose"))
                } else {
                    Ok(())
                }
            })
            .start(&baton);
        let wf = Workflow::new(wf_name)
            .step(Step::new(ok_name, kind))
            .step(Step::new(bad_name, kind).depends_on([ok_name]));
        let id = baton.insert_workflow(wf).await.unwrap();

        let event = events.first_of(id, Duration::from_secs(15)).await;
        assert_eq!(event.name, wf_name);
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, vec![bad_name.to_string()]);
        assert_eq!(raw.workflow_name(id).await, wf_name);
        let names: Vec<String> = raw.steps(id).await.into_iter().map(|s| s.0).collect();
        let mut expected = vec![bad_name.to_string(), ok_name.to_string()];
        expected.sort();
        assert_eq!(names, expected);
        let status = baton.status(id).await.unwrap();
        assert_eq!(status.name, wf_name);
        assert_eq!(status.finished.unwrap().failed_steps, vec![bad_name.to_string()]);
        // Every table is still there and holds what it should.
        assert_eq!(row_counts(&raw).await, [1, 2, 1, 1]);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
