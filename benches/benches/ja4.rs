//! ClientHello -> JA4 on the real ClientHellos of the conformance corpus.
//!
//! * `client_hello/parse`: parsing alone.
//! * `client_hello/parse+ja4`: parse plus the JA4 string (what the agent does per hello
//!   when raw and original-order output are off).
//! * `client_hello/parse+ja4_all4`: parse plus all four variants (ja4, ja4_r, ja4_o,
//!   ja4_ro).
//!
//! Throughput is in ClientHellos per second (elements/s) of one core's CPU time (see
//! `common`); one iteration goes over every distinct hello of the corpus once.

use std::hint::black_box;
use std::time::Duration;

use common::CpuTime;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hais_benches::corpus;
use hais_dissect::tls::client_hello::ClientHello;
use hais_ja4::ja4::{AlpnRule, Ja4Transport, ja4, ja4_string};

mod common;

fn hellos() -> Vec<Vec<u8>> {
    let caps = corpus::load_dir(&corpus::default_dir()).expect("corpus captures");
    let hellos = corpus::client_hello_bodies(&caps);
    assert!(!hellos.is_empty(), "no ClientHellos in the corpus");
    hellos
}

fn bench(c: &mut Criterion<CpuTime>) {
    let hellos = hellos();
    let bytes: usize = hellos.iter().map(Vec::len).sum();
    eprintln!(
        "ja4 bench: {} distinct ClientHellos, {} bytes on average",
        hellos.len(),
        bytes / hellos.len()
    );
    let mut g = c.benchmark_group("client_hello");
    g.throughput(Throughput::Elements(hellos.len() as u64));
    g.sample_size(50);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("parse", |b| {
        b.iter(|| {
            for h in &hellos {
                black_box(ClientHello::parse(black_box(h)).ok());
            }
        })
    });
    g.bench_function("parse+ja4", |b| {
        b.iter(|| {
            for h in &hellos {
                if let Ok(ch) = ClientHello::parse(black_box(h)) {
                    black_box(ja4_string(&ch, Ja4Transport::Tcp, AlpnRule::Spec));
                }
            }
        })
    });
    g.bench_function("parse+ja4_all4", |b| {
        b.iter(|| {
            for h in &hellos {
                if let Ok(ch) = ClientHello::parse(black_box(h)) {
                    black_box(ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec));
                }
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = CpuTime::criterion();
    targets = bench
}
criterion_main!(benches);
