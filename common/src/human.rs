//! Numbers for people: counts with thousands separators, bytes and durations in the largest
//! unit that reads well, and plain-text tables. Used by replay's report, `rules check` and the
//! detector's reasons ("seen in 0 of 221 15m buckets").

use std::fmt::Write as _;

/// An integer with thousands separators: "2,880".
pub fn count(n: u64) -> String {
    let mut out = String::new();
    push_count(&mut out, n);
    out
}

/// Appends [`count`]'s text to `out`.
pub fn push_count(out: &mut String, n: u64) {
    let mut digits = itoa::Buffer::new();
    let s = digits.format(n);
    for (i, c) in s.char_indices() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
}

/// Bytes in decimal units, as network tools print them: "512 B", "8.1 GB", "40 MB".
pub fn bytes(b: f64) -> String {
    let mut out = String::new();
    push_bytes(&mut out, b);
    out
}

/// Appends [`bytes`]'s text to `out`.
pub fn push_bytes(out: &mut String, b: f64) {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if !b.is_finite() || b < 1000.0 {
        let r = b.max(0.0).round();
        if b.is_finite() && r.is_sign_positive() {
            out.push_str(itoa::Buffer::new().format(r as u64));
        } else {
            let _ = write!(out, "{r}");
        }
        out.push_str(" B");
        return;
    }
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if v < 10.0 {
        push_tenths(out, v);
    } else {
        push_units(out, v);
    }
    out.push(' ');
    out.push_str(UNITS[i]);
}

/// A duration in the largest whole unit that fits: "3h", "15m", "30 days".
pub fn duration_ms(ms: i64) -> String {
    let mut out = String::new();
    push_duration_ms(&mut out, ms);
    out
}

/// Appends [`duration_ms`]'s text to `out`.
pub fn push_duration_ms(out: &mut String, ms: i64) {
    let s = ms / 1000;
    let mut n = itoa::Buffer::new();
    if s >= 2 * 86_400 {
        out.push_str(n.format(s / 86_400));
        out.push_str(" days");
    } else if s >= 86_400 && s % 86_400 == 0 {
        out.push_str("1 day");
    } else if s >= 3600 && s % 3600 == 0 {
        out.push_str(n.format(s / 3600));
        out.push('h');
    } else if s >= 3600 {
        push_tenths(out, s as f64 / 3600.0);
        out.push('h');
    } else if s >= 60 && s % 60 == 0 {
        out.push_str(n.format(s / 60));
        out.push('m');
    } else {
        out.push_str(n.format(s));
        out.push('s');
    }
}

/// Appends `x` (not negative) with one decimal, exactly as `format!("{x:.1}")` writes it,
/// without the formatter's cost. `x - floor(x)` is exact; a tenths digit computed from it can
/// only be off when the product lands on a tie, which goes to the formatter.
fn push_tenths(out: &mut String, x: f64) {
    let whole = x.floor();
    let tenths = (x - whole) * 10.0;
    if !(0.0..1e15).contains(&whole) || tenths.fract() == 0.5 {
        let _ = write!(out, "{x:.1}");
        return;
    }
    let (whole, digit) = match tenths.round() {
        d if d >= 10.0 => (whole + 1.0, 0),
        d => (whole, d as u8),
    };
    out.push_str(itoa::Buffer::new().format(whole as u64));
    out.push('.');
    out.push(char::from(b'0' + digit));
}

/// Appends `x` (not negative) rounded to a whole number, as `format!("{x:.0}")` writes it
/// (ties, which the formatter rounds to even, go to it).
fn push_units(out: &mut String, x: f64) {
    if !(0.0..1e15).contains(&x) || x.fract() == 0.5 {
        let _ = write!(out, "{x:.0}");
        return;
    }
    out.push_str(itoa::Buffer::new().format(x.round() as u64));
}

/// How a column of a [`table`] is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A plain-text table: columns two spaces apart, each as wide as its widest cell, aligned as
/// `align` says (columns past its end as its last; left when it is empty), no trailing spaces.
pub fn table(rows: &[Vec<String>], align: &[Align]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            match align
                .get(i)
                .or(align.last())
                .copied()
                .unwrap_or(Align::Left)
            {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_durations() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(count(0), "0");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(8.1e9), "8.1 GB");
        assert_eq!(bytes(40e6), "40 MB");
        assert_eq!(bytes(100e6), "100 MB");
        assert_eq!(bytes(f64::NAN), "0 B");
        assert_eq!(duration_ms(3 * 3_600_000), "3h");
        assert_eq!(duration_ms(15 * 60_000), "15m");
        assert_eq!(duration_ms(30 * 86_400_000), "30 days");
        assert_eq!(duration_ms(86_400_000), "1 day");
        assert_eq!(duration_ms(5_400_000), "1.5h");
        assert_eq!(duration_ms(42_000), "42s");
    }

    #[test]
    fn the_fast_paths_write_what_the_formatter_writes() {
        // Every tenth and half around the edges, and a spread of values in between.
        let mut x: f64 = 0.0;
        let mut values = vec![
            0.05, 0.95, 9.95, 9.96, 9.949_999, 1.25, 2.5, 3.5, 999.5, 1e15,
        ];
        for i in 0..20_000 {
            values.push(f64::from(i) * 0.05);
            x = x * 1.000_7 + 0.013;
            values.push(x);
        }
        for v in values {
            let mut fast = String::new();
            push_tenths(&mut fast, v);
            assert_eq!(fast, format!("{v:.1}"), "{v:e}");
            fast.clear();
            push_units(&mut fast, v);
            assert_eq!(fast, format!("{v:.0}"), "{v:e}");
        }
        for b in [
            0.4,
            0.5,
            999.4,
            999.6,
            -3.0,
            -0.0,
            f64::INFINITY,
            9_949.0,
            9_950.0,
            1.5e3,
        ] {
            let old = if !b.is_finite() || b < 1000.0 {
                format!("{} B", b.max(0.0).round())
            } else {
                String::new()
            };
            assert!(old.is_empty() || bytes(b) == old, "{b}: {} {old}", bytes(b));
        }
        assert_eq!(bytes(9_950.0), format!("{:.1} kB", 9_950.0 / 1000.0));
        assert_eq!(duration_ms(90 * 60_000 + 18_000), "1.5h");
        assert_eq!(count(1_000), "1,000");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "x".to_owned()],
            vec!["ccc".to_owned(), "1".to_owned(), "long text".to_owned()],
        ];
        assert_eq!(
            table(&rows, &[Align::Left, Align::Right]),
            "a    bb          x\nccc   1  long text\n"
        );
        assert_eq!(
            table(&rows, &[Align::Left]),
            "a    bb  x\nccc  1   long text\n"
        );
        assert_eq!(table(&[], &[]), "");
    }
}
