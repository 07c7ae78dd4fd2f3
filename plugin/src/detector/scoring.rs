//! Per event, after the scan: GeoIP enrichment, every qualifying job's score, the key parts a
//! model reads, the alert's detail, and the score records (one per job that scored an event, for
//! replay and the quality harness).

use std::borrow::Cow;
use std::net::IpAddr;

use abi_stable::std_types::RVec;
use egresswatch_common::names::fields::{
    DESTINATION_COUNTRY_ISO_CODE as DESTINATION_COUNTRY_ISO, DESTINATION_COUNTRY_NAME,
};
use egresswatch_plugin_api::{ScoreExtra, ScoreRecord};

use super::ActiveRule;
use super::{ActiveJob, FixedFields, Hit};
use crate::alert::AlertDetail;
use crate::catalog::{BoundJob, Function, JobDef, SharedFilters, Verdicts};
use crate::fields::{Event, FieldId};
use crate::geo;
use crate::geo::GeoCache;
use crate::models::Observation;
use crate::models::{ExtraValue, Scored};
use crate::net::CidrSet;
use crate::suppression::AlertRef;
use crate::time::TimeMemo;

/// Fills `destination.geo.country_iso_code` / `country_name` when the name is missing;
/// returns the country it added, to be written on the event if it is annotated.
pub(super) fn enrich(
    geo: Option<&mut GeoCache>,
    fixed: &FixedFields,
    event: &mut Event<'_>,
) -> Option<geo::Country> {
    if event.present(fixed.country_name) {
        return None;
    }
    let country = match event.str(fixed.country_iso) {
        Some(code) => geo::Country::from_iso_code(code),
        None => geo?.country(event.ip(fixed.destination_ip)?),
    }?;
    event.set(fixed.country_iso, country.iso_code());
    event.set(fixed.country_name, country.name());
    Some(country)
}

/// What scoring an event needs besides the jobs.
pub(super) struct Scoring<'d> {
    pub(super) allow: &'d CidrSet,
    /// The filters several jobs have.
    pub(super) shared_filters: &'d SharedFilters,
    pub(super) fixed: &'d FixedFields,
    /// Score records of the batch, when the host asked for them.
    pub(super) scores: Option<&'d mut Vec<ScoreRecord>>,
    /// Position of the event in its batch.
    pub(super) event_index: u32,
    /// The host's clock.
    pub(super) now: i64,
    /// The hour of the last event time read.
    pub(super) time: &'d mut TimeMemo,
    /// Where a job's key texts the event does not hold as they are go.
    pub(super) owned: &'d mut Owned,
}

/// "the jobs expect: job (field, field), ...": what a user whose events never qualify should
/// check.
pub(super) fn expected_fields(jobs: &[ActiveJob]) -> String {
    let list: Vec<String> = jobs
        .iter()
        .map(|job| {
            let mut fields: Vec<&str> = job.def.filters.iter().map(|f| f.field()).collect();
            for f in [&job.def.field_name, &job.def.by_field, &job.def.over_field]
                .into_iter()
                .flatten()
            {
                if !fields.contains(&f.as_str()) {
                    fields.push(f);
                }
            }
            format!("{} ({})", job.def.id, fields.join(", "))
        })
        .collect();
    format!("the jobs expect ECS fields: {}", list.join("; "))
}

/// A warning per job that reads a `destination.geo.*` field GeoIP enrichment cannot fill (it
/// adds the country only): such a job scores only events that carry the field themselves.
pub(super) fn geo_warnings(jobs: &[ActiveJob], geo: Option<&GeoCache>) -> Vec<String> {
    let source = match geo {
        Some(cache) => format!("the GeoIP database ({})", cache.db().database_type()),
        None => "GeoIP (turned off)".to_owned(),
    };
    let fillable =
        |f: &str| geo.is_some() && (f == DESTINATION_COUNTRY_NAME || f == DESTINATION_COUNTRY_ISO);
    let mut out = Vec::new();
    for job in jobs {
        let def = &job.def;
        let fields = def.filters.iter().map(|f| f.field()).chain(
            [
                &def.field_name,
                &def.by_field,
                &def.over_field,
                &def.partition_field,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        );
        let mut seen = Vec::new();
        for field in fields {
            if field.starts_with("destination.geo.") && !fillable(field) && !seen.contains(&field) {
                seen.push(field);
                out.push(format!(
                    "job {} needs {field}, which {source} cannot fill: it scores only events \
                     that carry {field} themselves",
                    def.id
                ));
            }
        }
    }
    out
}

/// Lets every qualifying job score the event; returns the highest-scoring rule that fired, and
/// whether any job qualified the event. The hit is boxed: a few events in a thousand have one,
/// and an `Option<Hit>` (~250 bytes) was copied out on every event (~40 instructions).
pub(super) fn score(
    jobs: &mut [ActiveJob],
    mut ctx: Scoring<'_>,
    event: &Event<'_>,
) -> (Option<Box<Hit>>, bool) {
    // Event time; the models' clocks decide how far ahead of the host's clock it is believed.
    let now = ctx.now;
    let time_ms = crate::time::epoch_ms(event, ctx.fixed.time, ctx.time).unwrap_or(now);
    let allowed = !ctx.allow.is_empty()
        && event
            .ip(ctx.fixed.destination_ip)
            .is_some_and(|ip| ctx.allow.contains(ip));
    if allowed {
        return (None, false);
    }
    let mut best: Option<Box<Hit>> = None;
    let mut qualified = false;
    let shared = ctx.shared_filters;
    let mut verdicts = Verdicts::default();
    for (j, job) in jobs.iter_mut().enumerate() {
        if !job.bound.qualifies(event, shared, &mut verdicts) {
            continue;
        }
        qualified = true;
        let Some(obs) = observation(&job.bound, job.addresses, event, ctx.owned, time_ms, now)
        else {
            continue;
        };
        // Read where the model returned it: moved out of the `Option`, it was copied.
        let returned = job.model.observe(&obs);
        let Some(scored) = &returned else {
            continue;
        };
        job.scored += 1;
        for (r, rule) in job.rules.iter_mut().enumerate() {
            // Every rule that flags the event places it among its own alerts.
            let alert = (!scored.learning && scored.score >= rule.threshold).then(|| {
                let span = scored.bucket_span_ms;
                let key = [obs.by, obs.over, obs.partition];
                rule.episodes
                    .place(&key, time_ms, scored.bucket_start_ms, span)
            });
            if let Some(scores) = ctx.scores.as_deref_mut() {
                scores.push(score_record(
                    ctx.event_index,
                    &job.def,
                    rule,
                    scored,
                    &obs,
                    alert,
                ));
            }
            let better = best.as_ref().is_none_or(|b| scored.score > b.scored.score);
            if let (Some(alert), true) = (alert, better) {
                let (field, value) = subject(&obs, &job.def);
                best = Some(Box::new(Hit {
                    job: j,
                    rule: r,
                    scored: *scored,
                    field,
                    value,
                    alert,
                }));
            }
        }
    }
    (best, qualified)
}

/// The key texts of one job's observation that the event does not hold as they are (a
/// canonical IPv6 address, a number that is not an integer as written): by, over, partition.
/// The detector keeps one for all jobs and events: an observation reads only the texts it
/// wrote itself, so the buffer is neither made nor dropped per job or event (made and dropped
/// per job it cost `decide` ~30 Ir an event, callgrind `detector` case; per event, its drop
/// was a call of ~18).
pub(super) type Owned = [Option<String>; 3];

/// The observation one job makes of an event, its texts borrowed from the event or from
/// `owned`; `None` when a field the function needs is missing. A field marked in `addresses`
/// that holds an IPv6 address is read in its canonical form, an IPv4-mapped one as the IPv4
/// address (`::FFFF:1.2.3.4` is `1.2.3.4`): the models key by the text, and one destination
/// must not be two entities whose sums an attacker splits. An IPv4 address is already
/// canonical as the address parser accepts it (no leading zeros), so only text with a colon is
/// looked at.
#[inline]
fn observation<'a>(
    job: &BoundJob,
    addresses: [bool; 3],
    event: &'a Event<'_>,
    owned: &'a mut Owned,
    time_ms: i64,
    arrival_ms: i64,
) -> Option<Observation<'a>> {
    let [by, over, partition] = owned;
    let by = optional_part(event, job.by, addresses[0], by)?;
    let over = optional_part(event, job.over, addresses[1], over)?;
    let partition = optional_part(event, job.partition, addresses[2], partition)?;
    let value = match job.field_name {
        Some(id) => event.number(id)?,
        None => 1.0,
    };
    Some(Observation {
        time_ms,
        arrival_ms,
        by,
        over,
        partition,
        value,
    })
}

/// The field and value an alert's reason talks about: the `by` value for rarity, the `over`
/// entity for a sum.
fn subject(obs: &Observation<'_>, def: &JobDef) -> (String, String) {
    let pick =
        |field: &Option<String>, value: Option<&str>| field.clone().zip(value.map(str::to_owned));
    match def.function {
        Function::Rare => pick(&def.by_field, obs.by).or_else(|| pick(&def.over_field, obs.over)),
        _ => pick(&def.over_field, obs.over).or_else(|| pick(&def.by_field, obs.by)),
    }
    .unwrap_or_else(|| (def.id.clone(), String::new()))
}

/// A key part the job may not have: `Some(None)` when it has no such field, `None` when the
/// event lacks the field. Inlined into [`observation`] (as a closure it was called three times
/// per job and event, also for the fields a job does not have: ~9 instructions each before
/// reading anything).
#[inline(always)]
fn optional_part<'a>(
    event: &'a Event<'_>,
    field: Option<FieldId>,
    address: bool,
    owned: &'a mut Option<String>,
) -> Option<Option<&'a str>> {
    match field {
        None => Some(None),
        Some(id) => key_part(event, id, address, owned).map(Some),
    }
}

/// The text a model keys a field by (see [`observation`]), kept in `owned` when the event does
/// not hold it as it is; `None` when it is absent.
#[inline(always)]
fn key_part<'a>(
    event: &'a Event<'_>,
    id: FieldId,
    address: bool,
    owned: &'a mut Option<String>,
) -> Option<&'a str> {
    let text = event.key_text(id)?;
    // IPv6 text has a colon in its first five bytes, IPv4 text none: a short look for every
    // address, a parse only for IPv6 ones.
    if address && colon_in_head(text.as_bytes()) {
        if let Some(canonical) = canonical_v6(event, id) {
            return Some(owned.insert(canonical));
        }
    }
    Some(match text {
        Cow::Borrowed(text) => text,
        Cow::Owned(text) => owned.insert(text),
    })
}

/// Whether one of the first five bytes of `text` is a colon: four of them in one word (a
/// zero-byte test on the word xor colons), on every event keyed by an address.
#[inline]
fn colon_in_head(text: &[u8]) -> bool {
    match text.first_chunk::<4>() {
        Some(four) => {
            let x = u32::from_le_bytes(*four) ^ 0x3a3a_3a3a;
            (x.wrapping_sub(0x0101_0101) & !x & 0x8080_8080) != 0 || text.get(4) == Some(&b':')
        }
        None => text.contains(&b':'),
    }
}

/// The canonical text of an IPv6 address field, the IPv4 address for an IPv4-mapped one.
#[cold]
#[inline(never)]
fn canonical_v6(event: &Event<'_>, id: FieldId) -> Option<String> {
    match event.ip(id)? {
        IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        }),
        IpAddr::V4(_) => None,
    }
}

/// The alert fields' content for a hit.
pub(super) fn alert_detail(def: &JobDef, bound: &BoundJob, hit: &Hit) -> AlertDetail {
    AlertDetail {
        job_id: def.id.clone(),
        function: def.function,
        score: (hit.scored.score * 10.0).round() / 10.0,
        bucket_start: hit.scored.bucket_start_ms.div_euclid(1000),
        actual: Some(hit.scored.actual),
        typical: Some(hit.scored.typical()),
        influencers: def
            .influencers
            .iter()
            .cloned()
            .zip(bound.influencers.iter().copied())
            .collect(),
        reason: hit.scored.reason(&hit.field, &hit.value),
        extra: hit.scored.extra(),
        alert: Some(hit.alert),
    }
}

/// The score record of one rule on one scored event. The reason, the alert identity (first:
/// [`ScoreExtra::Alert`] or [`ScoreExtra::Suppressed`]) and the model's figures are written only
/// when the rule flags the event (`alert` is set).
fn score_record(
    event: u32,
    def: &JobDef,
    rule: &ActiveRule,
    scored: &Scored,
    obs: &Observation<'_>,
    alert: Option<AlertRef>,
) -> ScoreRecord {
    let flagged = alert.is_some();
    let (field, value) = subject(obs, def);
    let (reason, extra) = if let Some(alert) = alert {
        let identity = if alert.suppressed {
            ScoreExtra::Suppressed {
                alert_id: alert.id_text().into(),
                count: alert.count,
            }
        } else {
            ScoreExtra::Alert {
                id: alert.id_text().into(),
            }
        };
        let extra = std::iter::once(identity.wrap())
            .chain(scored.extra().into_iter().map(|(name, value)| {
                let value = match value {
                    ExtraValue::Int(i) => i as f64,
                    ExtraValue::Float(f) => f,
                };
                ScoreExtra::Figure {
                    name: name.into(),
                    value,
                }
                .wrap()
            }))
            .collect();
        (scored.reason(&field, &value), extra)
    } else {
        (String::new(), RVec::new())
    };
    ScoreRecord {
        event,
        rule_id: rule.rule.rule_id.as_str().into(),
        rule_name: rule.rule.name.as_str().into(),
        job_id: def.id.as_str().into(),
        function: def.function.as_str().into(),
        time_ms: obs.time_ms,
        bucket_start_ms: scored.bucket_start_ms,
        score: scored.score,
        threshold: rule.threshold,
        learning: scored.learning,
        flagged,
        subject_field: field.into(),
        subject_value: value.into(),
        value: obs.value,
        actual: scored.actual,
        typical: scored.typical(),
        reason: reason.into(),
        extra,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{colon_in_head, observation, Owned};
    use crate::catalog::{JobCatalog, JobDef};
    use crate::fields::{Scanner, SchemaBuilder};

    /// A job's key texts as the model sees them: borrowed as the event writes them, or the
    /// owned text (an address in canonical form, a number without a needless fraction) when
    /// the event does not hold it so; no observation when a key field is missing. One buffer
    /// for every case, as the detector keeps one: the texts an earlier observation left in it
    /// are never what a later one reads.
    #[test]
    fn the_observation_keys_by_text_the_event_holds_or_the_canonical_one() {
        let def = JobDef {
            field_name: None,
            by_field: Some("n".into()),
            over_field: Some("destination.ip".into()),
            partition_field: Some("p".into()),
            filters: Vec::new(),
            ..JobCatalog::builtin()
                .get("rare_destination_country")
                .unwrap()
                .clone()
        };
        let mut schema = SchemaBuilder::new();
        let job = def.bind(&mut schema);
        let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
        let mut owned = Owned::default();
        for (n, ip, p, expected) in [
            ("7", "1.2.3.4", "\"x\"", Some(["7", "1.2.3.4", "x"])),
            (
                "2.50",
                "::FFFF:1.2.3.4",
                "3.0",
                Some(["2.5", "1.2.3.4", "3"]),
            ),
            (
                "1e2",
                "2001:DB8::0:1",
                "-0.25",
                Some(["100", "2001:db8::1", "-0.25"]),
            ),
            (
                "\"a:b\"",
                "::ffff:zz",
                "\"q\"",
                Some(["a:b", "::ffff:zz", "q"]),
            ),
            ("1", "1.2.3.4", "null", None),
            ("7", "1.2.3.4", "\"x\"", Some(["7", "1.2.3.4", "x"])),
        ] {
            let line = format!(r#"{{"n":{n},"destination":{{"ip":"{ip}"}},"p":{p}}}"#);
            let event = scanner.scan(&line).unwrap();
            let obs = observation(&job, [false, true, false], &event, &mut owned, 5, 6);
            let got = obs.map(|o| {
                assert_eq!((o.time_ms, o.arrival_ms, o.value), (5, 6, 1.0));
                [o.by, o.over, o.partition].map(Option::unwrap)
            });
            assert_eq!(got, expected, "{line}");
        }
    }

    #[test]
    fn a_colon_is_found_in_the_first_five_bytes_only() {
        let alphabet = b":.0a\x00\x3b\x39\xba";
        for len in 0..8 {
            let mut text = vec![0u8; len];
            for n in 0..alphabet.len().pow(len.min(6) as u32) {
                let mut k = n;
                for byte in text.iter_mut().take(6) {
                    *byte = alphabet[k % alphabet.len()];
                    k /= alphabet.len();
                }
                let expected = text.iter().take(5).any(|&b| b == b':');
                assert_eq!(colon_in_head(&text), expected, "{text:?}");
            }
        }
    }
}
