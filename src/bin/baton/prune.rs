//! `baton prune`: delete announced workflows older than a given age.

use std::process::ExitCode;
use std::time::Duration;

use baton::Baton;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;

/// Arguments of `baton prune`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Age of the announcement beyond which a workflow is deleted: a number and a unit
    /// (`s`, `m`, `h`, `d`), e.g. `7d`, `12h`, `30m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    older_than: Duration,
    /// Workflows deleted per transaction.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    batch: u32,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Deletes announced workflows (steps first, the claim row last), batch by batch. Running or
/// unannounced workflows are never touched.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let builder = Baton::builder()
        .sweeper(false)
        .listen(false)
        .max_connections(2);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let pruned = baton.prune(args.older_than, args.batch).await;
    baton.shutdown().await;
    println!("pruned {} announced workflows", pruned?);
    Ok(ExitCode::SUCCESS)
}

fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 7d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be one of s, m, h, d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("7").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-1d").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
