//! The detector's configuration: the `detector:` section of the host's config file, which the
//! host hands over as JSON text.

use serde::Deserialize;

/// Configuration of the detector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Directory relative paths in this configuration are resolved against; the host sets it to
    /// the directory of its config file.
    #[serde(default)]
    pub base_dir: Option<std::path::PathBuf>,
}
