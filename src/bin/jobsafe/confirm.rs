//! Asking before a destructive change.

use std::io::{BufRead, IsTerminal, Write};

use crate::exit::{Code, Failure};

/// Goes on if `--yes` was given or the operator answers yes to `question` on
/// the terminal. Without `--yes` and without a terminal on standard input (a
/// script, a cron job) it refuses at once rather than wait for an answer that
/// cannot come.
pub(crate) fn confirm(yes: bool, question: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::new(
            Code::NotConfirmed,
            format!(
                "{question} Not confirmed: standard input is not a terminal to ask on; \
                 pass --yes to go ahead. Nothing was changed."
            ),
        ));
    }
    // The question quotes stored text (a job's kind, a lock's holder).
    let question = crate::safe_text::for_terminal(question);
    let mut err = std::io::stderr().lock();
    // A prompt that cannot be shown is still answered below; nothing to report.
    let _ = write!(err, "{question} [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        answer.clear();
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::new(
            Code::NotConfirmed,
            "not confirmed; nothing was changed",
        )),
    }
}
