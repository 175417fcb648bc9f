//! Errors as the user sees them: one `error: …` line on stderr and an exit code.

use std::process::ExitCode;
use std::sync::Mutex;

/// Exit code for an error (unreachable database, unknown workflow, I/O, ...).
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit code for invalid command-line arguments (clap's convention).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code for `baton demo` when a check failed.
pub(crate) const EXIT_CHECK_FAILED: u8 = 3;

/// Strings that must never reach the terminal (database passwords).
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A failed command: a one-line message and an exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    /// An error (exit code 1).
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_ERROR,
        }
    }

    /// A failed check of `baton demo` (exit code 3).
    pub(crate) fn check_failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_CHECK_FAILED,
        }
    }

    /// Prints the error as one line on stderr and returns its exit code.
    pub(crate) fn report(&self) -> ExitCode {
        eprintln!("error: {}", one_line(&scrub(&self.message)));
        ExitCode::from(self.code)
    }
}

impl From<baton::Error> for CliError {
    fn from(e: baton::Error) -> Self {
        Self::new(e.to_string())
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&scrub(&self.message))
    }
}

/// Remembers a secret (a database password) so that no error message ever shows it.
pub(crate) fn register_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    if let Ok(mut secrets) = SECRETS.lock() {
        secrets.push(secret.to_owned());
    }
}

/// Replaces every registered secret in `text` with `***`.
pub(crate) fn scrub(text: &str) -> String {
    let mut out = text.to_owned();
    if let Ok(secrets) = SECRETS.lock() {
        for secret in secrets.iter() {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Joins the lines of a message into one, collapsing runs of whitespace.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Condenses clap's multi-paragraph usage error into one line: the error itself, then its tips.
pub(crate) fn one_line_usage_error(rendered: &str) -> String {
    let mut parts = Vec::new();
    for paragraph in rendered.split("\n\n") {
        let text = one_line(paragraph);
        if text.is_empty() || text.starts_with("Usage:") || text.starts_with("For more information")
        {
            continue;
        }
        parts.push(text);
    }
    let mut line = parts.join("; ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    line.push_str(" (see --help)");
    scrub(&line)
}

/// A panic prints one line, not a backtrace note: it is a bug, and says so.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error (a bug in baton): {}{location}",
            one_line(&scrub(&message))
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_become_one_line_with_their_tips() {
        let rendered = "error: unexpected argument '--workflow' found\n\n  tip: a similar argument \
                        exists: '--workflows'\n\nUsage: baton demo --workflows <N>\n\nFor more \
                        information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(rendered),
            "error: unexpected argument '--workflow' found; tip: a similar argument exists: \
             '--workflows' (see --help)"
        );
        let missing = "error: the following required arguments were not provided:\n  \
                       --workflows <N>\n\nUsage: baton enqueue --workflows <N>\n";
        assert_eq!(
            one_line_usage_error(missing),
            "error: the following required arguments were not provided: --workflows <N> (see --help)"
        );
    }

    #[test]
    fn secrets_are_scrubbed() {
        register_secret("hunter2");
        assert_eq!(scrub("password hunter2 rejected"), "password *** rejected");
        register_secret("");
        assert_eq!(scrub("nothing"), "nothing");
    }
}
