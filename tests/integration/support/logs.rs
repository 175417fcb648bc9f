//! Captures baton's warnings (process-wide) so a test can assert that something was logged.
//!
//! The subscriber is global, so the lines of every test running at the time end up in one
//! buffer: look for lines that name your own workflow id.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LINES: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

/// The captured log, installing the capturing subscriber on first use.
pub(crate) fn captured() -> Logs {
    let buffer = *LINES.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let installed = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(buffer))
            .try_init();
        if installed.is_err() {
            eprintln!("warning: another tracing subscriber is installed; logs are not captured");
        }
        buffer
    });
    Logs(buffer)
}

/// A handle on the captured lines.
pub(crate) struct Logs(&'static Mutex<Vec<u8>>);

impl Logs {
    /// Captured lines containing every one of `needles`.
    pub(crate) fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let bytes = self.0.lock().expect("log lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
