//! Numbers for people: counts with thousands separators, bytes and durations in the largest
//! unit that reads well, and plain-text tables. Used by replay's report, `rules check` and the
//! detector's reasons ("seen in 0 of 221 15m buckets").

/// An integer with thousands separators: "2,880".
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as network tools print them: "512 B", "8.1 GB", "40 MB".
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if !b.is_finite() || b < 1000.0 {
        return format!("{} B", b.max(0.0).round());
    }
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
    }
}

/// A duration in the largest whole unit that fits: "3h", "15m", "30 days".
pub fn duration_ms(ms: i64) -> String {
    let s = ms / 1000;
    if s >= 2 * 86_400 {
        format!("{} days", s / 86_400)
    } else if s >= 86_400 && s % 86_400 == 0 {
        "1 day".to_string()
    } else if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 3600 {
        format!("{:.1}h", s as f64 / 3600.0)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
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
