//! Names and defaults every part of egresswatch uses: ECS field names, the anomaly threshold
//! Elastic's rules default to, and the attack kinds the generator labels.

/// ECS field names.
pub mod fields {
    /// The event time.
    pub const TIMESTAMP: &str = "@timestamp";
    /// The destination address: the subject of the bytes job, and where the country comes from.
    pub const DESTINATION_IP: &str = "destination.ip";
    /// The destination port.
    pub const DESTINATION_PORT: &str = "destination.port";
    /// The destination's country name (GeoIP): the subject of the rare-country job.
    pub const DESTINATION_COUNTRY_NAME: &str = "destination.geo.country_name";
    /// The destination's ISO country code (GeoIP).
    pub const DESTINATION_COUNTRY_ISO_CODE: &str = "destination.geo.country_iso_code";
    /// The source address.
    pub const SOURCE_IP: &str = "source.ip";
    /// Bytes the source sent: what the bytes job sums.
    pub const SOURCE_BYTES: &str = "source.bytes";
}

/// The `anomaly_threshold` of a machine-learning rule that names none: Elastic's rules use 75
/// for both of the jobs egresswatch runs, and its rule schema's examples default to it.
pub const DEFAULT_ANOMALY_THRESHOLD: u8 = 75;

/// Labelled attack kinds (`egresswatch generate --labels`, replay's quality table, the quality
/// harness), in report order: a command-and-control beacon, a bulk upload, a slow exfiltration.
pub const ATTACK_KINDS: [&str; 3] = ["c2", "upload", "slow_exfil"];
