//! The fetch loop and the life of one attempt.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::RunnerConfig;
use super::handler::StepContext;
use crate::baton::Baton;
use crate::store::{AttemptEnd, FetchedStep, transient_backoff};

/// Database errors in a row after which an attempt's end is left to lease rescue.
const END_RETRIES: u32 = 12;

/// Fetches runnable steps while slots are free and runs each on its own task.
pub(crate) async fn fetch_loop(baton: Baton, config: Arc<RunnerConfig>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut kinds: Vec<String> = config.handlers.keys().cloned().collect();
    kinds.sort();
    let mut failures = 0;
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
            .fetch(&baton.inner.node, &kinds, free as u32, config.lease)
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
    // Graceful stop: in-flight attempts finish and report before we return.
    let _ = slots.acquire_many(config.concurrency as u32).await;
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
    let ctx = StepContext {
        workflow_id: step.workflow_id,
        step_id: step.id,
        name: step.name.clone(),
        kind: step.kind.clone(),
        args: step.args.clone(),
        attempt: step.attempt,
        max_attempts: step.max_attempts,
    };
    // On its own task, so a panic is caught as a failed attempt.
    let outcome = tokio::spawn(handler.run(ctx)).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((e.message().to_owned(), e.is_permanent())),
        Err(join) => Some((panic_message(join), false)),
    };
    let end = match failure {
        None => AttemptEnd::Completed,
        Some((error, permanent)) if permanent || step.attempt >= step.max_attempts => {
            AttemptEnd::Discarded { error }
        }
        Some((error, _)) => AttemptEnd::Retry {
            error,
            delay: config.backoff(step.attempt),
        },
    };
    end_attempt(&baton, &step, end).await;
}

/// The terminal-transition primitive: a fenced write of how the attempt ended, retried through
/// transient errors, then a `check` for every terminal transition that write committed.
pub(crate) async fn end_attempt(baton: &Baton, step: &FetchedStep, end: AttemptEnd) {
    let mut failures = 0;
    let transitions = loop {
        match baton.inner.store.end_attempt(step, &end).await {
            Ok(t) => break t,
            Err(e) if e.is_transient() && failures < END_RETRIES => {
                failures += 1;
                let delay = transient_backoff(failures);
                warn!(workflow_id = %step.workflow_id, step = %step.name, error = %e, retry_in = ?delay,
                    "runner: writing a step's end failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                error!(workflow_id = %step.workflow_id, step = %step.name, error = %e,
                    "runner: could not write a step's end; its lease will expire and it will be rescued");
                return;
            }
        }
    };
    if transitions.is_empty() && !matches!(end, AttemptEnd::Retry { .. }) {
        debug!(workflow_id = %step.workflow_id, step = %step.name, attempt = step.attempt,
            "stale attempt: the step is no longer ours; its report was ignored");
    }
    baton.report(&transitions).await;
    if !transitions.is_empty() || matches!(end, AttemptEnd::Retry { .. }) {
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
