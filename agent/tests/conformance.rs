//! Runs `hais-agent read --json` over every capture of the JA4+ conformance corpus
//! (testdata/conformance, see its NOTICE) and compares each stream, field by field, with the
//! reference tool's output, under the answer-key rules of the corpus README:
//!
//! * JA4T/JA4TS: missing option fields print `00` (the reference Rust tool prints `""`/`0`);
//! * `tls-non-ascii-alpn`: ALPN characters may be `99` (references) or `bd` (written spec);
//! * HTTP/2 JA4H: the references disagree on pseudo-headers, so the header count and header
//!   hash are not compared;
//! * `CVE-2018-6794` `ja4l_c`: the reference times the wrong packet; any value is accepted.
//!
//! Where HaIS deliberately differs, `testdata/conformance/known-differences.json` records the
//! reference value, the HaIS value and why; the test asserts the documented HaIS value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/conformance")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn norm_tcp_fp(v: &str) -> String {
    v.split('_')
        .map(|p| if p.is_empty() || p == "0" { "00" } else { p })
        .collect::<Vec<_>>()
        .join("_")
}

fn norm_http2_ja4h(v: &str) -> String {
    let parts: Vec<&str> = v.split('_').collect();
    let a = parts[0];
    if a.len() >= 12 && &a[2..4] == "20" {
        let a = format!("{}##{}", &a[..6], &a[8..]);
        let mut out = vec![a, "#".to_string()];
        out.extend(parts.iter().skip(2).map(|s| s.to_string()));
        return out.join("_");
    }
    v.to_string()
}

fn values_equal(key: &str, want: &Value, got: &Value, pcap: &str) -> bool {
    if let (Value::String(w), Value::String(g)) = (want, got) {
        if key == "ja4t" || key == "ja4ts" {
            return norm_tcp_fp(w) == norm_tcp_fp(g);
        }
        if key == "ja4" && pcap.starts_with("tls-non-ascii-alpn") {
            return g == w || *g == w.replace("t13d151699", "t13d1516bd");
        }
        if key.starts_with("ja4h") {
            return norm_http2_ja4h(w) == norm_http2_ja4h(g);
        }
    }
    if key == "ja4l_c" && pcap.starts_with("CVE-2018-6794") {
        return !got.is_null();
    }
    match (want, got) {
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| values_equal(key, a, b, pcap))
        }
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| values_equal(k, v, gv, pcap))),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => scalar(want) == scalar(got),
    }
}

/// One documented, deliberate difference from the reference output.
#[derive(Debug, serde::Deserialize)]
struct KnownDifference {
    file: String,
    transport: String,
    stream: String,
    field: String,
    reference: Value,
    hais: Value,
    reason: String,
}

fn stream_key(rec: &Value) -> (String, String) {
    let t = rec.get("transport").and_then(scalar).unwrap_or_default();
    let s = rec.get("stream").and_then(scalar).unwrap_or_default();
    (t, s)
}

fn run_read(pcap: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_hais-agent"))
        .args(["read", "--json", "--quiet"])
        .arg(pcap)
        .output()
        .expect("run hais-agent");
    assert!(
        out.status.success(),
        "{}: exit {:?}: {}",
        pcap.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

type KnownKey = (String, String, String, String);

#[test]
fn conformance_corpus_matches_reference() {
    let root = corpus();
    let known: Vec<KnownDifference> = serde_json::from_str(
        &std::fs::read_to_string(root.join("known-differences.json")).unwrap(),
    )
    .unwrap();
    let mut known_by: HashMap<KnownKey, &KnownDifference> = HashMap::new();
    for k in &known {
        assert!(
            !k.reason.trim().is_empty(),
            "known difference without a reason: {k:?}"
        );
        known_by.insert(
            (
                k.file.clone(),
                k.transport.clone(),
                k.stream.clone(),
                k.field.clone(),
            ),
            k,
        );
    }
    let mut keys: Vec<PathBuf> = std::fs::read_dir(root.join("expected/rust-json"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    keys.sort();
    let (mut files, mut files_ok, mut streams, mut streams_ok) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut used_known = 0;
    for key in keys {
        let name = key
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".json")
            .to_string();
        let pcap = root.join("pcap").join(&name);
        if !pcap.exists() {
            continue;
        }
        files += 1;
        let expected: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
        let actual = run_read(&pcap);
        let got_by: HashMap<(String, String), &Value> =
            actual.iter().map(|r| (stream_key(r), r)).collect();
        let mut file_ok = true;
        for want in &expected {
            streams += 1;
            let sk = stream_key(want);
            let Some(got) = got_by.get(&sk) else {
                failures.push(format!("{name}: {} stream {} missing", sk.0, sk.1));
                file_ok = false;
                continue;
            };
            let mut identical = true;
            for (field, wv) in want.as_object().unwrap() {
                let gv = got.get(field).unwrap_or(&Value::Null);
                if let Some(kd) =
                    known_by.get(&(name.clone(), sk.0.clone(), sk.1.clone(), field.clone()))
                {
                    used_known += 1;
                    identical = false;
                    assert_eq!(
                        &kd.reference, wv,
                        "{name} {sk:?} {field}: stale reference value in known-differences.json"
                    );
                    if !values_equal(field, &kd.hais, gv, &name) {
                        failures.push(format!(
                            "{name}: {} stream {} {field}: documented HaIS value {} but got {gv}",
                            sk.0, sk.1, kd.hais
                        ));
                    }
                    continue;
                }
                if got.get(field).is_none() || !values_equal(field, wv, gv, &name) {
                    identical = false;
                    failures.push(format!(
                        "{name}: {} stream {} {field}: want {wv} got {gv}",
                        sk.0, sk.1
                    ));
                }
            }
            if identical {
                streams_ok += 1;
            } else {
                file_ok = false;
            }
        }
        if file_ok {
            files_ok += 1;
        }
    }
    println!(
        "{files_ok} of {files} files and {streams_ok} of {streams} streams identical ({used_known} documented differences)"
    );
    assert!(files > 30, "corpus not found under {}", root.display());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
