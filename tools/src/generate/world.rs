//! The benign traffic model: hosts, destinations, services, the backup server, shipping agents,
//! business partners, and how an event is written.

use super::calendar::{diurnal, weekday, Config};
use super::countries::{BENIGN_COUNTRIES, COUNTRIES, C_FI, C_MX, C_PL, C_US_RESERVED};
use super::json::{push_ip, push_u64};
use super::rng::{
    cumulative, sorted_times, split_bytes, Rng, STREAM_BACKUP, STREAM_HOUR, STREAM_PARTNER,
    STREAM_WORLD,
};
use super::AttackKind;
use super::{AGENT_SHARE, BUCKET_MS, CATALOG_SIZE};
use egresswatch_common::time::{DAY_MS, HOUR_MS};

/// The kind of service at a destination, which decides ports and byte sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    /// HTTPS only.
    Https,
    /// HTTPS and some plain HTTP.
    Web,
    /// IMAPS.
    Mail,
    /// SSH.
    Ssh,
}

/// A benign destination.
#[derive(Debug, Clone)]
pub(super) struct Dest {
    pub(super) ip: u32,
    pub(super) country: u8,
    pub(super) service: Service,
}

/// A generated connection.
#[derive(Debug, Clone)]
pub(super) struct Ev {
    pub(super) ts: i64,
    pub(super) host: u32,
    pub(super) src_port: u16,
    pub(super) src_bytes: u64,
    pub(super) dst_ip: u32,
    pub(super) dst_port: u16,
    pub(super) dst_bytes: u64,
    pub(super) udp: bool,
    pub(super) country: u8,
    pub(super) process: &'static str,
    pub(super) attack: Option<AttackKind>,
}

#[derive(Debug, Clone)]
pub(super) struct Partner {
    pub(super) country: u8,
    pub(super) ips: [u32; 2],
    pub(super) appears: i64,
    pub(super) hosts: Vec<u32>,
}

/// Benign web processes and their weights.
pub(super) const WEB_PROCESSES: &[(&str, f64)] = &[
    ("chrome.exe", 35.0),
    ("msedge.exe", 20.0),
    ("firefox.exe", 8.0),
    ("Teams.exe", 10.0),
    ("OUTLOOK.EXE", 5.0),
    ("slack.exe", 5.0),
    ("Zoom.exe", 4.0),
    ("OneDrive.exe", 5.0),
    ("Code.exe", 3.0),
    ("svchost.exe", 5.0),
];

/// Everything fixed for a run: hosts, destinations and their popularity, partners.
pub(super) struct World {
    pub(super) host_names: Vec<String>,
    pub(super) host_ips: Vec<u32>,
    pub(super) activity: Vec<f64>,
    pub(super) country_cum: Vec<f64>,
    pub(super) dests_by_country: Vec<Vec<Dest>>,
    pub(super) zipf_cum_by_country: Vec<Vec<f64>>,
    pub(super) process_cum: Vec<f64>,
    pub(super) dns: [u32; 2],
    pub(super) backup_ip: u32,
    pub(super) agent_ips: [u32; 2],
    pub(super) partners: Vec<Partner>,
    /// Index of `backup-01` in the host tables.
    pub(super) backup_host: u32,
}

/// A random address inside a prefix, avoiding .0 and .255 last octets.
pub(super) fn addr_in(rng: &mut Rng, (base, len): (u32, u8)) -> u32 {
    if len >= 32 {
        return base;
    }
    let size = 1u64 << (32 - len);
    loop {
        let ip = base + rng.below(size) as u32;
        if !matches!(ip & 0xff, 0 | 255) {
            return ip;
        }
    }
}

impl World {
    pub(super) fn new(cfg: &Config) -> World {
        let mut rng = Rng::new(cfg.seed, STREAM_WORLD, 0);
        let mut used = std::collections::HashSet::new();
        let mut fresh = |rng: &mut Rng, prefix: (u32, u8)| loop {
            let ip = addr_in(rng, prefix);
            if used.insert(ip) {
                return ip;
            }
        };

        let dns = [
            fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[0]),
            fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[1]),
        ];
        let backup_ip = fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[2]);
        let agent_ips = [
            fresh(&mut rng, COUNTRIES[C_FI].prefixes[0]),
            fresh(&mut rng, COUNTRIES[C_FI].prefixes[0]),
        ];

        let total_weight: f64 = COUNTRIES[..BENIGN_COUNTRIES].iter().map(|c| c.weight).sum();
        let mut dests_by_country = Vec::new();
        let mut zipf_cum_by_country = Vec::new();
        for (ci, c) in COUNTRIES[..BENIGN_COUNTRIES].iter().enumerate() {
            let n = ((CATALOG_SIZE * c.weight / total_weight).round() as usize).max(3);
            let dests: Vec<Dest> = (0..n)
                .map(|_| {
                    let prefix = c.prefixes[rng.below(c.prefixes.len() as u64) as usize];
                    let ip = fresh(&mut rng, prefix);
                    let x = rng.f64();
                    let service = if x < 0.80 {
                        Service::Https
                    } else if x < 0.92 {
                        Service::Web
                    } else if x < 0.97 {
                        Service::Mail
                    } else {
                        Service::Ssh
                    };
                    Dest {
                        ip,
                        country: ci as u8,
                        service,
                    }
                })
                .collect();
            zipf_cum_by_country.push(cumulative((0..n).map(|r| 1.0 / ((r + 1) as f64).powf(1.1))));
            dests_by_country.push(dests);
        }
        let country_cum = cumulative(COUNTRIES[..BENIGN_COUNTRIES].iter().map(|c| c.weight));
        let process_cum = cumulative(WEB_PROCESSES.iter().map(|p| p.1));

        let mut host_names = Vec::new();
        let mut host_ips = Vec::new();
        let mut activity = Vec::new();
        let sigma = 0.5f64;
        for i in 0..cfg.hosts {
            host_names.push(format!("ws-{:04}", i + 1));
            host_ips.push((10 << 24) | (20 << 16) | ((i / 200) << 8) | (i % 200 + 20));
            activity.push((sigma * rng.normal() - sigma * sigma / 2.0).exp());
        }
        let backup_host = cfg.hosts;
        host_names.push("backup-01".to_owned());
        host_ips.push((10 << 24) | (10 << 16) | 5);
        activity.push(0.0);

        let days = cfg.duration() / DAY_MS;
        let first_day = cfg.start.div_euclid(DAY_MS);
        let mut partners = Vec::new();
        for (k, (country, frac)) in [(C_PL, 0.25), (C_MX, 0.5)].into_iter().enumerate() {
            let prefix = COUNTRIES[country].prefixes[0];
            let ips = [fresh(&mut rng, prefix), fresh(&mut rng, prefix)];
            let mut day = first_day + (days as f64 * frac) as i64;
            // Partners are onboarded on a working day.
            while weekday(day * DAY_MS) >= 5 && (day + 1) * DAY_MS < cfg.end {
                day += 1;
            }
            let appears = (day * DAY_MS + rng.range_i(10 * HOUR_MS, 14 * HOUR_MS)).max(cfg.start);
            let n_hosts = 2 + rng.below(2) as u32;
            let hosts = (0..n_hosts)
                .map(|j| (k as u32 * 7 + j * 3 + rng.below(3) as u32) % cfg.hosts)
                .collect();
            partners.push(Partner {
                country: country as u8,
                ips,
                appears,
                hosts,
            });
        }

        World {
            host_names,
            host_ips,
            activity,
            country_cum,
            dests_by_country,
            zipf_cum_by_country,
            process_cum,
            dns,
            backup_ip,
            agent_ips,
            partners,
            backup_host,
        }
    }

    /// Workstation and shipping-agent connections in [lo, hi), hour number `h` of the run.
    pub(super) fn benign_hour(&self, cfg: &Config, h: u64, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let mut rng = Rng::new(cfg.seed, STREAM_HOUR, h);
        let span = (hi - lo) as f64 / HOUR_MS as f64;
        let base = cfg.rate * diurnal(lo) * span;
        for host in 0..cfg.hosts {
            let n = rng.poisson(base * self.activity[host as usize]);
            for _ in 0..n {
                let ts = rng.range_i(lo, hi);
                events.push(self.benign_event(&mut rng, ts, host));
            }
        }
        for host in 0..=cfg.hosts {
            let n = rng.poisson(cfg.rate * AGENT_SHARE * span);
            for _ in 0..n {
                let ts = rng.range_i(lo, hi);
                events.push(Ev {
                    ts,
                    host,
                    src_port: rng.ephemeral_port(),
                    src_bytes: rng.lognormal(30_000.0, 1.0, 500.0, 20e6),
                    dst_ip: self.agent_ips[(host % 2) as usize],
                    dst_port: 443,
                    dst_bytes: rng.lognormal(1_200.0, 0.5, 200.0, 1e6),
                    udp: false,
                    country: C_FI as u8,
                    process: if host % 3 == 0 {
                        "filebeat.exe"
                    } else {
                        "elastic-agent.exe"
                    },
                    attack: None,
                });
            }
        }
    }

    /// One workstation connection.
    pub(super) fn benign_event(&self, rng: &mut Rng, ts: i64, host: u32) -> Ev {
        let src_port = rng.ephemeral_port();
        if rng.f64() < 0.04 {
            return Ev {
                ts,
                host,
                src_port,
                src_bytes: rng.range_i(60, 120) as u64,
                dst_ip: self.dns[rng.below(2) as usize],
                dst_port: 53,
                dst_bytes: rng.range_i(80, 500) as u64,
                udp: true,
                country: C_US_RESERVED as u8,
                process: "svchost.exe",
                attack: None,
            };
        }
        let c = rng.pick(&self.country_cum);
        let d = &self.dests_by_country[c][rng.pick(&self.zipf_cum_by_country[c])];
        let (dst_port, process, src_bytes, dst_bytes) = match d.service {
            Service::Https | Service::Web => {
                let port = if d.service == Service::Web && rng.f64() < 0.3 {
                    80
                } else {
                    443
                };
                let process = WEB_PROCESSES[rng.pick(&self.process_cum)].0;
                let sent = if rng.f64() < 0.02 {
                    rng.lognormal(400_000.0, 1.2, 20_000.0, 30e6)
                } else {
                    rng.lognormal(1_200.0, 1.0, 120.0, 2e6)
                };
                (
                    port,
                    process,
                    sent,
                    rng.lognormal(25_000.0, 1.8, 200.0, 50e6),
                )
            }
            Service::Mail => (
                993,
                "OUTLOOK.EXE",
                rng.lognormal(3_000.0, 1.2, 200.0, 20e6),
                rng.lognormal(20_000.0, 1.5, 300.0, 30e6),
            ),
            Service::Ssh => (
                22,
                "ssh.exe",
                rng.lognormal(5_000.0, 1.5, 500.0, 20e6),
                rng.lognormal(8_000.0, 1.5, 500.0, 20e6),
            ),
        };
        Ev {
            ts,
            host,
            src_port,
            src_bytes,
            dst_ip: d.ip,
            dst_port,
            dst_bytes,
            udp: false,
            country: d.country,
            process,
            attack: None,
        }
    }

    /// Backup connections in [lo, hi): each epoch-aligned 3 h bucket is planned whole from its
    /// own random stream, and the part inside [lo, hi) and the run is kept.
    pub(super) fn backup_events(&self, cfg: &Config, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let first = lo.div_euclid(BUCKET_MS);
        let last = (hi - 1).div_euclid(BUCKET_MS);
        for b in first..=last {
            let mut rng = Rng::new(cfg.seed, STREAM_BACKUP, b as u64);
            let total = rng.range_i(1_000_000_000, 3_000_000_000) as u64;
            let n = rng.range_i(60, 161) as usize;
            let times = sorted_times(&mut rng, n, b * BUCKET_MS, (b + 1) * BUCKET_MS);
            let shares = split_bytes(&mut rng, total, n);
            for (ts, bytes) in times.into_iter().zip(shares) {
                let src_port = rng.ephemeral_port();
                let dst_bytes = rng.lognormal(4_000.0, 0.5, 500.0, 1e6);
                if ts >= lo && ts < hi && ts >= cfg.start && ts < cfg.end {
                    events.push(Ev {
                        ts,
                        host: self.backup_host,
                        src_port,
                        src_bytes: bytes,
                        dst_ip: self.backup_ip,
                        dst_port: 443,
                        dst_bytes,
                        udp: false,
                        country: C_US_RESERVED as u8,
                        process: "restic",
                        attack: None,
                    });
                }
            }
        }
    }

    /// Business-partner connections in [lo, hi): each UTC day is planned whole per partner.
    pub(super) fn partner_events(&self, cfg: &Config, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let first = lo.div_euclid(DAY_MS);
        let last = (hi - 1).div_euclid(DAY_MS);
        for day in first..=last {
            for (k, partner) in self.partners.iter().enumerate() {
                let day_lo = day * DAY_MS;
                if day_lo + DAY_MS <= partner.appears {
                    continue;
                }
                let mut rng = Rng::new(cfg.seed, STREAM_PARTNER, (day as u64) << 4 | k as u64);
                let mean = if weekday(day_lo) >= 5 { 1.0 } else { 4.0 };
                let n = 2 + rng.poisson(mean) as usize;
                let from = (day_lo + 8 * HOUR_MS).max(partner.appears);
                let to = (day_lo + 18 * HOUR_MS)
                    .max(from + HOUR_MS)
                    .min(day_lo + DAY_MS);
                let mut times = sorted_times(&mut rng, n, from, to);
                if partner.appears >= day_lo {
                    // The first contact happens exactly when the partner appears.
                    times[0] = partner.appears;
                }
                for ts in times {
                    let host = partner.hosts[rng.below(partner.hosts.len() as u64) as usize];
                    let ev = Ev {
                        ts,
                        host,
                        src_port: rng.ephemeral_port(),
                        src_bytes: rng.lognormal(50_000.0, 1.2, 500.0, 50e6),
                        dst_ip: partner.ips[rng.below(2) as usize],
                        dst_port: 443,
                        dst_bytes: rng.lognormal(200_000.0, 1.2, 500.0, 50e6),
                        udp: false,
                        country: partner.country,
                        process: if rng.f64() < 0.5 {
                            "chrome.exe"
                        } else {
                            "WinSCP.exe"
                        },
                        attack: None,
                    };
                    if ts >= lo && ts < hi && ts >= cfg.start && ts < cfg.end {
                        events.push(ev);
                    }
                }
            }
        }
    }

    /// Appends one event as a JSON line.
    pub(super) fn write_event(&self, buf: &mut Vec<u8>, e: &Ev, ts: &str, with_geo: bool) {
        buf.extend_from_slice(b"{\"@timestamp\":\"");
        buf.extend_from_slice(ts.as_bytes());
        buf.extend_from_slice(
            b"\",\"event\":{\"kind\":\"event\",\"category\":[\"network\"],\
              \"type\":[\"connection\",\"end\"],\"dataset\":\"egresswatch.generated\"},\
              \"source\":{\"ip\":\"",
        );
        push_ip(buf, self.host_ips[e.host as usize]);
        buf.extend_from_slice(b"\",\"port\":");
        push_u64(buf, u64::from(e.src_port));
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.src_bytes);
        buf.extend_from_slice(b"},\"destination\":{\"ip\":\"");
        push_ip(buf, e.dst_ip);
        buf.extend_from_slice(b"\",\"port\":");
        push_u64(buf, u64::from(e.dst_port));
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.dst_bytes);
        if with_geo {
            let c = &COUNTRIES[e.country as usize];
            buf.extend_from_slice(b",\"geo\":{\"country_name\":\"");
            buf.extend_from_slice(c.name.as_bytes());
            buf.extend_from_slice(b"\",\"country_iso_code\":\"");
            buf.extend_from_slice(c.iso.as_bytes());
            buf.extend_from_slice(b"\"}");
        }
        buf.extend_from_slice(b"},\"network\":{\"transport\":\"");
        buf.extend_from_slice(if e.udp { b"udp" } else { b"tcp" });
        buf.extend_from_slice(b"\",\"direction\":\"outbound\"},\"host\":{\"name\":\"");
        buf.extend_from_slice(self.host_names[e.host as usize].as_bytes());
        buf.extend_from_slice(b"\"},\"process\":{\"name\":\"");
        buf.extend_from_slice(e.process.as_bytes());
        buf.extend_from_slice(b"\"}}\n");
    }
}
