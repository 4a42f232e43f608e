//! `streamhub live`: streams numbers from stdin through ProcessLiveData and prints one line per
//! result, as it arrives. Works in a pipe and interactively (each line is sent when it is typed).
//!
//! Results go to stdout; skipped lines and the closing summary go to stderr. The window size and
//! anomaly threshold are the server's settings; this command never computes statistics itself.

use super::{CliResult, Connect, fail};
use crate::proto::processing_result::Outcome;
use crate::proto::{DataInput, ProcessingResult};
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// `streamhub live` flags; the explanation is shown after them by `--help`.
#[derive(Debug, Args)]
#[command(after_help = HELP)]
pub struct LiveArgs {
    /// Every line is a value for this key (otherwise lines are `KEY VALUE`).
    #[arg(long)]
    pub key: Option<String>,
    /// Print each result as one line of proto3 JSON (as grpcurl prints a ProcessingResult).
    #[arg(long)]
    pub json: bool,
}

const HELP: &str = "\
Input: with --key, every line of stdin is one number for that key. Without it, every line is
`KEY VALUE`: the value is the last word, the key everything before it. Blank lines and lines
starting with # are skipped; a line that does not parse is reported on stderr and skipped.
Each input's id is its line number, so results can be matched to lines. nan and inf are sent
as such (the server answers them with an INVALID_VALUE error). The exit status is 1 when a
line was skipped (it was not sent).

Output: one line per result, in input order: n (values in the key's window), mean, sd
(population standard deviation), min and max of the window including the value, and z, the
value's z-score against the window before it; ANOMALY when |z| is above the server's
threshold. The window size and threshold are server settings (--live-window,
--live-anomaly-z). A summary goes to stderr at the end.

Examples:
  seq 1 200 | streamhub live --key ramp
  printf 'cpu 0.4\\nmem 71\\ncpu 0.5\\n' | streamhub live --json
  streamhub live --key typed      (type numbers, one per line; Ctrl-D ends)";

/// What the reader makes of one line of stdin.
#[derive(Debug, PartialEq)]
enum Line {
    Skip,
    Input { key: String, value: f64 },
    Bad(String),
}

fn parse_line(line: &str, key: Option<&str>) -> Line {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Line::Skip;
    }
    let (key, text) = match key {
        Some(key) => (key.to_string(), line),
        None => match line.rsplit_once(char::is_whitespace) {
            Some((key, value)) => (key.trim_end().to_string(), value),
            None => return Line::Bad(format!("{line:?} is not `KEY VALUE`")),
        },
    };
    match text.parse::<f64>() {
        Ok(value) => Line::Input { key, value },
        Err(_) => Line::Bad(format!("{text:?} is not a number")),
    }
}

/// A number short enough to read: four decimals, or scientific notation when very large or
/// small.
fn num(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e9).contains(&v.abs()) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

/// One result as a line for people.
pub fn format_result(result: &ProcessingResult) -> String {
    let head = format!("line {:<6} {}", result.input_id, result.key);
    match &result.outcome {
        Some(Outcome::Stats(s)) => format!(
            "{head}  n={} mean={} sd={} min={} max={} z={}{}",
            s.count,
            num(s.mean),
            num(s.stddev),
            num(s.min),
            num(s.max),
            if s.z_score >= 0.0 {
                format!("+{}", num(s.z_score))
            } else {
                num(s.z_score)
            },
            if s.anomaly { "  ANOMALY" } else { "" }
        ),
        Some(Outcome::Error(e)) => format!("{head}  error {}: {}", e.code, e.message),
        None => format!("{head}  (no outcome)"),
    }
}

pub async fn run(connect: &Connect, args: LiveArgs) -> CliResult<()> {
    if args.key.as_deref() == Some("") {
        return Err(fail("--key must not be empty"));
    }
    let mut client = connect.client().await?;
    // Bounded: when the server or the terminal is slow, reading stdin waits.
    let (tx, rx) = mpsc::channel::<DataInput>(1024);
    let key = args.key.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut line_no = 0u64;
        let mut skipped = 0u64;
        while let Some(line) = lines.next_line().await? {
            line_no += 1;
            match parse_line(&line, key.as_deref()) {
                Line::Skip => {}
                Line::Bad(why) => {
                    skipped += 1;
                    eprintln!("line {line_no}: {why}; skipped");
                }
                Line::Input { key, value } => {
                    let input = DataInput {
                        id: line_no.to_string(),
                        key,
                        value,
                        timestamp: Some(std::time::SystemTime::now().into()),
                    };
                    if tx.send(input).await.is_err() {
                        break; // The call ended; its status is reported below.
                    }
                }
            }
        }
        CliResult::Ok(skipped)
    });

    let print = async {
        let mut stream = client
            .process_live_data(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (mut results, mut anomalies, mut errors) = (0u64, 0u64, 0u64);
        while let Some(result) = stream.message().await? {
            results += 1;
            match &result.outcome {
                Some(Outcome::Stats(s)) if s.anomaly => anomalies += 1,
                Some(Outcome::Error(_)) => errors += 1,
                _ => {}
            }
            if args.json {
                super::json::print(&result)?;
            } else {
                println!("{}", format_result(&result));
            }
        }
        CliResult::Ok((results, anomalies, errors))
    };
    let outcome = tokio::select! {
        outcome = print => outcome,
        _ = tokio::signal::ctrl_c() => {
            reader.abort();
            return Ok(());
        }
    };
    let (results, anomalies, errors) = match outcome {
        Ok(counts) => counts,
        Err(e) => {
            // The reader may be waiting for a line that will never be sent.
            reader.abort();
            return Err(e);
        }
    };
    // The stream ended with OK, so the reader half-closed it: stdin ended, or failed.
    let skipped = reader
        .await
        .map_err(|e| fail(format!("stdin reader failed: {e}")))??;
    eprintln!(
        "{results} results: {anomalies} anomalies, {errors} rejected by the server, \
         {skipped} lines skipped"
    );
    match skipped {
        0 => Ok(()),
        n => Err(fail(format!("{n} lines were not sent (they do not parse)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_and_without_a_key() {
        let input = |key: &str, value| Line::Input {
            key: key.into(),
            value,
        };
        assert_eq!(parse_line("  4.5 ", Some("k")), input("k", 4.5));
        assert_eq!(parse_line("cpu 0.25", None), input("cpu", 0.25));
        assert_eq!(parse_line("disk io\t-3", None), input("disk io", -3.0));
        assert_eq!(parse_line("", None), Line::Skip);
        assert_eq!(parse_line("# comment", Some("k")), Line::Skip);
        assert!(matches!(parse_line("cpu", None), Line::Bad(_)));
        assert!(matches!(parse_line("cpu high", None), Line::Bad(_)));
        assert!(matches!(parse_line("x", Some("k")), Line::Bad(_)));
        assert!(
            matches!(parse_line("nan", Some("k")), Line::Input { value, .. } if value.is_nan())
        );
    }

    #[test]
    fn numbers_stay_short() {
        assert_eq!(num(0.0), "0.0000");
        assert_eq!(num(-2.5), "-2.5000");
        assert_eq!(num(1e100), "1.0000e100");
        assert_eq!(num(1e-5), "1.0000e-5");
    }
}
