//! The `--database-url` option and connecting with clear, password-free errors.

use std::path::PathBuf;

use baton::Baton;

use crate::failure::{CliError, register_secret};

/// The database used when neither `--database-url` nor `DATABASE_URL` is given.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite:baton-demo.db";

/// Which database to use.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct DatabaseArgs {
    /// Database URL: `postgres://user@host/db` or `sqlite:PATH`.
    #[arg(
        long = "database-url",
        value_name = "URL",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DATABASE_URL
    )]
    pub(crate) url: String,
}

/// Whether connecting applies migrations or expects them applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schema {
    /// Apply baton's migrations (idempotent).
    Migrate,
    /// Apply them, and accept an in-memory SQLite database too (the demo runs in one process).
    MigrateInMemoryOk,
    /// Require them; a database without them is an error asking for `baton migrate`.
    Existing,
}

/// How long the first connection attempt to a PostgreSQL server may take.
#[cfg(feature = "postgres")]
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl DatabaseArgs {
    /// The URL with its password redacted, for output.
    pub(crate) fn shown(&self) -> String {
        baton::redact_url(&self.url)
    }

    /// Connects `builder` to this database.
    ///
    /// An in-memory SQLite database is refused unless `schema` allows it (it vanishes with the
    /// process). With [`Schema::Existing`], a SQLite file that does not exist is reported (and
    /// not created), and a database without migrations asks for `baton migrate`. A PostgreSQL
    /// server is tried once first, so that an unreachable one is reported at once and with its
    /// reason.
    pub(crate) async fn connect(
        &self,
        builder: baton::Builder,
        schema: Schema,
    ) -> Result<Baton, CliError> {
        for secret in password_of(&self.url) {
            register_secret(&secret);
        }
        let shown = self.shown();
        match sqlite_target(&self.url) {
            Some(SqliteTarget::Memory) if schema != Schema::MigrateInMemoryOk => {
                return Err(CliError::new(format!(
                    "{shown} is an in-memory database, gone when this command exits: use a file, e.g. sqlite:baton.db"
                )));
            }
            Some(SqliteTarget::File(path)) if schema == Schema::Existing && !path.exists() => {
                return Err(CliError::new(format!(
                    "database file {} does not exist: create it with `baton migrate --database-url {shown}`",
                    path.display()
                )));
            }
            _ => {}
        }
        #[cfg(feature = "postgres")]
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            probe_postgres(&self.url)
                .await
                .map_err(|reason| CliError::new(format!("cannot connect to {shown}: {reason}")))?;
        }
        let builder = builder
            .database_url(self.url.clone())
            .migrate(schema != Schema::Existing);
        builder.connect().await.map_err(|e| match e {
            baton::Error::NotMigrated => CliError::new(format!(
                "database {shown} has no baton schema (or an outdated one): run `baton migrate` on it first"
            )),
            e @ baton::Error::InvalidUrl { .. } => CliError::from(e),
            e => CliError::new(format!("cannot use database {shown}: {e}")),
        })
    }
}

/// Opens and closes one connection: the pool behind `Baton` retries a refused connection until
/// its acquire timeout and then reports only "pool timed out", hiding the reason.
#[cfg(feature = "postgres")]
async fn probe_postgres(url: &str) -> Result<(), String> {
    use sqlx::Connection;
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// The password in `url`, as written and percent-decoded (passwords shorter than 3 characters are
/// left to the library's redaction: scrubbing them would garble every message).
fn password_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    // Query parameters such as `?password=…` or `&sslpassword=…`.
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((key, value)) = pair.split_once('=')
                && key.to_ascii_lowercase().contains("password")
            {
                found.push(value.to_owned());
            }
        }
    }
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let userinfo = match authority.rfind('@') {
            Some(at) => Some(&authority[..at]),
            // A password containing '/' cuts the authority short: look in the whole rest.
            None => match rest.rfind('@') {
                Some(at) => Some(&rest[..at]),
                // No '@' at all: `user:secret` would be read as host and port; a port is digits.
                None => Some(authority).filter(|a| {
                    a.split_once(':')
                        .is_some_and(|(_, p)| !p.chars().all(|c| c.is_ascii_digit()))
                }),
            },
        };
        if let Some((_, password)) = userinfo.and_then(|u| u.split_once(':')) {
            found.push(password.to_owned());
        }
    }
    let mut out = Vec::new();
    for secret in found {
        let decoded = percent_decode(&secret);
        out.push(secret.clone());
        if decoded != secret {
            out.push(decoded);
        }
    }
    out.retain(|p| p.chars().count() >= 3);
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char).to_digit(16).map(|d| d as u8)
}

/// What a `sqlite:` URL points at.
#[derive(Debug, PartialEq, Eq)]
enum SqliteTarget {
    /// A database file.
    File(PathBuf),
    /// An in-memory database.
    Memory,
}

/// What a `sqlite:` URL points at, or `None` for other backends.
fn sqlite_target(url: &str) -> Option<SqliteTarget> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return Some(SqliteTarget::Memory);
    }
    Some(SqliteTarget::File(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_raw_and_decoded() {
        assert_eq!(password_of("postgres://u:secret@h:1/x"), vec!["secret"]);
        assert_eq!(
            password_of("postgres://u:se%2Fcret@h/x"),
            vec!["se%2Fcret", "se/cret"]
        );
        assert_eq!(password_of("postgres://u:se/cret@h/x"), vec!["se/cret"]);
        assert!(password_of("postgres://u@h/x").is_empty());
        assert!(password_of("sqlite:baton.db").is_empty());
        assert_eq!(
            password_of("postgres://h/x?password=secret"),
            vec!["secret"]
        );
        assert_eq!(
            password_of("postgres:///x?host=h&PASSWORD=secret&port=1"),
            vec!["secret"]
        );
        assert_eq!(password_of("postgres://u:secret"), vec!["secret"]);
        assert!(password_of("postgres://h:5432/x").is_empty());
    }

    #[test]
    fn finds_sqlite_files() {
        let file = |p: &str| Some(SqliteTarget::File(PathBuf::from(p)));
        assert_eq!(sqlite_target("sqlite:a.db"), file("a.db"));
        assert_eq!(
            sqlite_target("sqlite://tmp/a.db?mode=rwc"),
            file("tmp/a.db")
        );
        assert_eq!(sqlite_target("sqlite::memory:"), Some(SqliteTarget::Memory));
        assert_eq!(sqlite_target("sqlite:"), Some(SqliteTarget::Memory));
        assert_eq!(
            sqlite_target("sqlite:x?mode=memory"),
            Some(SqliteTarget::Memory)
        );
        assert_eq!(sqlite_target("postgres://h/x"), None);
    }
}
