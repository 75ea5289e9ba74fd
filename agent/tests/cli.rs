//! The `hais-agent read` command as users run it: exit codes, error messages, stdin, output
//! formats, bad input, and TLS secrets from a key-log file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hais-agent"))
}

fn pcap(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/conformance/pcap")
        .join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hais-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(args: &[&str]) -> Output {
    bin().arg("read").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn missing_file_is_exit_66_with_one_line() {
    let o = read(&["/nonexistent/capture.pcap"]);
    assert_eq!(o.status.code(), Some(66));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn non_capture_file_is_exit_65() {
    let d = tmpdir("notcap");
    let f = d.join("notes.txt");
    std::fs::write(&f, "this is not a capture file\n".repeat(10)).unwrap();
    let o = read(&[f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a pcap or pcapng"),
        "{}",
        stderr(&o)
    );
    let o = read(&[d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65), "a directory: {}", stderr(&o));
}

#[test]
fn truncated_capture_keeps_what_was_read_and_counts_the_error() {
    let full = std::fs::read(pcap("tls-handshake.pcapng")).unwrap();
    let d = tmpdir("trunc");
    let f = d.join("cut.pcapng");
    std::fs::write(&f, &full[..full.len() * 2 / 3 + 7]).unwrap();
    let o = read(&["--json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let recs = json_lines(&o);
    assert!(
        recs.len() > 20,
        "streams before the cut are reported, got {}",
        recs.len()
    );
    assert!(
        stderr(&o).contains("file.truncated_or_corrupt=1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn garbage_packets_are_counted_not_fatal() {
    // A valid pcap header followed by records of random bytes, some claiming absurd lengths.
    let d = tmpdir("garbage");
    let f = d.join("garbage.pcap");
    let mut data = Vec::new();
    data.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&4u16.to_le_bytes());
    data.extend_from_slice(&[0; 8]);
    data.extend_from_slice(&65535u32.to_le_bytes());
    data.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    let mut seed = 0x1234_5678u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..2000u32 {
        let len = (rnd() % 200) as usize;
        data.extend_from_slice(&i.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&(len as u32).to_le_bytes());
        data.extend_from_slice(&(len as u32).to_le_bytes());
        let mut pkt: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len > 14 && i % 2 == 0 {
            pkt[12] = 0x08; // IPv4 ethertype, to get deeper into the decoder
            pkt[13] = 0x00;
            pkt[14] = 0x45;
        }
        data.extend_from_slice(&pkt);
    }
    std::fs::write(&f, &data).unwrap();
    let o = read(&["--json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("2000 packets"), "{err}");
    assert!(err.contains("decode."), "errors are counted by kind: {err}");
}

#[test]
fn stdin_gives_the_same_output_as_the_file() {
    let path = pcap("tls-alpn-h2.pcap");
    let from_file = read(&["--json", "-q", path.to_str().unwrap()]);
    let mut child = bin()
        .args(["read", "--json", "-q", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&path).unwrap())
        .unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(from_stdin.status.code(), Some(0), "{}", stderr(&from_stdin));
    assert!(!from_file.stdout.is_empty());
    assert_eq!(from_file.stdout, from_stdin.stdout);
}

#[test]
fn yaml_is_default_and_options_add_fields() {
    let p = pcap("badcurveball.pcap");
    let o = read(&["-q", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with("- stream: 0\n  transport: tcp\n"),
        "{text}"
    );
    assert!(
        text.contains("  ja4: t13d1615h2_46e7e9700bed_45f260be83e2\n"),
        "{text}"
    );

    let o = read(&[
        "--json",
        "-q",
        "--with-raw",
        "--with-packet-numbers",
        p.to_str().unwrap(),
    ]);
    let rec = &json_lines(&o)[0];
    assert_eq!(
        rec["ja4_r"].as_str().unwrap().split('_').count(),
        4,
        "{rec}"
    );
    assert!(
        rec["ja4s_r"].as_str().unwrap().starts_with("t1205h1_c02b_"),
        "{rec}"
    );
    assert!(
        rec["pkt_ja4"].as_u64().is_some() && rec["pkt_ja4s"].as_u64().is_some(),
        "{rec}"
    );
    assert!(
        rec["tls_certs"][0]["x509"][0]["ja4x_r"].is_string(),
        "{rec}"
    );

    let o = read(&[
        "--json",
        "-q",
        "--original-order",
        "--with-raw",
        p.to_str().unwrap(),
    ]);
    let rec = &json_lines(&o)[0];
    assert!(
        rec.get("ja4").is_none() && rec["ja4_o"].is_string() && rec["ja4_ro"].is_string(),
        "{rec}"
    );
}

#[test]
fn alpn_style_reference_prints_what_the_reference_tools_print() {
    let p = pcap("tls-non-ascii-alpn.pcapng");
    let spec = json_lines(&read(&["--json", "-q", p.to_str().unwrap()]));
    let refr = json_lines(&read(&[
        "--json",
        "-q",
        "--alpn-style",
        "reference",
        p.to_str().unwrap(),
    ]));
    assert_eq!(spec[0]["ja4"], "t13d1516bd_8daaf6152771_e5627efa2ab1");
    assert_eq!(refr[0]["ja4"], "t13d151699_8daaf6152771_e5627efa2ab1");
}

#[test]
fn keylog_file_decrypts_like_embedded_secrets() {
    // http2-with-cookies.pcapng carries its TLS secrets in a Decryption Secrets Block. Strip
    // the block by rewriting the capture with tcpdump, then give the secrets as a key-log
    // file: the decrypted certificates (JA4X) and HTTP/2 requests (JA4H) must come back.
    let src = pcap("http2-with-cookies.pcapng");
    let d = tmpdir("keylog");
    let stripped = d.join("stripped.pcap");
    let st = Command::new("tcpdump")
        .args([
            "-r",
            src.to_str().unwrap(),
            "-w",
            stripped.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .status()
        .expect("tcpdump is installed (apt-get install tcpdump)");
    assert!(st.success());
    let secrets = hais_agent::capture::pcapng_secrets::scan(std::fs::File::open(&src).unwrap());
    assert_eq!(secrets.len(), 1);
    let keylog = d.join("keys.log");
    std::fs::write(&keylog, &secrets[0]).unwrap();

    let without = json_lines(&read(&["--json", "-q", stripped.to_str().unwrap()]));
    assert!(
        without[0].get("http").is_none() && without[0].get("tls_certs").is_none(),
        "{}",
        without[0]
    );

    let with = json_lines(&read(&[
        "--json",
        "-q",
        "--keylog-file",
        keylog.to_str().unwrap(),
        stripped.to_str().unwrap(),
    ]));
    let embedded = json_lines(&read(&["--json", "-q", src.to_str().unwrap()]));
    assert_eq!(with[0]["http"].as_array().unwrap().len(), 15, "{}", with[0]);
    assert_eq!(with[0]["tls_certs"], embedded[0]["tls_certs"]);
    assert_eq!(with[0]["http"], embedded[0]["http"]);
}

#[test]
fn help_documents_exit_codes() {
    let o = bin().args(["read", "--help"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let o = bin().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes"));
    let o = bin().args(["read", "--bogus"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// A corrupted `svid.pem` cannot be renewed by anyone: `run` stops at once with exit 78 (which
/// the systemd unit does not restart, so no loop) and says to enroll again.
#[test]
fn a_corrupted_identity_stops_run_with_78_and_says_to_enroll_again() {
    let d = tmpdir("corrupt");
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("svid.pem"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    let o = bin()
        .args(["run", "--server", "127.0.0.1:9", "-i", "lo", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("svid.pem") && e.contains("hais-agent enroll --force"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
