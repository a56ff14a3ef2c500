//! The `weir` command: `weir run`, `weir check`, `weir --version`.
//!
//! Cold path only: parse the command line, load the config, set up logging, hand over to
//! `weir::server::run`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
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
