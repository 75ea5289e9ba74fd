//! `make-capture`: writes a large, deterministic, realistic pcap for the read benchmarks.
//!
//! ```text
//! make-capture -o FILE [--size 1G] [--seed 1] [--mean-bulk 256K] [--concurrency 48]
//!              [--handshakes-only] [--ipv6-share 0.15] [--corpus DIR]
//! ```
//!
//! Also writes `FILE.stats.json` (connections, ClientHellos, packets, bytes).

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use hais_benches::corpus;
use hais_benches::pcap::PcapWriter;
use hais_benches::synth::{SynthConfig, generate};

const USAGE: &str = "usage: make-capture -o FILE [--size 1G] [--seed N] [--mean-bulk 256K] \
[--concurrency N] [--handshakes-only] [--ipv6-share F] [--corpus DIR]";

/// `123`, `64K`, `512M`, `1G`, `1.5G` (binary multiples).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0).then_some((v * mult as f64) as u64)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make-capture: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut cfg = SynthConfig::default();
    let mut out: Option<PathBuf> = None;
    let mut dir = corpus::default_dir();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "-o" | "--output" => out = Some(PathBuf::from(val(&a)?)),
            "--size" => cfg.target_bytes = parse_size(&val(&a)?).ok_or("bad --size")?,
            "--seed" => cfg.seed = val(&a)?.parse().map_err(|_| "bad --seed")?,
            "--mean-bulk" => cfg.mean_bulk = parse_size(&val(&a)?).ok_or("bad --mean-bulk")?,
            "--concurrency" => {
                cfg.concurrency = val(&a)?.parse().map_err(|_| "bad --concurrency")?;
            }
            "--ipv6-share" => cfg.ipv6_share = val(&a)?.parse().map_err(|_| "bad --ipv6-share")?,
            "--handshakes-only" => cfg.mean_bulk = 0,
            "--corpus" => dir = PathBuf::from(val(&a)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let out = out.ok_or(USAGE)?;
    let t0 = Instant::now();
    let caps = corpus::load_dir(&dir)?;
    let templates = corpus::templates(&caps);
    eprintln!(
        "make-capture: corpus {}: {} captures -> {} TLS, {} HTTP, {} SSH templates",
        dir.display(),
        caps.len(),
        templates.tls.len(),
        templates.http.len(),
        templates.ssh.len()
    );
    let file = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = PcapWriter::new(BufWriter::with_capacity(1 << 20, file))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let stats =
        generate(&templates, &cfg, &mut w).map_err(|e| format!("{}: {e}", out.display()))?;
    w.finish().map_err(|e| format!("{}: {e}", out.display()))?;
    let json = stats.to_json(&cfg);
    let side = PathBuf::from(format!("{}.stats.json", out.display()));
    std::fs::write(&side, format!("{json}\n")).map_err(|e| format!("{}: {e}", side.display()))?;
    eprintln!(
        "make-capture: wrote {} ({:.1} MB, {} packets, {} connections, {} ClientHellos, {:.0}% bulk) in {:.1} s",
        out.display(),
        stats.pcap_bytes() as f64 / 1e6,
        stats.packets,
        stats.connections,
        stats.client_hellos,
        100.0 * stats.bulk_bytes as f64 / stats.pcap_bytes().max(1) as f64,
        t0.elapsed().as_secs_f64()
    );
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(65_536));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("0.5M"), Some(1 << 19));
        assert_eq!(parse_size("x"), None);
    }
}
