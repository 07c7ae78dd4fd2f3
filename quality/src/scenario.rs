//! Labelled scenarios built from the real captures at run time: benign *bases* (an office and an
//! internet-facing server, each re-addressed behind NAT and laid out over consecutive days) and
//! attack *episodes* spliced into them (the real NjRAT C2 of capture 001, the real RAT upload of
//! capture 003, the labelled Slips captures, and poisoning attempts built on top of them).

use std::collections::HashSet;

use anyhow::{bail, Result};
use egresswatch_tools::replay::presets::Format;
use serde_json::json;

use crate::data::{Data, Flow};
use crate::score::EpisodeId;

/// One day, in ms.
pub const DAY_MS: i64 = 86_400_000;
/// One hour, in ms.
pub const HOUR_MS: i64 = 3_600_000;

/// One event of a scenario: its time, its ECS line, and its episode if it is an attack event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// The ECS event as one JSON line.
    pub line: String,
    /// The episode of an attack event.
    pub episode: Option<EpisodeId>,
}

impl Event {
    fn of(flow: &Flow, episode: Option<EpisodeId>) -> Event {
        Event {
            time_ms: flow.time_ms,
            line: flow.event.to_string(),
            episode,
        }
    }
}

/// Benign traffic over consecutive days.
#[derive(Debug, Clone)]
pub struct Base {
    /// Short name (`office`, `server`).
    pub name: &'static str,
    /// What it is made of, for the report.
    pub about: String,
    /// Events in time order.
    pub events: Vec<Event>,
    /// Midnight (UTC) of the first day.
    pub day0_ms: i64,
    /// Days laid out.
    pub days: usize,
    /// From when each monitored host is the one active: (time, private address).
    hosts: Vec<(i64, String)>,
    /// Every destination address of the base, so synthetic attacks pick unseen ones.
    pub destinations: HashSet<String>,
}

impl Base {
    /// The monitored host active at `time_ms` (the one an attack is attributed to).
    pub fn host_at(&self, time_ms: i64) -> &str {
        self.hosts
            .iter()
            .rev()
            .find(|(from, _)| *from <= time_ms)
            .or(self.hosts.first())
            .map_or("192.168.10.1", |(_, h)| h.as_str())
    }

    /// Time of `hour` o'clock (UTC) on day `day`.
    pub fn at(&self, day: usize, hour: f64) -> i64 {
        self.day0_ms + day as i64 * DAY_MS + (hour * HOUR_MS as f64) as i64
    }

    /// Last event time.
    pub fn end_ms(&self) -> i64 {
        self.events.last().map_or(self.day0_ms, |e| e.time_ms)
    }

    fn new(name: &'static str, about: String, day0_ms: i64, days: usize) -> Base {
        Base {
            name,
            about,
            events: Vec::new(),
            day0_ms,
            days,
            hosts: Vec::new(),
            destinations: HashSet::new(),
        }
    }

    fn push(&mut self, flow: &Flow) {
        if let Some(d) = flow.str_at("destination.ip") {
            if !self.destinations.contains(d) {
                self.destinations.insert(d.to_owned());
            }
        }
        self.events.push(Event::of(flow, None));
    }

    fn finish(mut self) -> Base {
        self.events.sort_by_key(|e| e.time_ms);
        self.hosts.sort_by_key(|h| h.0);
        self
    }
}

/// 2024-01-01 (a Monday), where the office's first day is laid.
const OFFICE_DAY0: i64 = 19_723;

/// The benign office: the four Stratosphere workstation days (CTU-Normal 40, 42, 43, 44: captures
/// 008, 010, 011, 012), one a day in turn for `days` days, each workstation re-addressed from its
/// public CTU address to a private one behind NAT; a capture keeps its time of day.
pub fn office(data: &Data, days: usize) -> Result<Base> {
    const CAPTURES: [(&str, &str, &str); 4] = [
        (
            "008-zeek-mixed/data/conn.log.labeled",
            "147.32.81.167",
            "192.168.10.8",
        ),
        (
            "010-zeek-mixed/data/conn.log.labeled",
            "147.32.83.234",
            "192.168.10.10",
        ),
        (
            "011-zeek-mixed/data/conn.log.labeled",
            "147.32.83.165",
            "192.168.10.11",
        ),
        (
            "012-zeek-mixed/data/conn.log.labeled",
            "147.32.83.161",
            "192.168.10.12",
        ),
    ];
    let captures: Vec<Vec<Flow>> = CAPTURES
        .iter()
        .map(|(rel, _, _)| data.stratosphere(rel))
        .collect::<Result<_>>()?;
    let mut base = Base::new(
        "office",
        format!(
            "office: Stratosphere 008, 010, 011, 012 in turn, {days} days, workstations re-addressed \
             to 192.168.10.x"
        ),
        OFFICE_DAY0 * DAY_MS,
        days,
    );
    for day in 0..days {
        let c = day % CAPTURES.len();
        let (_, public, private) = CAPTURES[c];
        let flows = &captures[c];
        let first = flows[0].time_ms;
        let shift = (OFFICE_DAY0 + day as i64 - first.div_euclid(DAY_MS)) * DAY_MS;
        base.hosts.push((first + shift, private.to_owned()));
        for f in flows {
            base.push(&f.moved(shift, Some((public, private))));
        }
    }
    Ok(base.finish())
}

/// The benign internet-facing server: RITA's three days of a DigitalOcean host (2024-04-19 to
/// 21), re-addressed to 10.20.0.1 behind NAT, repeated every three days for `days` days.
pub fn server(data: &Data, days: usize) -> Result<Base> {
    const PUBLIC: &str = "64.225.56.201";
    const PRIVATE: &str = "10.20.0.1";
    let flows = data.rita()?;
    let day0 = (flows[0].time_ms + HOUR_MS).div_euclid(DAY_MS) * DAY_MS;
    let mut base = Base::new(
        "server",
        format!("server: RITA's 3 days of 64.225.56.201 repeated, {days} days, re-addressed to {PRIVATE}"),
        day0,
        days,
    );
    base.hosts.push((i64::MIN, PRIVATE.to_owned()));
    let end = day0 + days as i64 * DAY_MS;
    for cycle in 0..days.div_ceil(3) {
        let shift = cycle as i64 * 3 * DAY_MS;
        for f in &flows {
            if f.time_ms + shift < end {
                base.push(&f.moved(shift, Some((PUBLIC, PRIVATE))));
            }
        }
    }
    Ok(base.finish())
}

/// One labelled attack spliced into a base.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Id carried by its events.
    pub id: EpisodeId,
    /// What it is (`c2`, `upload`, `decoys`, ...).
    pub kind: &'static str,
    /// Whether a detector is expected to catch it (decoys and poison flows are not the point).
    pub must_catch: bool,
    /// Time of its first event.
    pub start_ms: i64,
    /// Its events, in time order.
    pub events: Vec<Event>,
}

/// The real attacks, read once.
#[derive(Debug, Clone)]
pub struct Attacks {
    /// NjRAT C2 (capture 001, flows labelled Malicious: 237 SYN flows to 41.108.179.197:1177,
    /// Algeria, and 7 to Google/AWS), from 192.168.1.115.
    pub c2: Vec<Flow>,
    /// AndroidTester RAT upload (capture 003, the 12 flows to port 1337 of 147.32.83.234: 43.8 MB
    /// of IP bytes), from 10.8.0.61.
    pub upload: Vec<Flow>,
    /// RemcosRAT (Slips test18, CTU-SME-11, flows labelled Malicious: 719 SYN attempts to
    /// 66.63.168.35:5888, United States), from 192.168.1.107.
    pub remcos: Vec<Flow>,
    /// Simda (Slips test5, flows labelled `flow=Malware*`: DGA HTTP and DNS), from 10.0.2.15.
    pub simda: Vec<Flow>,
}

impl Attacks {
    /// Reads the attack flows from their captures.
    pub fn read(data: &Data) -> Result<Attacks> {
        let labelled = |flows: Vec<Flow>, pred: &dyn Fn(&str) -> bool| -> Vec<Flow> {
            flows
                .into_iter()
                .filter(|f| f.label().is_some_and(pred))
                .collect()
        };
        let c2 = labelled(
            data.stratosphere("001-zeek-scenario-malicious/labeled-conn.log")?,
            &|l| l == "Malicious",
        );
        let upload: Vec<Flow> = data
            .stratosphere("003-zeek-scenario-malicious/conn.log")?
            .into_iter()
            .filter(|f| f.num_at("destination.port") == Some(1337.0))
            .collect();
        let remcos = labelled(
            data.slips(
                "test18-malicious-ctu-sme-11-win/zeek-labeled/conn.log.labeled",
                Format::Zeek,
            )?,
            &|l| l == "Malicious",
        );
        let simda = labelled(data.slips("test5-mixed.binetflow", Format::Argus)?, &|l| {
            l.starts_with("flow=Malware")
        });
        for (name, flows, expected) in [
            ("001 C2", &c2, 244),
            ("003 upload", &upload, 12),
            ("test18 RemcosRAT", &remcos, 719),
            ("test5 Simda", &simda, 277),
        ] {
            if flows.len() != expected {
                bail!(
                    "{name}: {} attack flows read, expected {expected}",
                    flows.len()
                );
            }
        }
        Ok(Attacks {
            c2,
            upload,
            remcos,
            simda,
        })
    }
}

/// An attack capture spliced into `base` from `start_ms`: moved in time so that its first flow
/// is at `start_ms`, its infected host re-addressed to the base's host active then, and marked
/// outbound (the captures' own direction columns describe their lab, not the office).
pub fn splice(
    base: &Base,
    flows: &[Flow],
    infected: &str,
    start_ms: i64,
    id: EpisodeId,
    kind: &'static str,
) -> Episode {
    let host = base.host_at(start_ms).to_owned();
    let shift = start_ms - flows[0].time_ms;
    let events = flows
        .iter()
        .map(|f| {
            let mut moved = f.moved(shift, Some((infected, &host)));
            if moved.str_at("source.ip") == Some(host.as_str()) {
                egresswatch_common::path::set(
                    &mut moved.event,
                    "network.direction",
                    "outbound".into(),
                );
            }
            Event::of(&moved, Some(id))
        })
        .collect();
    Episode {
        id,
        kind,
        must_catch: true,
        start_ms,
        events,
    }
}

/// A synthetic outbound flow from `source` to `destination` with `bytes` sent.
pub fn flow_event(
    time_ms: i64,
    source: &str,
    destination: &str,
    port: u16,
    bytes: f64,
    id: EpisodeId,
) -> Event {
    let event = json!({
        "@timestamp": egresswatch_common::time::format_rfc3339_ms(time_ms),
        "event": {"kind": "event", "category": ["network"], "type": ["connection"]},
        "source": {"ip": source, "address": source, "port": 49_152, "bytes": bytes},
        "destination": {"ip": destination, "address": destination, "port": port},
        "network": {"transport": "tcp", "direction": "outbound"},
    });
    Event {
        time_ms,
        line: event.to_string(),
        episode: Some(id),
    }
}

/// Merges a base with episodes, in time order (base first on ties).
pub fn merged<'a>(base: &'a Base, episodes: &'a [Episode]) -> Vec<&'a Event> {
    let mut all: Vec<&Event> = base.events.iter().collect();
    for ep in episodes {
        all.extend(ep.events.iter());
    }
    all.sort_by_key(|e| e.time_ms);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(time_ms: i64, src: &str, dst: &str) -> Flow {
        Flow {
            time_ms,
            event: json!({"@timestamp": "x", "source": {"ip": src, "address": src},
                          "destination": {"ip": dst, "address": dst}}),
        }
    }

    #[test]
    fn splicing_moves_readdresses_and_labels_every_flow() {
        let mut base = Base::new("t", String::new(), 10 * DAY_MS, 2);
        base.hosts = vec![
            (0, "192.168.10.8".into()),
            (11 * DAY_MS, "192.168.10.10".into()),
        ];
        base.events.push(Event::of(
            &flow(10 * DAY_MS, "192.168.10.8", "8.8.8.8"),
            None,
        ));
        let attack = [
            flow(5_000, "10.8.0.61", "41.108.179.197"),
            flow(65_000, "10.8.0.61", "41.108.179.197"),
        ];
        let start = base.at(1, 10.0);
        let ep = splice(&base, &attack, "10.8.0.61", start, 3, "c2");
        assert_eq!(ep.events.len(), 2);
        assert_eq!(ep.events[0].time_ms, start);
        assert_eq!(ep.events[1].time_ms, start + 60_000);
        let e: serde_json::Value = serde_json::from_str(&ep.events[1].line).unwrap();
        assert_eq!(e["source"]["ip"], "192.168.10.10");
        assert_eq!(e["source"]["address"], "192.168.10.10");
        assert_eq!(e["destination"]["ip"], "41.108.179.197");
        assert_eq!(e["network"]["direction"], "outbound");
        assert_eq!(
            e["@timestamp"],
            egresswatch_common::time::format_rfc3339_ms(start + 60_000)
        );
        assert!(ep.events.iter().all(|e| e.episode == Some(3)));
        let all = merged(&base, std::slice::from_ref(&ep));
        assert_eq!(all.len(), 3);
        assert!(all.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        assert_eq!(all[0].episode, None);
    }
}
