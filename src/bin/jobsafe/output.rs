//! What the tool prints: aligned tables for people, JSON for scripts, and the
//! times and durations in both.
//!
//! With `--json`, a command that shows one thing prints one JSON document; a
//! command that lists prints JSON lines, one object per line (nothing for an
//! empty list), so that scripts can stream them. Times are milliseconds since
//! the Unix epoch in JSON, and UTC in tables.
//!
//! Every line goes out through this module, escaped as `safe_text` says:
//! `out!` and `err!` for lines for people, [`print_json`] and
//! [`print_json_line`] for JSON.

use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::safe_text;

/// Prints a line for people on stdout, like `println!`, with stored text made
/// safe for a terminal (`safe_text::for_terminal`). A reader that went away
/// (`jobsafe jobs list | head`) ends nothing: the tool's work is done or not
/// regardless of who reads its report.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Prints a line for people on stderr, like `eprintln!`, with stored text made
/// safe for a terminal.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::write_err_line(format_args!($($arg)*))
    };
}

pub(crate) fn write_line(args: fmt::Arguments<'_>) {
    write_raw_line(&mut std::io::stdout().lock(), &line_for_people(args));
}

pub(crate) fn write_err_line(args: fmt::Arguments<'_>) {
    write_raw_line(&mut std::io::stderr().lock(), &line_for_people(args));
}

/// `args` formatted, with stored text made safe for a terminal.
fn line_for_people(args: fmt::Arguments<'_>) -> String {
    let text = args.to_string();
    match safe_text::for_terminal(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// Writes `line` as it is, and a newline. Output cut short (a closed pipe) is
/// not the tool's failure.
fn write_raw_line(out: &mut impl Write, line: &str) {
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
}

/// Columns of text, padded to the widest cell; the last column is not padded.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Cells are escaped as `safe_text::for_terminal` says (a
    /// newline in a progress message shows as `\u{a}`, so that one record
    /// stays one line), before their widths are measured.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| safe_text::for_terminal(&cell).into_owned())
                .collect(),
        );
    }

    /// Prints the table, or `empty` if it has no rows.
    pub(crate) fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            out!("{empty}");
            return;
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let mut out = std::io::stdout().lock();
        // Headers are the tool's own; cells were escaped by `row`.
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths.get(i).copied().unwrap_or(0);
                    line.push_str(&format!("{cell:<pad$}  "));
                }
            }
            write_raw_line(&mut out, line.trim_end());
        }
    }
}

/// Prints `fields` as aligned `name: value` lines, one line each whatever the
/// value holds (`out!` escapes it).
pub(crate) fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(n, _)| n.len()).max().unwrap_or(0) + 1;
    for (name, value) in fields {
        let label = format!("{name}:");
        out!("{label:<width$} {value}");
    }
}

/// `value` as one line of JSON, for a table cell or a field (metadata, event
/// data, a result): escaped as `--json` escapes it, so that it reads as the
/// JSON a script would get, and `out!` finds nothing left to escape.
pub(crate) fn json_text(value: &Value) -> String {
    let text = value.to_string();
    match safe_text::for_json(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// Prints one JSON document.
pub(crate) fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    write_raw_line(&mut std::io::stdout().lock(), &safe_text::for_json(&text));
}

/// Prints one JSON line.
pub(crate) fn print_json_line(value: &Value) {
    write_raw_line(&mut std::io::stdout().lock(), &json_text(value));
}

/// A time in milliseconds since the Unix epoch, in UTC: `2026-11-26 00:48:47Z`.
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `then` relative to `now`: `in 5m`, `3h ago`.
pub(crate) fn relative(then: u64, now: u64) -> String {
    if then >= now {
        format!("in {}", duration(Duration::from_millis(then - now)))
    } else {
        format!("{} ago", duration(Duration::from_millis(now - then)))
    }
}

/// A duration in its largest whole unit and the next: `2d3h`, `5m`, `40s`, `250ms`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (d_, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) if s == 0 => format!("{m}m"),
        (0, 0, m) => format!("{m}m{s}s"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d_, 0, _) => format!("{d_}d"),
        (d_, h, _) => format!("{d_}d{h}h"),
    }
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `7d` (or a sum such as `1h30m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a number and a unit, such as 500ms, 30s, 15m, 2h or 7d"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = number.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// `value` or `-`.
pub(crate) fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_owned()
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_767_225_600_000), "2026-01-01 00:00:00Z");
        assert_eq!(time(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03Z");
    }

    #[test]
    fn parses_and_prints_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "5", "m", "5x", "1.5h", "-3s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d3h");
        assert_eq!(relative(10_000, 4_000), "in 6s");
        assert_eq!(relative(4_000, 64_000), "1m ago");
    }

    #[test]
    fn a_cell_stays_on_one_line_and_shows_its_control_characters() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x\ny".to_owned(), "tab\there\r\u{1b}[2J".to_owned()]);
        assert_eq!(table.rows[0], [r"x\u{a}y", r"tab\u{9}here\u{d}\u{1b}[2J"]);
    }

    #[test]
    fn lines_for_people_are_escaped_and_json_cells_read_as_json() {
        let kind = "k\u{1b}]0;owned\u{7}\u{9b}\u{202e}";
        assert_eq!(
            line_for_people(format_args!("job {kind} failed")),
            r"job k\u{1b}]0;owned\u{7}\u{9b}\u{202e} failed"
        );
        let cell = json_text(&serde_json::json!({ "note": kind }));
        assert_eq!(cell, r#"{"note":"k\u001b]0;owned\u0007\u009b\u202e"}"#);
        assert_eq!(line_for_people(format_args!("{cell}")), cell);
    }
}
