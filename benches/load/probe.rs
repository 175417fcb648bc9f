//! Instruments: a subscriber actor that timestamps every event it receives, the metrics baton
//! emits (read through a debugging recorder), RSS, and percentiles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton::{Baton, Topic, WorkflowFinished, WorkflowId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

/// What the subscriber received: per workflow, when and what.
#[derive(Default)]
struct Received {
    by_workflow:
        HashMap<WorkflowId, Vec<(Instant, chrono::DateTime<chrono::Utc>, WorkflowFinished)>>,
    total: usize,
}

/// Events received by a [`Collector`] subscribed to every workflow.
#[derive(Clone, Default)]
pub(crate) struct Events {
    inner: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

/// One received event with its arrival times (monotonic and wall clock).
pub(crate) struct Arrival {
    pub(crate) at: Instant,
    pub(crate) wall: chrono::DateTime<chrono::Utc>,
    pub(crate) event: WorkflowFinished,
}

impl Events {
    /// Spawns a collector actor and subscribes it to every workflow of `baton`.
    pub(crate) async fn subscribe(baton: &Baton) -> Events {
        let events = Events::default();
        let (actor, _) = Actor::spawn(None, Collector, events.clone())
            .await
            .expect("spawning the collector");
        baton
            .subscribe(actor, Topic::All)
            .await
            .expect("subscribing the collector");
        events
    }

    fn push(&self, event: WorkflowFinished) {
        let at = Instant::now();
        let wall = chrono::Utc::now();
        {
            let mut r = self.inner.lock().expect("events lock");
            r.total += 1;
            r.by_workflow
                .entry(event.workflow_id)
                .or_default()
                .push((at, wall, event));
        }
        self.arrived.notify_waiters();
    }

    fn first(&self, wf: WorkflowId) -> Option<Arrival> {
        let r = self.inner.lock().expect("events lock");
        r.by_workflow
            .get(&wf)
            .and_then(|v| v.first())
            .map(|(at, wall, e)| Arrival {
                at: *at,
                wall: *wall,
                event: e.clone(),
            })
    }

    /// Waits for the first event of `wf`.
    pub(crate) async fn wait_for(&self, wf: WorkflowId, timeout: Duration) -> Arrival {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(a) = self.first(wf) {
                return a;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("workflow {wf} was not announced within {timeout:?}");
            }
        }
    }

    /// Waits until events for all of `wfs` arrived; returns the latest arrival.
    pub(crate) async fn wait_all(&self, wfs: &[WorkflowId], timeout: Duration) -> Instant {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let r = self.inner.lock().expect("events lock");
                let mut latest = None::<Instant>;
                let mut missing = 0;
                for wf in wfs {
                    match r.by_workflow.get(wf).and_then(|v| v.first()) {
                        Some((at, _, _)) => latest = Some(latest.map_or(*at, |l| l.max(*at))),
                        None => missing += 1,
                    }
                }
                if missing == 0 {
                    return latest.unwrap_or_else(Instant::now);
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!(
                        "{missing} of {} workflows were not announced within {timeout:?}",
                        wfs.len()
                    );
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Asserts exactly one event for each of `wfs`.
    pub(crate) fn assert_exactly_once(&self, wfs: &[WorkflowId], what: &str) {
        let r = self.inner.lock().expect("events lock");
        for wf in wfs {
            let n = r.by_workflow.get(wf).map_or(0, Vec::len);
            assert_eq!(n, 1, "{what}: workflow {wf} was announced {n} times");
        }
    }

    /// How many of `wfs` were first announced by `path`.
    pub(crate) fn count_detected_by(&self, wfs: &[WorkflowId], path: baton::DetectedBy) -> usize {
        let r = self.inner.lock().expect("events lock");
        wfs.iter()
            .filter(|wf| {
                r.by_workflow
                    .get(wf)
                    .and_then(|v| v.first())
                    .is_some_and(|(_, _, e)| e.detected_by == path)
            })
            .count()
    }
}

/// The collector's message.
pub(crate) struct Collected(WorkflowFinished);

impl From<WorkflowFinished> for Collected {
    fn from(e: WorkflowFinished) -> Self {
        Collected(e)
    }
}

/// A subscriber actor that timestamps every event on arrival.
pub(crate) struct Collector;

impl Actor for Collector {
    type Msg = Collected;
    type State = Events;
    type Arguments = Events;

    async fn pre_start(
        &self,
        _myself: ActorRef<Collected>,
        events: Events,
    ) -> Result<Events, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Collected>,
        Collected(event): Collected,
        events: &mut Events,
    ) -> Result<(), ActorProcessingErr> {
        events.push(event);
        Ok(())
    }
}

/// baton's metrics, read back from a process-wide debugging recorder.
pub(crate) struct Metrics {
    snapshotter: Snapshotter,
    /// Histogram samples drained from snapshots, by metric name and labels.
    histograms: Mutex<HashMap<String, Vec<f64>>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// Installs the recorder (once per process).
    pub(crate) fn install() -> &'static Metrics {
        METRICS.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder.install().expect("installing the metrics recorder");
            Metrics {
                snapshotter,
                histograms: Mutex::new(HashMap::new()),
            }
        })
    }

    fn key(name: &str, labels: Vec<String>) -> String {
        if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        }
    }

    /// Snapshots the recorder: keeps histogram samples (or drops them), returns gauges.
    fn snapshot(&self, keep: bool) -> HashMap<String, f64> {
        let mut gauges = HashMap::new();
        let mut hist = self.histograms.lock().expect("metrics lock");
        for (ck, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = ck.into_parts();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = Self::key(key.name(), labels);
            match value {
                DebugValue::Gauge(v) => {
                    gauges.insert(name, v.0);
                }
                DebugValue::Histogram(vs) if keep => {
                    hist.entry(name).or_default().extend(vs.iter().map(|v| v.0));
                }
                DebugValue::Histogram(_) => {}
                DebugValue::Counter(_) => {}
            }
        }
        gauges
    }

    /// Workflow supervisors alive now, in every instance of the process.
    pub(crate) fn live_supervisors(&self) -> f64 {
        self.snapshot(true)
            .get("baton_live_supervisors")
            .copied()
            .unwrap_or(0.0)
    }

    /// Like [`live_supervisors`](Self::live_supervisors), dropping histogram samples (for
    /// long runs that must not accumulate them).
    pub(crate) fn live_supervisors_discarding(&self) -> f64 {
        self.snapshot(false)
            .get("baton_live_supervisors")
            .copied()
            .unwrap_or(0.0)
    }

    /// Drains the samples recorded for a histogram so far (seconds).
    pub(crate) fn take_histogram(&self, name: &str) -> Vec<f64> {
        self.snapshot(true);
        self.histograms
            .lock()
            .expect("metrics lock")
            .remove(name)
            .unwrap_or_default()
    }

    /// Waits until no supervisor is alive (every report was absorbed); returns when that was
    /// first seen.
    pub(crate) async fn wait_no_supervisors(&self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.live_supervisors() <= 0.0 {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "supervisors still alive after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM).
pub(crate) fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident set size now, in MiB.
pub(crate) fn rss_mib() -> f64 {
    proc_status_kb("VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Percentile `p` (0..=100) of `xs`, nearest-rank.
pub(crate) fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(crate) fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The prompt path of one workflow as its tracing spans show it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Trace {
    /// The latest `baton.check` call: the runner makes it right after its terminal-state commit.
    pub(crate) check: Option<Instant>,
    /// The latest `baton.claim` span (detection query and claim transaction): opened, closed.
    pub(crate) claim: Option<(Instant, Option<Instant>)>,
}

/// When `Baton::check` was last called for each workflow, and when its latest claim ran, seen
/// through the `baton.check` and `baton.claim` spans.
///
/// Recording is off unless switched on, so that the spans cost nothing in the other scenarios.
pub(crate) struct CheckTimes {
    on: AtomicBool,
    latest: Mutex<HashMap<String, Trace>>,
}

static CHECK_TIMES: OnceLock<&'static CheckTimes> = OnceLock::new();

impl CheckTimes {
    /// Installs the recording layer as the process's tracing subscriber (once).
    pub(crate) fn install() -> &'static CheckTimes {
        CHECK_TIMES.get_or_init(|| {
            let times: &'static CheckTimes = Box::leak(Box::new(CheckTimes {
                on: AtomicBool::new(false),
                latest: Mutex::new(HashMap::new()),
            }));
            use tracing_subscriber::layer::SubscriberExt as _;
            let subscriber = tracing_subscriber::registry().with(CheckLayer(times));
            tracing::subscriber::set_global_default(subscriber)
                .expect("installing the tracing subscriber");
            times
        })
    }

    pub(crate) fn record(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if !on {
            self.latest.lock().expect("check times lock").clear();
        }
    }

    /// What was recorded for `wf`, forgetting it.
    pub(crate) fn take(&self, wf: WorkflowId) -> Option<Trace> {
        self.latest
            .lock()
            .expect("check times lock")
            .remove(&wf.to_string())
    }

    fn update(&self, wf: &str, f: impl FnOnce(&mut Trace)) {
        f(self
            .latest
            .lock()
            .expect("check times lock")
            .entry(wf.to_owned())
            .or_default());
    }
}

struct CheckLayer(&'static CheckTimes);

const CHECK: &str = "baton.check";
const CLAIM: &str = "baton.claim";

struct WorkflowField(Option<String>);

impl tracing::field::Visit for WorkflowField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "workflow_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The workflow of an open `baton.claim` span, kept in the span's extensions until it closes.
struct ClaimOf(String);

impl<S> tracing_subscriber::Layer<S> for CheckLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if [CHECK, CLAIM].contains(&meta.name()) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        [CHECK, CLAIM].contains(&meta.name()) && self.0.on.load(Ordering::Relaxed)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let now = Instant::now();
        let mut wf = WorkflowField(None);
        attrs.record(&mut wf);
        let Some(wf) = wf.0 else { return };
        if attrs.metadata().name() == CHECK {
            self.0.update(&wf, |t| {
                t.check = Some(t.check.map_or(now, |c| c.max(now)));
            });
        } else {
            self.0.update(&wf, |t| t.claim = Some((now, None)));
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(ClaimOf(wf));
            }
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let now = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        if let Some(ClaimOf(wf)) = span.extensions_mut().remove::<ClaimOf>() {
            self.0.update(&wf, |t| {
                if let Some((_, end)) = &mut t.claim {
                    *end = Some(now);
                }
            });
        }
    }
}
