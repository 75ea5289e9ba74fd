//! `hais-control-plane`: runs every control-plane service in one process (default), or one
//! service with `--service NAME`; `hais-control-plane token create` makes an agent join token;
//! `hais-control-plane policy check FILE…` validates Cedar policy files offline.
//! See `--help` for every configuration key.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use hais_control_plane::config::{HumanDuration, LogFormat};
use hais_control_plane::services::spire;
use hais_control_plane::store::{self, StoreOptions};
use hais_control_plane::{App, Config, ServiceName};
use tracing_subscriber::EnvFilter;

/// HaIS control plane. With no options: all services in one process, SQLite under ./data,
/// in-process event bus, listening on 0.0.0.0:3000.
#[derive(Debug, Parser)]
#[command(name = "hais-control-plane", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (also HAIS_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Run one service alone on its seed port (gateway, ja4, spire, correlation, identity,
    /// policy, alert, threat) or `all`.
    #[arg(long)]
    service: Option<ServiceName>,
    /// postgres://… or sqlite://… (default: SQLite under the data directory).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// redis://… to share the event bus between processes.
    #[arg(long)]
    redis_url: Option<String>,
    /// Listen address, e.g. 127.0.0.1:3000.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory for the embedded database.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Policy sets (Cedar).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate policy files offline, as the policy service would (for CI pipelines). A
    /// directory stands for its `*.cedar` files; all files together form one set. Prints each
    /// problem as FILE:LINE:COLUMN: message. Exit status: 0 valid, 1 refused, 2 a file could not
    /// be read. Needs no database or configuration.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// `policy check`: the exit status (see [`PolicyCommand::Check`]).
fn policy_check(files: &[PathBuf]) -> i32 {
    let sources = match hais_policy::load_sources(files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match hais_policy::compile(&sources) {
        Ok(c) => {
            println!(
                "ok: {} polic{} in {} file{}",
                c.len(),
                if c.len() == 1 { "y" } else { "ies" },
                sources.len(),
                if sources.len() == 1 { "" } else { "s" }
            );
            0
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!(
                "refused: {} problem{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            1
        }
    }
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time join token for `hais-agent enroll`, in the database the server uses
    /// (same --config / --data-dir / --database-url). The token is the last word printed.
    Create {
        /// Lifetime, e.g. 30m, 1h, 7d (at most 30d; default spire.token_ttl).
        #[arg(long)]
        ttl: Option<HumanDuration>,
        /// Free text kept with the token, e.g. the host it is meant for.
        #[arg(long)]
        description: Option<String>,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let file = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("HAIS_CONFIG").map(PathBuf::from));
    let mut config = Config::load(file.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(s) = cli.service {
        config.service = s;
    }
    if let Some(u) = &cli.database_url {
        config.database_url = Some(u.clone());
    }
    if let Some(u) = &cli.redis_url {
        config.redis_url = Some(u.clone());
    }
    if let Some(l) = cli.listen {
        config.listen = Some(l);
    }
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(f) = cli.log_format {
        config.log_format = f;
    }
    config.check()?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `token create`: opens the store (migrating it if this runs first), loads or creates the CA
/// exactly as the server does, and stores a token. Runs beside a live server: SQLite waits for
/// the server's writer, PostgreSQL does not care.
async fn token_create(
    config: &Config,
    ttl: Option<HumanDuration>,
    description: Option<String>,
) -> anyhow::Result<()> {
    let ttl = ttl.unwrap_or(config.spire.token_ttl).0;
    let url = config.database_url();
    // No roll-up worker: this process only writes a token.
    let store = store::open_with(
        &url,
        config.database_schema.as_deref(),
        1,
        StoreOptions {
            rollup_interval: None,
            ..StoreOptions::default()
        },
    )
    .await
    .context("opening the database")?;
    let result = async {
        let authority = spire::Authority::load(&*store, &config.spire).await?;
        spire::issue_token(&*store, &authority, ttl, description, "cli").await
    }
    .await;
    let _ = store.close().await;
    let t = result.context("creating the join token")?;
    println!(
        "Join token {} (single use, expires {}).\nEnroll an agent with:\n  hais-agent enroll --server <this host>:3001 --token {}",
        t.id,
        spire::routes::rfc3339_us(t.expires_us),
        t.token
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = Cli::command()
        .after_long_help(Config::help_text())
        .after_help(Config::help_text())
        .get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some(Command::Policy(PolicyCommand::Check { files })) = &cli.command {
        std::process::exit(policy_check(files));
    }
    let config = load_config(&cli).context("loading configuration")?;
    init_logging(&config);
    match cli.command {
        Some(Command::Token(TokenCommand::Create { ttl, description })) => {
            return token_create(&config, ttl, description).await;
        }
        Some(Command::Policy(_)) | None => {}
    }
    if let Err(e) = hais_control_plane::server::raise_nofile_limit() {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let addr = config.listen_addr();
    let service = config.service;
    let app = App::start(config)
        .await
        .with_context(|| format!("starting service {service}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let scheme = if app.tls_enabled() { "https" } else { "http" };
    tracing::info!(%service, %addr, scheme, store = app.state.store.backend(), bus = app.state.bus.backend(), "listening");
    app.serve(listener, shutdown_signal()).await?;
    Ok(())
}
