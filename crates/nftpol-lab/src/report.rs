//! What the benches print: Markdown tables (BENCHMARKS.md quotes them as
//! printed), the machine they ran on, and the small statistics they share.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

/// Appends a Markdown table to `out`: a header row, the `|---|` rule, then
/// `rows`, every column padded to its widest cell (counted in characters,
/// so that `≤` and `µ` line up).
///
/// ```text
/// | size | first sync |
/// |------|------------|
/// | 1k   | 12.0 ms    |
/// ```
pub fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..head.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([head[column].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        out.push('|');
        for (cell, width) in cells.zip(&widths) {
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(out, &mut head.iter().copied());
    out.push('|');
    for width in &widths {
        let _ = write!(out, "{}|", "-".repeat(width + 2));
    }
    out.push('\n');
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

/// The median (the lower one of an even count). Panics when `v` is empty.
pub fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[(v.len() - 1) / 2]
}

/// Cores, kernel and nft version: `4 cores, kernel 6.8.0, nftables v1.0.9 ...`.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "nft not found".into());
    format!("{cores} cores, kernel {}, {nft}", kernel.trim())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_column_to_its_widest_cell() {
        let mut out = String::new();
        table(
            &mut out,
            &["", "value"],
            &[
                vec!["first sync".into(), "≤ 5 ms".into()],
                vec!["rules".into(), "12345678".into()],
            ],
        );
        assert_eq!(
            out,
            "\
|            | value    |
|------------|----------|
| first sync | ≤ 5 ms   |
| rules      | 12345678 |
"
        );
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        let mut out = String::from("before\n");
        table(&mut out, &["a", "bb"], &[]);
        assert_eq!(out, "before\n| a | bb |\n|---|----|\n");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_one() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(4), ms(1), ms(3), ms(2)]), ms(2));
        assert_eq!(median(vec![ms(9), ms(1), ms(5)]), ms(5));
    }
}
