//! The demo's Prometheus recorder, and detection latency read back from what it renders — the
//! same `baton_detection_latency_seconds` summary a user would scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::failure::CliError;

/// How long the rolling summary keeps samples: longer than any demo, so it covers the whole run.
const SUMMARY_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// How often recorded samples are moved into the summaries.
const UPKEEP_EVERY: Duration = Duration::from_millis(500);

/// Installs a Prometheus recorder as the process's global `metrics` recorder.
pub(crate) fn install() -> Result<PrometheusHandle, CliError> {
    let builder = PrometheusBuilder::new()
        .set_quantiles(&[0.5, 0.9, 0.99, 1.0])
        .and_then(|b| b.set_bucket_duration(SUMMARY_WINDOW))
        .map_err(|e| CliError::new(format!("configuring the metrics recorder: {e}")))?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| CliError::new(format!("installing the metrics recorder: {e}")))?;
    // Without its HTTP listener the exporter needs upkeep: it moves recorded samples into the
    // rolling summaries while their time is still current.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// One series of a Prometheus summary: its quantiles and sample count.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SummarySeries {
    /// Quantile → value.
    pub(crate) quantiles: BTreeMap<String, f64>,
    /// Samples observed.
    pub(crate) count: u64,
}

impl SummarySeries {
    /// The value at quantile `q` (as rendered, e.g. `"0.99"`).
    pub(crate) fn quantile(&self, q: &str) -> Option<f64> {
        self.quantiles.get(q).copied()
    }
}

/// The series of summary `metric` in a Prometheus text exposition, keyed by their labels other
/// than `quantile` (e.g. `path="prompt"`).
pub(crate) fn summary(exposition: &str, metric: &str) -> BTreeMap<String, SummarySeries> {
    let mut out: BTreeMap<String, SummarySeries> = BTreeMap::new();
    let count_name = format!("{metric}_count");
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let is_count = name == count_name;
        if name != metric && !is_count {
            continue;
        }
        let mut quantile = None;
        let mut rest = Vec::new();
        for label in split_labels(labels) {
            match label.strip_prefix("quantile=") {
                Some(q) => quantile = Some(q.trim_matches('"').to_owned()),
                None => rest.push(label),
            }
        }
        let entry = out.entry(rest.join(",")).or_default();
        if is_count {
            entry.count = value.parse::<f64>().map(|v| v as u64).unwrap_or(0);
        } else if let (Some(q), Ok(v)) = (quantile, value.parse::<f64>()) {
            entry.quantiles.insert(q, v);
        }
    }
    out
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Formats seconds as milliseconds for the summary.
pub(crate) fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => format!("{:.1} ms", s * 1_000.0),
        None => "n/a".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quantiles_and_counts_per_series() {
        let text = "# TYPE baton_detection_latency_seconds summary\n\
            baton_detection_latency_seconds{path=\"prompt\",quantile=\"0.5\"} 0.002\n\
            baton_detection_latency_seconds{path=\"prompt\",quantile=\"0.99\"} 0.01\n\
            baton_detection_latency_seconds_sum{path=\"prompt\"} 0.5\n\
            baton_detection_latency_seconds_count{path=\"prompt\"} 200\n\
            baton_detection_latency_seconds{path=\"sweep\",quantile=\"0.5\"} 0.7\n\
            baton_other{quantile=\"0.5\"} 9\n";
        let s = summary(text, "baton_detection_latency_seconds");
        assert_eq!(s.len(), 2);
        let prompt = &s["path=\"prompt\""];
        assert_eq!(prompt.quantile("0.5"), Some(0.002));
        assert_eq!(prompt.quantile("0.99"), Some(0.01));
        assert_eq!(prompt.count, 200);
        assert_eq!(s["path=\"sweep\""].quantile("0.5"), Some(0.7));
    }

    #[test]
    fn splits_labels_outside_quotes() {
        assert_eq!(
            split_labels(r#"a="x,y",b="z""#),
            vec![r#"a="x,y""#, r#"b="z""#]
        );
        assert!(split_labels("").is_empty());
    }
}
