//! End to end on loopback: real clients and servers (OpenSSL, curl, Python, OpenSSH) talk over
//! 127.0.0.1 on odd ports, the real `tcpdump` records them, and `hais-agent read --json` must
//! put the right fingerprints on the right streams. The ports are never the protocols' usual
//! ones, so every protocol here is recognised by content.
//!
//! Needs Linux, root (tcpdump on `lo`) and the Debian packages tcpdump, openssl, curl,
//! python3 and openssh-server/openssh-client. A missing program fails the test with the
//! package to install; nothing is skipped. Each test has its own directory, ports and capture
//! filter, so the tests run in parallel; child processes die with the test's guard.
//!
//! Expected values are computed here from the inputs (certificate files, the bytes in the
//! capture, the headers sent), not taken from the agent.

#![cfg(all(target_os = "linux", feature = "ja4plus"))]

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use md5::Md5;
use serde_json::Value;
use sha2::{Digest, Sha256};
use x509_parser::x509::X509Name;

/// Longest a client program may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a server may take to listen, or tcpdump to start capturing.
const START_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Processes, directories, ports
// ---------------------------------------------------------------------------------------------

/// Fails the test unless `program` is installed, naming the package that provides it.
fn require(program: &str, package: &str) -> PathBuf {
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed: this test needs the Debian package `{package}` \
             (apt-get install {package})"
        )
    })
}

/// A free TCP port for a server. Ports come from 10000..32000, below Linux's ephemeral range
/// (32768 and up), so no client connection can take one between this check and the server's
/// bind; a process-wide counter keeps parallel tests apart, and a bind proves it is free.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..22_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(10_000 + start.wrapping_add(n) % 22_000).unwrap();
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 10000..32000");
}

/// One test's directory and child processes; dropping it kills the children and, unless the
/// test failed, removes the directory (kept for post-mortems otherwise).
struct Lab {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hais-loopback-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab {
            dir,
            children: Vec::new(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.file(name).to_str().unwrap().to_owned()
    }

    /// The combined stdout and stderr of the process started as `name`.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(&format!("{name}.log"))).unwrap_or_default()
    }

    fn start(&self, name: &str, cmd: &mut Command) -> Child {
        let out = File::create(self.file(&format!("{name}.log"))).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"))
    }

    /// Starts a long-running server, killed when the lab is dropped.
    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let child = self.start(name, cmd);
        self.children.push((name.to_owned(), child));
    }

    /// Fails if the server `name` has exited.
    fn check_alive(&mut self, name: &str) {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{name} exited ({status}):\n{}", self.log(name));
        }
    }

    /// Waits until the server `name` accepts connections on 127.0.0.1:`port`. (Called before
    /// the capture starts, so these probes are not recorded.)
    fn wait_listening(&mut self, name: &str, port: u16) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive(name);
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not listen on port {port}:\n{}",
                self.log(name)
            );
            sleep(Duration::from_millis(30));
        }
    }

    /// Runs a client to completion (at most [`CLIENT_TIMEOUT`]): its status and output.
    fn run(&self, name: &str, cmd: &mut Command) -> (ExitStatus, String) {
        let mut child = self.start(name, cmd);
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log(name));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} ({cmd:?}) still running after {CLIENT_TIMEOUT:?}:\n{}",
                    self.log(name)
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Runs a client that must succeed; returns its output.
    fn run_ok(&self, name: &str, cmd: &mut Command) -> String {
        let (status, log) = self.run(name, cmd);
        assert!(
            status.success(),
            "{name} ({cmd:?}) failed ({status}):\n{log}"
        );
        log
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------------------------

/// A running `tcpdump -i lo` limited to one test's ports plus a probe port of its own, used to
/// tell when packets reach the file. Dropping it kills tcpdump if `stop` was not reached.
struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
    probe: TcpListener,
}

impl Capture {
    fn start(lab: &Lab, ports: &[u16]) -> Capture {
        require("tcpdump", "tcpdump");
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let probe_port = probe.local_addr().unwrap().port();
        let filter = ports
            .iter()
            .chain([&probe_port])
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let file = lab.file("capture.pcap");
        // --immediate-mode: without it, packets wait in the kernel ring for the buffer
        // timeout and the ones still there when tcpdump is stopped are lost.
        let child = lab.start(
            "tcpdump",
            Command::new("tcpdump")
                .args(["-i", "lo", "-n", "-U", "--immediate-mode", "-w"])
                .arg(&file)
                .arg(&filter),
        );
        let mut cap = Capture {
            child,
            file,
            log: lab.file("tcpdump.log"),
            probe,
        };
        cap.sync();
        cap
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Opens a probe connection and waits until its packets are in the file: tcpdump is
    /// capturing, and everything sent before the probe has been written.
    fn sync(&mut self) {
        let probe = self.probe.local_addr().unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The file holds at least the 24-byte header once anything was written.
            let before = self.size().max(24);
            let conn = TcpStream::connect(probe);
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                if self.size() > before {
                    drop(conn);
                    return;
                }
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "tcpdump exited ({status}); it needs root or CAP_NET_RAW:\n{}",
                        self.log()
                    );
                }
                sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump records nothing on lo:\n{}",
                self.log()
            );
        }
    }

    /// Waits for the last packets, stops tcpdump with SIGINT and returns the capture file.
    fn stop(mut self) -> PathBuf {
        self.sync();
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT tcpdump failed");
        let deadline = Instant::now() + START_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tcpdump ignores SIGINT");
            sleep(Duration::from_millis(10));
        }
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's output
// ---------------------------------------------------------------------------------------------

/// `hais-agent read --json FILE`: one JSON object per stream.
fn fingerprint(pcap: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_hais-agent"))
        .arg("read")
        .arg("--json")
        .args(extra)
        .arg(pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hais-agent read failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

fn dump(streams: &[Value]) -> String {
    streams
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The single stream to 127.0.0.1:`port`.
fn stream_to(streams: &[Value], port: u16) -> &Value {
    let found: Vec<&Value> = streams.iter().filter(|s| s["dst_port"] == port).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one stream to port {port}, streams:\n{}",
        dump(streams)
    );
    found[0]
}

fn field<'a>(stream: &'a Value, key: &str) -> &'a str {
    stream[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {stream}"))
}

fn ja4h(stream: &Value) -> &str {
    stream["http"][0]["ja4h"]
        .as_str()
        .unwrap_or_else(|| panic!("no http[0].ja4h in {stream}"))
}

/// Transport-level fields every loopback TCP stream here must carry.
fn assert_tcp_basics(stream: &Value) {
    assert_eq!(stream["transport"], "tcp", "{stream}");
    assert_eq!(stream["src"], "127.0.0.1", "{stream}");
    assert_eq!(stream["dst"], "127.0.0.1", "{stream}");
    for key in ["ja4t", "ja4ts"] {
        let v = field(stream, key);
        assert_eq!(v.split('_').count(), 4, "{key} {v} in {stream}");
    }
    // JA4L on loopback: a latency and the initial TTL 64.
    for key in ["ja4l_c", "ja4l_s"] {
        let v = field(stream, key);
        let (latency, ttl) = v.split_once('_').unwrap_or_else(|| panic!("{key} {v}"));
        assert!(latency.parse::<u64>().is_ok(), "{key} {v}");
        assert_eq!(ttl, "64", "{key} {v}");
    }
}

/// JA4's first section: `t13d`, cipher/extension counts, then the two ALPN characters.
fn assert_ja4(stream: &Value, prefix: &str, alpn: &str) -> String {
    let ja4 = field(stream, "ja4");
    let parts: Vec<&str> = ja4.split('_').collect();
    assert_eq!(parts.len(), 3, "ja4 {ja4}");
    assert!(
        ja4.starts_with(prefix),
        "ja4 {ja4} should start with {prefix}"
    );
    assert_eq!(parts[0].len(), 10, "ja4 {ja4}");
    assert_eq!(&parts[0][8..], alpn, "ALPN characters of ja4 {ja4}");
    ja4.to_owned()
}

/// The JA4 truncated SHA-256: 12 hex characters, zeros for an empty list.
fn hash12(s: &str) -> String {
    if s.is_empty() {
        return "0".repeat(12);
    }
    hex::encode(Sha256::digest(s.as_bytes()))[..12].to_owned()
}

// ---------------------------------------------------------------------------------------------
// Servers and helpers
// ---------------------------------------------------------------------------------------------

/// Subjects of the test certificates and the attribute OIDs (hex of the content octets) they
/// must yield: C, O, OU, CN and C, L, O, CN.
const CA_SUBJECT: &str = "/C=HR/O=HaIS Lab CA/OU=Test/CN=HaIS Lab Root";
const CA_OIDS: &str = "550406,55040a,55040b,550403";
const LEAF_SUBJECT: &str = "/C=US/L=Zagreb/O=HaIS/CN=hais.test";
const LEAF_OIDS: &str = "550406,550407,55040a,550403";

/// A P-256 CA and a leaf for `hais.test` it signed: leaf.pem/.key/.der, ca.pem/.der.
fn make_certificates(lab: &Lab) {
    require("openssl", "openssl");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    lab.run_ok(
        "openssl-ca",
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", CA_SUBJECT, "-keyout", "ca.key"])
            .args(["-out", "ca.pem"])
            .current_dir(&lab.dir),
    );
    lab.run_ok(
        "openssl-csr",
        Command::new("openssl")
            .args(["req", "-new"])
            .args(ec)
            .args([
                "-subj",
                LEAF_SUBJECT,
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
            ])
            .current_dir(&lab.dir),
    );
    std::fs::write(
        lab.file("leaf.ext"),
        "subjectAltName=DNS:hais.test\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    lab.run_ok(
        "openssl-sign",
        Command::new("openssl")
            .args(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem"])
            .args(["-CAkey", "ca.key", "-set_serial", "4660", "-days", "2"])
            .args(["-extfile", "leaf.ext", "-out", "leaf.pem"])
            .current_dir(&lab.dir),
    );
    for name in ["ca", "leaf"] {
        lab.run_ok(
            &format!("openssl-der-{name}"),
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(format!("{name}.pem"))
                .arg("-out")
                .arg(format!("{name}.der"))
                .current_dir(&lab.dir),
        );
    }
}

/// `openssl s_server -www` on 127.0.0.1:`port` with the leaf certificate (and the CA as its
/// chain); waits until it listens.
fn tls_server(lab: &mut Lab, name: &str, port: u16) {
    require("openssl", "openssl");
    if !lab.file("leaf.pem").exists() {
        make_certificates(lab);
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-cert",
            "leaf.pem",
            "-key",
            "leaf.key",
            "-cert_chain",
            "ca.pem",
        ])
        .current_dir(&lab.dir);
    lab.spawn(name, &mut cmd);
    lab.wait_listening(name, port);
}

/// Python's `http.server` on 127.0.0.1:`port`.
fn http_server(lab: &mut Lab, name: &str, port: u16) {
    require("python3", "python3");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(&lab.dir);
    lab.spawn(name, &mut cmd);
    lab.wait_listening(name, port);
}

/// Shared part of the proxies: accept loop (port in argv[1]) and a two-way relay.
const PROXY_COMMON: &str = r#"
import socket, struct, sys, threading

def recvn(s, n):
    d = b''
    while len(d) < n:
        c = s.recv(n - len(d))
        if not c:
            raise EOFError('peer closed')
        d += c
    return d

def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def relay(c, u):
    t = threading.Thread(target=pump, args=(u, c), daemon=True)
    t.start()
    pump(c, u)
    t.join()
    u.close()

def serve(handle):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', int(sys.argv[1])))
    s.listen(16)
    while True:
        c, _ = s.accept()
        def run(c=c):
            try:
                handle(c)
            except Exception as e:
                print('proxy:', repr(e), file=sys.stderr, flush=True)
            finally:
                c.close()
        threading.Thread(target=run, daemon=True).start()
"#;

/// SOCKS5, no authentication, CONNECT only.
const SOCKS5_PROXY: &str = r#"
def handle(c):
    ver, n = recvn(c, 2)
    assert ver == 5, ver
    recvn(c, n)
    c.sendall(b'\x05\x00')
    ver, cmd, _, atyp = recvn(c, 4)
    assert ver == 5 and cmd == 1, (ver, cmd)
    if atyp == 1:
        host = socket.inet_ntoa(recvn(c, 4))
    elif atyp == 3:
        host = recvn(c, recvn(c, 1)[0]).decode()
    else:
        host = socket.inet_ntop(socket.AF_INET6, recvn(c, 16))
    port = struct.unpack('!H', recvn(c, 2))[0]
    u = socket.create_connection((host, port))
    c.sendall(b'\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00')
    relay(c, u)

serve(handle)
"#;

/// HTTP CONNECT proxy.
const CONNECT_PROXY: &str = r#"
def handle(c):
    buf = b''
    while b'\r\n\r\n' not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    head, rest = buf.split(b'\r\n\r\n', 1)
    method, target, _ = head.split(b'\r\n')[0].split(b' ')
    assert method == b'CONNECT', method
    host, port = target.rsplit(b':', 1)
    u = socket.create_connection((host.decode(), int(port)))
    c.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
    if rest:
        u.sendall(rest)
    relay(c, u)

serve(handle)
"#;

fn python_proxy(lab: &mut Lab, name: &str, script: &str, port: u16) {
    require("python3", "python3");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(format!("{PROXY_COMMON}{script}"))
        .arg(port.to_string());
    lab.spawn(name, &mut cmd);
    lab.wait_listening(name, port);
}

fn curl() -> Command {
    require("curl", "curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-o", "/dev/null", "--max-time", "8"]);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Reading the capture back (for the independent SSH checks)
// ---------------------------------------------------------------------------------------------

/// One TCP segment of the capture.
#[derive(Debug)]
struct Segment {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// The TCP segments of a classic pcap written by tcpdump on `lo` (Ethernet framing).
fn read_segments(pcap: &Path) -> Vec<Segment> {
    let data = std::fs::read(pcap).unwrap();
    let le32 = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
    assert!(
        matches!(le32(0), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "not a little-endian pcap"
    );
    assert_eq!(le32(20), 1, "link type of lo should be Ethernet");
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = le32(at + 8) as usize;
        let frame = &data[at + 16..at + 16 + caplen];
        at += 16 + caplen;
        let ip = &frame[14..];
        let (tcp, ip_payload_len) = match be16(frame, 12) {
            0x0800 if ip[9] == 6 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                (&ip[ihl..], usize::from(be16(ip, 2)) - ihl)
            }
            0x86dd if ip[6] == 6 => (&ip[40..], usize::from(be16(ip, 4))),
            _ => continue,
        };
        let header = usize::from(tcp[12] >> 4) * 4;
        segments.push(Segment {
            src_port: be16(tcp, 0),
            dst_port: be16(tcp, 2),
            seq: be32(tcp, 4),
            flags: tcp[13],
            payload: tcp[header..ip_payload_len].to_vec(),
        });
    }
    segments
}

/// JA4SSH of a connection's segments with one window (fewer than 200 SSH packets), straight
/// from the definition: per direction the most frequent payload length (ties to the smaller),
/// the payload-carrying packets, and the bare ACKs.
fn expected_ja4ssh(segments: &[&Segment], client_port: u16) -> String {
    let mut lengths: [BTreeMap<usize, u32>; 2] = Default::default();
    let mut packets = [0u32; 2];
    let mut acks = [0u32; 2];
    for s in segments {
        let d = usize::from(s.src_port != client_port);
        if !s.payload.is_empty() {
            *lengths[d].entry(s.payload.len()).or_default() += 1;
            packets[d] += 1;
        } else if s.flags == 0x10 {
            acks[d] += 1;
        }
    }
    assert!(packets[0] + packets[1] < 200, "more than one JA4SSH window");
    let mode = |m: &BTreeMap<usize, u32>| {
        let mut best = (0, 0);
        for (&len, &n) in m {
            if n > best.1 {
                best = (len, n);
            }
        }
        best.0
    };
    format!(
        "c{}s{}_c{}s{}_c{}s{}",
        mode(&lengths[0]),
        mode(&lengths[1]),
        packets[0],
        packets[1],
        acks[0],
        acks[1]
    )
}

/// The bytes one side sent, in order, without retransmitted copies.
fn reassemble(segments: &[&Segment], src_port: u16) -> Vec<u8> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for s in segments {
        if s.src_port == src_port && !s.payload.is_empty() && seen.insert(s.seq) {
            out.extend_from_slice(&s.payload);
        }
    }
    out
}

/// The ten name-lists of the first KEXINIT after the identification line.
fn kexinit_name_lists(stream: &[u8]) -> Vec<String> {
    let mut at = 0;
    loop {
        let end = at
            + stream[at..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("no SSH identification line");
        let line = &stream[at..end];
        at = end + 1;
        if line.starts_with(b"SSH-") {
            break;
        }
    }
    let packet_len = be32(stream, at) as usize;
    let padding = usize::from(stream[at + 4]);
    let payload = &stream[at + 5..at + 4 + packet_len - padding];
    assert_eq!(payload[0], 20, "first SSH packet is not KEXINIT");
    let mut p = 1 + 16;
    (0..10)
        .map(|_| {
            let n = be32(payload, p) as usize;
            let list = String::from_utf8(payload[p + 4..p + 4 + n].to_vec()).unwrap();
            p += 4 + n;
            list
        })
        .collect()
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// The certificate check
// ---------------------------------------------------------------------------------------------

fn name_oids(name: &X509Name<'_>) -> String {
    name.iter_attributes()
        .map(|a| hex::encode(a.attr_type().as_bytes()))
        .collect::<Vec<_>>()
        .join(",")
}

/// JA4X of a DER certificate, computed here: the issuer's attribute OIDs (must equal
/// `issuer_oids`), the subject's (`subject_oids`), the extension OIDs, each hashed.
fn expected_ja4x(der: &[u8], issuer_oids: &str, subject_oids: &str) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert_eq!(name_oids(cert.issuer()), issuer_oids);
    assert_eq!(name_oids(cert.subject()), subject_oids);
    let extensions: Vec<String> = cert
        .extensions()
        .iter()
        .map(|e| hex::encode(e.oid.as_bytes()))
        .collect();
    assert!(!extensions.is_empty());
    format!(
        "{}_{}_{}",
        hash12(issuer_oids),
        hash12(subject_oids),
        hash12(&extensions.join(","))
    )
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn tls13_openssl_s_client_with_sni_and_alpn() {
    let mut lab = Lab::new("tls13");
    let port = free_port();
    tls_server(&mut lab, "s_server", port);
    let cap = Capture::start(&lab, &[port]);
    lab.run_ok(
        "s_client",
        Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-servername",
                "hais.test",
                "-alpn",
                "h2,http/1.1",
                "-tls1_3",
            ])
            .args(["-keylogfile", "keys.log"])
            .current_dir(&lab.dir),
    );
    let pcap = cap.stop();

    let streams = fingerprint(&pcap, &[]);
    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    assert_ja4(s, "t13d", "h2");
    assert_eq!(s["tls_server_name"], "hais.test", "{s}");
    // s_server has no ALPN configured: the ServerHello echoes none (`00`).
    let ja4s = field(s, "ja4s");
    assert!(ja4s.starts_with("t13"), "{s}");
    assert_eq!(ja4s.get(5..7), Some("00"), "{s}");
    // The certificate is encrypted in TLS 1.3 ...
    assert!(s.get("tls_certs").is_none(), "{s}");

    // ... and readable with the client's key log.
    let streams = fingerprint(&pcap, &["--keylog-file", &lab.path_str("keys.log")]);
    let s = stream_to(&streams, port);
    let leaf = std::fs::read(lab.file("leaf.der")).unwrap();
    assert_eq!(
        s["tls_certs"][0]["x509"][0]["ja4x"],
        expected_ja4x(&leaf, CA_OIDS, LEAF_OIDS),
        "{s}"
    );
}

#[test]
fn tls12_openssl_s_client_certificate_ja4x() {
    let mut lab = Lab::new("tls12");
    let port = free_port();
    tls_server(&mut lab, "s_server", port);
    let cap = Capture::start(&lab, &[port]);
    lab.run_ok(
        "s_client",
        Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", "hais.test", "-tls1_2"]),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    assert_ja4(s, "t12d", "00");
    assert_eq!(s["tls_server_name"], "hais.test", "{s}");
    assert!(field(s, "ja4s").starts_with("t12"), "{s}");
    let chain = s["tls_certs"][0]["x509"]
        .as_array()
        .unwrap_or_else(|| panic!("no tls_certs[0].x509 in {s}"));
    assert_eq!(chain.len(), 2, "leaf and CA expected: {s}");
    let leaf = std::fs::read(lab.file("leaf.der")).unwrap();
    let ca = std::fs::read(lab.file("ca.der")).unwrap();
    assert_eq!(chain[0]["ja4x"], expected_ja4x(&leaf, CA_OIDS, LEAF_OIDS));
    assert_eq!(chain[1]["ja4x"], expected_ja4x(&ca, CA_OIDS, CA_OIDS));
    assert_eq!(chain[0]["issuerCommonName"], "HaIS Lab Root", "{s}");
    assert_eq!(chain[0]["subjectCommonName"], "hais.test", "{s}");
}

#[test]
fn curl_https_to_openssl_www() {
    let mut lab = Lab::new("curl-https");
    let port = free_port();
    tls_server(&mut lab, "s_server", port);
    let cap = Capture::start(&lab, &[port]);
    lab.run_ok(
        "curl",
        curl()
            .args(["-k", "--http1.1"])
            .arg(format!("https://127.0.0.1:{port}/")),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    // An IP literal: no SNI, so `i`; ALPN http/1.1 only.
    assert_ja4(s, "t13i", "h1");
    assert!(s.get("tls_server_name").is_none(), "{s}");
    assert!(field(s, "ja4s").starts_with("t13"), "{s}");
}

#[test]
fn curl_http1_cookies_referer_language_ja4h() {
    let mut lab = Lab::new("curl-http");
    let port = free_port();
    http_server(&mut lab, "http.server", port);
    let cap = Capture::start(&lab, &[port]);
    lab.run_ok(
        "curl",
        curl()
            .args(["--http1.1", "-H", "Cookie: a=1; b=2", "-H", "Referer: x"])
            .args(["-H", "Accept-Language: en-US"])
            .arg(format!("http://127.0.0.1:{port}/")),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    let ja4h = ja4h(s);
    assert!(ja4h.starts_with("ge11cr"), "{ja4h}");
    assert!(ja4h.contains("enus"), "{ja4h}");
    // curl sends Host, User-Agent, Accept, then the extra headers in order; Cookie and
    // Referer are not counted or hashed.
    let expected = format!(
        "ge11cr04enus_{}_{}_{}",
        hash12("Host,User-Agent,Accept,Accept-Language"),
        hash12("a,b"),
        hash12("a=1,b=2")
    );
    assert_eq!(ja4h, expected, "{s}");
}

#[test]
fn socks5_proxy_tunnel_carries_tls() {
    let mut lab = Lab::new("socks5");
    let (tls_port, proxy_port) = (free_port(), free_port());
    tls_server(&mut lab, "s_server", tls_port);
    python_proxy(&mut lab, "socks5", SOCKS5_PROXY, proxy_port);
    let cap = Capture::start(&lab, &[tls_port, proxy_port]);
    lab.run_ok(
        "curl",
        curl()
            .args(["-k", "--http1.1", "--socks5"])
            .arg(format!("127.0.0.1:{proxy_port}"))
            .arg(format!("https://127.0.0.1:{tls_port}/")),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let via_proxy = stream_to(&streams, proxy_port);
    let direct = stream_to(&streams, tls_port);
    assert_tcp_basics(via_proxy);
    assert_tcp_basics(direct);
    let ja4 = assert_ja4(via_proxy, "t13i", "h1");
    assert_eq!(direct["ja4"], ja4, "{via_proxy}\n{direct}");
    assert!(field(via_proxy, "ja4s").starts_with("t13"), "{via_proxy}");
    assert_eq!(via_proxy["ja4s"], direct["ja4s"], "{via_proxy}\n{direct}");
}

#[test]
fn http_connect_proxy_tunnel_carries_tls() {
    let mut lab = Lab::new("connect");
    let (tls_port, proxy_port) = (free_port(), free_port());
    tls_server(&mut lab, "s_server", tls_port);
    python_proxy(&mut lab, "connect", CONNECT_PROXY, proxy_port);
    let cap = Capture::start(&lab, &[tls_port, proxy_port]);
    lab.run_ok(
        "curl",
        curl()
            .args(["-k", "--http1.1", "-p", "-x"])
            .arg(format!("http://127.0.0.1:{proxy_port}"))
            .arg(format!("https://127.0.0.1:{tls_port}/")),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let via_proxy = stream_to(&streams, proxy_port);
    let direct = stream_to(&streams, tls_port);
    assert_tcp_basics(via_proxy);
    assert_tcp_basics(direct);
    let ja4h = ja4h(via_proxy);
    assert!(ja4h.starts_with("co11nn"), "{via_proxy}");
    let ja4 = assert_ja4(via_proxy, "t13i", "h1");
    assert_eq!(direct["ja4"], ja4, "{via_proxy}\n{direct}");
    assert!(direct.get("http").is_none(), "{direct}");
}

#[test]
fn h2c_prior_knowledge_ja4h() {
    let mut lab = Lab::new("h2c");
    let port = free_port();
    http_server(&mut lab, "http.server", port);
    let cap = Capture::start(&lab, &[port]);
    // http.server does not speak HTTP/2 and drops the connection: curl fails, as expected.
    lab.run(
        "curl",
        curl()
            .arg("--http2-prior-knowledge")
            .arg(format!("http://127.0.0.1:{port}/")),
    );
    let streams = fingerprint(&cap.stop(), &[]);

    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    let ja4h = ja4h(s);
    assert!(ja4h.starts_with("ge20"), "{s}");
    // Pseudo-headers are not headers; curl adds user-agent and accept.
    let expected = format!(
        "ge20nn020000_{}_{}_{}",
        hash12("user-agent,accept"),
        "0".repeat(12),
        "0".repeat(12)
    );
    assert_eq!(ja4h, expected, "{s}");
}

#[test]
fn ssh_on_odd_port_hassh_and_ja4ssh() {
    let sshd = require("/usr/sbin/sshd", "openssh-server");
    require("ssh", "openssh-client");
    require("ssh-keygen", "openssh-client");
    let mut lab = Lab::new("ssh");
    let port = free_port();
    lab.run_ok(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(lab.file("host_key")),
    );
    // The server's banner gets an addendum, so the two banners differ.
    std::fs::write(
        lab.file("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1\nPidFile {}\nStrictModes no\nUsePAM no\n\
             VersionAddendum HaIS-lab\n",
            lab.path_str("sshd.pid")
        ),
    )
    .unwrap();
    // Privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut cmd = Command::new(&sshd);
    cmd.args(["-D", "-e", "-p", &port.to_string(), "-f"])
        .arg(lab.file("sshd_config"))
        .arg("-h")
        .arg(lab.file("host_key"));
    lab.spawn("sshd", &mut cmd);
    lab.wait_listening("sshd", port);

    let (_, version) = lab.run("ssh-V", Command::new("ssh").arg("-V"));
    let client_banner = format!("SSH-2.0-{}", version.trim().split(',').next().unwrap());

    let cap = Capture::start(&lab, &[port]);
    // No credentials: authentication fails, after the key exchange.
    let (status, log) = lab.run(
        "ssh",
        Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "PubkeyAuthentication=no", "-o", "Ciphers=aes256-ctr"])
            .args(["nobody@127.0.0.1", "true"]),
    );
    assert!(
        log.contains("Permission denied"),
        "ssh ({status}) should fail authentication:\n{log}\nsshd:\n{}",
        lab.log("sshd")
    );
    let pcap = cap.stop();
    let streams = fingerprint(&pcap, &[]);

    let s = stream_to(&streams, port);
    assert_tcp_basics(s);
    assert!(s.get("ja4").is_none() && s.get("http").is_none(), "{s}");
    let x = &s["ssh_extras"];
    assert_eq!(x["ssh_protocol_client"], client_banner.as_str(), "{s}");
    assert!(
        client_banner.starts_with("SSH-2.0-OpenSSH"),
        "{client_banner}"
    );
    let server_banner = field(x, "ssh_protocol_server");
    assert!(server_banner.starts_with("SSH-2.0-OpenSSH"), "{s}");
    assert!(server_banner.ends_with(" HaIS-lab"), "{s}");
    assert_eq!(x["encryption_algorithm"], "aes256-ctr", "{s}");

    // HASSH from the KEXINITs in the capture, each from its own side.
    let client_port = u16::try_from(s["src_port"].as_u64().unwrap()).unwrap();
    let segments = read_segments(&pcap);
    let conn: Vec<&Segment> = segments
        .iter()
        .filter(|g| {
            (g.src_port, g.dst_port) == (client_port, port)
                || (g.src_port, g.dst_port) == (port, client_port)
        })
        .collect();
    let c = kexinit_name_lists(&reassemble(&conn, client_port));
    let v = kexinit_name_lists(&reassemble(&conn, port));
    assert_eq!(c[2], "aes256-ctr", "client KEXINIT ciphers");
    let hassh = md5_hex(&format!("{};{};{};{}", c[0], c[2], c[4], c[6]));
    let hassh_server = md5_hex(&format!("{};{};{};{}", v[0], v[3], v[5], v[7]));
    assert_ne!(hassh, hassh_server);
    assert_eq!(x["hassh"], hassh.as_str(), "{s}");
    assert_eq!(x["hassh_server"], hassh_server.as_str(), "{s}");

    // JA4SSH from the capture's segments: client counts first.
    let ja4ssh = expected_ja4ssh(&conn, client_port);
    let sections: Vec<(&str, &str)> = ja4ssh
        .split('_')
        .map(|p| p[1..].split_once('s').unwrap())
        .collect();
    assert!(
        sections.iter().any(|(c, s)| c != s),
        "client and server look alike ({ja4ssh}): the direction check proves nothing"
    );
    assert_eq!(s["ja4ssh"], serde_json::json!([ja4ssh]), "{s}");
}
