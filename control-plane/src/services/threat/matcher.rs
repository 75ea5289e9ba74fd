//! The in-memory matcher: every live indicator indexed so that judging an event costs a few hash
//! lookups and no database query. Built whole from the stored indicators and swapped in (an
//! `Arc`) when a feed changes; events are judged against whichever index was current when their
//! batch started.
//!
//! * **Fingerprints**, per method and per *mask* (the set of sections an indicator pins): the
//!   exact ones (every section) under the full value, section ones (`t13d1516h2_*_e5627efa2ab1`)
//!   under the event's value with the other sections replaced by `*`. An event's fingerprint is
//!   looked up once per mask its method has in the index.
//! * **Combinations**: each term is indexed like a fingerprint, pointing at (combination, term);
//!   a combination matches when every term matched one fingerprint of the same event. A library
//!   fingerprint shared by benign software (a Go TLS client) is thus not called Sliver until the
//!   JA4S (and JA4X…) match too.
//! * **IP networks**: per address family, one hash map per prefix length present, looked up from
//!   the longest prefix down (every network containing the address matches).
//! * **Domains**: the server name and each of its parent domains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hais_shared::event::FingerprintEvent;

use super::indicator::{self, Indicator, Kind, Verdict};

/// Where an indexed pattern leads: an indicator (`term` 0 of 1) or one term of a combination.
#[derive(Debug, Clone, Copy)]
struct Target {
    rule: u32,
    term: u8,
}

/// The patterns of one method: per mask (bit i = section i pinned), pattern text → targets.
#[derive(Debug, Default)]
struct MethodIndex {
    masks: Vec<(u32, HashMap<String, Vec<Target>>)>,
}

impl MethodIndex {
    fn insert(&mut self, pattern: &str, t: Target) {
        let mask = pattern
            .split('_')
            .enumerate()
            .filter(|(_, s)| *s != "*")
            .fold(0u32, |m, (i, _)| m | (1 << i.min(31)));
        let full = pattern.split('_').count();
        // Exact patterns under mask u32::MAX, looked up with the event's value as it is.
        let mask = if mask.count_ones() as usize == full {
            u32::MAX
        } else {
            mask
        };
        let i = match self.masks.iter().position(|(m, _)| *m == mask) {
            Some(i) => i,
            None => {
                self.masks.push((mask, HashMap::new()));
                // Exact first: the common case, and no allocation.
                self.masks.sort_by_key(|(m, _)| std::cmp::Reverse(*m));
                self.masks
                    .iter()
                    .position(|(m, _)| *m == mask)
                    .unwrap_or_default()
            }
        };
        self.masks[i]
            .1
            .entry(pattern.to_owned())
            .or_default()
            .push(t);
    }

    fn lookup(&self, value: &str, mut hit: impl FnMut(Target)) {
        let mut key = String::new();
        for (mask, map) in &self.masks {
            let found = if *mask == u32::MAX {
                map.get(value)
            } else {
                key.clear();
                for (i, s) in value.split('_').enumerate() {
                    if i > 0 {
                        key.push('_');
                    }
                    key.push_str(if mask & (1 << i.min(31)) != 0 { s } else { "*" });
                }
                map.get(key.as_str())
            };
            for t in found.into_iter().flatten() {
                hit(*t);
            }
        }
    }
}

/// A combination partly matched by one event: rule, terms seen (bit set), the fingerprints.
type Partial = (u32, u8, Vec<(String, String)>);

/// One indexed indicator and how many terms it needs.
#[derive(Debug)]
struct Rule {
    indicator: Arc<Indicator>,
    terms: u8,
}

/// The index (see the module's documentation).
#[derive(Debug, Default)]
pub struct Matcher {
    rules: Vec<Rule>,
    methods: HashMap<&'static str, MethodIndex>,
    v4: Vec<(u8, HashMap<u32, Vec<u32>>)>,
    v6: Vec<(u8, HashMap<u128, Vec<u32>>)>,
    domains: HashMap<String, Vec<u32>>,
}

/// One indicator an event matched, with what matched it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub indicator: Arc<Indicator>,
    /// The event's fingerprints that matched, as `(method, value)` (none for IP and domain hits).
    pub fingerprints: Vec<(String, String)>,
}

/// What an event is, after judging: the indicators it matched and the worst verdict.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    pub hits: Vec<Hit>,
}

impl Judgement {
    pub fn verdict(&self) -> Option<Verdict> {
        self.hits.iter().map(|h| h.indicator.verdict).max()
    }
}

fn method_key(m: &str) -> Option<&'static str> {
    indicator::METHODS.iter().copied().find(|x| *x == m)
}

impl Matcher {
    /// Indexes the indicators that are live at `now_us`.
    pub fn build(indicators: impl IntoIterator<Item = Indicator>, now_us: i64) -> Matcher {
        let mut m = Matcher::default();
        for ind in indicators {
            if !ind.live(now_us) {
                continue;
            }
            m.add(ind);
        }
        m
    }

    /// Indicators indexed.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn add(&mut self, ind: Indicator) {
        let rule = self.rules.len() as u32;
        match ind.kind {
            Kind::Fingerprint => {
                let Some(m) = ind.method.as_deref().and_then(method_key) else {
                    return;
                };
                self.methods
                    .entry(m)
                    .or_default()
                    .insert(&ind.value, Target { rule, term: 0 });
                self.rules.push(Rule {
                    indicator: Arc::new(ind),
                    terms: 1,
                });
            }
            Kind::Combination => {
                let terms: Vec<(&'static str, String)> = indicator::combination_terms(&ind.value)
                    .into_iter()
                    .filter_map(|(m, v)| method_key(m).map(|m| (m, v.to_owned())))
                    .collect();
                if terms.len() < 2 || terms.len() > 8 {
                    return;
                }
                for (i, (m, v)) in terms.iter().enumerate() {
                    self.methods.entry(m).or_default().insert(
                        v,
                        Target {
                            rule,
                            term: i as u8,
                        },
                    );
                }
                self.rules.push(Rule {
                    indicator: Arc::new(ind),
                    terms: terms.len() as u8,
                });
            }
            Kind::Ip => {
                let Ok(n) = indicator::net(&ind.value) else {
                    return;
                };
                match n.addr {
                    IpAddr::V4(a) => insert_net(&mut self.v4, n.prefix, u32::from(a), rule),
                    IpAddr::V6(a) => insert_net(&mut self.v6, n.prefix, u128::from(a), rule),
                }
                self.rules.push(Rule {
                    indicator: Arc::new(ind),
                    terms: 1,
                });
            }
            Kind::Domain => {
                self.domains
                    .entry(ind.value.clone())
                    .or_default()
                    .push(rule);
                self.rules.push(Rule {
                    indicator: Arc::new(ind),
                    terms: 1,
                });
            }
        }
    }

    /// The indicators containing `ip` (longest prefix first).
    pub fn ip(&self, ip: IpAddr) -> Vec<Arc<Indicator>> {
        let mut out = Vec::new();
        self.ip_rules(ip, |r| out.push(self.rules[r as usize].indicator.clone()));
        out
    }

    fn ip_rules(&self, ip: IpAddr, mut hit: impl FnMut(u32)) {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (p, map) in &self.v4 {
                    for r in map.get(&indicator::mask_v4(a, *p)).into_iter().flatten() {
                        hit(*r);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (p, map) in &self.v6 {
                    for r in map.get(&indicator::mask_v6(a, *p)).into_iter().flatten() {
                        hit(*r);
                    }
                }
            }
        }
    }

    /// The indicators a fingerprint matches on its own (exact and section), and the
    /// combinations it is a term of (which need more to match).
    pub fn fingerprint(
        &self,
        method: &str,
        value: &str,
    ) -> (Vec<Arc<Indicator>>, Vec<Arc<Indicator>>) {
        let (mut alone, mut partial) = (Vec::new(), Vec::new());
        if let Some(idx) = method_key(method).and_then(|m| self.methods.get(m)) {
            idx.lookup(value, |t| {
                let r = &self.rules[t.rule as usize];
                if r.terms == 1 {
                    alone.push(r.indicator.clone());
                } else {
                    partial.push(r.indicator.clone());
                }
            });
        }
        (alone, partial)
    }

    /// Judges one event: its fingerprints, its remote address (`remote`), its server name.
    pub fn judge(&self, event: &FingerprintEvent, remote: IpAddr) -> Judgement {
        let mut hits: Vec<Hit> = Vec::new();
        // Combinations partly matched: rule, terms seen (a bit set), the fingerprints.
        let mut partial: Vec<Partial> = Vec::new();
        for fp in &event.fingerprints {
            let Some(idx) = self.methods.get(fp.method.as_str()) else {
                continue;
            };
            idx.lookup(&fp.value, |t| {
                let r = &self.rules[t.rule as usize];
                let matched = (fp.method.as_str().to_owned(), fp.value.clone());
                if r.terms == 1 {
                    hits.push(Hit {
                        indicator: r.indicator.clone(),
                        fingerprints: vec![matched],
                    });
                } else {
                    match partial.iter_mut().find(|(rule, _, _)| *rule == t.rule) {
                        Some((_, bits, fps)) => {
                            if *bits & (1 << t.term) == 0 {
                                *bits |= 1 << t.term;
                                fps.push(matched);
                            }
                        }
                        None => partial.push((t.rule, 1 << t.term, vec![matched])),
                    }
                }
            });
        }
        for (rule, bits, fps) in partial {
            let r = &self.rules[rule as usize];
            if bits.count_ones() == u32::from(r.terms) {
                hits.push(Hit {
                    indicator: r.indicator.clone(),
                    fingerprints: fps,
                });
            }
        }
        self.ip_rules(remote, |r| {
            hits.push(Hit {
                indicator: self.rules[r as usize].indicator.clone(),
                fingerprints: Vec::new(),
            })
        });
        if let Some(name) = &event.server_name
            && !self.domains.is_empty()
        {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let mut d = name.as_str();
            loop {
                for r in self.domains.get(d).into_iter().flatten() {
                    hits.push(Hit {
                        indicator: self.rules[*r as usize].indicator.clone(),
                        fingerprints: Vec::new(),
                    });
                }
                match d.split_once('.') {
                    Some((_, parent)) if parent.contains('.') => d = parent,
                    _ => break,
                }
            }
        }
        Judgement { hits }
    }
}

fn insert_net<K: std::hash::Hash + Eq>(
    by_prefix: &mut Vec<(u8, HashMap<K, Vec<u32>>)>,
    prefix: u8,
    key: K,
    rule: u32,
) {
    let i = match by_prefix.iter().position(|(p, _)| *p == prefix) {
        Some(i) => i,
        None => {
            by_prefix.push((prefix, HashMap::new()));
            by_prefix.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
            by_prefix
                .iter()
                .position(|(p, _)| *p == prefix)
                .unwrap_or_default()
        }
    };
    by_prefix[i].1.entry(key).or_default().push(rule);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::threat::indicator::Labels;
    use hais_shared::event::{Fingerprint, Flow, Transport};
    use hais_shared::fingerprint::Method;
    use uuid::Uuid;

    fn ind(kind: Kind, method: Option<&str>, value: &str, verdict: Verdict) -> Indicator {
        let (value, sections) = indicator::canonical(kind, method, value).unwrap();
        Indicator {
            id: Uuid::now_v7(),
            feed: "t".into(),
            kind,
            method: method.map(str::to_owned),
            value,
            sections,
            labels: Labels::default(),
            verdict,
            confidence: 50,
            source: "test".into(),
            licence: None,
            notes: None,
            first_seen_us: 0,
            last_seen_us: 0,
            expires_us: None,
        }
    }

    fn event(fps: &[(Method, &str)], sni: Option<&str>) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a",
            "h",
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 5000,
                dst_ip: "198.51.100.7".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.fingerprints = fps
            .iter()
            .map(|(m, v)| Fingerprint {
                method: *m,
                value: (*v).into(),
            })
            .collect();
        e.server_name = sni.map(str::to_owned);
        e
    }

    const GO_JA4: &str = "t13d190900_9dc949149365_97f8aa674fd9";
    const SLIVER_JA4S: &str = "t130200_1301_a56c5b993250";

    #[test]
    fn exact_section_and_combination() {
        let sliver = format!("ja4={GO_JA4}+ja4s={SLIVER_JA4S}");
        let m = Matcher::build(
            [
                ind(Kind::Fingerprint, Some("ja4"), GO_JA4, Verdict::Benign),
                ind(Kind::Combination, None, &sliver, Verdict::Malicious),
                ind(
                    Kind::Fingerprint,
                    Some("ja4h"),
                    "po10nn060000_cdb958d032b0",
                    Verdict::Suspicious,
                ),
                ind(
                    Kind::Fingerprint,
                    Some("ja4"),
                    "t13d1516h2_*_02713d6af862",
                    Verdict::Suspicious,
                ),
                ind(Kind::Ip, None, "198.51.100.0/24", Verdict::Malicious),
                ind(Kind::Domain, None, "evil.example", Verdict::Malicious),
            ],
            0,
        );
        assert_eq!(m.len(), 6);
        // The Go library alone: benign, not Sliver.
        let remote = "192.0.2.1".parse().unwrap();
        let j = m.judge(&event(&[(Method::Ja4, GO_JA4)], None), remote);
        assert_eq!(j.verdict(), Some(Verdict::Benign));
        assert_eq!(j.hits.len(), 1);
        // With Sliver's JA4S on the same stream: the combination.
        let j = m.judge(
            &event(&[(Method::Ja4, GO_JA4), (Method::Ja4s, SLIVER_JA4S)], None),
            remote,
        );
        assert_eq!(j.verdict(), Some(Verdict::Malicious));
        let combo = j
            .hits
            .iter()
            .find(|h| h.indicator.kind == Kind::Combination)
            .unwrap();
        assert_eq!(combo.fingerprints.len(), 2);
        // JA4H a+b, whatever c and d.
        let j = m.judge(
            &event(
                &[(
                    Method::Ja4h,
                    "po10nn060000_cdb958d032b0_111111111111_222222222222",
                )],
                None,
            ),
            remote,
        );
        assert_eq!(j.verdict(), Some(Verdict::Suspicious));
        // JA4 a+c, whatever b; a different c does not match.
        let j = m.judge(
            &event(
                &[(Method::Ja4, "t13d1516h2_aaaaaaaaaaaa_02713d6af862")],
                None,
            ),
            remote,
        );
        assert_eq!(j.hits.len(), 1);
        let j = m.judge(
            &event(
                &[(Method::Ja4, "t13d1516h2_aaaaaaaaaaaa_02713d6af863")],
                None,
            ),
            remote,
        );
        assert!(j.hits.is_empty());
        // The destination and a subdomain of a listed domain.
        let j = m.judge(
            &event(&[], Some("cdn.Evil.example.")),
            "198.51.100.9".parse().unwrap(),
        );
        assert_eq!(j.hits.len(), 2);
        assert!(m.ip("198.51.100.200".parse().unwrap()).len() == 1);
        assert!(m.ip("2001:db8::1".parse().unwrap()).is_empty());
    }

    #[test]
    fn expired_indicators_are_not_indexed() {
        let mut i = ind(Kind::Fingerprint, Some("ja4"), GO_JA4, Verdict::Malicious);
        i.expires_us = Some(10);
        assert_eq!(Matcher::build([i.clone()], 5).len(), 1);
        assert!(Matcher::build([i], 10).is_empty());
    }
}
