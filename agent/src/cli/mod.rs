//! The `hais-agent` command line.
//!
//! Exit codes (documented in `--help`): 0 success, 2 usage error, 65 input is not a
//! usable capture file, 66 input missing or unreadable, 74 I/O error while reading or
//! writing; `run` adds 69 unknown interface, 77 missing capability, 78 bad configuration;
//! `enroll`, `status` and `doctor` document theirs in their own modules.

mod doctor;
mod enroll;
mod read;
mod run;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::AgentConfig;

/// HaIS host agent: JA4+ fingerprints bound to workload identity.
#[derive(Debug, Parser)]
#[command(
    name = "hais-agent",
    version,
    about,
    after_help = "Exit codes: 0 ok, 2 usage, 65 not a capture file, 66 missing/unreadable input, 69 unknown interface, 74 I/O error, 77 missing capability, 78 bad configuration.\n\
JA4 is BSD-3-Clause; JA4S/H/L/X/SSH/T/D are under the FoxIO License 1.1 (see NOTICE)."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "HAIS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `hais_agent=debug`.
    #[arg(long, default_value = "warn", global = true, env = "HAIS_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fingerprint a pcap or pcapng file (`-` reads standard input) and print one record per
    /// stream, in the JA4+ reference tool's format.
    Read(read::ReadArgs),
    /// Capture live on network interfaces; print each stream's record as it finishes, or
    /// stream it to the control plane once enrolled.
    Run(run::RunArgs),
    /// Enroll with the control plane using a join token (stores the SVID in the state dir).
    Enroll(enroll::EnrollArgs),
    /// Show the running agent's state (capture counters, spool, connection, identity).
    Status(status::StatusArgs),
    /// Check privileges, interfaces, identity, server reachability and clock skew.
    Doctor(doctor::DoctorArgs),
}

/// `--config` and `--state-dir`, shared by the commands that only need the state directory.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Configuration file (TOML), for `state_dir` and `uplink.server`.
    #[arg(short = 'c', long, value_name = "FILE", env = "HAIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory. Default /var/lib/hais-agent (or `state_dir` / HAIS_STATE_DIR).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    /// The configuration (defaults < file < environment), with `--state-dir` applied.
    fn config(&self) -> Result<AgentConfig, (i32, String)> {
        let mut cfg = AgentConfig::load(self.config.as_deref())
            .map_err(|e| (e.exit_code(), e.to_string()))?;
        if let Some(d) = &self.state_dir {
            cfg.state_dir = d.clone();
        }
        cfg.validate().map_err(|e| (e.exit_code(), e.to_string()))?;
        Ok(cfg)
    }
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    // One process-wide crypto provider (ring), whatever other crates' features say.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Read(args) => read::run(args),
        Command::Run(args) => run::run(args),
        Command::Enroll(args) => enroll::run(args),
        Command::Status(args) => status::run(args),
        Command::Doctor(args) => doctor::run(args),
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
