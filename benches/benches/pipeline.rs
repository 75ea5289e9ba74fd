//! The whole read pipeline (decode, flow table, reassembly, every JA4+ method, report
//! building) over frames held in memory, so no file I/O is measured.
//!
//! * `pipeline/corpus-mix`: a few real conformance captures (TLS 1.2/1.3, HTTP/1, HTTP/2,
//!   SSH), one engine per pass.
//! * `pipeline/synthetic-bulk`: 32 MiB from the `make-capture` generator (thousands of
//!   packets of bulk payload around real handshakes), the traffic shape of the big file.
//! * `pipeline/synthetic-handshakes`: the same generator with handshakes only.
//!
//! Throughput is reported in packets/s and bytes/s of one core's CPU time (see `common`).

use std::hint::black_box;
use std::time::Duration;

use common::CpuTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use hais_agent::decode::LinkType;
use hais_agent::engine::{Engine, EngineConfig};
use hais_benches::corpus::{self, Capture};
use hais_benches::pcap::MemorySink;
use hais_benches::synth::{SynthConfig, generate};

mod common;

/// Corpus captures replayed by `corpus-mix`.
const CORPUS_MIX: [&str; 6] = [
    "browsers-x509.pcapng",
    "latest.pcapng",
    "tls12.pcap",
    "http1.pcapng",
    "http2-with-cookies.pcapng",
    "ssh.pcapng",
];

fn run(caps: &[Capture]) -> usize {
    let mut n = 0;
    for cap in caps {
        let mut engine = Engine::new(EngineConfig::default());
        for (ts, frame) in &cap.frames {
            engine.on_frame(*ts, cap.link, frame);
        }
        n += black_box(engine.finish()).len();
    }
    n
}

fn synthetic(mean_bulk: u64, size: u64) -> Capture {
    let dir = corpus::default_dir();
    let caps = corpus::load_dir(&dir).expect("corpus captures");
    let templates = corpus::templates(&caps);
    let cfg = SynthConfig {
        target_bytes: size,
        mean_bulk,
        seed: 7,
        ..SynthConfig::default()
    };
    let mut sink = MemorySink::default();
    generate(&templates, &cfg, &mut sink).expect("generate");
    Capture {
        name: "synthetic".into(),
        link: LinkType::Ethernet,
        frames: sink.frames,
    }
}

fn measure(g: &mut BenchmarkGroup<'_, CpuTime>, name: &str, caps: &[Capture]) {
    let bytes: u64 = caps.iter().map(Capture::bytes).sum();
    let packets: u64 = caps.iter().map(|c| c.frames.len() as u64).sum();
    eprintln!("pipeline bench {name}: {packets} packets, {bytes} bytes");
    g.throughput(Throughput::ElementsAndBytes {
        elements: packets,
        bytes,
    });
    g.bench_function(name, |b| b.iter(|| run(caps)));
}

fn bench(c: &mut Criterion<CpuTime>) {
    let dir = corpus::default_dir();
    let mix: Vec<Capture> = CORPUS_MIX
        .iter()
        .map(|f| corpus::load(&dir.join(f)).expect("corpus capture"))
        .collect();
    let bulk = vec![synthetic(256 * 1024, 32 << 20)];
    let handshakes = vec![synthetic(0, 8 << 20)];

    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    measure(&mut g, "corpus-mix", &mix);
    measure(&mut g, "synthetic-bulk", &bulk);
    measure(&mut g, "synthetic-handshakes", &handshakes);
    g.finish();
}

criterion_group! {
    name = benches;
    config = CpuTime::criterion();
    targets = bench
}
criterion_main!(benches);
