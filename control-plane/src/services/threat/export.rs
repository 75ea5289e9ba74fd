//! Exports of indicators in the formats other tools read (no I/O):
//!
//! * **Suricata** (7.0.6 and later have `ja4.hash`): a dataset of type `string` — one
//!   base64-encoded JA4 a line, as Suricata's string datasets are stored — and a rule file that
//!   alerts on a TLS/QUIC client whose JA4 is in it (`ja4.hash; dataset:isset,…`). Exact JA4
//!   indicators only: Suricata computes no other JA4+ method, and a dataset matches whole
//!   values.
//! * **Zeek Intel framework**: a tab-separated file of addresses (`Intel::ADDR`), networks
//!   (`Intel::SUBNET`) and domains (`Intel::DOMAIN`). Zeek's intel types have none for JA4+.
//! * **MISP**: an event with one `ja4-plus` object per fingerprint or combination indicator (the
//!   importer of `misp-json` feeds reads it back).

use base64::Engine as _;
use serde_json::{Value, json};

use super::indicator::{self, Indicator, Kind};

/// The dataset's name in Suricata rules.
pub const SURICATA_DATASET: &str = "hais-ja4";

/// Whether `i` is an exact JA4 (every section pinned).
fn exact_ja4(i: &Indicator) -> bool {
    i.kind == Kind::Fingerprint && i.method.as_deref() == Some("ja4") && !i.value.contains('*')
}

/// The Suricata dataset file: base64 of each exact JA4, one a line, sorted and unique.
pub fn suricata_dataset(indicators: &[Indicator]) -> String {
    suricata_dataset_of(
        indicators
            .iter()
            .filter(|i| exact_ja4(i))
            .map(|i| i.value.as_str()),
    )
}

/// A Suricata string dataset of `values` (base64 of each, one a line, sorted and unique).
pub fn suricata_dataset_of<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut lines: Vec<String> = values
        .map(|v| base64::engine::general_purpose::STANDARD.encode(v.as_bytes()))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Suricata rules alerting on TLS and QUIC clients whose JA4 is in the dataset saved as
/// `dataset_file` (relative to Suricata's data directory or absolute).
pub fn suricata_rules(dataset_file: &str) -> String {
    [("tls", 9_160_001), ("quic", 9_160_002)]
        .iter()
        .map(|(proto, sid)| {
            format!(
                "alert {proto} any any -> any any (msg:\"HaIS threat: {proto} client JA4 on the \
                 HaIS list\"; ja4.hash; dataset:isset,{SURICATA_DATASET},type string,load \
                 {dataset_file}; classtype:trojan-activity; sid:{sid}; rev:1;)\n"
            )
        })
        .collect()
}

fn description(i: &Indicator) -> String {
    let names = i.labels.names();
    let mut d = format!("{} ({})", i.verdict.as_str(), i.feed);
    if !names.is_empty() {
        d = format!("{} {d}", names.join("/"));
    }
    d.replace(['\t', '\n', '\r'], " ")
}

/// A Zeek Intel framework file of the IP and domain indicators.
pub fn zeek_intel(indicators: &[Indicator]) -> String {
    let mut out = String::from("#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n");
    for i in indicators {
        let (value, ty) = match i.kind {
            Kind::Ip => match indicator::net(&i.value) {
                Ok(n) if (n.addr.is_ipv4() && n.prefix == 32) || n.prefix == 128 => {
                    (n.addr.to_string(), "Intel::ADDR")
                }
                Ok(n) => (n.to_string(), "Intel::SUBNET"),
                Err(_) => continue,
            },
            Kind::Domain => (i.value.clone(), "Intel::DOMAIN"),
            _ => continue,
        };
        let source = format!("hais:{}", i.feed).replace(['\t', '\n', '\r'], " ");
        out.push_str(&format!("{value}\t{ty}\t{source}\t{}\n", description(i)));
    }
    out
}

/// A MISP event with one `ja4-plus` object per fingerprint or combination indicator.
pub fn misp_event(indicators: &[Indicator], info: &str) -> Value {
    let objects: Vec<Value> = indicators
        .iter()
        .filter_map(|i| {
            let terms: Vec<(String, String)> = match i.kind {
                Kind::Fingerprint => vec![(i.method.clone()?, i.value.clone())],
                Kind::Combination => indicator::combination_terms(&i.value)
                    .into_iter()
                    .map(|(m, v)| (m.to_owned(), v.to_owned()))
                    .collect(),
                _ => return None,
            };
            Some(misp_object(
                &i.id,
                &terms,
                &description(i),
                &format!("HaIS indicator {} ({})", i.id, i.verdict.as_str()),
                true,
            ))
        })
        .collect();
    misp_event_of(objects, info)
}

/// A MISP event holding `objects`.
pub fn misp_event_of(objects: Vec<Value>, info: &str) -> Value {
    json!({"Event": {"info": info, "Object": objects}})
}

/// One MISP `ja4-plus` object: an attribute per (method, fingerprint) term, flagged for
/// detection (`to_ids`) or not, and a description.
pub fn misp_object(
    uuid: &uuid::Uuid,
    terms: &[(String, String)],
    description: &str,
    comment: &str,
    to_ids: bool,
) -> Value {
    let mut attrs: Vec<Value> = terms
        .iter()
        .map(|(m, v)| json!({"object_relation": m, "type": "text", "value": v, "to_ids": to_ids}))
        .collect();
    attrs.push(json!({
        "object_relation": "description",
        "type": "text",
        "value": description,
        "to_ids": false
    }));
    json!({
        "name": "ja4-plus",
        "meta-category": "network",
        "uuid": uuid,
        "comment": comment,
        "Attribute": attrs
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::threat::feeds::{self, FeedMeta, Format};
    use crate::services::threat::indicator::Verdict;

    fn sample() -> Vec<Indicator> {
        let meta = FeedMeta {
            name: "t".into(),
            source: "t".into(),
            licence: None,
            verdict: Verdict::Malicious,
            now_us: 0,
        };
        let mut v = feeds::parse(
            Format::FoxioCsv,
            include_bytes!("../../../data/ja4plus-mapping.csv"),
            &meta,
        )
        .indicators;
        v.extend(
            feeds::parse(
                Format::IpList,
                b"192.0.2.1\n198.51.100.0/24\n2001:db8::/32\n",
                &meta,
            )
            .indicators,
        );
        v
    }

    #[test]
    fn suricata_dataset_is_base64_lines_of_exact_ja4s() {
        let d = suricata_dataset(&sample());
        assert!(!d.is_empty());
        for line in d.lines() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .unwrap();
            let v = String::from_utf8(raw).unwrap();
            assert!(indicator::fingerprint("ja4", &v).is_ok(), "{v}");
            assert!(!v.contains('*'));
        }
        assert!(suricata_rules("x.lst").contains("dataset:isset,hais-ja4,type string,load x.lst"));
    }

    #[test]
    fn zeek_and_misp() {
        let z = zeek_intel(&sample());
        assert!(z.contains("192.0.2.1\tIntel::ADDR\t"));
        assert!(z.contains("198.51.100.0/24\tIntel::SUBNET\t"));
        assert!(z.lines().skip(1).all(|l| l.split('\t').count() == 4));
        let all = sample();
        let m = misp_event(&all, "HaIS");
        let back = feeds::parse(
            Format::MispJson,
            m.to_string().as_bytes(),
            &FeedMeta {
                name: "back".into(),
                source: "misp".into(),
                licence: None,
                verdict: Verdict::Suspicious,
                now_us: 0,
            },
        );
        let fps = all
            .iter()
            .filter(|i| matches!(i.kind, Kind::Fingerprint | Kind::Combination))
            .count();
        assert_eq!(back.bad, 0, "{:?}", back.errors);
        assert_eq!(back.indicators.len(), fps);
    }
}
