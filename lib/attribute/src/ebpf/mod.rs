//! In-kernel record of who opened each outbound TCP connection.
//!
//! The `/proc` method finds a socket's owner after the fact: a `stat` of descriptors until one
//! names the socket, a few microseconds each, and nothing once the process has exited. The
//! kernel knows the answer at `connect()` time, in the caller's own context. A small eBPF
//! program on the stable tracepoint `sock:inet_sock_set_state` writes it down:
//!
//! - on a socket entering `SYN_SENT` (inside `connect()`, so the current task is the caller):
//!   the caller's pid, tgid, uid, gid, comm and the time, keyed by the socket's address. The
//!   source port may not be chosen yet at that moment, which is why the record waits there;
//! - on the socket leaving `SYN_SENT` (handshake done, refused or timed out): the record, with
//!   the connection's addresses and ports (what the agent sees on the wire), is pushed onto a
//!   queue.
//!
//! The agent pops the queue ([`ConnectTracer::drain`], one system call per connection; a hash
//! map's batch read would walk every bucket each time) and looks flows up in memory. The maps
//! are bounded: the first an LRU hash, the queue overwriting its oldest record when full, so a
//! flood of connections loses old records, it never grows memory or blocks a `connect()`.
//! Flows the tracer did not see (inbound, UDP, opened before the agent started, or records
//! lost) are resolved by `/proc` as before.
//!
//! The program is assembled here (`asm.rs`) rather than compiled with clang, so building the
//! agent needs no BPF toolchain; it reads the tracepoint's fields at the offsets the running
//! kernel publishes in tracefs, uses only helpers open to any licence, and needs Linux 5.8+
//! (`bpf_ktime_get_boot_ns`), `CAP_BPF` and `CAP_PERFMON` (or
//! `CAP_SYS_ADMIN`). Without them the agent logs why and uses `/proc` alone.

mod asm;
mod sys;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use asm::{Asm, FP, R0, R1, R2, R3, R4, R6, R7, Size};

/// Where tracefs may be; the first is mounted by the tracer when neither is.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const TRACEPOINT: &str = "events/sock/inet_sock_set_state";

const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: i32 = 6;

/// Kernel helper numbers (`enum bpf_func_id`).
const MAP_LOOKUP: i32 = 1;
const MAP_UPDATE: i32 = 2;
const MAP_DELETE: i32 = 3;
const MAP_PUSH: i32 = 87;
/// `BPF_EXIST` for a push: when the queue is full, overwrite its oldest record.
const PUSH_OVERWRITE: i32 = 2;
const GET_CURRENT_PID_TGID: i32 = 14;
const GET_CURRENT_UID_GID: i32 = 15;
const GET_CURRENT_COMM: i32 = 16;
const KTIME_GET_BOOT_NS: i32 = 125;
const GET_CURRENT_CGROUP_ID: i32 = 80;

/// Map key of a connection: source port, destination port (host order), source and destination
/// address (IPv6, IPv4 as v4-mapped, as the tracepoint gives them).
const KEY_LEN: usize = 36;
/// Map value: pid (thread) u32, tgid u32, uid u32, gid u32, boot-time ns u64, comm [u8; 16],
/// cgroup id u64.
const OWNER_LEN: usize = 48;
/// Queue record: the connection's key, 4 bytes of padding, its owner.
const RECORD_LEN: usize = 88;
const RECORD_OWNER: usize = 40;

/// Sockets in the middle of `connect()`, and connections waiting to be drained (an idle agent
/// drains every 100 ms, a busy one every batch). Both maps are allocated whole when created:
/// about 3 MB of kernel memory in all.
const PENDING_ENTRIES: u32 = 16_384;
const QUEUE_ENTRIES: u32 = 16_384;
/// Records are trusted for this long after their `connect()`, and those drained but not asked
/// for are kept that long, at most [`KEPT`] of them. A flow the capture sees is asked about
/// within a batch window of its first packet; an old record for the same addresses and ports
/// would be another connection's (ports are reused once TIME_WAIT ends).
const KEEP_FOR: Duration = Duration::from_secs(30);
const KEPT: usize = 65_536;
/// Records of the same addresses and ports by two processes closer together than this are
/// taken to come from two network namespaces (see [`ConnectTracer::keep`]).
const CLASH_WINDOW: Duration = Duration::from_secs(2);

/// Who opened a connection, as the kernel saw it at `connect()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connector {
    /// The process (thread group) id: what `/proc` calls the pid.
    pub tgid: u32,
    /// The thread that called `connect()`.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// When, in nanoseconds since boot (`CLOCK_BOOTTIME`, the clock of `/proc/<pid>/stat`'s
    /// start time): tells whether a process now holding `tgid` is the one that connected.
    pub boot_ns: u64,
    /// The thread's name (`comm`), up to 15 bytes.
    pub comm: [u8; 16],
    /// The process's cgroup (v2) id: the inode number of its cgroup directory, which outlives
    /// the process (see [`crate::cgroup::CgroupIds`]).
    pub cgroup_id: u64,
}

impl Connector {
    fn from_bytes(v: &[u8]) -> Option<Connector> {
        let u32_at = |o: usize| Some(u32::from_ne_bytes(v.get(o..o + 4)?.try_into().ok()?));
        Some(Connector {
            tid: u32_at(0)?,
            tgid: u32_at(4)?,
            uid: u32_at(8)?,
            gid: u32_at(12)?,
            boot_ns: u64::from_ne_bytes(v.get(16..24)?.try_into().ok()?),
            comm: v.get(24..40)?.try_into().ok()?,
            cgroup_id: u64::from_ne_bytes(v.get(40..48)?.try_into().ok()?),
        })
    }

    /// `comm` as text.
    pub fn name(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// The map key of a connection from `src` to `dst`.
fn flow_key(src: SocketAddr, dst: SocketAddr) -> [u8; KEY_LEN] {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut k = [0u8; KEY_LEN];
    k[0..2].copy_from_slice(&src.port().to_ne_bytes());
    k[2..4].copy_from_slice(&dst.port().to_ne_bytes());
    k[4..20].copy_from_slice(&v6(src.ip()));
    k[20..36].copy_from_slice(&v6(dst.ip()));
    k
}

/// Now, in nanoseconds since boot: the clock of the records.
fn boot_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Offsets of the tracepoint's fields in its record, as the running kernel lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    skaddr: i16,
    oldstate: i16,
    newstate: i16,
    sport: i16,
    dport: i16,
    protocol: i16,
    saddr_v6: i16,
    daddr_v6: i16,
}

/// A tracepoint record is at most this long (`PERF_MAX_TRACE_SIZE`): offsets beyond cannot be
/// read by the program (and stay far from overflowing an instruction's 16-bit offset).
const MAX_TRACE_RECORD: usize = 8192;

/// Reads the field offsets from the tracepoint's `format` file, checking each field's size,
/// alignment and that it lies within a record.
fn parse_format(text: &str) -> Result<Fields, String> {
    let mut found: HashMap<&str, (i16, usize)> = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse::<i16>().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse::<usize>().ok();
            }
        }
        if let (Some(d), Some(o), Some(s)) = (decl, offset, size) {
            let name = d.split_whitespace().last().unwrap_or("");
            let name = name.split('[').next().unwrap_or(name);
            found.insert(name, (o, s));
        }
    }
    let field = |name: &str, size: usize| match found.get(name) {
        Some(&(o, s))
            if s == size
                && o >= 8
                && o as usize + size <= MAX_TRACE_RECORD
                && (o as usize).is_multiple_of(size.min(8)) =>
        {
            Ok(o)
        }
        Some(&(o, s)) => Err(format!(
            "field {name}: offset {o} size {s}, want size {size}"
        )),
        None => Err(format!("field {name} missing")),
    };
    Ok(Fields {
        skaddr: field("skaddr", 8)?,
        oldstate: field("oldstate", 4)?,
        newstate: field("newstate", 4)?,
        sport: field("sport", 2)?,
        dport: field("dport", 2)?,
        protocol: field("protocol", 2)?,
        saddr_v6: field("saddr_v6", 16)?,
        daddr_v6: field("daddr_v6", 16)?,
    })
}

/// The program (see the module documentation). Stack: the socket address at fp-8, the owner
/// at fp-56..fp-8, the queue record at fp-144..fp-56.
fn program(f: &Fields, pending: i32, queue: i32) -> Vec<u64> {
    const SK: i16 = -8;
    const OWNER: i16 = -56;
    const KEY: i16 = -144;
    let mut a = Asm::default();
    a.mov(R6, R1)
        .load(Size::U16, R1, R6, f.protocol)
        .jne(R1, IPPROTO_TCP, "out")
        .load(Size::U64, R7, R6, f.skaddr)
        .store(Size::U64, FP, SK, R7)
        .load(Size::U32, R1, R6, f.newstate)
        .jne(R1, TCP_SYN_SENT, "leaving");
    // Entering SYN_SENT, inside connect(): note the caller.
    a.call(GET_CURRENT_PID_TGID)
        .store(Size::U64, FP, OWNER, R0)
        .call(GET_CURRENT_UID_GID)
        .store(Size::U64, FP, OWNER + 8, R0)
        .call(KTIME_GET_BOOT_NS)
        .store(Size::U64, FP, OWNER + 16, R0)
        .mov(R1, FP)
        .add_imm(R1, (OWNER + 24).into())
        .mov_imm(R2, 16)
        .call(GET_CURRENT_COMM)
        .call(GET_CURRENT_CGROUP_ID)
        .store(Size::U64, FP, OWNER + 40, R0)
        .map_fd(R1, pending)
        .mov(R2, FP)
        .add_imm(R2, SK.into())
        .mov(R3, FP)
        .add_imm(R3, OWNER.into())
        .mov_imm(R4, 0)
        .call(MAP_UPDATE)
        .goto("out");
    // Leaving SYN_SENT: the ports are known now; queue the owner with the connection.
    a.label("leaving")
        .load(Size::U32, R1, R6, f.oldstate)
        .jne(R1, TCP_SYN_SENT, "out")
        .map_fd(R1, pending)
        .mov(R2, FP)
        .add_imm(R2, SK.into())
        .call(MAP_LOOKUP)
        .jeq(R0, 0, "out")
        .mov(R7, R0)
        .load(Size::U16, R1, R6, f.sport)
        .store(Size::U16, FP, KEY, R1)
        .load(Size::U16, R1, R6, f.dport)
        .store(Size::U16, FP, KEY + 2, R1);
    for (from, to) in [(f.saddr_v6, KEY + 4), (f.daddr_v6, KEY + 20)] {
        for i in 0..4 {
            a.load(Size::U32, R1, R6, from + 4 * i)
                .store(Size::U32, FP, to + 4 * i, R1);
        }
    }
    a.mov_imm(R1, 0).store(Size::U32, FP, KEY + 36, R1);
    for i in 0..(OWNER_LEN as i16 / 8) {
        a.load(Size::U64, R1, R7, 8 * i).store(
            Size::U64,
            FP,
            KEY + RECORD_OWNER as i16 + 8 * i,
            R1,
        );
    }
    a.map_fd(R1, queue)
        .mov(R2, FP)
        .add_imm(R2, KEY.into())
        .mov_imm(R3, PUSH_OVERWRITE)
        .call(MAP_PUSH)
        .map_fd(R1, pending)
        .mov(R2, FP)
        .add_imm(R2, SK.into())
        .call(MAP_DELETE);
    a.label("out").mov_imm(R0, 0).exit();
    a.finish()
}

/// The tracepoint's directory in tracefs, mounting tracefs when it is not mounted anywhere
/// (the agent runs as root; in a container, mount the host's `/sys/kernel/tracing`).
fn tracepoint_dir() -> io::Result<std::path::PathBuf> {
    let find = || {
        TRACEFS
            .iter()
            .map(|root| Path::new(root).join(TRACEPOINT))
            .find(|dir| dir.join("id").exists())
    };
    if let Some(dir) = find() {
        return Ok(dir);
    }
    // Whether this mount or a concurrent one (another tracer starting) succeeded, look again.
    let _ = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS[0]])
        .stderr(std::process::Stdio::null())
        .status();
    if let Some(dir) = find() {
        return Ok(dir);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "tracefs with sock:inet_sock_set_state not found (mount tracefs at /sys/kernel/tracing)",
    ))
}

/// Records of one connection key: the time of the latest, and who made it (`None`: two
/// processes did, see [`ConnectTracer::keep`]).
#[derive(Debug, Clone, Copy)]
struct Kept {
    at: u64,
    who: Option<Connector>,
}

/// Counters of the tracer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Connection records drained from the kernel.
    pub drained: u64,
    /// Flows found among them.
    pub hits: u64,
    /// Records dropped unasked (too old, or beyond the number kept).
    pub expired: u64,
    /// Flows whose addresses and ports two processes recorded at once (left to `/proc`).
    pub ambiguous: u64,
}

/// The loaded and attached tracer, plus the records drained from it. Detaches when dropped.
#[derive(Debug)]
pub struct ConnectTracer {
    queue: sys::Map,
    program: sys::Program,
    _pending: sys::Map,
    _attached: OwnedFd,
    records: Records,
}

impl ConnectTracer {
    /// Loads the program and attaches it to the tracepoint. The error says what is missing
    /// (kernel too old, no privilege, no tracefs).
    pub fn start() -> io::Result<ConnectTracer> {
        if cfg!(target_endian = "big") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "eBPF tracer: big-endian hosts not supported",
            ));
        }
        let dir = tracepoint_dir()?;
        let id: u64 = std::fs::read_to_string(dir.join("id"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "tracepoint id"))?;
        let fields = parse_format(&std::fs::read_to_string(dir.join("format"))?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let create_pending = || {
            sys::Map::create(
                sys::MAP_LRU_HASH,
                8,
                OWNER_LEN as u32,
                PENDING_ENTRIES,
                "hais_connecting",
            )
        };
        let pending = match create_pending() {
            // Before Linux 5.11 eBPF maps are charged to RLIMIT_MEMLOCK (64 KiB by default)
            // rather than to the cgroup: lift it (root may) and try again.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let unlimited = rustix::process::Rlimit {
                    current: None,
                    maximum: None,
                };
                let _ = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited);
                create_pending()?
            }
            other => other?,
        };
        let queue = sys::Map::create(
            sys::MAP_QUEUE,
            0,
            RECORD_LEN as u32,
            QUEUE_ENTRIES,
            "hais_connected",
        )?;
        let code = program(&fields, pending.raw_fd(), queue.raw_fd());
        let program =
            sys::Program::load(sys::PROG_TRACEPOINT, &code, c"Apache-2.0", "hais_connect")?;
        // A tracepoint's programs run on every CPU: one perf event (on CPU 0) attaches it.
        let attached = program.attach_tracepoint(id, 0)?;
        let mut t = ConnectTracer {
            queue,
            program,
            _pending: pending,
            _attached: attached,
            records: Records::default(),
        };
        t.drain()?;
        Ok(t)
    }

    /// Moves the connections recorded since the last call from the kernel into memory, and
    /// forgets records nobody asked for in time.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut record = [0u8; RECORD_LEN];
        // Bounded: connections made while draining wait for the next call.
        for _ in 0..QUEUE_ENTRIES {
            if !self.queue.pop(&mut record)? {
                break;
            }
            let (key, owner) = record.split_at(RECORD_OWNER);
            if let (Ok(key), Some(c)) = (
                <[u8; KEY_LEN]>::try_from(&key[..KEY_LEN]),
                Connector::from_bytes(owner),
            ) {
                self.records.stats.drained += 1;
                self.records.keep(key, c);
            }
        }
        self.records.expire(oldest_trusted());
        Ok(())
    }

    /// Who opened the TCP connection from `src` to `dst` (as drained so far), taking the record.
    pub fn take(&mut self, src: SocketAddr, dst: SocketAddr) -> Option<Connector> {
        self.records.take(&flow_key(src, dst), oldest_trusted())
    }

    pub fn stats(&self) -> TracerStats {
        self.records.stats
    }

    /// How often the program ran and its total run time in ns (zero unless the kernel counts:
    /// `sysctl kernel.bpf_stats_enabled=1`).
    pub fn program_cost(&self) -> io::Result<(u64, u64)> {
        self.program.run_stats()
    }
}

/// The boot time before which records are no longer trusted (see [`KEEP_FOR`]).
fn oldest_trusted() -> u64 {
    boot_ns().saturating_sub(KEEP_FOR.as_nanos() as u64)
}

/// Records drained from the kernel, waiting for their flow to be asked about.
#[derive(Debug, Default)]
struct Records {
    kept: HashMap<[u8; KEY_LEN], Kept>,
    /// Keys in the order drained, with their record's time (a key recorded again later is
    /// dropped at its newer record's time).
    order: VecDeque<(u64, [u8; KEY_LEN])>,
    stats: TracerStats,
}

impl Records {
    /// Files record `c` under `key`. Two processes recording the same addresses and ports within
    /// [`CLASH_WINDOW`] are in different network namespaces (the kernel lets one namespace use
    /// a 4-tuple once at a time), and the flow seen on the wire can be either's: the key is
    /// then marked ambiguous, and left to `/proc`, which looks in the agent's own namespace.
    fn keep(&mut self, key: [u8; KEY_LEN], c: Connector) {
        let window = CLASH_WINDOW.as_nanos() as u64;
        let who = match self.kept.get(&key) {
            Some(k)
                if c.boot_ns.abs_diff(k.at) < window
                    && k.who.is_none_or(|old| old.tgid != c.tgid) =>
            {
                None
            }
            _ => Some(c),
        };
        self.kept.insert(key, Kept { at: c.boot_ns, who });
        self.order.push_back((c.boot_ns, key));
    }

    /// Forgets records older than `oldest`, and the oldest beyond [`KEPT`].
    fn expire(&mut self, oldest: u64) {
        while let Some(&(at, key)) = self.order.front() {
            if self.order.len() <= KEPT && at >= oldest {
                break;
            }
            self.order.pop_front();
            if self.kept.get(&key).is_some_and(|k| k.at == at) {
                self.kept.remove(&key);
                self.stats.expired += 1;
            }
        }
    }

    /// The record of `key`, taken, unless it is ambiguous or older than `oldest`.
    fn take(&mut self, key: &[u8; KEY_LEN], oldest: u64) -> Option<Connector> {
        let Some(c) = self.kept.remove(key)?.who else {
            self.stats.ambiguous += 1;
            return None;
        };
        if c.boot_ns < oldest {
            return None;
        }
        self.stats.hits += 1;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\nID: 2287\nformat:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn the_format_file_gives_the_offsets() {
        let f = parse_format(FORMAT).unwrap();
        assert_eq!(
            f,
            Fields {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                protocol: 30,
                saddr_v6: 40,
                daddr_v6: 56,
            }
        );
        // A field of another size (a kernel that changed the record) is refused, not misread.
        let changed = FORMAT.replace(
            "__u16 sport;\toffset:24;\tsize:2",
            "__u32 sport;\toffset:24;\tsize:4",
        );
        assert!(parse_format(&changed).unwrap_err().contains("sport"));
        assert!(parse_format("garbage\n;;;offset:x").is_err());
    }

    #[test]
    fn truncated_and_corrupted_format_files_never_panic() {
        // The file comes from the kernel, but a parser must survive anything: every
        // truncation, and every byte replaced by a few troublesome ones.
        for end in 0..FORMAT.len() {
            if FORMAT.is_char_boundary(end) {
                let _ = parse_format(&FORMAT[..end]);
            }
        }
        let bytes = FORMAT.as_bytes();
        for i in 0..bytes.len() {
            for b in [b';', b':', b'[', b'\n', b'9', b'-', 0xff] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = parse_format(&String::from_utf8_lossy(&m));
            }
        }
        // Offsets that do not fit an eBPF instruction, or point into the common header.
        assert!(parse_format(&FORMAT.replace("offset:40;", "offset:99999;")).is_err());
        assert!(parse_format(&FORMAT.replace("offset:40;", "offset:8184;")).is_err());
        assert!(parse_format(&FORMAT.replace("offset:8;\tsize:8", "offset:0;\tsize:8")).is_err());
    }

    fn conn(tgid: u32, boot_ns: u64) -> Connector {
        Connector {
            tgid,
            tid: tgid,
            uid: 0,
            gid: 0,
            boot_ns,
            comm: [0; 16],
            cgroup_id: 1,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn records_are_taken_once_and_expire() {
        let mut r = Records::default();
        let (k1, k2) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        r.keep(k1, conn(10, 100 * S));
        r.keep(k2, conn(11, 101 * S));
        assert_eq!(r.take(&k1, 0).map(|c| c.tgid), Some(10));
        assert_eq!(r.take(&k1, 0), None, "taken once");
        // Too old to trust: not given out.
        assert_eq!(r.take(&k2, 102 * S), None);
        r.keep(k1, conn(10, 200 * S));
        r.keep(k2, conn(11, 201 * S));
        r.expire(200 * S + 1);
        assert_eq!((r.kept.len(), r.stats.expired), (1, 1));
        assert_eq!(r.take(&k2, 0).map(|c| c.tgid), Some(11));
        // A key recorded again later lives until its newer record's time.
        r.keep(k1, conn(12, 300 * S));
        r.keep(k1, conn(12, 310 * S));
        r.expire(305 * S);
        assert_eq!(r.take(&k1, 0).map(|c| c.boot_ns), Some(310 * S));
    }

    #[test]
    fn the_same_ports_from_two_processes_at_once_are_left_to_proc() {
        let mut r = Records::default();
        let k = [7u8; KEY_LEN];
        // Two namespaces using the same addresses and ports a second apart: ambiguous, in
        // either order of arrival, and still after a third record inside the window.
        r.keep(k, conn(10, 100 * S));
        r.keep(k, conn(20, 101 * S));
        assert_eq!(r.take(&k, 0), None);
        assert_eq!(r.stats.ambiguous, 1);
        r.keep(k, conn(20, 201 * S));
        r.keep(k, conn(10, 200 * S));
        r.keep(k, conn(10, 201 * S));
        assert_eq!(r.take(&k, 0), None);
        // The same process reusing its ports, or another process long after: no doubt.
        r.keep(k, conn(30, 300 * S));
        r.keep(k, conn(30, 300 * S + 1));
        assert_eq!(r.take(&k, 0).map(|c| c.tgid), Some(30));
        r.keep(k, conn(30, 400 * S));
        r.keep(k, conn(40, 410 * S));
        assert_eq!(r.take(&k, 0).map(|c| c.tgid), Some(40));
    }

    #[test]
    fn keys_put_ipv4_in_mapped_form() {
        let k = flow_key(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:443".parse().unwrap(),
        );
        assert_eq!(&k[0..2], &40000u16.to_ne_bytes());
        assert_eq!(&k[2..4], &443u16.to_ne_bytes());
        assert_eq!(
            &k[4..20],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]
        );
        let k6 = flow_key("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        assert_eq!(k6[19], 1);
    }

    #[test]
    fn a_record_is_decoded() {
        let mut v = [0u8; OWNER_LEN];
        v[0..4].copy_from_slice(&7u32.to_ne_bytes());
        v[4..8].copy_from_slice(&5u32.to_ne_bytes());
        v[8..12].copy_from_slice(&1000u32.to_ne_bytes());
        v[16..24].copy_from_slice(&99u64.to_ne_bytes());
        v[24..28].copy_from_slice(b"curl");
        v[40..48].copy_from_slice(&4242u64.to_ne_bytes());
        let c = Connector::from_bytes(&v).unwrap();
        assert_eq!((c.tgid, c.tid, c.uid, c.boot_ns), (5, 7, 1000, 99));
        assert_eq!(c.name(), "curl");
        assert_eq!(c.cgroup_id, 4242);
        assert!(Connector::from_bytes(&v[..OWNER_LEN - 1]).is_none());
    }
}
