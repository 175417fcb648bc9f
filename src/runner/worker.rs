//! The fetch loop and the life of one attempt.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::RunnerConfig;
use super::handler::StepContext;
use crate::baton::Baton;
use crate::error::Error;
use crate::store::{AttemptEnd, FetchedStep, transient_backoff};

/// Database errors in a row after which an attempt's end is left to lease rescue.
const END_RETRIES: u32 = 12;

/// Renews this node's lease every third of it, and relays cancellation requests for the steps
/// it runs. The lease is per node: one write renews every step the node owns.
async fn heartbeat_loop(baton: Baton, stop: CancellationToken) {
    let lease = baton.inner.config.lease;
    loop {
        match baton.inner.store.heartbeat(&baton.inner.node, lease).await {
            Ok(cancelling) => {
                for step in cancelling {
                    baton.inner.running.cancel(&step);
                }
            }
            Err(e) => warn!(error = %e, "runner: renewing this node's lease failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {},
            _ = stop.cancelled() => return,
        }
    }
}

/// Fetches runnable steps while slots are free and runs each on its own task.
pub(crate) async fn fetch_loop(baton: Baton, config: Arc<RunnerConfig>, stop: CancellationToken) {
    // Own a lease before owning any step: a step whose owner has no lease is rescued.
    let mut failures = 0;
    while let Err(e) = baton
        .inner
        .store
        .heartbeat(&baton.inner.node, baton.inner.config.lease)
        .await
    {
        failures += 1;
        warn!(error = %e, "runner: registering this node failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(transient_backoff(failures)) => {},
            _ = stop.cancelled() => return,
        }
    }
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(baton.clone(), stop_heartbeat.clone()));
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut kinds: Vec<String> = config.handlers.keys().cloned().collect();
    kinds.sort();
    failures = 0;
    loop {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = stop.cancelled() => break,
        };
        // Registered before the fetch, so a wake-up during it is not lost.
        let woken = baton.inner.work_available.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let free = slots.available_permits() + 1;
        match baton
            .inner
            .store
            .fetch(
                &baton.inner.node,
                &kinds,
                free as u32,
                baton.inner.config.lease,
            )
            .await
        {
            Ok(steps) if steps.is_empty() => {
                failures = 0;
                drop(first);
                tokio::select! {
                    _ = woken => {},
                    _ = tokio::time::sleep(config.poll_interval) => {},
                    _ = stop.cancelled() => break,
                }
            }
            Ok(steps) => {
                failures = 0;
                let mut permit = Some(first);
                for step in steps {
                    let p = match permit.take() {
                        Some(p) => p,
                        None => slots
                            .clone()
                            .try_acquire_owned()
                            .expect("fetched no more steps than free slots"),
                    };
                    tokio::spawn(run_attempt(baton.clone(), config.clone(), step, p));
                }
            }
            Err(e) => {
                drop(first);
                failures += 1;
                let delay = transient_backoff(failures);
                warn!(error = %e, retry_in = ?delay, "runner: fetching steps failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {},
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    // Graceful stop: in-flight attempts finish and report before the lease is given up.
    let _ = slots.acquire_many(config.concurrency as u32).await;
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    if let Err(e) = baton.inner.store.release_node(&baton.inner.node).await {
        warn!(error = %e, "runner: releasing this node's lease failed; it will expire");
    }
}

/// Runs one attempt, then ends it through the single terminal-transition primitive.
async fn run_attempt(
    baton: Baton,
    config: Arc<RunnerConfig>,
    step: FetchedStep,
    _slot: OwnedSemaphorePermit,
) {
    let Some(handler) = config.handlers.get(&step.kind).cloned() else {
        error!(step = %step.name, kind = %step.kind, "no handler for a fetched step");
        return;
    };
    let cancel = CancellationToken::new();
    let added = Arc::new(Mutex::new(Vec::new()));
    baton
        .inner
        .running
        .start(step.workflow_id, step.id, cancel.clone());
    let ctx = StepContext {
        workflow_id: step.workflow_id,
        step_id: step.id,
        name: step.name.clone(),
        kind: step.kind.clone(),
        args: step.args.clone(),
        attempt: step.attempt,
        max_attempts: step.max_attempts,
        cancel,
        added: added.clone(),
    };
    // On its own task, so a panic is caught as a failed attempt.
    let outcome = tokio::spawn(handler.run(ctx)).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((e.message().to_owned(), e.is_permanent())),
        Err(join) => Some((panic_message(join), false)),
    };
    let end = match failure {
        None => AttemptEnd::Completed {
            added: added
                .lock()
                .map(|mut a| std::mem::take(&mut *a))
                .unwrap_or_default(),
        },
        Some((error, permanent)) if permanent || step.attempt >= step.max_attempts => {
            warn!(workflow_id = %step.workflow_id, step = %step.name, attempt = step.attempt,
                %error, "step failed for good; discarding it");
            AttemptEnd::Discarded { error }
        }
        Some((error, _)) => {
            let delay = config.backoff(step.attempt);
            info!(workflow_id = %step.workflow_id, step = %step.name, attempt = step.attempt,
                %error, retry_in = ?delay, "step attempt failed; will retry");
            AttemptEnd::Retry { error, delay }
        }
    };
    end_attempt(&baton, &step, end, config.detect).await;
}

/// The terminal-transition primitive: a fenced write of how the attempt ended, retried through
/// transient errors, then a `check` for every terminal transition that write committed.
pub(crate) async fn end_attempt(
    baton: &Baton,
    step: &FetchedStep,
    mut end: AttemptEnd,
    detect: bool,
) {
    let mut failures = 0;
    let written = loop {
        match baton.inner.store.end_attempt(step, &end).await {
            Ok(t) => break Some(t),
            Err(e) if e.is_transient() && failures < END_RETRIES => {
                failures += 1;
                let delay = transient_backoff(failures);
                warn!(workflow_id = %step.workflow_id, step = %step.name, error = %e, retry_in = ?delay,
                    "runner: writing a step's end failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(Error::InvalidWorkflow(reason)) => {
                // Only added steps can be invalid here: the attempt fails for good instead.
                warn!(workflow_id = %step.workflow_id, step = %step.name, %reason, "runner: rejected added steps");
                end = AttemptEnd::Discarded {
                    error: format!("invalid added steps: {reason}"),
                };
            }
            Err(e) => {
                error!(workflow_id = %step.workflow_id, step = %step.name, error = %e,
                    "runner: could not write a step's end; its lease will expire and it will be rescued");
                break None;
            }
        }
    };
    // Before the report: detection stops waiting for this step here (see `Running`).
    baton.inner.running.finish(step.workflow_id, step.id);
    let Some(transitions) = written else { return };
    let retry = matches!(end, AttemptEnd::Retry { .. });
    if transitions.is_empty() && !retry {
        debug!(workflow_id = %step.workflow_id, step = %step.name, attempt = step.attempt,
            "stale attempt: the step is no longer ours; its report was ignored");
        if detect {
            // Detection here may have waited for this attempt, whose step ended elsewhere.
            baton.nudge(step.workflow_id).await;
        }
    }
    if detect {
        baton.report(&transitions).await;
    }
    if !transitions.is_empty() || retry {
        baton.inner.work_available.notify_waiters();
    }
}

fn panic_message(err: tokio::task::JoinError) -> String {
    if !err.is_panic() {
        return "handler was cancelled".into();
    }
    let payload = err.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    format!("handler panicked: {text}")
}
