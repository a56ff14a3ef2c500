//! The `weir` command: `weir run`, `weir check`, `weir usage`, `weir --version`.
//!
//! Cold path only: parse the command line, load the config, set up logging, hand over to
//! `weir::server::run` (or to `weir::billing::report` for `usage`).

use clap::{ArgGroup, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weir::billing::report::{self, By, Format, Range, Source};
use weir::config::{self, LogConfig, LogFormat};

/// A WebSocket gateway that relays connections byte for byte and meters every one.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Check a configuration file: print every error and exit 1, or print a summary and exit 0.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Print usage totals over a time range from the file sink or the PostgreSQL sink (the same
    /// totals from either; see the README's "Usage reports").
    #[command(group(ArgGroup::new("source").required(true).args(["file", "postgres"])))]
    Usage {
        /// The file sink's path; its rotated siblings (`PATH.<time>`) are read too.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// The PostgreSQL sink's connection string (`host=… user=… dbname=…` or `postgresql://…`).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// The PostgreSQL sink's table [default: weir_usage].
        #[arg(long)]
        table: Option<String>,
        /// Start of the range, inclusive: RFC 3339 UTC (2026-11-22T00:00:00Z) or a date (2026-11-22).
        #[arg(long, value_name = "TIME", value_parser = report::parse_time)]
        from: Option<i64>,
        /// End of the range, exclusive: RFC 3339 UTC or a date.
        #[arg(long, value_name = "TIME", value_parser = report::parse_time)]
        to: Option<i64>,
        /// Group by tenant, route, object (namespace/id) or day (UTC).
        #[arg(long, default_value = "tenant")]
        by: By,
        /// Output: table, csv or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Usage { file, postgres, table, from, to, by, format } => {
            let source = match (file, postgres) {
                (Some(_), _) if table.is_some() => {
                    eprintln!(
                        "weir usage: --table names the PostgreSQL sink's table; use it with --postgres, not --file"
                    );
                    return ExitCode::FAILURE;
                }
                (Some(path), _) => Source::File(path),
                (None, Some(url)) => Source::Postgres { url, table: table.unwrap_or_else(|| "weir_usage".into()) },
                (None, None) => {
                    eprintln!("weir usage: give --file PATH or --postgres URL");
                    return ExitCode::FAILURE;
                }
            };
            match report::report(&source, Range { from, to }, by) {
                Ok((rows, skipped)) => {
                    print!("{}", report::render(&rows, by, format));
                    for line in &skipped.first {
                        eprintln!("weir usage: skipped {line}");
                    }
                    if skipped.count > skipped.first.len() as u64 {
                        eprintln!("weir usage: … and {} more", skipped.count - skipped.first.len() as u64);
                    }
                    if skipped.count > 0 {
                        let s = if skipped.count == 1 { "" } else { "s" };
                        eprintln!(
                            "weir usage: skipped {} malformed line{s} (not usage records); the totals leave them out",
                            skipped.count
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weir usage: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in config::warnings(&c) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listener(s), {} pool(s), {} object namespace(s), {} route(s))",
                    config.display(),
                    c.listeners.len(),
                    c.pools.len(),
                    c.objects.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&c.log);
            for w in config::warnings(&c) {
                tracing::warn!("{w}");
            }
            match weir::server::run(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("weir: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs go through `tracing`; Pingora's `log` records are bridged in (tracing-log). `RUST_LOG`
/// overrides the configured level.
fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
