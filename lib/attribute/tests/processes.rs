//! Attribution of real processes' connections: curl, python, a shell loop under another uid,
//! a process placed in its own cgroup named like a Docker container's, and UDP datagrams.
//!
//! Each TCP test runs a server on loopback; when it accepts a connection it asks the attributor
//! about the flow (as the agent does when it sees a SYN) while the client is still alive, then
//! answers after `hold`, letting the client exit.
//!
//! Every test runs twice ([`both_methods!`]): with the eBPF connect tracer (the default where it
//! loads) and with `/proc` alone (the fallback, and the method for flows the tracer does not
//! see). `HAIS_SKIP_EBPF_TESTS=1` skips the eBPF runs on a host that cannot load eBPF.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hais_attribute::{Attribution, Attributor, AttributorConfig, Direction, FlowKey, Proto};

/// Generates `<test>::ebpf` and `<test>::proc`, calling `test(ebpf: bool)`.
macro_rules! both_methods {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn ebpf() {
                if std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_none() {
                    super::$name(true);
                }
            }
            #[test]
            fn proc() {
                super::$name(false);
            }
        }
    )*};
}

both_methods!(
    curl_and_python_are_attributed_with_pid_exe_and_uid,
    shell_loop_under_another_uid,
    process_in_its_own_cgroup_reports_cgroup_and_container,
    short_lived_processes_rate_is_reported,
    udp_flows_are_attributed_both_ways,
    finished_inbound_connections_go_to_the_listener_at_once,
    flow_between_namespaces,
);

/// An attributor with or without the eBPF tracer; with it, the tracer must have loaded.
fn start(ebpf: bool, cfg: AttributorConfig) -> Attributor {
    let att = Attributor::start(AttributorConfig { ebpf, ..cfg }).unwrap();
    assert_eq!(att.stats().ebpf, ebpf, "eBPF tracer loaded");
    att
}

/// The flows resolved so far from the tracer's records: all outbound TCP ones with it, none
/// without it.
fn assert_method(att: &Attributor, ebpf: bool, outbound_tcp: u64) {
    let st = att.stats();
    assert_eq!(st.ebpf_hits, if ebpf { outbound_tcp } else { 0 }, "{st:?}");
}

struct Server {
    addr: SocketAddr,
    accepted: mpsc::Receiver<SocketAddr>,
}

/// A server that reports each accepted peer, waits `hold`, answers a minimal HTTP response and
/// closes.
fn server(hold: Duration) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let Ok(peer) = s.peer_addr() else { continue };
            if tx.send(peer).is_err() {
                return;
            }
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
            });
        }
    });
    Server { addr, accepted: rx }
}

fn attribute(att: &Attributor, srv: &Server) -> (FlowKey, Attribution) {
    let peer = srv
        .accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("a connection arrives");
    let key = FlowKey {
        proto: Proto::Tcp,
        src: peer,
        dst: srv.addr,
    };
    (key, ask(att, key))
}

/// Asks about `key` as the agent does on a first packet, and takes the answer once there is
/// one (or after 10 s).
fn ask(att: &Attributor, key: FlowKey) -> Attribution {
    att.notify(key);
    let t0 = Instant::now();
    while att.peek(&key) == Attribution::Unknown && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    att.take(&key)
}

fn process(a: &Attribution) -> &hais_attribute::ProcessInfo {
    match a {
        Attribution::Process { direction, process } => {
            assert_eq!(*direction, Direction::Outbound);
            process
        }
        other => panic!("not attributed: {other:?}"),
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn canonical(p: &str) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

fn curl_and_python_are_attributed_with_pid_exe_and_uid(ebpf: bool) {
    let att = start(ebpf, AttributorConfig::default());
    let srv = server(Duration::from_millis(100));

    let mut curl = spawn(Command::new("curl").args(["-s", &format!("http://{}/", srv.addr)]));
    let (_, a) = attribute(&att, &srv);
    let p = process(&a).clone();
    assert_eq!(p.pid, curl.id());
    assert_eq!(p.name, "curl");
    assert_eq!(p.exe.as_deref(), Some(canonical("/usr/bin/curl").as_str()));
    assert!(
        p.cmdline.starts_with("curl -s http://127.0.0.1:"),
        "{}",
        p.cmdline
    );
    assert_eq!(p.uid, nix_uid());
    assert_eq!(p.exe_sha256.as_deref().map(str::len), Some(64));
    let w = a.to_workload().unwrap();
    assert_eq!(w.pid, Some(curl.id()));
    assert_eq!(w.process.as_deref(), Some("curl"));
    assert_eq!(w.direction.as_deref(), Some("outbound"));
    assert_eq!(w.unattributed, None);
    curl.wait().unwrap();

    let code = format!(
        "import socket; s=socket.create_connection(('127.0.0.1',{})); s.recv(100)",
        srv.addr.port()
    );
    let mut py = spawn(Command::new("python3").args(["-c", &code]));
    let (_, a) = attribute(&att, &srv);
    let p = process(&a).clone();
    // pyenv shims exec the real interpreter, keeping the pid.
    assert_eq!(p.pid, py.id());
    assert!(p.name.starts_with("python"), "{}", p.name);
    assert!(p.exe.as_deref().unwrap().contains("python"), "{:?}", p.exe);
    py.wait().unwrap();
    let st = att.stats();
    assert_eq!(st.attributed, 2, "{st:?}");
    assert_method(&att, ebpf, 2);
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A shell loop running as `nobody` opens three connections; each is attributed to the shell
/// with uid 65534 and its user name.
fn shell_loop_under_another_uid(ebpf: bool) {
    if nix_uid() != 0 {
        eprintln!("skipped: needs root to switch uid");
        return;
    }
    let att = start(ebpf, AttributorConfig::default());
    let srv = server(Duration::from_millis(100));
    let script = format!(
        "for i in 1 2 3; do exec 3<>/dev/tcp/127.0.0.1/{}; head -c1 <&3 >/dev/null; exec 3<&-; done",
        srv.addr.port()
    );
    let mut sh = spawn(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "bash",
        "-c",
        &script,
    ]));
    for _ in 0..3 {
        let (_, a) = attribute(&att, &srv);
        let p = process(&a);
        assert_eq!(p.pid, sh.id(), "setpriv execs bash in place");
        assert_eq!(p.name, "bash");
        assert_eq!(p.uid, 65534);
        assert_eq!(p.user.as_deref(), Some("nobody"));
    }
    assert!(sh.wait().unwrap().success());
    assert_method(&att, ebpf, 3);
}

/// A process moved into its own cgroup, named as Docker's systemd driver names containers,
/// reports that cgroup and the container id.
fn process_in_its_own_cgroup_reports_cgroup_and_container(ebpf: bool) {
    let Some(root) = writable_cgroup_root(false) else {
        eprintln!("skipped: no writable cgroup hierarchy");
        return;
    };
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let rel = format!("/hais-test-{}/docker-{id}.scope", std::process::id());
    let dir = format!("{root}{rel}");
    std::fs::create_dir_all(&dir).unwrap();
    let att = start(ebpf, AttributorConfig::default());
    let srv = server(Duration::from_millis(100));
    let script = format!(
        "echo $$ > {dir}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{} && head -c1 <&3 >/dev/null",
        srv.addr.port()
    );
    let mut sh = spawn(Command::new("bash").args(["-c", &script]));
    let (_, a) = attribute(&att, &srv);
    let p = process(&a).clone();
    assert!(sh.wait().unwrap().success());
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(std::path::Path::new(&dir).parent().unwrap());
    assert_eq!(p.pid, sh.id());
    assert_eq!(p.cgroup.as_deref(), Some(rel.as_str()));
    let c = p.container.expect("container id from the cgroup name");
    assert_eq!(c.id, id);
    assert_eq!(c.runtime, "docker");
    assert_method(&att, ebpf, 1);
}

/// With the eBPF tracer, a process that has already exited when its flow is looked up is still
/// named from the kernel's record of its `connect()`: pid, name, uid, and its cgroup (which
/// outlives it) with the container id.
#[test]
fn an_exited_process_keeps_its_container_with_ebpf() {
    if std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_some() {
        return;
    }
    let Some(root) = writable_cgroup_root(true) else {
        eprintln!("skipped: no writable cgroup v2 tree");
        return;
    };
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xdead);
    let rel = format!("/hais-test-gone-{}/docker-{id}.scope", std::process::id());
    let dir = format!("{root}{rel}");
    std::fs::create_dir_all(&dir).unwrap();
    let att = start(true, AttributorConfig::default());
    let srv = server(Duration::ZERO);
    let script = format!(
        "echo $$ > {dir}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{}",
        srv.addr.port()
    );
    let mut sh = spawn(Command::new("bash").args(["-c", &script]));
    let peer = srv
        .accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("a connection arrives");
    assert!(sh.wait().unwrap().success());
    // Gone before anyone asked.
    assert!(!std::path::Path::new(&format!("/proc/{}", sh.id())).exists());
    let key = FlowKey {
        proto: Proto::Tcp,
        src: peer,
        dst: srv.addr,
    };
    let a = ask(&att, key);
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(std::path::Path::new(&dir).parent().unwrap());
    let p = process(&a);
    assert_eq!(p.pid, sh.id());
    assert_eq!(p.name, "bash");
    assert_eq!(p.uid, nix_uid());
    assert_eq!(
        p.exe, None,
        "the executable is not known once the process is gone"
    );
    assert_eq!(p.cgroup.as_deref(), Some(rel.as_str()));
    assert_eq!(
        p.container.as_ref().map(|c| c.id.as_str()),
        Some(id.as_str())
    );
    assert_eq!(att.stats().ebpf_exited, 1);
}

/// The first hierarchy where a child cgroup can be created: the v2 tree, or (unless `v2_only`)
/// a v1 controller.
fn writable_cgroup_root(v2_only: bool) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut roots: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let v1 = !v2_only && f.len() > 3 && f[2] == "cgroup" && f[3].contains("pids");
            (f.len() > 3 && (f[2] == "cgroup2" || v1)).then(|| f[1].to_owned())
        })
        .collect();
    roots.sort_by_key(|r| !r.ends_with("pids"));
    roots.into_iter().find(|r| {
        let probe = format!("{r}/hais-probe-{}", std::process::id());
        let ok = std::fs::create_dir(&probe).is_ok()
            && std::path::Path::new(&format!("{probe}/cgroup.procs")).exists();
        let _ = std::fs::remove_dir(&probe);
        ok
    })
}

/// Short-lived clients: curl against a server that answers at once. Through `/proc` the rate is
/// reported, not asserted (a process may exit before it is looked at); the kernel's record of
/// the connection does not depend on that, so with the eBPF tracer every one is attributed.
fn short_lived_processes_rate_is_reported(ebpf: bool) {
    let att = start(ebpf, AttributorConfig::default());
    let srv = server(Duration::ZERO);
    let n = 20;
    let mut ok = 0;
    for _ in 0..n {
        let mut curl = spawn(Command::new("curl").args(["-s", &format!("http://{}/", srv.addr)]));
        let (_, a) = attribute(&att, &srv);
        if matches!(a, Attribution::Process { ref process, .. } if process.pid == curl.id()) {
            ok += 1;
        }
        curl.wait().unwrap();
    }
    let method = if ebpf { "eBPF" } else { "/proc" };
    eprintln!("short-lived curl (server answers at once), {method}: {ok}/{n} attributed");
    assert!(att.stats().requests == n);
    if ebpf {
        assert_eq!(ok, n);
        assert_method(&att, ebpf, n);
    }
}

/// UDP flows (QUIC, DNS): a python client sending from a connected socket, and the same
/// datagram seen from the receiving side (an unconnected server socket), are each attributed
/// to the right process and direction.
fn udp_flows_are_attributed_both_ways(ebpf: bool) {
    let att = start(ebpf, AttributorConfig::default());
    let srv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dst = srv.local_addr().unwrap();
    let code = format!(
        "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.connect(('127.0.0.1',{})); s.send(b'x'); time.sleep(2)",
        dst.port()
    );
    let mut py = spawn(Command::new("python3").args(["-c", &code]));
    let mut buf = [0u8; 16];
    srv.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_, src) = srv.recv_from(&mut buf).expect("a datagram arrives");
    let key = FlowKey {
        proto: Proto::Udp,
        src,
        dst,
    };
    let a = ask(&att, key);
    let p = process(&a);
    assert_eq!(p.pid, py.id());
    assert!(p.name.starts_with("python"), "{}", p.name);
    py.kill().unwrap();
    py.wait().unwrap();
    // Once the client is gone, the same datagram's flow is the server's: this process,
    // receiving (inbound).
    match ask(&att, key) {
        Attribution::Process { direction, process } => {
            assert_eq!(direction, Direction::Inbound);
            assert_eq!(process.pid, std::process::id());
        }
        other => panic!("not attributed: {other:?}"),
    }
    // UDP has no connect() the tracer sees: /proc either way.
    assert_method(&att, ebpf, 0);
}

/// Inbound TCP connections that have no socket file on the server side are attributed to the
/// listening socket's process without waiting for an accept that cannot come: one the server
/// accepted and closed (its end in TIME_WAIT, the client's gone), and one the client gave up
/// on while it waited in the accept queue (CLOSE_WAIT; the client's end, orphaned in FIN_WAIT2,
/// has no file either and names no process). The retry delay is set far beyond the test's
/// patience. With the eBPF tracer, which saw this process open both, they are its outbound
/// connections instead.
fn finished_inbound_connections_go_to_the_listener_at_once(ebpf: bool) {
    use std::io::Read;
    use std::net::TcpStream;
    let att = start(
        ebpf,
        AttributorConfig {
            accept_retry: Duration::from_secs(60),
            ..AttributorConfig::default()
        },
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst = l.local_addr().unwrap();
    let over = {
        let c = TcpStream::connect(dst).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(s);
        let _ = (&c).read(&mut [0u8; 1]);
        c.local_addr().unwrap()
    };
    let abandoned = TcpStream::connect(dst).unwrap().local_addr().unwrap();
    // The clients' sockets are gone; the server's ends have no file.
    std::thread::sleep(Duration::from_millis(50));
    for src in [over, abandoned] {
        let key = FlowKey {
            proto: Proto::Tcp,
            src,
            dst,
        };
        match ask(&att, key) {
            Attribution::Process { direction, process } => {
                let want = if ebpf {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                assert_eq!(direction, want, "{src}");
                assert_eq!(process.pid, std::process::id(), "{src}");
            }
            other => panic!("{src}: {other:?}"),
        }
    }
    assert_method(&att, ebpf, 2);
}

/// Two network namespaces this test makes, joined by a veth pair: a client in one, a server in
/// the other, neither in the attributor's namespace (like two containers' traffic seen on a
/// host's bridge). sock_diag sees only its own namespace, so through `/proc` the flow is
/// `not-local`; the eBPF tracer sees every namespace's `connect()` and names the client.
fn flow_between_namespaces(ebpf: bool) {
    if nix_uid() != 0 {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let tag = format!("{}{}", std::process::id() % 100_000, u8::from(ebpf));
    let (a, b) = (format!("hais-a{tag}"), format!("hais-b{tag}"));
    let ip = |args: &[&str]| {
        let st = Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(st.success(), "ip {args:?}");
    };
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    ip(&["netns", "add", &a]);
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &b]);
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &a]);
    ip(&["link", "set", &vb, "netns", &b]);
    let net = if ebpf { "10.213.1" } else { "10.213.2" };
    ip(&["-n", &a, "addr", "add", &format!("{net}.1/30"), "dev", &va]);
    ip(&["-n", &b, "addr", "add", &format!("{net}.2/30"), "dev", &vb]);
    ip(&["-n", &a, "link", "set", &va, "up"]);
    ip(&["-n", &b, "link", "set", &vb, "up"]);

    let att = start(ebpf, AttributorConfig::default());
    let server = format!(
        "import socket,time\nl=socket.socket()\nl.bind(('{net}.2',8080))\nl.listen()\n\
         print('up',flush=True)\nc,_=l.accept()\ntime.sleep(3)"
    );
    let (mut srv, line) = python_in(&b, &server);
    assert_eq!(line.trim(), "up");
    let client = format!(
        "import os,socket,time\ns=socket.create_connection(('{net}.2',8080))\n\
         print(s.getsockname()[1],os.getpid(),flush=True)\ntime.sleep(2)"
    );
    let (mut cli, line) = python_in(&a, &client);
    let mut f = line.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    let (port, pid) = (f.next().unwrap(), f.next().unwrap());
    let key = FlowKey {
        proto: Proto::Tcp,
        src: format!("{net}.1:{port}").parse().unwrap(),
        dst: format!("{net}.2:8080").parse().unwrap(),
    };
    let got = ask(&att, key);
    let _ = cli.kill();
    let _ = srv.kill();
    let _ = (cli.wait(), srv.wait());
    if ebpf {
        let p = process(&got);
        assert_eq!(p.pid, pid);
        assert!(p.name.starts_with("python"), "{}", p.name);
    } else {
        assert_eq!(got, Attribution::NotLocal);
    }
}

/// Runs `code` with python3 in network namespace `ns`, and the first line it prints.
fn python_in(ns: &str, code: &str) -> (Child, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}
