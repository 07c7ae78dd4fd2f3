//! The attack variants: how each is spliced into a base, on which days, at what hour.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use crate::data::Flow;
use crate::detect::JobKind;
use crate::scenario;
use crate::scenario::{Attacks, Base, Episode, HOUR_MS};

/// One splice day's result for one detector and episode.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub delay_ms: Option<i64>,
    pub max_score: Option<f64>,
}

/// A way to attack a base, spliced on each day after the relevant job's learning period.
pub struct Variant {
    pub name: String,
    pub about: String,
    /// The job whose learning period decides the splice days.
    pub after: JobKind,
    /// Hour of the day (UTC) of the splice.
    pub hour: f64,
    /// How long before that hour the variant's first event is (decoys before a C2).
    pub lead_ms: i64,
    pub build: Splicer,
}

/// Builds a variant's episodes for a splice day.
type Splicer = Box<dyn Fn(&Base, usize) -> Vec<Episode>>;

/// Public addresses, one per country, found in the GeoIP database: for decoys.
fn country_addresses(geo: &egresswatch_plugin::geo::GeoDb) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in 1u8..=223 {
        for b in (0u8..=255).step_by(4) {
            let ip = IpAddr::from([a, b, 1, 1]);
            if !egresswatch_plugin::net::is_public_destination(ip) {
                continue;
            }
            if let Some(c) = geo.country(ip) {
                out.entry(c.name().to_owned())
                    .or_insert_with(|| ip.to_string());
            }
        }
    }
    out
}

/// A real capture replayed on the splice day at `hour`, from the address of its own infected
/// host (which the base's host at that time stands in for).
fn capture(
    name: &str,
    about: &str,
    after: JobKind,
    hour: f64,
    flows: Vec<Flow>,
    infected: &'static str,
    kind: &'static str,
) -> Variant {
    Variant {
        name: name.into(),
        about: about.into(),
        after,
        hour,
        lead_ms: 0,
        build: Box::new(move |b, d| {
            vec![scenario::splice(
                b,
                &flows,
                infected,
                b.at(d, hour),
                1,
                kind,
            )]
        }),
    }
}

pub fn variants(
    base: &Base,
    attacks: &Attacks,
    geo: &egresswatch_plugin::geo::GeoDb,
    seen_countries: &HashSet<String>,
) -> Vec<Variant> {
    let c2 = attacks.c2.clone();
    let upload = attacks.upload.clone();
    let remcos = attacks.remcos.clone();
    let simda = attacks.simda.clone();
    // Never-seen countries for decoys, in name order; Algeria is the C2's own.
    let decoys: Vec<(String, String)> = country_addresses(geo)
        .into_iter()
        .filter(|(c, _)| !seen_countries.contains(c) && c != "Algeria")
        .collect();
    // Never-seen public destinations for synthetic uploads.
    let fresh: Vec<String> = (1u8..=250)
        .map(|i| format!("185.{i}.77.{i}"))
        .filter(|ip| !base.destinations.contains(ip))
        .take(4)
        .collect();
    let mut v = vec![
        capture(
            "c2-001",
            "The real NjRAT C2 of capture 001 (244 flows labelled Malicious: 237 SYN \
             flows to 41.108.179.197:1177, Algeria, over 50 minutes).",
            JobKind::Rare,
            10.0,
            c2,
            "192.168.1.115",
            "c2",
        ),
        capture(
            "upload-003",
            "The real RAT upload of capture 003 (12 flows to 147.32.83.234:1337, \
             43.8 MB of IP bytes in 40 minutes).",
            JobKind::Bytes,
            14.0,
            upload,
            "10.8.0.61",
            "upload",
        ),
    ];
    let decoy_c2 = attacks.c2.clone();
    for n in [9usize, 20] {
        let picked: Vec<(String, String)> = decoys.iter().take(n).cloned().collect();
        let c2 = decoy_c2.clone();
        v.push(Variant {
            name: format!("decoys-{n}+c2-001"),
            about: format!(
                "Poisoning: {n} never-seen countries ({}...) contacted once each over the 12 h \
                 before the real C2 of capture 001.",
                picked
                    .iter()
                    .take(3)
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            after: JobKind::Rare,
            hour: 10.0,
            lead_ms: 12 * HOUR_MS,
            build: Box::new(move |b, d| {
                let start = b.at(d, 10.0);
                let host = b.host_at(start).to_owned();
                let step = 12 * HOUR_MS / picked.len().max(1) as i64;
                let decoys = Episode {
                    id: 2,
                    kind: "decoys",
                    must_catch: false,
                    start_ms: start - 12 * HOUR_MS,
                    events: picked
                        .iter()
                        .enumerate()
                        .map(|(i, (_, ip))| {
                            scenario::flow_event(
                                start - 12 * HOUR_MS + i as i64 * step,
                                &host,
                                ip,
                                443,
                                2_000.0,
                                2,
                            )
                        })
                        .collect(),
                };
                vec![
                    decoys,
                    scenario::splice(b, &c2, "192.168.1.115", start, 1, "c2"),
                ]
            }),
        });
    }
    for (label, poison_bytes) in [("huge-flow", 10e9), ("forged-flow", 1e15)] {
        let fresh = fresh.clone();
        v.push(Variant {
            name: format!("{label}+uploads"),
            about: format!(
                "Poisoning: one flow of {} to a new IP at 06:00, then a 5 GB upload (one flow) \
                 to another new IP at 12:00 and 3 GB in 15 chunks to a third at 15:00.",
                if poison_bytes > 1e12 {
                    "source.bytes 1e15 (forged)"
                } else {
                    "10 GB"
                }
            ),
            after: JobKind::Bytes,
            hour: 6.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                let host = b.host_at(b.at(d, 6.0)).to_owned();
                let poison = Episode {
                    id: 2,
                    kind: "poison",
                    must_catch: false,
                    start_ms: b.at(d, 6.0),
                    events: vec![scenario::flow_event(
                        b.at(d, 6.0),
                        &host,
                        &fresh[0],
                        443,
                        poison_bytes,
                        2,
                    )],
                };
                let single = Episode {
                    id: 3,
                    kind: "5 GB upload",
                    must_catch: true,
                    start_ms: b.at(d, 12.0),
                    events: vec![scenario::flow_event(
                        b.at(d, 12.0),
                        &host,
                        &fresh[1],
                        443,
                        5e9,
                        3,
                    )],
                };
                let chunks = Episode {
                    id: 4,
                    kind: "3 GB in 15 chunks",
                    must_catch: true,
                    start_ms: b.at(d, 15.0),
                    events: (0..15)
                        .map(|i| {
                            scenario::flow_event(
                                b.at(d, 15.0) + i * 60_000,
                                &host,
                                &fresh[2],
                                443,
                                2e8,
                                4,
                            )
                        })
                        .collect(),
                };
                vec![poison, single, chunks]
            }),
        });
    }
    if base.name == "office" {
        v.push(capture(
            "slips-test18-remcos",
            "Slips test18 (CTU-SME-11): 719 flows labelled Malicious, RemcosRAT SYN \
             attempts to 66.63.168.35:5888 (United States), 8 minutes, no payload.",
            JobKind::Rare,
            11.0,
            remcos,
            "192.168.1.107",
            "remcos",
        ));
        v.push(capture(
            "slips-test5-simda",
            "Slips test5: 277 flows labelled flow=Malware* of the Simda bot (DGA HTTP to \
             US/DE/FR/IE hosts, DNS to 8.8.8.8), 6 minutes.",
            JobKind::Rare,
            12.0,
            simda,
            "10.0.2.15",
            "simda",
        ));
    }
    v
}
