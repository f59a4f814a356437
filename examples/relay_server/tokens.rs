//! Who may use the relay: the accounts and their bearer tokens, read once at
//! start from a file given with `--tokens`.
//!
//! The file has one `ACCOUNT TOKEN` pair per line, separated by spaces or tabs;
//! blank lines and lines starting with `#` are skipped. An account is 1 to
//! [`MAX_ACCOUNT_LEN`] visible ASCII characters; a token is
//! [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] of them (`openssl rand -hex 32`
//! makes a good one). Each account and each token appears once. Only the
//! accounts of the file exist: a client cannot invent one to get its credits.
//!
//! Tokens are kept as SHA-256 digests and a presented token is compared with
//! every one of them, each comparison in constant time and without stopping at
//! a match: how long a lookup takes says nothing about how much of a token was
//! right, nor which account it belongs to.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Longest account name.
pub(crate) const MAX_ACCOUNT_LEN: usize = 64;
/// Shortest token: shorter ones are guessable.
pub(crate) const MIN_TOKEN_LEN: usize = 16;
/// Longest token.
pub(crate) const MAX_TOKEN_LEN: usize = 256;

/// A token's SHA-256 digest.
type Digest32 = [u8; 32];

/// The accounts and the digests of their tokens.
pub(crate) struct Tokens {
    accounts: Vec<(String, Digest32)>,
}

/// Why a tokens file was refused: a message naming the file and the line.
#[derive(Debug)]
pub(crate) struct TokensError(String);

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokensError {}

impl Tokens {
    /// Reads and checks the tokens file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokensError(format!("reading tokens file {}: {e}", path.display())))?;
        Tokens::parse(&text)
            .map_err(|e| TokensError(format!("tokens file {}: {e}", path.display())))
    }

    /// Parses the text of a tokens file; an error names the offending line.
    fn parse(text: &str) -> Result<Tokens, String> {
        let mut accounts: Vec<(String, Digest32)> = Vec::new();
        let mut first_line_of = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let Some((account, token)) =
                parse_line(line).map_err(|why| format!("line {number}: {why}"))?
            else {
                continue;
            };
            let digest = digest_of(token);
            for ((known, known_digest), first) in accounts.iter().zip(&first_line_of) {
                if known == account {
                    return Err(format!(
                        "line {number}: account {account} is already given on line {first}"
                    ));
                }
                if constant_time_eq(known_digest, &digest) {
                    return Err(format!(
                        "line {number}: the token of line {first} again (a token names one account)"
                    ));
                }
            }
            accounts.push((account.to_owned(), digest));
            first_line_of.push(number);
        }
        if accounts.is_empty() {
            return Err("no accounts (one `ACCOUNT TOKEN` pair per line)".to_owned());
        }
        Ok(Tokens { accounts })
    }

    /// How many accounts there are.
    pub(crate) fn len(&self) -> usize {
        self.accounts.len()
    }

    /// The account whose token is `presented`, if any. Compares with every
    /// account's token, in constant time each.
    pub(crate) fn account_of(&self, presented: &str) -> Option<&str> {
        let digest = digest_of(presented);
        let mut found = None;
        for (account, known) in &self.accounts {
            // No early exit: every digest is compared whatever matched before.
            if constant_time_eq(known, &digest) {
                found = Some(account.as_str());
            }
        }
        found
    }
}

/// One line's account and token, `None` for a blank line or a comment.
fn parse_line(line: &str) -> Result<Option<(&str, &str)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields = line.split_ascii_whitespace();
    let (Some(account), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected `ACCOUNT TOKEN` (two fields)".to_owned());
    };
    check_field("the account", account, 1, MAX_ACCOUNT_LEN)?;
    check_field("the token", token, MIN_TOKEN_LEN, MAX_TOKEN_LEN)?;
    Ok(Some((account, token)))
}

/// Checks that `value` is `min..=max` visible ASCII characters.
fn check_field(what: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what} is not visible ASCII"));
    }
    if !(min..=max).contains(&value.len()) {
        return Err(format!(
            "{what} is {} characters, expected {min} to {max}",
            value.len()
        ));
    }
    Ok(())
}

fn digest_of(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `a` and `b` are equal, looking at every byte whatever the others
/// hold: the time taken does not depend on where they differ.
fn constant_time_eq(a: &Digest32, b: &Digest32) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the compiler from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}
