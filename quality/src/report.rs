//! The printed results: per-variant tables, the closing summary, and the cell formats.

use std::collections::BTreeMap;

use crate::scenario::{Base, DAY_MS, HOUR_MS};

/// The closing tables: splice days caught, and false alerts per day, per variant and detector.
#[derive(Default)]
pub struct Summary {
    detectors: Vec<String>,
    caught: Vec<((String, String), BTreeMap<String, String>)>,
    false_alerts: Vec<(String, BTreeMap<String, String>)>,
}

impl Summary {
    fn detector(&mut self, name: &str) {
        if !self.detectors.iter().any(|d| d == name) {
            self.detectors.push(name.to_owned());
        }
    }

    pub fn caught(&mut self, variant: &str, episode: &str, detector: &str, cell: String) {
        self.detector(detector);
        let key = (variant.to_owned(), episode.to_owned());
        match self.caught.iter_mut().find(|(k, _)| *k == key) {
            Some((_, row)) => {
                row.insert(detector.to_owned(), cell);
            }
            None => self
                .caught
                .push((key, BTreeMap::from([(detector.to_owned(), cell)]))),
        }
    }

    pub fn false_alerts(&mut self, variant: &str, detector: &str, cell: String) {
        self.detector(detector);
        match self.false_alerts.iter_mut().find(|(k, _)| k == variant) {
            Some((_, row)) => {
                row.insert(detector.to_owned(), cell);
            }
            None => self.false_alerts.push((
                variant.to_owned(),
                BTreeMap::from([(detector.to_owned(), cell)]),
            )),
        }
    }

    pub fn print(&self) {
        let cell =
            |row: &BTreeMap<String, String>, d: &String| row.get(d).cloned().unwrap_or_default();
        println!("## Summary: splice days on which the episode was caught\n");
        let mut head = vec!["variant".to_owned(), "episode".to_owned()];
        head.extend(self.detectors.iter().cloned());
        let mut rows = vec![head];
        for ((variant, episode), row) in &self.caught {
            let mut r = vec![variant.clone(), episode.clone()];
            r.extend(self.detectors.iter().map(|d| cell(row, d)));
            rows.push(r);
        }
        print_table(&rows);
        println!("## Summary: false alerts per day (benign days; mean over the splice runs)\n");
        let mut head = vec!["variant".to_owned()];
        head.extend(self.detectors.iter().cloned());
        let mut rows = vec![head];
        for (variant, row) in &self.false_alerts {
            let mut r = vec![variant.clone()];
            r.extend(self.detectors.iter().map(|d| cell(row, d)));
            rows.push(r);
        }
        print_table(&rows);
    }
}

pub fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// A Markdown table (readable as text too).
pub fn print_table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else {
        return;
    };
    let widths: Vec<usize> = (0..first.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", cells.join(" | "))
    };
    println!("{}", line(first));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in &rows[1..] {
        println!("{}", line(r));
    }
    println!();
}

pub fn per_day(n: usize, days: f64) -> String {
    if days <= 0.0 {
        "-".into()
    } else {
        format!("{:.2}", n as f64 / days)
    }
}

pub fn day_label(base: &Base, ms: i64) -> String {
    if ms == i64::MAX {
        return "never".into();
    }
    let day = (ms - base.day0_ms).div_euclid(DAY_MS);
    let rem = (ms - base.day0_ms).rem_euclid(DAY_MS);
    format!("day {day} {:02}:{:02}", rem / HOUR_MS, rem / 60_000 % 60)
}

pub fn duration(ms: i64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else {
        format!("{:.1} h", s as f64 / 3600.0)
    }
}

pub fn scores_cell(scores: &[Option<f64>]) -> String {
    if scores.iter().all(Option::is_none) {
        return "-".into();
    }
    scores
        .iter()
        .map(|s| s.map_or("-".into(), |s| format!("{s:.0}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Largest difference between the highest scores of neighbouring splice days.
pub fn swing(scores: &[Option<f64>]) -> Option<f64> {
    scores
        .windows(2)
        .filter_map(|w| Some((w[0]? - w[1]?).abs()))
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swing_is_the_largest_neighbour_difference() {
        assert_eq!(swing(&[Some(80.0), Some(95.0), Some(90.0)]), Some(15.0));
        assert_eq!(swing(&[Some(80.0), None, Some(10.0)]), None);
        assert_eq!(scores_cell(&[Some(80.4), None]), "80 -");
        assert_eq!(duration(90_000), "1 min");
    }
}
