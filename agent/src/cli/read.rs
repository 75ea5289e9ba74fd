//! `hais-agent read`: offline fingerprinting of a capture file.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hais_dissect::keylog::KeyLog;
use hais_ja4::ja4::AlpnRule;

use crate::capture::file::CaptureFile;
use crate::capture::pcapng_secrets;
use crate::engine::{Engine, EngineConfig, Stats, StreamReport};
use crate::flow::Proto;
use crate::output::{RecordSorter, Value, write_json_line, write_yaml_list_item};

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Capture file (pcap or pcapng); `-` reads standard input.
    pub file: String,
    /// JSON Lines: one JSON object per stream per line.
    #[arg(short = 'j', long, conflicts_with = "yaml")]
    pub json: bool,
    /// YAML list, one item per stream (the default).
    #[arg(long)]
    pub yaml: bool,
    /// Also print the raw (unhashed) strings: ja4_r, ja4s_r, ja4x_r, ja4h_r.
    #[arg(short = 'r', long)]
    pub with_raw: bool,
    /// Original (wire) order instead of sorted; keys become ja4_o, ja4h_o.
    #[arg(short = 'O', long)]
    pub original_order: bool,
    /// Add the number of the packet each fingerprint came from (pkt_ja4, pkt_ja4s, ...).
    #[arg(short = 'n', long)]
    pub with_packet_numbers: bool,
    /// TLS key log (NSS format) for decrypting TLS 1.3 handshakes and HTTP inside TLS.
    /// Secrets in pcapng Decryption Secrets Blocks are used automatically.
    #[arg(long, value_name = "FILE")]
    pub keylog_file: Option<String>,
    /// Write the records to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<String>,
    /// JA4SSH window, in SSH packets.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub ssh_window: u32,
    /// How JA4/JA4S print an ALPN value whose first or last byte is not alphanumeric:
    /// `spec` follows the written method (hex digits, e.g. `bd`), `reference` mimics the
    /// reference tools (`99`). See docs/known-differences.md.
    #[arg(long, value_enum, default_value_t = AlpnStyle::Spec)]
    pub alpn_style: AlpnStyle,
    /// Most flows tracked at once (memory bound, about 1 KiB each); beyond it the least
    /// recently active flows are finished early and reported.
    #[arg(long, default_value_t = 65_536)]
    pub max_flows: usize,
    /// No summary on standard error.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Never show the progress indicator (it only shows on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlpnStyle {
    Spec,
    Reference,
}

pub fn run(args: ReadArgs) -> i32 {
    match run_inner(&args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("hais-agent read: {msg}");
            code
        }
    }
}

fn run_inner(args: &ReadArgs) -> Result<(), (i32, String)> {
    let mut keylog = KeyLog::default();
    if let Some(path) = &args.keylog_file {
        let text = std::fs::read_to_string(path).map_err(|e| (66, format!("{path}: {e}")))?;
        keylog.merge_text(&text);
    }
    let mut cap = CaptureFile::open(&args.file).map_err(|e| (e.exit_code(), e.to_string()))?;
    let mut file_size = None;
    if args.file != "-"
        && let Ok(f) = std::fs::File::open(&args.file)
    {
        file_size = f.metadata().ok().map(|m| m.len());
        for text in pcapng_secrets::scan(f) {
            keylog.merge_text(&text);
        }
    }
    let cfg = EngineConfig {
        with_raw: args.with_raw,
        original_order: args.original_order,
        with_packet_numbers: args.with_packet_numbers,
        ssh_window: args.ssh_window as usize,
        alpn_rule: match args.alpn_style {
            AlpnStyle::Spec => AlpnRule::Spec,
            AlpnStyle::Reference => AlpnRule::Reference,
        },
        max_flows: args.max_flows,
        idle_timeout_us: 0,
        keylog: Arc::new(keylog),
    };
    let mut engine = Engine::new(cfg);
    let link = cap.link_type();
    let mut progress = Progress::new(
        !args.no_progress && std::io::stderr().is_terminal(),
        file_size,
    );
    let mut read_error = None;
    let mut sorter = RecordSorter::new(SORT_MEMORY_BUDGET);
    let io_err = |e: std::io::Error| (74, format!("buffering output: {e}"));
    let mut since_drain = 0u32;
    loop {
        match cap.next_packet() {
            Ok(Some(p)) => {
                progress.advance(p.data.len() as u64 + 16);
                engine.on_frame(p.ts_us, link, p.data);
                since_drain += 1;
                if since_drain >= 4096 {
                    since_drain = 0;
                    for r in engine.take_finished() {
                        push_report(&mut sorter, args.json, r).map_err(io_err)?;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                // A truncated final record: count it, keep what was read.
                read_error = Some(e.to_string());
                break;
            }
        }
    }
    progress.clear();
    // Streamed into the sorter: the flows still open at the end (all of them, for a file
    // whose connections never close) are turned into text one at a time.
    let mut pushed = Ok(());
    engine.finish_each(|r| {
        if pushed.is_ok() {
            pushed = push_report(&mut sorter, args.json, r);
        }
    });
    pushed.map_err(io_err)?;
    let mut stats = engine.stats().clone();
    if let Some(e) = &read_error {
        stats.error("file.truncated_or_corrupt");
        tracing::warn!(error = %e, "capture file ended early");
    }
    write_reports(args, sorter, stats.streams_reported == 0)
        .map_err(|e| (74, format!("writing output: {e}")))?;
    if !args.quiet {
        print_summary(&stats, stats.streams_reported as usize);
    }
    Ok(())
}

/// Records kept in memory before sorted runs spill to temporary files.
const SORT_MEMORY_BUDGET: usize = 16 * 1024 * 1024;

fn push_report(sorter: &mut RecordSorter, json: bool, r: StreamReport) -> std::io::Result<()> {
    let mut text = String::with_capacity(512);
    let v = Value::Map(r.record);
    if json {
        write_json_line(&mut text, &v);
    } else {
        write_yaml_list_item(&mut text, &v);
    }
    let rank = match r.proto {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    };
    sorter.push((rank, r.stream), text)
}

fn write_reports(args: &ReadArgs, sorter: RecordSorter, empty: bool) -> std::io::Result<()> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::new(&mut out);
    sorter.finish(&mut out)?;
    if !args.json && empty {
        out.write_all(b"[]\n")?;
    }
    out.flush()
}

fn print_summary(stats: &Stats, streams: usize) {
    let mut line = format!(
        "hais-agent read: {} packets, {} bytes, {} flows, {} streams with fingerprints, {} errors",
        stats.packets,
        stats.bytes,
        stats.flows,
        streams,
        stats.error_total()
    );
    if !stats.errors.is_empty() {
        let kinds: Vec<String> = stats
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push_str(&format!(" ({})", kinds.join(", ")));
    }
    eprintln!("{line}");
}

/// A one-line progress indicator on stderr, only on a terminal.
struct Progress {
    enabled: bool,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.enabled
            || !self.done.is_multiple_of(64) && self.last.elapsed() < Duration::from_millis(250)
        {
            return;
        }
        if self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs / 1e6;
        let msg = match self.total {
            Some(t) if t > 0 => format!(
                "\r{:5.1}%  {} MB  {:.0} MB/s ",
                (self.done as f64 * 100.0 / t as f64).min(100.0),
                self.done / 1_000_000,
                rate
            ),
            _ => format!("\r{} MB  {:.0} MB/s ", self.done / 1_000_000, rate),
        };
        let _ = std::io::stderr().write_all(msg.as_bytes());
    }

    fn clear(&mut self) {
        if self.enabled && self.last != self.started {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }
}
