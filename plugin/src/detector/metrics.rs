//! [`Detector::metrics`]: the counters, per job and per rule, as typed metrics.

use egresswatch_plugin_api::{Label, Metric, MetricKind};

use super::Detector;

impl Detector {
    /// The counters, per job and per rule, as typed metrics (the names are ours; the host
    /// renders them without knowing them).
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = MetricSet::default();
        let m = &self.metrics;
        for (name, help, value) in [
            (
                "egresswatch_detector_events_total",
                "Events the detector evaluated.",
                m.events,
            ),
            (
                "egresswatch_detector_unreadable_total",
                "Events that were not JSON objects.",
                m.unreadable,
            ),
            (
                "egresswatch_detector_enriched_total",
                "Events given a destination country from GeoIP.",
                m.enriched,
            ),
            (
                "egresswatch_detector_flagged_total",
                "Events some rule flagged.",
                m.flagged,
            ),
            (
                "egresswatch_detector_suppressed_total",
                "Flagged events that followed an alert of the same rule and key (not new alerts).",
                m.suppressed,
            ),
            (
                "egresswatch_detector_annotate_failures_total",
                "Flagged events that could not take the alert fields.",
                m.annotate_failures,
            ),
        ] {
            out.counter(name, help, &[], value);
        }
        for ((field, reason), value) in &m.annotation_failures {
            out.counter(
                "egresswatch_detector_annotation_failures_total",
                "Parts of alerts that could not be written on the event, by field and reason.",
                &[("field", field), ("reason", reason)],
                *value,
            );
        }
        for job in &self.jobs {
            let status = job.model.status();
            let labels = [("job_id", job.def.id.as_str())];
            out.gauge(
                "egresswatch_job_learning",
                "1 while the job's model is still learning.",
                &labels,
                u64::from(status.learning),
            );
            out.gauge(
                "egresswatch_job_buckets_seen",
                "Buckets with data the job has seen.",
                &labels,
                status.buckets_seen,
            );
            out.gauge(
                "egresswatch_job_learning_buckets",
                "Buckets the job needs before it may flag.",
                &labels,
                status.learning_buckets,
            );
            out.counter(
                "egresswatch_job_scored_total",
                "Events the job scored (since start).",
                &labels,
                job.scored,
            );
            out.gauge(
                "egresswatch_job_tracked_entities",
                "Established entities the job tracks.",
                &labels,
                status.tracked_entities as u64,
            );
            out.gauge(
                "egresswatch_job_probationary_entities",
                "New entities on probation.",
                &labels,
                status.probationary_entities as u64,
            );
            out.gauge(
                "egresswatch_job_state_bytes",
                "Approximate memory of the job's model state.",
                &labels,
                status.approx_bytes as u64,
            );
            out.counter(
                "egresswatch_job_evictions_total",
                "Entities evicted to stay under max_entities.",
                &labels,
                status.evictions,
            );
            out.counter(
                "egresswatch_job_far_late_events_total",
                "Events older than the lateness window (scored, not learned).",
                &labels,
                status.far_late_events,
            );
            out.counter(
                "egresswatch_job_future_events_total",
                "Events whose time was not believed (ahead of the host clock or of the other \
                 events): counted into the current bucket, never moving the model clock.",
                &labels,
                status.future_events,
            );
            for r in &job.rules {
                let labels = [
                    ("job_id", job.def.id.as_str()),
                    ("rule_id", r.rule.rule_id.as_str()),
                    ("rule", r.rule.name.as_str()),
                ];
                out.counter(
                    "egresswatch_rule_flagged_total",
                    "Events each rule flagged (since start).",
                    &labels,
                    r.flagged,
                );
                out.counter(
                    "egresswatch_rule_suppressed_total",
                    "Flagged events that followed an alert of the rule (since start): flagged \
                     minus suppressed is the rule's alerts.",
                    &labels,
                    r.suppressed,
                );
            }
        }
        if let Some(cache) = &self.geo {
            let stats = cache.stats();
            out.counter(
                "egresswatch_geoip_cache_hits_total",
                "GeoIP lookups answered by the cache.",
                &[],
                stats.hits,
            );
            out.counter(
                "egresswatch_geoip_cache_misses_total",
                "GeoIP lookups that read the database.",
                &[],
                stats.misses,
            );
        }
        out.0
    }
}

/// Metrics as they are collected.
#[derive(Default)]
struct MetricSet(Vec<Metric>);

impl MetricSet {
    fn push(
        &mut self,
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.0.push(Metric {
            name: name.into(),
            help: help.into(),
            kind,
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            value: value as f64,
        });
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.push(MetricKind::COUNTER, name, help, labels, value);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.push(MetricKind::GAUGE, name, help, labels, value);
    }
}
