//! Stored text made safe to print: what a store holds is written by services
//! and their clients (a job's kind comes from a relay's client), and a
//! terminal obeys some of the characters it may contain.
//!
//! # For people: tables, fields, prompts, `jobs watch`, result and error lines
//!
//! [`for_terminal`] prints each character below as `\u{HEX}` (Rust's escape:
//! lowercase hexadecimal without leading zeros, `\u{1b}` for ESC):
//!
//! - C0 controls U+0000..=U+001F and DEL U+007F. ESC starts the sequences that
//!   clear the screen, move the cursor or retitle the window; `\r` rewrites the
//!   line; a tab or newline would break a table row, so it is shown too.
//! - C1 controls U+0080..=U+009F: U+009B (CSI) and U+009D (OSC) are the 8-bit
//!   forms of ESC `[` and ESC `]`, which some terminals obey.
//! - Bidirectional controls U+061C, U+200E, U+200F, U+202A..=U+202E and
//!   U+2066..=U+2069: they reorder the rest of the line, so that a row reads
//!   differently from what it holds.
//! - The line and paragraph separators U+2028 and U+2029, which some
//!   viewers take for line breaks.
//!
//! Everything else prints as it is. A backslash is not escaped, so that keys
//! and paths such as `C:\jobs` read as they are stored and can be typed back:
//! a stored text that already reads `\u{1b}` therefore prints the same as an
//! escaped ESC. `--json` gives the exact text.
//!
//! The escaping is applied where lines leave the tool (`out!`, `err!`, the
//! table printer, the confirmation prompt, the status line of `jobs watch`),
//! not where values are formatted, so that no line can skip it. It is
//! idempotent: its output holds no character it escapes.
//!
//! # For scripts: `--json`
//!
//! `serde_json` escapes C0 controls, `"` and `\`, and leaves the rest raw.
//! [`for_json`] also escapes DEL, the C1 controls, the bidirectional controls
//! and U+2028/U+2029, as JSON's own `\u00XX`/`\uXXXX` escapes: the output is
//! the same JSON to any parser (each string reads back exactly as stored),
//! and JSON lines read on a terminal (`jobs watch --json`, a `less` of the
//! output) cannot drive it or reorder it. Bidirectional controls are escaped
//! in JSON as well as in tables: a parser loses nothing, and JSON is read by
//! people often enough.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is printed as an escape in text for people.
pub(crate) fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}'
        | '\u{2029}')
}

/// `text` with every character [`is_unsafe`] names shown as `\u{HEX}`.
pub(crate) fn for_terminal(text: &str) -> Cow<'_, str> {
    escape(text, is_unsafe, |out, c| {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    })
}

/// `json`, text that `serde_json` printed, with DEL, C1 controls,
/// bidirectional controls and U+2028/U+2029 written as JSON `\uXXXX` escapes.
///
/// Correct on whole `serde_json` output only: there, a character other than
/// ASCII can only stand inside a string, where `\uXXXX` means that character,
/// and the C0 controls are either escaped already (in strings) or the
/// layout's own newlines, which must stay. DEL, the one ASCII character
/// escaped here, is likewise only ever inside a string.
pub(crate) fn for_json(json: &str) -> Cow<'_, str> {
    escape(
        json,
        |c| c >= '\u{7f}' && is_unsafe(c),
        |out, c| {
            // All of them are in the Basic Multilingual Plane: one escape each.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        },
    )
}

fn escape(
    text: &str,
    escaped: impl Fn(char) -> bool,
    write: impl Fn(&mut String, char),
) -> Cow<'_, str> {
    if !text.chars().any(&escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            write(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each kind of character the module escapes, and its neighbours
    /// that it must leave alone.
    const HOSTILE: &str = "a\u{1b}[2Jb\u{9b}31mc\u{202e}d\te\nf\r\u{7f}\u{0}\u{2066}\u{2028}";

    #[test]
    fn every_control_c1_and_bidi_character_is_escaped_for_the_terminal() {
        assert_eq!(
            for_terminal(HOSTILE),
            r"a\u{1b}[2Jb\u{9b}31mc\u{202e}d\u{9}e\u{a}f\u{d}\u{7f}\u{0}\u{2066}\u{2028}"
        );
        for c in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{2069}', '\u{85}',
        ] {
            let shown = for_terminal(&c.to_string()).into_owned();
            assert_eq!(shown, format!("\\u{{{:x}}}", u32::from(c)));
        }
    }

    #[test]
    fn ordinary_text_is_printed_as_it_is() {
        for text in [
            "transcribe",
            "lic:abc/vault%2F1",
            r"C:\jobs\u{1b}",
            "café, 東京, emoji 🙂, Ωmega, \u{a0}nbsp",
            "\u{200d}\u{a0}\u{ff}\u{2030}",
        ] {
            assert!(matches!(for_terminal(text), Cow::Borrowed(t) if t == text));
            assert!(matches!(for_json(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn escaping_for_the_terminal_is_idempotent() {
        let once = for_terminal(HOSTILE).into_owned();
        assert!(!once.chars().any(is_unsafe));
        assert_eq!(for_terminal(&once), once);
    }

    #[test]
    fn json_keeps_its_meaning_and_loses_every_c1_and_bidi_character() {
        let value = serde_json::json!({ "kind": HOSTILE, "nested": [{ "k\u{9b}": "\u{202e}" }] });
        for printed in [
            serde_json::to_string(&value).unwrap(),
            serde_json::to_string_pretty(&value).unwrap(),
        ] {
            let safe = for_json(&printed).into_owned();
            assert!(!safe.chars().any(|c| c != '\n' && is_unsafe(c)), "{safe:?}");
            assert!(
                safe.contains(r"\u009b") && safe.contains(r"\u202e"),
                "{safe}"
            );
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            assert_eq!(back, value);
        }
    }
}
