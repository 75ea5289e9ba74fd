//! The `hais-agent` command line.
//!
//! Exit codes (documented in `--help`): 0 success, 2 usage error, 65 input is not a
//! usable capture file, 66 input missing or unreadable, 74 I/O error while reading or
//! writing; `run` adds 69 unknown interface, 77 missing capability, 78 bad configuration.

mod read;
mod run;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Capture live on network interfaces and print one record per stream as it finishes.
    Run(run::RunArgs),
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match cli.command {
        Command::Read(args) => read::run(args),
        Command::Run(args) => run::run(args),
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
