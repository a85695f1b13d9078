//! How commands print: plain-text tables for people, `-o json` for scripts.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, ValueEnum};

/// Left-aligned columns separated by two spaces, sized to their widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// "3s", "5m", "2h", "4d": how long ago `then_ms` was.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["ID", "STATE"],
            &[
                vec!["t-1".into(), "running".into()],
                vec!["t-10".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID    STATE\nt-1   running\nt-10  x");
        assert_eq!(age(10_000, 7_000), "3s");
        assert_eq!(age(7_300_000, 0), "2h");
    }
}

#[derive(Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args)]
pub(crate) struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub(crate) format: Format,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Shown as recorded, with anything that could still steer a terminal escaped.
pub(crate) fn plain(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A listing: a JSON array for scripts, or a table of `header` and a row per item.
pub(crate) fn print_list<T: serde::Serialize>(
    format: Format,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    match format {
        Format::Json => print_json(&items)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            println!("{}", render(header, &rows));
        }
    }
    Ok(())
}

/// The items joined by ", ", or "-" when there are none.
pub(crate) fn list_or_dash(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}
