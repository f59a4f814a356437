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
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Longest account name.
pub(crate) const MAX_ACCOUNT_LEN: usize = 64;
/// Shortest token: shorter ones are guessable.
pub(crate) const MIN_TOKEN_LEN: usize = 16;
/// Longest token.
pub(crate) const MAX_TOKEN_LEN: usize = 256;

/// Largest tokens file: some ten thousand accounts.
const MAX_FILE_BYTES: u64 = 4 << 20;

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
    ///
    /// The file decides who gets in, so one that another user could have
    /// written is refused: it must be a regular file, belong to this user or
    /// to root (a secret mounted by the system), and not be writable by group
    /// or others. A link to such a file is followed (secrets are often
    /// mounted through links). One readable by others is taken, with a
    /// warning.
    pub(crate) fn load(path: &Path) -> Result<Tokens, TokensError> {
        let refused = |why: String| TokensError(format!("tokens file {}: {why}", path.display()));
        // Without blocking: a FIFO planted there would wait for a writer.
        let mut file = std::fs::File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| refused(format!("cannot be opened: {e}")))?;
        let metadata = file
            .metadata()
            .map_err(|e| refused(format!("cannot be read: {e}")))?;
        if !metadata.is_file() {
            return Err(refused("not a regular file".to_owned()));
        }
        let user = rustix::process::getuid().as_raw();
        if metadata.uid() != user && metadata.uid() != 0 {
            return Err(refused(format!(
                "belongs to user {}, neither this user ({user}) nor root: another user could \
                 have written it",
                metadata.uid()
            )));
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(refused(format!(
                "writable by other users (mode {mode:o}): `chmod go-w` it"
            )));
        }
        if mode & 0o044 != 0 {
            eprintln!(
                "relay: warning: tokens file {} is readable by other users (mode {mode:o}): \
                 `chmod go-r` it",
                path.display()
            );
        }
        let mut text = String::new();
        (&mut file)
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| refused(format!("cannot be read: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(refused(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        Tokens::parse(&text).map_err(refused)
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
