//! Feed formats: bytes in, indicators out (no I/O). Every row is validated on its own; a bad
//! row is counted and the first [`MAX_ROW_ERRORS`] are reported with their line, and the import
//! goes on. Rows of a type the service does not match (a ThreatFox URL, a hash of a file) are
//! counted as skipped, not bad.
//!
//! | format | what |
//! |---|---|
//! | `foxio-csv` | FoxIO's `ja4plus-mapping.csv`: Application, Library, Device, OS, ja4, ja4s, ja4h, ja4x, ja4t, ja4tscan, Notes. A row with one fingerprint is a fingerprint indicator, with several a combination (all must be seen on one stream) |
//! | `ja4db-json` | the JA4DB export: an array of objects with the same columns as `…_fingerprint`, and `ja4_fingerprint_string`, the raw JA4, from which the JA4 is computed again and compared |
//! | `ip-list` | one address or CIDR a line; `#` and `;` start comments (Spamhaus DROP) |
//! | `sslbl-ja3-csv` | abuse.ch SSLBL `ja3_fingerprints.csv`: ja3_md5, first seen, last seen, listing reason |
//! | `threatfox-json` | a ThreatFox export (`{"<id>": [{ioc_value, ioc_type, malware_printable, confidence_level, …}]}`) or its API's `{"data": […]}`: `ip:port` and `domain` IOCs |
//! | `misp-json` | a MISP event (or `{"response": [events]}`) with `ja4-plus` objects: their `ja4`, `ja4s`, `ja4h`, `ja4x`, `ja4t`, `ja4ts`, `ja4ssh`, `ja4l` attributes (several make a combination) |
//!
//! Verdicts: IP, JA3 and ThreatFox feeds are block lists (the feed's verdict, malicious unless
//! configured otherwise). FoxIO's mapping and JA4DB name software of every kind, so a row is
//! malicious only when its application, library or notes name known offensive tooling or malware
//! ([`MALWARE_WORDS`]), and benign otherwise: a label, never an alert.

use std::collections::HashSet;

use serde_json::Value;
use uuid::Uuid;

use super::indicator::{self, Indicator, Kind, Labels, Verdict};
pub use crate::store::threat::{Format, RowError};

/// Bad rows reported with their reason (the count covers them all).
pub const MAX_ROW_ERRORS: usize = 20;

/// Words that make a FoxIO or JA4DB row malicious (case-insensitive, in the application,
/// library or notes).
pub const MALWARE_WORDS: &[&str] = &[
    "c2",
    "beacon",
    "sliver",
    "cobalt strike",
    "havoc",
    "qakbot",
    "icedid",
    "pikabot",
    "metasploit",
    "meterpreter",
    "mythic",
    "brute ratel",
    "emotet",
    "trickbot",
    "bumblebee",
    "lumma",
    "malware",
    "evilginx",
    "ransom",
];

/// What the importer knows of the feed a file belongs to.
#[derive(Debug, Clone)]
pub struct FeedMeta {
    pub name: String,
    /// Who publishes it, recorded on every indicator.
    pub source: String,
    pub licence: Option<String>,
    /// The verdict of block-list formats.
    pub verdict: Verdict,
    pub now_us: i64,
}

/// The outcome of parsing one feed file.
#[derive(Debug, Default)]
pub struct Parsed {
    pub indicators: Vec<Indicator>,
    pub ok: u64,
    pub bad: u64,
    pub skipped: u64,
    pub errors: Vec<RowError>,
}

impl Parsed {
    fn bad(&mut self, row: u64, reason: impl Into<String>) {
        self.bad += 1;
        if self.errors.len() < MAX_ROW_ERRORS {
            self.errors.push(RowError {
                row,
                reason: reason.into(),
            });
        }
    }
}

/// A row's fields before it becomes an indicator.
struct Draft {
    kind: Kind,
    method: Option<String>,
    value: String,
    labels: Labels,
    verdict: Verdict,
    confidence: u8,
    notes: Option<String>,
    expires_us: Option<i64>,
}

struct Builder<'a> {
    meta: &'a FeedMeta,
    out: Parsed,
    seen: HashSet<String>,
}

impl<'a> Builder<'a> {
    fn new(meta: &'a FeedMeta) -> Self {
        Builder {
            meta,
            out: Parsed::default(),
            seen: HashSet::new(),
        }
    }

    /// Validates `d` and adds it (a repeat of an indicator already in the feed counts as ok).
    fn push(&mut self, row: u64, d: Draft) {
        match indicator::canonical(d.kind, d.method.as_deref(), &d.value) {
            Ok((value, sections)) => {
                let ind = Indicator {
                    id: Uuid::now_v7(),
                    feed: self.meta.name.clone(),
                    kind: d.kind,
                    method: d.method,
                    value,
                    sections,
                    labels: d.labels,
                    verdict: d.verdict,
                    confidence: d.confidence.min(100),
                    source: self.meta.source.clone(),
                    licence: self.meta.licence.clone(),
                    notes: d.notes,
                    first_seen_us: self.meta.now_us,
                    last_seen_us: self.meta.now_us,
                    expires_us: d.expires_us,
                };
                self.out.ok += 1;
                if self.seen.insert(ind.key()) {
                    self.out.indicators.push(ind);
                }
            }
            Err(e) => self.out.bad(row, e.0),
        }
    }
}

/// Parses `data` as `format`. Never fails: a file that is not of the format at all is one bad
/// row saying so.
pub fn parse(format: Format, data: &[u8], meta: &FeedMeta) -> Parsed {
    let mut b = Builder::new(meta);
    let text = match std::str::from_utf8(data) {
        Ok(t) => t.trim_start_matches('\u{feff}'),
        Err(e) => {
            b.out.bad(0, format!("not UTF-8 text: {e}"));
            return b.out;
        }
    };
    match format {
        Format::FoxioCsv => foxio_csv(&mut b, text),
        Format::Ja4dbJson => ja4db_json(&mut b, text),
        Format::IpList => ip_list(&mut b, text),
        Format::SslblJa3Csv => sslbl_ja3(&mut b, text),
        Format::ThreatfoxJson => threatfox(&mut b, text),
        Format::MispJson => misp(&mut b, text),
    }
    b.out
}

/// Splits CSV text into records (RFC 4180 quoting, quoted newlines), each with its first line.
pub fn csv_records(text: &str) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1u64;
    let mut start = 1u64;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            }
            '"' if field.is_empty() => quoted = true,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            '\n' if !quoted => {
                fields.push(std::mem::take(&mut field));
                let f = std::mem::take(&mut fields);
                if !(f.len() == 1 && f[0].trim().is_empty()) {
                    out.push((start, f));
                }
                line += 1;
                start = line;
                any = false;
            }
            '\r' if !quoted => {}
            '\n' => {
                line += 1;
                field.push(c);
            }
            _ => field.push(c),
        }
    }
    if any {
        fields.push(field);
        if !(fields.len() == 1 && fields[0].trim().is_empty()) {
            out.push((start, fields));
        }
    }
    out
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Malicious when a label or the notes name offensive tooling or malware.
fn software_verdict(labels: &Labels, notes: Option<&str>) -> Verdict {
    let text = [
        labels.application.as_deref(),
        labels.library.as_deref(),
        notes,
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ")
    .to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = format!(" {} ", words.join(" "));
    if MALWARE_WORDS
        .iter()
        .any(|w| joined.contains(&format!(" {w} ")))
    {
        Verdict::Malicious
    } else {
        Verdict::Benign
    }
}

/// A software row (FoxIO, JA4DB): labels and the fingerprints it gives, as one indicator.
fn software_row(
    b: &mut Builder<'_>,
    row: u64,
    labels: Labels,
    notes: Option<String>,
    fps: Vec<(String, String)>,
) {
    if fps.is_empty() {
        b.out.bad(row, "no fingerprint in the row");
        return;
    }
    let verdict = software_verdict(&labels, notes.as_deref());
    let mut labels = labels;
    if verdict == Verdict::Malicious {
        labels.malware_family = labels.application.clone().or(labels.library.clone());
    }
    let (kind, method, value) = match kind_of(fps) {
        Ok(k) => k,
        Err(e) => return b.out.bad(row, e),
    };
    b.push(
        row,
        Draft {
            kind,
            method,
            value,
            labels,
            verdict,
            confidence: if verdict == Verdict::Malicious {
                80
            } else {
                50
            },
            notes,
            expires_us: None,
        },
    );
}

/// FoxIO's column names → methods (JA4TScan is a JA4TS obtained by scanning).
fn foxio_method(column: &str) -> Option<&'static str> {
    match column.trim().to_ascii_lowercase().as_str() {
        "ja4" => Some("ja4"),
        "ja4s" => Some("ja4s"),
        "ja4h" => Some("ja4h"),
        "ja4x" => Some("ja4x"),
        "ja4t" => Some("ja4t"),
        "ja4ts" | "ja4tscan" => Some("ja4ts"),
        "ja4ssh" => Some("ja4ssh"),
        "ja4l" => Some("ja4l"),
        _ => None,
    }
}

fn foxio_csv(b: &mut Builder<'_>, text: &str) {
    let mut records = csv_records(text).into_iter();
    let Some((_, header)) = records.next() else {
        return;
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (app, lib, dev, os, notes) = (
        col("Application"),
        col("Library"),
        col("Device"),
        col("OS"),
        col("Notes"),
    );
    let fp_cols: Vec<(usize, &'static str)> = header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| foxio_method(h).map(|m| (i, m)))
        .collect();
    if fp_cols.is_empty() {
        b.out
            .bad(1, "header names no fingerprint column (ja4, ja4s, …)");
        return;
    }
    for (row, fields) in records {
        if fields.len() != header.len() {
            b.out.bad(
                row,
                format!("{} fields, the header has {}", fields.len(), header.len()),
            );
            continue;
        }
        let get = |i: Option<usize>| nonempty(i.and_then(|i| fields.get(i)).map(String::as_str));
        let labels = Labels {
            application: get(app),
            library: get(lib),
            device: get(dev),
            os: get(os),
            malware_family: None,
        };
        let mut fps: Vec<(String, String)> = Vec::new();
        let mut dup = false;
        for (i, m) in &fp_cols {
            if let Some(v) = get(Some(*i)) {
                dup |= fps.iter().any(|(x, _)| x == m);
                fps.push(((*m).to_owned(), v));
            }
        }
        if dup {
            // A JA4TS and a JA4TScan on one row: keep the first.
            let mut seen = HashSet::new();
            fps.retain(|(m, _)| seen.insert(m.clone()));
        }
        software_row(b, row, labels, get(notes), fps);
    }
}

/// JA4 computed again from its raw form (`a_ciphers_extensions_signatures`, the hashed parts
/// in clear), as JA4DB gives it beside the hash.
pub fn ja4_from_raw(raw: &str) -> Option<String> {
    let (a, rest) = raw.split_once('_')?;
    let (ciphers, ext_sigs) = rest.split_once('_')?;
    Some(format!(
        "{a}_{}_{}",
        hais_ja4::hash12(ciphers),
        hais_ja4::hash12(ext_sigs)
    ))
}

fn ja4db_json(b: &mut Builder<'_>, text: &str) {
    let rows: Vec<Value> = match serde_json::from_str(text) {
        Ok(Value::Array(a)) => a,
        Ok(_) => return b.out.bad(0, "a JA4DB export is a JSON array"),
        Err(e) => return b.out.bad(0, format!("not JSON: {e}")),
    };
    for (i, r) in rows.iter().enumerate() {
        let row = i as u64 + 1;
        let Some(o) = r.as_object() else {
            b.out.bad(row, "not an object");
            continue;
        };
        let s = |k: &str| nonempty(o.get(k).and_then(Value::as_str));
        let labels = Labels {
            application: s("application"),
            library: s("library"),
            device: s("device"),
            os: s("os"),
            malware_family: None,
        };
        let mut fps = Vec::new();
        for (key, m) in [
            ("ja4_fingerprint", "ja4"),
            ("ja4s_fingerprint", "ja4s"),
            ("ja4h_fingerprint", "ja4h"),
            ("ja4x_fingerprint", "ja4x"),
            ("ja4t_fingerprint", "ja4t"),
            ("ja4ts_fingerprint", "ja4ts"),
            ("ja4tscan_fingerprint", "ja4ts"),
        ] {
            if let Some(v) = s(key)
                && !fps.iter().any(|(x, _): &(String, String)| x == m)
            {
                fps.push((m.to_owned(), v));
            }
        }
        if let Some(raw) = s("ja4_fingerprint_string") {
            let given = fps
                .iter()
                .find(|(m, _)| m == "ja4")
                .map(|(_, v)| v.to_ascii_lowercase());
            match (ja4_from_raw(&raw), given) {
                (None, _) => {
                    b.out.bad(row, "ja4_fingerprint_string is not a raw JA4");
                    continue;
                }
                (Some(computed), Some(given)) if computed != given => {
                    b.out.bad(
                        row,
                        format!(
                            "ja4 {given} does not hash from its ja4_fingerprint_string ({computed})"
                        ),
                    );
                    continue;
                }
                (Some(computed), None) => fps.insert(0, ("ja4".to_owned(), computed)),
                _ => {}
            }
        }
        software_row(b, row, labels, s("notes"), fps);
    }
}

fn ip_list(b: &mut Builder<'_>, text: &str) {
    for (i, line) in text.lines().enumerate() {
        let line = line.split(['#', ';']).next().unwrap_or_default().trim();
        let Some(token) = line.split_whitespace().next() else {
            continue;
        };
        b.push(
            i as u64 + 1,
            Draft {
                kind: Kind::Ip,
                method: None,
                value: token.to_owned(),
                labels: Labels::default(),
                verdict: b.meta.verdict,
                confidence: 90,
                notes: None,
                expires_us: None,
            },
        );
    }
}

fn sslbl_ja3(b: &mut Builder<'_>, text: &str) {
    for (row, fields) in csv_records(text) {
        let first = fields.first().map(|f| f.trim()).unwrap_or_default();
        if first.starts_with('#') || first.is_empty() {
            continue;
        }
        if fields.len() < 4 {
            b.out
                .bad(row, format!("{} fields, expected 4", fields.len()));
            continue;
        }
        let reason = nonempty(Some(&fields[3]));
        b.push(
            row,
            Draft {
                kind: Kind::Fingerprint,
                method: Some("ja3".into()),
                value: first.to_owned(),
                labels: Labels {
                    malware_family: reason.clone(),
                    ..Labels::default()
                },
                verdict: b.meta.verdict,
                confidence: 75,
                notes: reason.map(|r| format!("SSLBL listing reason: {r}")),
                expires_us: None,
            },
        );
    }
}

/// The document, or one bad row saying it is not JSON.
fn json_root(b: &mut Builder<'_>, text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .map_err(|e| b.out.bad(0, format!("not JSON: {e}")))
        .ok()
}

/// One fingerprint is a fingerprint indicator; several (of distinct methods) a combination.
fn kind_of(mut fps: Vec<(String, String)>) -> Result<(Kind, Option<String>, String), String> {
    if fps.len() == 1 {
        let (m, v) = fps.remove(0);
        return Ok((Kind::Fingerprint, Some(m), v));
    }
    indicator::combination(&fps)
        .map(|c| (Kind::Combination, None, c))
        .map_err(|e| e.0)
}

fn threatfox(b: &mut Builder<'_>, text: &str) {
    let Some(root) = json_root(b, text) else {
        return;
    };
    let iocs: Vec<&Value> = match &root {
        Value::Object(o) if o.get("data").is_some_and(Value::is_array) => o["data"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Value::Object(o) => o
            .values()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .collect(),
        Value::Array(a) => a.iter().collect(),
        _ => return b.out.bad(0, "a ThreatFox export is a JSON object"),
    };
    for (i, ioc) in iocs.into_iter().enumerate() {
        let row = i as u64 + 1;
        let s = |k: &str| nonempty(ioc.get(k).and_then(Value::as_str));
        let (Some(value), Some(ty)) = (s("ioc_value").or(s("ioc")), s("ioc_type")) else {
            b.out.bad(row, "no ioc_value or ioc_type");
            continue;
        };
        let (kind, value) = match ty.as_str() {
            "ip:port" => {
                let host = match value.rsplit_once(':') {
                    Some((h, p)) if p.parse::<u16>().is_ok() => h,
                    _ => value.as_str(),
                };
                (Kind::Ip, host.trim_matches(['[', ']']).to_owned())
            }
            "domain" => (Kind::Domain, value),
            _ => {
                b.out.skipped += 1;
                continue;
            }
        };
        let confidence = ioc
            .get("confidence_level")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(50)
            .min(100) as u8;
        let family = s("malware_printable").or(s("malware"));
        b.push(
            row,
            Draft {
                kind,
                method: None,
                value,
                labels: Labels {
                    malware_family: family,
                    ..Labels::default()
                },
                verdict: b.meta.verdict,
                confidence,
                notes: s("threat_type"),
                expires_us: None,
            },
        );
    }
}

fn misp(b: &mut Builder<'_>, text: &str) {
    let Some(root) = json_root(b, text) else {
        return;
    };
    let events: Vec<&Value> = match &root {
        Value::Object(o) if o.contains_key("response") => o["response"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut row = 0u64;
    for e in events {
        let e = e.get("Event").unwrap_or(e);
        let info = e.get("info").and_then(Value::as_str);
        for o in e
            .get("Object")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            row += 1;
            if o.get("name").and_then(Value::as_str) != Some("ja4-plus") {
                b.out.skipped += 1;
                continue;
            }
            let mut fps = Vec::new();
            let mut description = None;
            for a in o
                .get("Attribute")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let rel = a
                    .get("object_relation")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let val = a.get("value").and_then(Value::as_str).unwrap_or_default();
                if let Some(m) = foxio_method(rel) {
                    fps.push((m.to_owned(), val.to_owned()));
                } else if rel == "description" || rel == "comment" {
                    description = nonempty(Some(val));
                }
            }
            let labels = Labels {
                application: description.clone().or(info.map(str::to_owned)),
                ..Labels::default()
            };
            if fps.is_empty() {
                b.out
                    .bad(row, "ja4-plus object without a fingerprint attribute");
                continue;
            }
            let (kind, method, value) = match kind_of(fps) {
                Ok(k) => k,
                Err(e) => {
                    b.out.bad(row, e);
                    continue;
                }
            };
            b.push(
                row,
                Draft {
                    kind,
                    method,
                    value,
                    labels,
                    verdict: b.meta.verdict,
                    confidence: 70,
                    notes: info.map(str::to_owned),
                    expires_us: None,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FeedMeta {
        FeedMeta {
            name: "t".into(),
            source: "test".into(),
            licence: None,
            verdict: Verdict::Malicious,
            now_us: 1,
        }
    }

    #[test]
    fn csv_quoting() {
        let r = csv_records("a,\"b,c\",\"d\"\"e\"\n\n1,\"x\ny\",z\r\n");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (1, vec!["a".into(), "b,c".into(), "d\"e".into()]));
        assert_eq!(r[1], (3, vec!["1".into(), "x\ny".into(), "z".into()]));
    }

    #[test]
    fn foxio_rows_become_fingerprints_and_combinations() {
        let csv = "Application,Library,Device,OS,ja4,ja4s,ja4h,ja4x,ja4t,ja4tscan,Notes\n\
                   ,Python,,,t13d181000_85036bcba153_d41ae481755e,,,,,,\n\
                   Sliver Agent,GoLang,,,t13d190900_9dc949149365_97f8aa674fd9,t130200_1301_a56c5b993250,,,,,\n\
                   Cobalt Strike beacon,,,,,,ge11cn060000_4e59edc1297a_4da5efaf0cb,,,,\n\
                   Nothing,,,,,,,,,,\n\
                   short,row\n";
        let p = parse(Format::FoxioCsv, csv.as_bytes(), &meta());
        assert_eq!((p.ok, p.bad), (2, 3), "{:?}", p.errors);
        assert_eq!(p.indicators[0].kind, Kind::Fingerprint);
        assert_eq!(p.indicators[0].verdict, Verdict::Benign);
        assert_eq!(p.indicators[1].kind, Kind::Combination);
        assert_eq!(p.indicators[1].verdict, Verdict::Malicious);
        assert_eq!(
            p.indicators[1].labels.malware_family.as_deref(),
            Some("Sliver Agent")
        );
        assert_eq!(p.errors[0].row, 4);
        assert!(
            p.errors[0].reason.contains("section c"),
            "{:?}",
            p.errors[0]
        );
    }

    #[test]
    fn the_shipped_foxio_mapping_imports_with_its_one_bad_row() {
        let data = include_bytes!("../../../data/ja4plus-mapping.csv");
        let p = parse(Format::FoxioCsv, data, &meta());
        assert_eq!(p.bad, 1, "{:?}", p.errors);
        assert!(p.ok >= 60);
        assert!(
            p.indicators
                .iter()
                .any(|i| i.kind == Kind::Combination && i.verdict == Verdict::Malicious)
        );
    }

    #[test]
    fn verdict_words_are_whole_words() {
        let l = |a: &str| Labels {
            application: Some(a.into()),
            ..Labels::default()
        };
        assert_eq!(
            software_verdict(&l("Sliver/Havoc C2 Server"), None),
            Verdict::Malicious
        );
        assert_eq!(
            software_verdict(&l("Chromium Browser"), None),
            Verdict::Benign
        );
        // "c2" inside a word is not C2.
        assert_eq!(software_verdict(&l("abc2 tool"), None), Verdict::Benign);
    }

    #[test]
    fn ja4db_rehashes_the_raw_string() {
        let raw = "t13d1516h2_002f,0035_0005,000a_0403,0804";
        let good = ja4_from_raw(raw).unwrap();
        assert_eq!(good.len(), 36);
        let json = serde_json::json!([
            {"application": "Good", "ja4_fingerprint": good, "ja4_fingerprint_string": raw},
            {"application": "Tampered", "ja4_fingerprint": "t13d1516h2_000000000000_000000000000", "ja4_fingerprint_string": raw},
            {"application": "Only raw", "ja4_fingerprint_string": raw, "ja4s_fingerprint": "t130200_1301_a56c5b993250"},
            {"application": "None"},
            7
        ]);
        let p = parse(Format::Ja4dbJson, json.to_string().as_bytes(), &meta());
        assert_eq!((p.ok, p.bad), (2, 3), "{:?}", p.errors);
        assert!(p.errors[0].reason.contains("does not hash"));
        assert_eq!(p.indicators[1].kind, Kind::Combination);
        assert!(p.indicators[1].value.starts_with(&format!("ja4={good}+")));
    }

    #[test]
    fn ip_lists_sslbl_threatfox_misp() {
        let p = parse(
            Format::IpList,
            b"; Spamhaus DROP\n1.10.16.0/20 ; SBL256894\n# c\n\n192.0.2.1\n10.0.0.1/8\nbogus\n2001:db8::/32\n",
            &meta(),
        );
        assert_eq!((p.ok, p.bad), (3, 2));
        assert_eq!(p.indicators[1].value, "192.0.2.1/32");

        let p = parse(
            Format::SslblJa3Csv,
            b"# ja3_md5,Firstseen,Lastseen,Listingreason\n\
              b386946a5a44d1ddcc843bc75336dfce,2017-07-14 18:08:15,2019-07-27 20:42:54,Dridex\n\
              nothex,2017-07-14 18:08:15,2019-07-27 20:42:54,X\n",
            &meta(),
        );
        assert_eq!((p.ok, p.bad), (1, 1));
        assert_eq!(
            p.indicators[0].labels.malware_family.as_deref(),
            Some("Dridex")
        );

        let tf = serde_json::json!({
            "1": [{"ioc_value": "198.51.100.7:443", "ioc_type": "ip:port", "malware_printable": "Cobalt Strike", "confidence_level": 100}],
            "2": [{"ioc_value": "evil.example", "ioc_type": "domain", "malware_printable": "Qakbot", "confidence_level": "75"}],
            "3": [{"ioc_value": "https://x.example/a", "ioc_type": "url"}],
            "4": [{"ioc_value": "999.1.1.1:80", "ioc_type": "ip:port"}]
        });
        let p = parse(Format::ThreatfoxJson, tf.to_string().as_bytes(), &meta());
        assert_eq!((p.ok, p.bad, p.skipped), (2, 1, 1), "{:?}", p.errors);
        assert_eq!(p.indicators[0].value, "198.51.100.7/32");
        assert_eq!(p.indicators[1].confidence, 75);

        let misp = serde_json::json!({"Event": {"info": "C2 infra", "Object": [
            {"name": "ja4-plus", "Attribute": [
                {"object_relation": "ja4", "value": "t13d190900_9dc949149365_97f8aa674fd9"},
                {"object_relation": "ja4s", "value": "t130200_1301_a56c5b993250"},
                {"object_relation": "description", "value": "Sliver"}]},
            {"name": "ja4-plus", "Attribute": [{"object_relation": "ja4x", "value": "zz"}]},
            {"name": "domain-ip", "Attribute": []}
        ]}});
        let p = parse(Format::MispJson, misp.to_string().as_bytes(), &meta());
        assert_eq!((p.ok, p.bad, p.skipped), (1, 1, 1), "{:?}", p.errors);
        assert_eq!(p.indicators[0].kind, Kind::Combination);
        assert_eq!(
            p.indicators[0].labels.application.as_deref(),
            Some("Sliver")
        );
    }

    #[test]
    fn garbage_is_one_bad_row() {
        for f in Format::ALL {
            let p = parse(f, &[0xff, 0xfe, 0x00], &meta());
            assert_eq!(p.bad, 1, "{f:?}");
            assert!(p.indicators.is_empty());
        }
    }
}
