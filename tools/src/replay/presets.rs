//! Input formats for `egresswatch replay`: field-mapping presets that turn flow logs into the ECS
//! JSON events the detector reads.
//!
//! | format | input | events |
//! |---|---|---|
//! | `ecs` | ECS NDJSON | every line, unchanged |
//! | `zeek` | Zeek `conn.log`, TSV with its `#separator`/`#fields` header (extra columns such as RITA's `_node_name` or Stratosphere's `label` are read by name) | every data row |
//! | `zeek-json` | Zeek `conn.log` written as JSON lines | every line |
//! | `suricata` | Suricata EVE JSON | `event_type: "flow"` only; other events are counted and skipped |
//! | `argus` | Argus `binetflow`, comma- or TAB-separated with a header row | every data row |
//!
//! The mappings follow Elastic's own ingest pipelines (see `shared/data/README.md`):
//!
//! - Zeek: `ts` -> `@timestamp`; `id.orig_h`/`id.orig_p` -> `source.ip`/`.address`/`.port`;
//!   `id.resp_h`/`id.resp_p` -> `destination.*`; **`orig_ip_bytes` -> `source.bytes`**,
//!   `orig_pkts` -> `source.packets`, `resp_ip_bytes`/`resp_pkts` -> `destination.*`;
//!   `proto` -> `network.transport`, `service` -> `network.protocol`, `duration` ->
//!   `event.duration` (ns), `uid` -> `event.id`, `zeek.session_id`; `network.direction` from
//!   `local_orig`/`local_resp` (T/F outbound, F/T inbound, T/T internal, F/F external);
//!   `event.type` from `conn_state`.
//! - Suricata: `flow.start` (else `timestamp`) -> `@timestamp`; `src_ip`/`src_port`/`dest_ip`/`dest_port`;
//!   `flow.bytes_toserver` -> `source.bytes`, `flow.bytes_toclient` -> `destination.bytes`,
//!   `flow.pkts_*` -> `*.packets`, `flow.start`/`end` -> `event.start`/`end`, `proto` (lower
//!   case) -> `network.transport`, `app_proto` -> `network.protocol`.
//! - Argus: `StartTime` (`YYYY/MM/DD HH:MM:SS.ffffff`, read as UTC: the files do not say) ->
//!   `@timestamp`; `SrcAddr`/`Sport`/`DstAddr`/`Dport` (hex ports such as `0x0303` read);
//!   `SrcBytes` -> `source.bytes`, `TotBytes - SrcBytes` -> `destination.bytes`, `TotBytes` ->
//!   `network.bytes`, `TotPkts` -> `network.packets`, `Dur` -> `event.duration`.
//!
//! Every converted event also gets `event.kind: "event"`, `event.category: ["network"]`,
//! `event.module`, `event.dataset`, and `network.bytes`/`network.packets` as the sums of both
//! sides when the format has no total. Label columns (`label`, `detailedlabel`, `Label`) are
//! kept under `labels.*` so a person can see them next to a flag; the detector ignores them.
//! Timestamps are written as RFC 3339 UTC; relative timestamps (1970) are kept as they are.
//!
//! Custom mappings (the `replay.mappings` section of the config) change a preset: each entry
//! maps a source field to an ECS field, replacing whatever the preset wrote there; `null` drops
//! the preset's mappings of that source field:
//!
//! ```yaml
//! replay:
//!   mappings:
//!     zeek: { orig_bytes: source.bytes }    # payload bytes instead of IP bytes
//!   constants: { host.name: sensor-1 }      # set on every converted event
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use egresswatch_common::path::{get as get_path, remove as remove_path, set as set_path};
use egresswatch_common::time;

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Detect per file from its first line.
    Auto,
    /// ECS NDJSON, read as it is.
    Ecs,
    /// Zeek conn.log, TSV with a `#fields` header.
    Zeek,
    /// Zeek conn.log as JSON lines.
    ZeekJson,
    /// Suricata EVE JSON (flow events).
    Suricata,
    /// Argus binetflow CSV (or TAB-separated).
    Argus,
}

impl Format {
    /// The name used on the command line and in `replay.mappings`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Ecs => "ecs",
            Format::Zeek => "zeek",
            Format::ZeekJson => "zeek-json",
            Format::Suricata => "suricata",
            Format::Argus => "argus",
        }
    }

    /// The formats that have a field-mapping preset.
    pub const PRESETS: [Format; 4] = [
        Format::Zeek,
        Format::ZeekJson,
        Format::Suricata,
        Format::Argus,
    ];

    /// Guesses the format of a file from its first non-empty line.
    pub fn detect(first_line: &str) -> Option<Format> {
        let line = first_line.trim();
        if line.starts_with('#') {
            return Some(Format::Zeek);
        }
        if line.starts_with('{') {
            let value: Value = serde_json::from_str(line).ok()?;
            let has = |k: &str| value.get(k).is_some();
            return Some(if has("event_type") && has("src_ip") {
                Format::Suricata
            } else if has("id.orig_h") || (has("uid") && has("ts")) {
                Format::ZeekJson
            } else {
                Format::Ecs
            });
        }
        if line.contains("StartTime") && line.contains("SrcAddr") {
            return Some(Format::Argus);
        }
        None
    }
}

/// How a source value becomes an ECS value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    /// A number when it reads as one, else a string.
    Auto,
    /// A string as it is.
    Str,
    /// An IP address (a `%zone` is dropped); anything else is left out.
    Ip,
    /// An integer (decimal, `0x` hex, or a number rounded).
    Int,
    /// RFC 3339, or epoch seconds, -> RFC 3339 UTC with milliseconds.
    Time,
    /// Argus `YYYY/MM/DD HH:MM:SS.ffffff`, taken as UTC -> RFC 3339.
    ArgusTime,
    /// Seconds -> integer nanoseconds.
    DurationNs,
    /// A lower-case string.
    Lower,
}

/// One mapping: source field -> ECS field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldMap {
    /// Source field (a column name, or a JSON key or dotted path).
    pub(crate) from: String,
    /// ECS field path.
    pub(crate) to: String,
    /// Conversion.
    pub(crate) conv: Conv,
}

/// A format's mappings.
#[derive(Debug, Clone)]
pub struct Preset {
    /// The format.
    pub(crate) format: Format,
    /// Field mappings, applied in order.
    pub(crate) fields: Vec<FieldMap>,
    /// ECS fields set on every event.
    pub(crate) constants: BTreeMap<String, Value>,
}

impl Preset {
    /// The built-in preset of a format (`ecs` and `auto` have no mappings).
    pub fn builtin(format: Format) -> Preset {
        use Conv::*;
        let table: &[(&str, &str, Conv)] = match format {
            Format::Zeek | Format::ZeekJson => &[
                ("ts", "@timestamp", Time),
                ("uid", "event.id", Str),
                ("uid", "zeek.session_id", Str),
                ("duration", "event.duration", DurationNs),
                ("id.orig_h", "source.ip", Ip),
                ("id.orig_h", "source.address", Str),
                ("id.orig_p", "source.port", Int),
                ("id.resp_h", "destination.ip", Ip),
                ("id.resp_h", "destination.address", Str),
                ("id.resp_p", "destination.port", Int),
                ("proto", "network.transport", Lower),
                ("service", "network.protocol", Lower),
                ("orig_ip_bytes", "source.bytes", Int),
                ("orig_pkts", "source.packets", Int),
                ("resp_ip_bytes", "destination.bytes", Int),
                ("resp_pkts", "destination.packets", Int),
                ("conn_state", "zeek.connection.state", Str),
                ("history", "zeek.connection.history", Str),
                ("_node_name", "observer.name", Str),
                ("label", "labels.label", Str),
                ("detailedlabel", "labels.detailed_label", Str),
            ],
            Format::Suricata => &[
                ("timestamp", "@timestamp", Time),
                // A flow's own start is its event time when present (EVE's `timestamp` is when
                // the record was written, often the same for a whole flush).
                ("flow.start", "@timestamp", Time),
                ("flow_id", "event.id", Str),
                ("src_ip", "source.ip", Ip),
                ("src_ip", "source.address", Str),
                ("src_port", "source.port", Int),
                ("dest_ip", "destination.ip", Ip),
                ("dest_ip", "destination.address", Str),
                ("dest_port", "destination.port", Int),
                ("proto", "network.transport", Lower),
                ("app_proto", "network.protocol", Lower),
                ("community_id", "network.community_id", Str),
                ("flow.bytes_toserver", "source.bytes", Int),
                ("flow.bytes_toclient", "destination.bytes", Int),
                ("flow.pkts_toserver", "source.packets", Int),
                ("flow.pkts_toclient", "destination.packets", Int),
                ("flow.start", "event.start", Time),
                ("flow.end", "event.end", Time),
                ("host", "observer.name", Str),
            ],
            Format::Argus => &[
                ("StartTime", "@timestamp", ArgusTime),
                ("Dur", "event.duration", DurationNs),
                ("Proto", "network.transport", Lower),
                ("SrcAddr", "source.ip", Ip),
                ("SrcAddr", "source.address", Str),
                ("Sport", "source.port", Int),
                ("DstAddr", "destination.ip", Ip),
                ("DstAddr", "destination.address", Str),
                ("Dport", "destination.port", Int),
                ("SrcBytes", "source.bytes", Int),
                ("SrcPkts", "source.packets", Int),
                ("TotBytes", "network.bytes", Int),
                ("TotPkts", "network.packets", Int),
                ("Label", "labels.label", Str),
            ],
            Format::Ecs | Format::Auto => &[],
        };
        Preset {
            format,
            fields: table
                .iter()
                .map(|&(from, to, conv)| FieldMap {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    conv,
                })
                .collect(),
            constants: BTreeMap::new(),
        }
    }

    /// Applies custom mappings: `source -> Some(ecs)` replaces what the preset wrote to `ecs`
    /// (keeping its conversion); `source -> None` drops the preset's mappings of `source`.
    pub(crate) fn with_custom(mut self, custom: &BTreeMap<String, Option<String>>) -> Preset {
        for (from, to) in custom {
            match to {
                None => self.fields.retain(|f| &f.from != from),
                Some(to) => {
                    let conv = self
                        .fields
                        .iter()
                        .find(|f| &f.to == to)
                        .map_or(Conv::Auto, |f| f.conv);
                    self.fields.retain(|f| &f.to != to);
                    self.fields.push(FieldMap {
                        from: from.clone(),
                        to: to.clone(),
                        conv,
                    });
                }
            }
        }
        self
    }
}

/// What one input line became.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An ECS event and its time in epoch milliseconds (when it has one).
    Event(Value, Option<i64>),
    /// A header, comment or blank line.
    Header,
    /// A record the preset does not convert (a Suricata event other than `flow`).
    Skipped,
}

/// Converts the lines of one file with a preset; keeps the header state of TSV/CSV formats.
#[derive(Debug, Clone)]
pub struct Converter {
    preset: Preset,
    separator: String,
    unset: String,
    empty: String,
    columns: Option<Vec<String>>,
}

impl Converter {
    /// A converter for one file.
    pub fn new(preset: Preset) -> Converter {
        Converter {
            preset,
            separator: "\t".to_owned(),
            unset: "-".to_owned(),
            empty: "(empty)".to_owned(),
            columns: None,
        }
    }

    /// Converts one line (without terminator).
    pub fn convert(&mut self, line: &str) -> Result<Line, String> {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return Ok(Line::Header);
        }
        match self.preset.format {
            Format::Zeek => self.zeek_tsv(line),
            Format::ZeekJson | Format::Suricata => self.json(line),
            Format::Argus => self.argus(line),
            Format::Ecs | Format::Auto => Err("no preset for ECS input".to_owned()),
        }
    }

    fn zeek_tsv(&mut self, line: &str) -> Result<Line, String> {
        // Slips' test10 has a TAB before its first header line.
        let trimmed = line.trim_start_matches(['\t', ' ']);
        if let Some(directive) = trimmed.strip_prefix('#') {
            let (key, value) = match directive.split_once(['\t', ' ']) {
                Some((k, v)) => (k, v),
                None => (directive, ""),
            };
            match key {
                "separator" => self.separator = unescape(value.trim()),
                "unset_field" => self.unset = value.to_owned(),
                "empty_field" => self.empty = value.to_owned(),
                "fields" => {
                    self.columns = Some(
                        value
                            .split(self.separator.as_str())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                _ => {}
            }
            return Ok(Line::Header);
        }
        let columns = self
            .columns
            .as_ref()
            .ok_or("a data line before the `#fields` header")?;
        let values: Vec<&str> = line.split(self.separator.as_str()).collect();
        let (unset, empty) = (self.unset.as_str(), self.empty.as_str());
        let get = |key: &str| -> Option<Cow<'_, str>> {
            let i = columns.iter().position(|c| c == key)?;
            let v = values.get(i)?.trim();
            (v != unset && v != empty && !v.is_empty()).then_some(Cow::Borrowed(v))
        };
        Ok(build(&self.preset, &get))
    }

    fn json(&mut self, line: &str) -> Result<Line, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        if !value.is_object() {
            return Err("not a JSON object".to_owned());
        }
        if self.preset.format == Format::Suricata
            && value.get("event_type").and_then(Value::as_str) != Some("flow")
        {
            return Ok(Line::Skipped);
        }
        let get = |key: &str| -> Option<Cow<'_, str>> {
            match get_path(&value, key)? {
                Value::String(s) if s.is_empty() || s == "-" => None,
                Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                Value::Null => None,
                Value::Bool(b) => Some(Cow::Borrowed(if *b { "T" } else { "F" })),
                other => Some(Cow::Owned(other.to_string())),
            }
        };
        Ok(build(&self.preset, &get))
    }

    fn argus(&mut self, line: &str) -> Result<Line, String> {
        let Some(columns) = &self.columns else {
            let sep = if line.contains('\t') { "\t" } else { "," };
            self.separator = sep.to_owned();
            self.columns = Some(line.split(sep).map(|c| c.trim().to_owned()).collect());
            return Ok(Line::Header);
        };
        let values: Vec<&str> = line.split(self.separator.as_str()).collect();
        let get = |key: &str| -> Option<Cow<'_, str>> {
            let i = columns.iter().position(|c| c == key)?;
            let v = values.get(i)?.trim();
            (!v.is_empty()).then_some(Cow::Borrowed(v))
        };
        Ok(build(&self.preset, &get))
    }
}

/// `\x09` -> TAB, as in Zeek's `#separator \x09`.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        let hex = rest
            .get(i + 2..i + 4)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push_str("\\x");
                rest = &rest[i + 2..];
            }
        }
    }
    out.push_str(rest);
    if out.is_empty() {
        "\t".to_owned()
    } else {
        out
    }
}

type Getter<'a> = dyn Fn(&str) -> Option<Cow<'a, str>> + 'a;

/// Builds the ECS event from a row's values.
fn build<'a>(preset: &Preset, get: &Getter<'a>) -> Line {
    let mut event = Value::Object(Map::new());
    let mut time_ms = None;
    for f in &preset.fields {
        let Some(raw) = get(&f.from) else {
            continue;
        };
        let Some(value) = convert(&raw, f.conv) else {
            continue;
        };
        if f.to == "@timestamp" {
            time_ms = value.as_str().and_then(time::parse_rfc3339_ms);
        }
        set_path(&mut event, &f.to, value);
    }
    derive(preset.format, get, &mut event);
    for (path, value) in &preset.constants {
        set_path(&mut event, path, value.clone());
    }
    Line::Event(event, time_ms)
}

/// Fields computed from several source fields, and the constant ECS categorisation.
fn derive<'a>(format: Format, get: &Getter<'a>, event: &mut Value) {
    let int = |k: &str| get(k).and_then(|v| parse_int(&v));
    let (module, dataset) = match format {
        Format::Zeek | Format::ZeekJson => ("zeek", "zeek.connection"),
        Format::Suricata => ("suricata", "suricata.eve"),
        _ => ("argus", "argus.binetflow"),
    };
    set_path(event, "event.kind", "event".into());
    set_path(
        event,
        "event.category",
        Value::Array(vec!["network".into()]),
    );
    set_path(event, "event.module", module.into());
    set_path(event, "event.dataset", dataset.into());
    match format {
        Format::Zeek | Format::ZeekJson => {
            let kinds: &[&str] = match get("conn_state").as_deref() {
                Some("SF") => &["connection", "start", "end"],
                Some("S0" | "S1" | "S2" | "S3" | "RSTO" | "RSTR") => &["connection", "start"],
                Some("REJ") => &["connection", "start", "denied"],
                _ => &["connection", "info"],
            };
            set_path(
                event,
                "event.type",
                Value::Array(kinds.iter().map(|&k| k.into()).collect()),
            );
            let flag = |k: &str| match get(k).as_deref() {
                Some("T" | "true") => Some(true),
                Some("F" | "false") => Some(false),
                _ => None,
            };
            if let (Some(o), Some(r)) = (flag("local_orig"), flag("local_resp")) {
                let direction = match (o, r) {
                    (true, false) => "outbound",
                    (false, true) => "inbound",
                    (true, true) => "internal",
                    (false, false) => "external",
                };
                set_path(event, "network.direction", direction.into());
            }
        }
        Format::Suricata => {
            set_path(event, "event.type", Value::Array(vec!["connection".into()]));
            if get_path(event, "network.protocol").and_then(Value::as_str) == Some("failed") {
                remove_path(event, "network.protocol");
            }
        }
        _ => {
            set_path(event, "event.type", Value::Array(vec!["connection".into()]));
            if let (Some(total), Some(src)) = (int("TotBytes"), int("SrcBytes")) {
                set_path(
                    event,
                    "destination.bytes",
                    total.saturating_sub(src).max(0).into(),
                );
            }
            if let (Some(total), Some(src)) = (int("TotPkts"), int("SrcPkts")) {
                set_path(
                    event,
                    "destination.packets",
                    total.saturating_sub(src).max(0).into(),
                );
            }
        }
    }
    for (total, a, b) in [
        ("network.bytes", "source.bytes", "destination.bytes"),
        ("network.packets", "source.packets", "destination.packets"),
    ] {
        if get_path(event, total).is_some() {
            continue;
        }
        let x = get_path(event, a).and_then(Value::as_i64);
        let y = get_path(event, b).and_then(Value::as_i64);
        if x.is_some() || y.is_some() {
            // Saturating: two counts near i64::MAX (a forged or broken log) must not overflow.
            set_path(
                event,
                total,
                x.unwrap_or(0).saturating_add(y.unwrap_or(0)).into(),
            );
        }
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok();
    }
    t.parse::<i64>().ok().or_else(|| {
        // Beyond i64 a count is not a count: left out, not clamped to i64::MAX.
        t.parse::<f64>()
            .ok()
            .map(f64::round)
            .filter(|x| x.abs() < 9.2e18)
            .map(|x| x as i64)
    })
}

/// Converts one raw value; `None` leaves the field out.
pub fn convert(raw: &str, conv: Conv) -> Option<Value> {
    let raw = raw.trim();
    match conv {
        Conv::Str => Some(raw.into()),
        Conv::Lower => Some(raw.to_ascii_lowercase().into()),
        Conv::Ip => {
            let addr = raw.split('%').next().unwrap_or(raw);
            addr.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| ip.to_string().into())
        }
        Conv::Int => parse_int(raw).map(Value::from),
        Conv::Auto => {
            if let Ok(i) = raw.parse::<i64>() {
                Some(i.into())
            } else if let Some(n) = raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(Value::Number(n))
            } else {
                Some(raw.into())
            }
        }
        Conv::Time => {
            let ms = time::parse_rfc3339_ms(raw).or_else(|| {
                raw.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(|secs| (secs * 1000.0).round() as i64)
            })?;
            Some(time::format_rfc3339_ms(ms).into())
        }
        Conv::ArgusTime => {
            let iso = raw.replacen('/', "-", 2);
            time::parse_rfc3339_ms(&iso).map(|ms| time::format_rfc3339_ms(ms).into())
        }
        Conv::DurationNs => raw
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|secs| Value::from((secs * 1e9).round() as i64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_paths() {
        assert_eq!(unescape("\\x09"), "\t");
        assert_eq!(unescape(","), ",");
        let v: Value = serde_json::json!({"a": {"b.c": 1}, "x.y": 2});
        assert_eq!(get_path(&v, "a.b.c"), Some(&Value::from(1)));
        assert_eq!(get_path(&v, "x.y"), Some(&Value::from(2)));
        assert_eq!(parse_int("0x0303"), Some(0x303));
        assert_eq!(parse_int("12.6"), Some(13));
        assert_eq!(parse_int("2.4e48"), None);
        assert_eq!(parse_int("NaN"), None);
    }

    /// Found by the `replay_lines` fuzz target: byte counts at or beyond i64::MAX overflowed
    /// the sum into `network.bytes` (a panic in debug builds, a negative total in release).
    #[test]
    fn byte_counts_near_the_integer_limit_do_not_overflow() {
        let line = |toclient: &str| {
            format!(
                r#"{{"timestamp":"2026-11-01T00:00:00.000000+0000","event_type":"flow","src_ip":"10.0.0.5","src_port":4,"dest_ip":"1.1.1.1","dest_port":443,"proto":"TCP","flow":{{"pkts_toserver":3,"pkts_toclient":2,"bytes_toserver":300,"bytes_toclient":{toclient},"start":"2026-11-01T00:00:00.000000+0000","end":"2026-11-01T00:00:05.000000+0000"}}}}"#
            )
        };
        let total = |toclient: &str| {
            let mut converter = Converter::new(Preset::builtin(Format::Suricata));
            match converter.convert(&line(toclient)) {
                Ok(Line::Event(event, _)) => get_path(&event, "network.bytes").cloned(),
                other => panic!("not an event: {other:?}"),
            }
        };
        assert_eq!(total("9223372036854775807"), Some(Value::from(i64::MAX)));
        // Beyond i64: the count is left out, the total is what remains.
        assert_eq!(total(&"4".repeat(49)), Some(Value::from(300)));
        assert_eq!(total("700"), Some(Value::from(1000)));
    }

    #[test]
    fn detection() {
        assert_eq!(Format::detect("\t#separator \\x09"), Some(Format::Zeek));
        assert_eq!(
            Format::detect("StartTime,Dur,Proto,SrcAddr"),
            Some(Format::Argus)
        );
        assert_eq!(
            Format::detect(r#"{"ts":1.0,"uid":"C1","id.orig_h":"10.0.0.1"}"#),
            Some(Format::ZeekJson)
        );
        assert_eq!(
            Format::detect(r#"{"event_type":"flow","src_ip":"10.0.0.1"}"#),
            Some(Format::Suricata)
        );
        assert_eq!(
            Format::detect(r#"{"@timestamp":"2026-01-01T00:00:00Z"}"#),
            Some(Format::Ecs)
        );
        assert_eq!(Format::detect("hello"), None);
    }
}
