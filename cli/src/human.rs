//! Human-readable output: sizes, counts, percentages and aligned tables.

/// `1536` → `"1.5 KiB"`; below 1 KiB, exact bytes (`"512 B"`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // 1023.95 KiB would print as "1024.0 KiB"; show it as the next unit instead.
    if format!("{value:.1}") == "1024.0" && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1234567` → `"1,234,567"`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part / whole` as `"66.7%"` (`"0.0%"` when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", store::import::percent(part, whole))
}

/// Column alignment for [`table`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders rows as columns separated by two spaces, each padded to its widest cell. The last
/// column is not padded when left-aligned, so lines carry no trailing spaces.
pub fn table(rows: &[Vec<String>], align: &[Align]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            let right = align.get(i).copied().unwrap_or(Align::Left) == Align::Right;
            if right {
                line.push_str(&" ".repeat(pad));
            }
            line.push_str(cell);
            if !right && i + 1 < row.len() {
                line.push_str(&" ".repeat(pad));
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
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(13_207_024_435), "12.3 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn counts_and_percent() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(percent(2, 3), "66.7%");
        assert_eq!(percent(1, 0), "0.0%");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "1 B".to_string(), "x".to_string()],
            vec!["long".to_string(), "10.0 KiB".to_string(), "".to_string()],
        ];
        let t = table(&rows, &[Align::Left, Align::Right, Align::Left]);
        assert_eq!(t, "a          1 B  x\nlong  10.0 KiB\n");
    }
}
