//! The labelled attacks: which hosts, when, and how much (see the module documentation of
//! `generate` for what each does).

use super::calendar::Config;
use super::countries::{COUNTRIES, C_DE_RESERVED, C_KP, C_US_RESERVED};
use super::rng::{sorted_times, split_bytes, Rng, STREAM_ATTACK};
use super::world::{addr_in, Ev};
use super::{AttackKind, BUCKET_MS};

/// The planned attacks, each sorted by time; planned whatever the scenario, so that the
/// scenario only decides which are written.
#[derive(Debug, Clone, Default)]
pub(super) struct AttackPlan {
    pub(super) c2: Vec<Ev>,
    pub(super) upload: Vec<Ev>,
    /// Bytes the upload sends in total.
    pub(super) upload_bytes: u64,
    /// Start of the upload's 3 h bucket (Unix ms), if it fits in the run.
    pub(super) upload_bucket: Option<i64>,
    pub(super) slow_exfil: Vec<Ev>,
}

/// Three distinct workstations (or fewer hosts reused) for the three attacks.
pub(super) fn attack_hosts(rng: &mut Rng, hosts: u32) -> [u32; 3] {
    if hosts < 3 {
        return [0, hosts.saturating_sub(1), 0];
    }
    let a = rng.below(u64::from(hosts)) as u32;
    let mut b = rng.below(u64::from(hosts)) as u32;
    while b == a {
        b = rng.below(u64::from(hosts)) as u32;
    }
    let mut c = rng.below(u64::from(hosts)) as u32;
    while c == a || c == b {
        c = rng.below(u64::from(hosts)) as u32;
    }
    [a, b, c]
}

/// The first epoch-aligned 3 h bucket starting at or after `t`.
pub(super) fn bucket_at_or_after(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS) * BUCKET_MS
        + if t.rem_euclid(BUCKET_MS) == 0 {
            0
        } else {
            BUCKET_MS
        }
}

/// Plans the three attacks for the run (see the module documentation).
pub(super) fn plan_attacks(cfg: &Config) -> AttackPlan {
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 0);
    let [c2_host, upload_host, exfil_host] = attack_hosts(&mut rng, cfg.hosts);
    let dur = cfg.duration();
    let mut plan = AttackPlan::default();

    // C2 beacon.
    let c2_ip = addr_in(&mut rng, COUNTRIES[C_KP].prefixes[0]);
    let period = rng.range_f(5.0, 15.0) * 60_000.0;
    let mut t = cfg.start + dur / 2 + (rng.f64() * dur as f64 * 0.1) as i64;
    let c2_port = if rng.f64() < 0.5 { 443 } else { 8443 };
    while t < cfg.end {
        let tasking = rng.f64() < 0.05;
        plan.c2.push(Ev {
            ts: t,
            host: c2_host,
            src_port: rng.ephemeral_port(),
            src_bytes: rng.lognormal(600.0, 0.3, 200.0, 4_000.0),
            dst_ip: c2_ip,
            dst_port: c2_port,
            dst_bytes: if tasking {
                rng.lognormal(20_000.0, 0.8, 2_000.0, 500_000.0)
            } else {
                rng.lognormal(400.0, 0.5, 100.0, 4_000.0)
            },
            udp: false,
            country: C_KP as u8,
            process: "rundll32.exe",
            attack: Some(AttackKind::C2),
        });
        t += (period * rng.range_f(0.8, 1.2)) as i64;
    }

    // Bulk upload within one 3 h bucket.
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 1);
    let upload_ip = addr_in(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[3]);
    let total = rng.range_i(2_000_000_000, 5_000_000_001) as u64;
    let mut bucket = bucket_at_or_after(cfg.start + dur * 7 / 10) + rng.range_i(0, 3) * BUCKET_MS;
    while bucket + BUCKET_MS > cfg.end && bucket - BUCKET_MS >= cfg.start {
        bucket -= BUCKET_MS;
    }
    if bucket >= cfg.start && bucket + BUCKET_MS <= cfg.end {
        let n = rng.range_i(40, 101) as usize;
        let times = sorted_times(
            &mut rng,
            n,
            bucket + 2 * 60_000,
            bucket + BUCKET_MS - 2 * 60_000,
        );
        let shares = split_bytes(&mut rng, total, n);
        for (ts, bytes) in times.into_iter().zip(shares) {
            plan.upload.push(Ev {
                ts,
                host: upload_host,
                src_port: rng.ephemeral_port(),
                src_bytes: bytes,
                dst_ip: upload_ip,
                dst_port: 443,
                dst_bytes: rng.lognormal(6_000.0, 0.5, 500.0, 200_000.0),
                udp: false,
                country: C_US_RESERVED as u8,
                process: "rclone.exe",
                attack: Some(AttackKind::Upload),
            });
        }
        plan.upload_bytes = total;
        plan.upload_bucket = Some(bucket);
    }

    // Slow exfiltration: eight consecutive 3 h buckets.
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 2);
    let exfil_ip = addr_in(&mut rng, COUNTRIES[C_DE_RESERVED].prefixes[0]);
    let mut bucket = bucket_at_or_after(cfg.start + dur * 7 / 10);
    for _ in 0..8 {
        if bucket + BUCKET_MS > cfg.end {
            break;
        }
        let total = rng.range_i(150_000_000, 300_000_001) as u64;
        let n = rng.range_i(15, 23) as usize;
        let times = sorted_times(&mut rng, n, bucket, bucket + BUCKET_MS);
        let shares = split_bytes(&mut rng, total, n);
        for (ts, bytes) in times.into_iter().zip(shares) {
            plan.slow_exfil.push(Ev {
                ts,
                host: exfil_host,
                src_port: rng.ephemeral_port(),
                src_bytes: bytes,
                dst_ip: exfil_ip,
                dst_port: 443,
                dst_bytes: rng.lognormal(3_000.0, 0.5, 300.0, 100_000.0),
                udp: false,
                country: C_DE_RESERVED as u8,
                process: "powershell.exe",
                attack: Some(AttackKind::SlowExfil),
            });
        }
        bucket += BUCKET_MS;
    }
    plan
}
