//! Shared by the bench targets: a criterion measurement of the benchmark thread's own CPU
//! time.
//!
//! The targets are per core, and the machines these benches run on are shared: wall time
//! there counts the time other processes held the core. The thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`, nanosecond resolution) does not. `HAIS_BENCH_CLOCK=wall`
//! switches back to criterion's wall clock.

use std::time::Instant;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};

/// Which clock a [`CpuTime`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// On-CPU time of the calling thread.
    ThreadCpu,
    /// Elapsed wall-clock time.
    Wall,
}

/// Thread CPU time (or wall time), in nanoseconds.
#[derive(Debug)]
pub struct CpuTime {
    clock: Clock,
}

/// Nanoseconds the calling thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl CpuTime {
    /// Thread CPU time unless `HAIS_BENCH_CLOCK=wall`.
    pub fn from_env() -> CpuTime {
        let wall = std::env::var("HAIS_BENCH_CLOCK").is_ok_and(|v| v == "wall");
        let clock = if wall { Clock::Wall } else { Clock::ThreadCpu };
        CpuTime { clock }
    }

    /// What the clock is, for the bench's opening line.
    pub fn describe(&self) -> &'static str {
        match self.clock {
            Clock::ThreadCpu => "thread CPU time (HAIS_BENCH_CLOCK=wall for wall time)",
            Clock::Wall => "wall-clock time",
        }
    }

    /// A criterion configured with this measurement.
    pub fn criterion() -> Criterion<CpuTime> {
        let m = CpuTime::from_env();
        eprintln!("measuring {}", m.describe());
        Criterion::default().with_measurement(m)
    }
}

/// Start of a measured interval.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Cpu(u64),
    Wall(Instant),
}

/// Formats values as durations, delegating to criterion's wall-time formatter (both are
/// nanoseconds).
struct Ns;

impl ValueFormatter for Ns {
    fn scale_values(&self, typical_value: f64, values: &mut [f64]) -> &'static str {
        WallTime.formatter().scale_values(typical_value, values)
    }

    fn scale_throughputs(
        &self,
        typical_value: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        WallTime
            .formatter()
            .scale_throughputs(typical_value, throughput, values)
    }

    fn scale_for_machines(&self, values: &mut [f64]) -> &'static str {
        WallTime.formatter().scale_for_machines(values)
    }
}

impl Measurement for CpuTime {
    type Intermediate = Start;
    type Value = u64;

    fn start(&self) -> Start {
        match self.clock {
            Clock::ThreadCpu => Start::Cpu(thread_cpu_ns()),
            Clock::Wall => Start::Wall(Instant::now()),
        }
    }

    fn end(&self, i: Start) -> u64 {
        match i {
            Start::Cpu(t0) => thread_cpu_ns().saturating_sub(t0),
            Start::Wall(t0) => t0.elapsed().as_nanos() as u64,
        }
    }

    fn add(&self, v1: &u64, v2: &u64) -> u64 {
        v1 + v2
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Ns
    }
}
