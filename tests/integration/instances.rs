//! Several baton instances in one process on one database ("nodes" in one test).
//!
//! Each instance has its own registry: without the cross-node channel, an event claimed by one
//! instance reaches that instance's subscribers only. With it (Postgres `LISTEN`), other
//! instances hear of the claim too, and every subscriber still gets it exactly once.

use std::time::Duration;

use baton::{Baton, DetectedBy, Step, TerminalState, Topic, Workflow, WorkflowId};

use crate::support::{Backend, Events, Raw, both_backends, holds_for, subscribe};

/// A sweep that never runs during the test: only `check` (on the chosen instance) announces.
const NO_SWEEP: Duration = Duration::from_secs(600);

/// Inserts a one-step workflow through `inserter`, makes its step terminal behind baton's back
/// and reports it through `claimer`, which therefore makes the claim.
async fn claim_through(inserter: &Baton, claimer: &Baton, raw: &Raw, name: &str) -> WorkflowId {
    let wf = Workflow::new(name).step(Step::new("only", "k"));
    let step = wf.steps()[0].id();
    let id = inserter.insert_workflow(wf).await.unwrap();
    raw.set_all_states(id, "completed").await;
    claimer.check(id, step, TerminalState::Completed).await;
    id
}

both_backends! {
    /// Without the cross-node channel, each instance's subscribers hear only its own claims.
    async fn instances_keep_their_own_subscribers(db: TestDb) {
        let connect = || db.builder().sweep_interval(NO_SWEEP).listen(false).connect();
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        assert_ne!(a.node(), b.node());
        let raw = db.raw().await;
        let events_a = subscribe(&a, Topic::All).await;
        let events_b = subscribe(&b, Topic::All).await;

        // Inserted through the other instance: where a workflow was inserted does not matter.
        let by_a = claim_through(&b, &a, &raw, "by-a").await;
        let by_b = claim_through(&a, &b, &raw, "by-b").await;
        let event = events_a.first_of(by_a, Duration::from_secs(10)).await;
        assert_eq!(event.node, *a.node());
        assert_eq!(event.detected_by, DetectedBy::Prompt);
        let event = events_b.first_of(by_b, Duration::from_secs(10)).await;
        assert_eq!(event.node, *b.node());

        holds_for("each instance hears only its own claims", Duration::from_millis(500), || {
            events_a.len() == 1 && events_b.len() == 1
        })
        .await;
        assert_eq!(events_a.count_of(by_b), 0);
        assert_eq!(events_b.count_of(by_a), 0);
        assert_eq!(a.stats().claims_won, 1);
        assert_eq!(b.stats().claims_won, 1);
        // The database still tells either instance about the other's claim.
        let seen_by_b = b.wait_finished(by_a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(seen_by_b.node, *a.node());
        for id in [by_a, by_b] {
            assert_eq!(raw.completions(id).await, 1);
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

both_backends! {
    /// With the default cross-node channel, the claimer's subscribers get its claim once (its
    /// own notification is not a second delivery); on Postgres the other instance's subscribers
    /// get it once too, on SQLite (no channel) never more than once.
    async fn claims_reach_each_subscriber_at_most_once(db: TestDb) {
        let connect = || db.builder().sweep_interval(NO_SWEEP).connect();
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let raw = db.raw().await;
        let events_a = subscribe(&a, Topic::All).await;
        let events_b = subscribe(&b, Topic::All).await;
        let by_name_b = subscribe(&b, Topic::Name("relayed".into())).await;

        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(claim_through(&a, &a, &raw, "relayed").await);
        }
        for id in &ids {
            let event = events_a.first_of(*id, Duration::from_secs(10)).await;
            assert_eq!(event.node, *a.node());
        }
        let heard_by_b = |events: &Events| ids.iter().map(|id| events.count_of(*id)).sum::<usize>();
        if db.backend() == Backend::Postgres {
            for id in &ids {
                let relayed = events_b.first_of(*id, Duration::from_secs(15)).await;
                assert_eq!(relayed, events_a.of(*id)[0]);
                by_name_b.first_of(*id, Duration::from_secs(15)).await;
            }
        }
        holds_for("every subscriber got each claim at most once", Duration::from_millis(700), || {
            ids.iter().all(|id| {
                events_a.count_of(*id) == 1
                    && events_b.count_of(*id) <= 1
                    && by_name_b.count_of(*id) <= 1
            })
        })
        .await;
        println!(
            "{}: the other instance heard {} of {} claims",
            a.backend(),
            heard_by_b(&events_b),
            ids.len()
        );
        assert_eq!(a.stats().claims_won, ids.len() as u64);
        assert_eq!(b.stats().claims_won, 0);
        a.shutdown().await;
        b.shutdown().await;
    }
}
