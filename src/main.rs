//! The `weir` command: `weir run`, `weir check`, `weir usage`, `weir key`, `weir --version`.
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
        /// Take over the listening sockets of a running weir (zero-downtime binary upgrade):
        /// start this, then send the old process SIGQUIT (README, "Binary upgrade").
        #[arg(long)]
        upgrade: bool,
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
    /// API keys for `routes[].auth.api_keys`: make a new one, or hash an existing one.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Print a new random key, its SHA-256 and the config line that admits it.
    New {
        /// Tenant the key bills.
        #[arg(long, default_value = "TENANT")]
        tenant: String,
    },
    /// Print the SHA-256 of KEY (read from standard input when KEY is `-`).
    Hash {
        /// The key.
        key: String,
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
        Command::Key { action: KeyAction::New { tenant } } => {
            let key = format!("wk_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            let sha = weir::admission::auth::key_digest_hex(&key);
            println!("key:    {key}");
            println!("sha256: {sha}");
            println!("config: api_keys: [{{sha256: \"{sha}\", tenant: {tenant}}}]");
            ExitCode::SUCCESS
        }
        Command::Key { action: KeyAction::Hash { key } } => {
            let key = if key == "-" {
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).is_err() {
                    eprintln!("weir key hash: cannot read the key from standard input");
                    return ExitCode::FAILURE;
                }
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                key
            };
            println!("{}", weir::admission::auth::key_digest_hex(&key));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                // Key files and JWKS are loaded as `weir run` would load them.
                if let Err(e) = weir::admission::Gatekeeper::new(c.routes.iter(), &c.admission, None) {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
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
        Command::Run { config, upgrade } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // In an upgrade the old process holds the ports: they come over with its sockets.
            let busy = if upgrade { Vec::new() } else { unbindable(&c) };
            if !busy.is_empty() {
                for line in busy {
                    eprintln!("weir: {line}");
                }
                return ExitCode::FAILURE;
            }
            init_logging(&c.log);
            for w in config::warnings(&c) {
                tracing::warn!("{w}");
            }
            match weir::server::run(c, &config, upgrade) {
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

/// Every public listener and the admin address that cannot be bound, one line each naming the
/// address, its key, the cause and the fix (empty when all can be).
///
/// Pingora binds its listeners only once its services start; on a busy port it retries for 30 s,
/// panics in a thread and leaves a process that listens nowhere. So `weir run` binds each address
/// here first (all at once, so that two entries that overlap, such as 0.0.0.0:8080 and
/// 127.0.0.1:8080, are caught too) and releases them before handing over. A small race remains:
/// another process can take a port between this check and Pingora's own bind; that case still
/// ends in Pingora's retries.
fn unbindable(c: &weir::config::Config) -> Vec<String> {
    let addresses = c
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.address, format!("listeners[{i}].address")))
        .chain(c.admin.map(|a| (a, "admin.address".to_string())));
    let mut held = Vec::new();
    let mut problems = Vec::new();
    for (address, key) in addresses {
        match std::net::TcpListener::bind(address) {
            Ok(listener) => held.push(listener),
            Err(e) => {
                let fix = match e.kind() {
                    std::io::ErrorKind::AddrInUse => "stop the other process or choose another port",
                    std::io::ErrorKind::PermissionDenied => {
                        "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port above 1023"
                    }
                    std::io::ErrorKind::AddrNotAvailable => {
                        "no interface of this host has this address; use one of its addresses, or 0.0.0.0"
                    }
                    _ => "choose another address",
                };
                // "Address already in use (os error 98)" → "Address already in use".
                let cause = e.to_string();
                let cause = cause.split(" (os error").next().unwrap_or(&cause);
                problems.push(format!("cannot listen on {address} ({key}): {cause}; {fix}"));
            }
        }
    }
    drop(held);
    problems
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
