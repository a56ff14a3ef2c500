//! The `weir` command: `weir run`, `weir check`, `weir usage`, `weir key`, `weir --version`, and
//! the hidden `weir man` / `weir completions SHELL` used to build the package.
//!
//! Cold path only: parse the command line, load the config, set up logging, hand over to
//! `weir::server::run` (or to `weir::billing::report` for `usage`).

use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use weir::billing::report::{self, By, Format, Range, Source};
use weir::config::{self, LogConfig, LogFormat};

/// The process's allocator: jemalloc. An idle relayed connection is a handful of small heap
/// blocks (its task cell and two epoll registrations, 128-byte aligned, its live-set entry, guard
/// state and identity); jemalloc keeps them in size classes without a per-block header or the
/// alignment fragments glibc's `posix_memalign` leaves, which took 0.3–0.6 KiB off every idle
/// connection in weir-bench (README, "Idle cost"), at no measurable CPU cost.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). By default jemalloc returns freed pages to the kernel only while the process keeps
/// allocating: what a burst of handshakes used and freed (about 3 MB at 200 in flight) stayed
/// resident under idle connections. A background thread returns pages left unused for
/// `dirty_decay_ms` (1 s), and `muzzy_decay_ms: 0` skips the lazy-free step in between.
/// Per-thread caches of freed blocks (`tcache`), kept small: blocks of up to 4 KiB
/// (`tcache_max`), 16 to 64 of each size (`tcache_nslots_small_*`). Without a cache every
/// allocation and free takes its arena's lock: 25 % of weir's user-space instructions in a
/// handshake cycle (callgrind, `bench/instructions.sh`: 146.7 k → 114.5 k instructions per cycle
/// with this cache). jemalloc's default cache (blocks up to 32 KiB, up to 200 of each) kept about
/// a megabyte per thread after a burst of handshakes, which an idle thread never gave back (2.6 MB
/// at 9 900 idle connections, docs/benchmarks.md, "Issue 14, eighth part"); this one holds at most a few
/// hundred KiB per thread (weir-bench idle: 1.93 against 1.89 KiB per connection without a cache).
/// 16 to 64 rather than 8 to 32: the cache's refills and flushes were 3.2 k instructions of an
/// 86 k handshake cycle, and 2.1 % of the cycle went (idle: 1.94 against 1.92 KiB per connection;
/// 32 to 128 saved 2.8 % and took idle to 1.97).
/// (`unsafe_code` allowed: jemalloc finds the options by this exported symbol's name.)
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a NUL-terminated 'static literal.
    Some(unsafe {
        &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:true,tcache_max:4096,\
        tcache_nslots_small_min:16,tcache_nslots_small_max:64,tcache_nslots_large:8"
            .as_ptr()
    });

/// What `weir run` lets the server do with jemalloc.
const ALLOCATOR: weir::heap::Allocator =
    weir::heap::Allocator { release: release_freed_memory, decay: return_decayed_memory, stats: heap_stats };

/// Returns every page jemalloc holds freed to the kernel now (all arenas). Called once, after
/// start, for the memory startup used and freed.
fn release_freed_memory() {
    if let Err(rc) = mallctl_do(c"arena.4096.purge") {
        tracing::debug!(rc, "jemalloc: arena.4096.purge failed");
    }
}

/// Returns to the kernel the freed pages jemalloc's decay (`dirty_decay_ms`) has let go of by
/// now, in every arena. Called every half second by the descriptor sampler.
fn return_decayed_memory() {
    if let Err(rc) = mallctl_do(c"arena.4096.decay") {
        tracing::debug!(rc, "jemalloc: arena.4096.decay failed");
    }
}

/// jemalloc's figures now: refreshed (`epoch`), then read (`stats.*`; jemalloc is built with
/// its statistics, the `stats` feature).
fn heap_stats() -> Option<weir::heap::HeapStats> {
    mallctl_write(c"epoch", 1u64).ok()?;
    let read = |name: &std::ffi::CStr| mallctl_read::<usize>(name).ok().map(|v| v as u64);
    Some(weir::heap::HeapStats {
        allocated: read(c"stats.allocated")?,
        active: read(c"stats.active")?,
        resident: read(c"stats.resident")?,
    })
}

/// Runs jemalloc control `name`, one that takes no input and gives no output (`arena.4096.purge`:
/// 4096 is `MALLCTL_ARENAS_ALL` in jemalloc 5.3, every arena); `Err` carries its error number.
#[allow(unsafe_code)]
fn mallctl_do(name: &std::ffi::CStr) -> Result<(), i32> {
    use std::ptr::null_mut;
    // SAFETY: `name` is NUL-terminated; with null old/new pointers jemalloc reads and writes
    // nothing but its own state.
    match unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr(), null_mut(), null_mut(), null_mut(), 0) } {
        0 => Ok(()),
        rc => Err(rc),
    }
}

/// Reads jemalloc value `name`, of type `T` (a `bool`, `u64`, `usize` or `isize` as jemalloc
/// documents the name); `Err` carries its error number, also when jemalloc wrote another size.
#[allow(unsafe_code)]
fn mallctl_read<T: Copy + Default>(name: &std::ffi::CStr) -> Result<T, i32> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `name` is NUL-terminated; `value` is a valid `T` of `len` bytes, and jemalloc
    // writes at most `len` bytes to it (it fails with EINVAL when its value has another size);
    // nothing is written to jemalloc.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(name.as_ptr(), (&mut value as *mut T).cast(), &mut len, std::ptr::null_mut(), 0)
    };
    match rc {
        0 if len == std::mem::size_of::<T>() => Ok(value),
        0 => Err(rustix::io::Errno::INVAL.raw_os_error()),
        rc => Err(rc),
    }
}

/// Writes `value` to jemalloc control `name` (of type `T`), reading nothing back.
#[allow(unsafe_code)]
fn mallctl_write<T: Copy>(name: &std::ffi::CStr, mut value: T) -> Result<(), i32> {
    // SAFETY: `name` is NUL-terminated; jemalloc reads `size_of::<T>()` bytes from `value`, a
    // valid `T`, and writes nothing (null old pointer).
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&mut value as *mut T).cast(),
            std::mem::size_of::<T>(),
        )
    };
    match rc {
        0 => Ok(()),
        rc => Err(rc),
    }
}

/// `weir --version`: the crate version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("WEIR_COMMIT"), ")");

/// Environment variables the man page documents.
const ENVIRONMENT: [(&str, &str); 3] = [
    ("WEIR_CONFIG", "The configuration file when --config is not given (run, check)."),
    ("RUST_LOG", "Log filter overriding log.level, e.g. info,weir=debug."),
    (
        "any variable named in the configuration",
        "String values may hold ${ENV_NAME} and ${file:PATH} references (see the README, Configuration).",
    ),
];

/// Files the man page documents (as installed by the Debian package).
const FILES: [(&str, &str); 3] = [
    (
        "/etc/weir/config.yaml",
        "The configuration of the packaged service; relative paths in it are relative to /etc/weir.",
    ),
    ("/var/lib/weir", "The service's state: usage spool, usage file, room history."),
    ("/usr/share/doc/weir/README.md", "The full documentation."),
];

/// A WebSocket gateway that relays connections byte for byte and meters every one.
#[derive(Parser)]
#[command(name = "weir", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (SIGHUP reloads the configuration, SIGTERM drains and exits).
    Run {
        /// Configuration file; relative paths in it are relative to its directory.
        #[arg(long, short, env = "WEIR_CONFIG", default_value = "config.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running weir (zero-downtime binary upgrade):
        /// start this, then send the old process SIGQUIT (README, "Binary upgrade").
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a configuration file: print every error and exit 1, or print a summary and exit 0.
    Check {
        /// Configuration file; relative paths in it are relative to its directory.
        #[arg(long, short, env = "WEIR_CONFIG", default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Print usage totals over a time range from the file sink or the PostgreSQL sink (the same
    /// totals from either; see the README's "Usage reports"), or with --quotas each tenant's
    /// standing against its quotas.
    #[command(group(ArgGroup::new("source").required(true).args(["file", "postgres", "quotas"])))]
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
        /// Each tenant's standing against its quotas (limit, used in the current period, share,
        /// reset time, over or not), from `data_dir/quotas.json` and the config's `quotas`.
        #[arg(long, conflicts_with_all = ["table", "from", "to", "by"])]
        quotas: bool,
        /// Configuration file (with --quotas).
        #[arg(long, short, value_name = "PATH", requires = "quotas")]
        config: Option<PathBuf>,
        /// Only this tenant (with --quotas).
        #[arg(long, requires = "quotas")]
        tenant: Option<String>,
    },
    /// API keys for `routes[].auth.api_keys`: make a new one, or hash an existing one.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Print the man page (roff) generated from this command line.
    #[command(hide = true)]
    Man,
    /// Print a completion script for SHELL (bash or fish).
    #[command(hide = true)]
    Completions {
        /// bash or fish.
        shell: String,
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
        Command::Man => {
            print!("{}", weir::manual::man_page(&Cli::command(), &ENVIRONMENT, &FILES));
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => match weir::manual::completions(&Cli::command(), &shell) {
            Some(script) => {
                print!("{script}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "weir completions: no completions for `{shell}`; use one of: {}",
                    weir::manual::SHELLS.join(", ")
                );
                ExitCode::FAILURE
            }
        },
        Command::Usage { quotas: true, config, tenant, format, .. } => {
            quota_standing(&config.unwrap_or_else(|| "config.yaml".into()), tenant.as_deref(), format)
        }
        Command::Usage { file, postgres, table, from, to, by, format, .. } => {
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
            log_paths(&config, &c);
            match weir::server::run(c, &config, upgrade, ALLOCATOR) {
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

/// `weir usage --quotas`: print each tenant's standing (or only `tenant`'s) from the usage file
/// in the config's `data_dir`, under the config's quotas.
fn quota_standing(path: &std::path::Path, tenant: Option<&str>, format: Format) -> ExitCode {
    let c = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if c.quotas.is_empty() {
        eprintln!("weir usage: {} has no `quotas:`", path.display());
        return ExitCode::FAILURE;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    match weir::metering::standing::standings(&c.quotas, &c.data_dir, tenant, now) {
        Ok((rows, found)) => {
            if !found {
                let file = c.data_dir.join(weir::metering::quota::FILE);
                eprintln!("weir usage: no quota usage saved yet ({} is missing): every use is 0", file.display());
            }
            print!("{}", weir::metering::standing::render(&rows, format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir usage: {e}");
            ExitCode::FAILURE
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
/// ends in Pingora's retries, and `/readyz` says so instead of reaching the other process's
/// listener (`admin::owner`).
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

/// Log where weir reads and writes, as absolute paths (relative ones in the file are relative to
/// its directory), so an operator sees at once which spool and files a service uses.
fn log_paths(path: &std::path::Path, c: &weir::config::Config) {
    let config = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let files: Vec<String> = c
        .usage
        .sinks
        .iter()
        .filter_map(|s| match &s.kind {
            config::SinkKind::File { path, .. } => Some(path.display().to_string()),
            _ => None,
        })
        .collect();
    tracing::info!(
        config = %config.display(),
        spool_dir = %c.usage.spool_dir.display(),
        data_dir = %c.data_dir.display(),
        usage_files = %files.join(", "),
        "paths"
    );
}

/// Logs go through `tracing`; Pingora's `log` records are bridged in (tracing-log). `RUST_LOG`
/// overrides the configured level. Text logs carry colour codes only when stderr is a terminal
/// (not in journald or a file).
fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    fn option<T: Copy + Default>(name: &std::ffi::CStr) -> T {
        super::mallctl_read(name).unwrap_or_else(|rc| panic!("mallctl {name:?}: error {rc}"))
    }

    #[test]
    fn the_allocator_returns_freed_pages_on_its_own() {
        // The test binary links main.rs's allocator and options, as `weir` does (unless the
        // environment overrides them, which the test command does not).
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return;
        }
        assert!(option::<bool>(c"opt.background_thread"));
        assert_eq!(option::<isize>(c"opt.dirty_decay_ms"), 1000);
        assert_eq!(option::<isize>(c"opt.muzzy_decay_ms"), 0);
        assert!(option::<bool>(c"opt.tcache"));
        assert_eq!(option::<usize>(c"opt.tcache_max"), 4096);
        assert_eq!(option::<u32>(c"opt.tcache_nslots_small_max"), 64);
        assert_eq!(option::<u32>(c"opt.tcache_nslots_small_min"), 16);
        assert_eq!(super::mallctl_do(c"arena.4096.purge"), Ok(()));
        assert_eq!(super::mallctl_do(c"arena.4096.decay"), Ok(()));
        assert!(super::mallctl_do(c"arena.4096.no_such_control").is_err());
    }

    #[test]
    fn the_allocator_counts_what_the_program_holds() {
        let before = super::heap_stats().expect("jemalloc is built with its statistics");
        assert!(
            before.allocated > 0 && before.allocated <= before.active && before.active <= before.resident,
            "{before:?}"
        );
        // 4 MiB held: the figures grow by it (other test threads allocate too: a margin).
        let held = vec![1u8; 4 << 20];
        let during = super::heap_stats().unwrap();
        let grew = during.allocated as i64 - before.allocated as i64;
        assert!((3 << 20..6 << 20).contains(&grew), "allocated grew by {grew} bytes for 4 MiB held");
        drop(held);
        assert!(super::mallctl_read::<u32>(c"stats.allocated").is_err(), "a size mismatch is an error");
    }
}
