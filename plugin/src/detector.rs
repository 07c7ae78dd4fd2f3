//! [`Detector`]: events in, verdicts out.

use egresswatch_plugin_api::{ErrorKind, PluginError, Verdict};

use crate::DetectorConfig;

/// The detector: configuration, rules and models, and its counters.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    metrics: Metrics,
}

/// Counters kept by the detector.
#[derive(Debug, Default)]
struct Metrics {
    events: u64,
    unreadable: u64,
}

impl Detector {
    /// Builds a detector from its configuration as JSON text.
    pub fn from_json(text: &str) -> Result<Self, PluginError> {
        let config: DetectorConfig = serde_json::from_str(text).map_err(|e| {
            PluginError::new(ErrorKind::Config, format!("detector configuration: {e}"))
        })?;
        Ok(Self::new(config))
    }

    /// Builds a detector from its configuration.
    pub fn new(config: DetectorConfig) -> Self {
        Detector {
            config,
            metrics: Metrics::default(),
        }
    }

    /// The configuration this detector was built from.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Evaluates one event, a raw line without terminator.
    pub fn evaluate(&mut self, line: &str) -> Verdict {
        self.metrics.events += 1;
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => Verdict::PASS,
            _ => {
                self.metrics.unreadable += 1;
                Verdict::UNREADABLE
            }
        }
    }

    /// Output names the rules route to.
    pub fn routes(&self) -> Vec<String> {
        Vec::new()
    }

    /// A JSON snapshot of the counters.
    pub fn metrics_json(&self) -> String {
        serde_json::json!({
            "events": self.metrics.events,
            "unreadable": self.metrics.unreadable,
        })
        .to_string()
    }

    /// Serialises the model state.
    pub fn save_state(&self) -> Result<Vec<u8>, PluginError> {
        Ok(Vec::new())
    }

    /// Restores the model state.
    pub fn load_state(&mut self, _state: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }
}
