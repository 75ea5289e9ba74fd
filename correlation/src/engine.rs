//! The detectors, run over observations in order.
//!
//! An [`Engine`] holds the baselines and prevalence it was given ([`Engine::load`],
//! [`Engine::load_prevalence`]) or built, judges each [`Observation`] ([`Engine::observe`]) and
//! collects what changed until [`Engine::take_changes`]: the baselines touched, the findings
//! raised (as deltas, to [`Finding::absorb`] into the stored ones) and the adoptions (an
//! identity presenting a client fingerprint for the first time) that the shared-fingerprint
//! detector counts across identities. The control plane runs one engine per batch on the state
//! its store holds for the batch; a replay keeps one engine for a whole stream. Both give the
//! same findings.

use std::collections::{BTreeMap, BTreeSet};

use hais_shared::detection::Severity;
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Config;
use crate::baseline::Baseline;
use crate::detect::{Change, closest_change, path_sample, ssh_session};
use crate::finding::{Detector, Finding, FindingKey};
use crate::observation::{Observation, Presented, Side, is_client_method};

/// An identity presenting a client fingerprint (JA4, JA4H, JA4T, JA4D) for the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub method: Method,
    pub fingerprint: String,
    pub identity: String,
    pub event_id: Uuid,
    pub ts_us: i64,
    /// Whether the identity was established then (only those count as spreading).
    pub established: bool,
}

/// How many identities present one fingerprint, and which established ones started within the
/// window: what the shared-fingerprint detector reads. Bounded: at most four times the
/// threshold recent adoptions are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prevalence {
    /// Identities that ever presented it.
    pub identities: u64,
    /// Established identities that started presenting it recently, oldest first.
    pub recent: Vec<Adoption>,
}

/// What changed since the last [`Engine::take_changes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Every baseline touched, in identity order.
    pub baselines: Vec<Baseline>,
    /// Findings raised, one per key, in key order; absorb each into the stored one.
    pub findings: Vec<Finding>,
    /// New adoptions, in the order they happened.
    pub adoptions: Vec<Adoption>,
    /// The prevalence of every fingerprint adopted, as it is now.
    pub prevalence: Vec<((Method, String), Prevalence)>,
}

/// The detectors and the state they read.
#[derive(Debug, Clone)]
pub struct Engine {
    config: Config,
    baselines: BTreeMap<String, Baseline>,
    prevalence: BTreeMap<(Method, String), Prevalence>,
    dirty: BTreeSet<String>,
    touched: BTreeSet<(Method, String)>,
    findings: BTreeMap<FindingKey, Finding>,
    adoptions: Vec<Adoption>,
}

impl Engine {
    pub fn new(config: Config) -> Engine {
        Engine {
            config,
            baselines: BTreeMap::new(),
            prevalence: BTreeMap::new(),
            dirty: BTreeSet::new(),
            touched: BTreeSet::new(),
            findings: BTreeMap::new(),
            adoptions: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Gives the engine a stored baseline.
    pub fn load(&mut self, b: Baseline) {
        self.baselines.insert(b.identity.clone(), b);
    }

    /// Gives the engine the stored prevalence of one fingerprint.
    pub fn load_prevalence(&mut self, method: Method, fingerprint: String, p: Prevalence) {
        self.prevalence.insert((method, fingerprint), p);
    }

    pub fn baseline(&self, identity: &str) -> Option<&Baseline> {
        self.baselines.get(identity)
    }

    /// Baselines held (a replay's memory is about this many times a baseline's size).
    pub fn baselines(&self) -> usize {
        self.baselines.len()
    }

    /// The client fingerprints of `observations` their identities' loaded baselines do not
    /// hold: the prevalence [`Engine::observe`] will need. Call after loading the baselines.
    pub fn unknown_fingerprints<'a>(
        &self,
        observations: impl IntoIterator<Item = &'a Observation>,
    ) -> BTreeSet<(Method, String)> {
        let mut out = BTreeSet::new();
        for o in observations {
            let b = self.baselines.get(&o.identity);
            for p in own_client(o) {
                if b.and_then(|b| b.entry(p.method, &p.key, None)).is_none() {
                    out.insert((p.method, p.key.clone()));
                }
            }
        }
        out
    }

    /// Judges one observation and learns from it.
    pub fn observe(&mut self, o: &Observation) {
        let config = &self.config;
        let b = self
            .baselines
            .entry(o.identity.clone())
            .or_insert_with(|| Baseline::new(o.identity.clone()));
        self.dirty.insert(o.identity.clone());
        let established = b.count_flow(o.ts_us, config);
        let mut raised = Vec::new();
        let mut adopted = Vec::new();
        let raise = |raised: &mut Vec<Finding>,
                     detector: Detector,
                     method: Method,
                     fingerprint: &str,
                     destination: Option<&str>,
                     severity: Severity,
                     summary: String| {
            raised.push(Finding::new(
                FindingKey {
                    identity: o.identity.clone(),
                    detector,
                    method,
                    fingerprint: fingerprint.to_owned(),
                    destination: destination.map(str::to_owned),
                },
                severity,
                summary,
                o.event_id,
                o.ts_us,
                o.attributes.clone(),
            ));
        };

        // new-fingerprint, the identity's own.
        let own: Vec<&Presented> = o.presented.iter().filter(|p| p.side == Side::Own).collect();
        let is_new = |b: &Baseline, p: &Presented| {
            !b.entry(p.method, &p.key, None).is_some_and(|e| e.accepted)
        };
        let new_own: Vec<bool> = own.iter().map(|p| is_new(b, p)).collect();
        let clients = own.iter().filter(|p| is_client_method(p.method)).count();
        let new_clients = own
            .iter()
            .zip(&new_own)
            .filter(|(p, n)| **n && is_client_method(p.method))
            .count();
        let new_family = clients >= 2 && new_clients == clients;
        for (p, new) in own.iter().zip(new_own) {
            if established && new {
                let change =
                    closest_change(&p.key, b.accepted(p.method, None).map(|e| e.key.as_str()));
                let (severity, what) = match (new_family, change) {
                    (true, _) => (
                        Severity::High,
                        "a different client family: every client fingerprint of the flow is new",
                    ),
                    (false, Change::FirstSection) => (
                        Severity::Low,
                        "only its first section changed (version, ALPN or counts)",
                    ),
                    (false, Change::Sets) => {
                        (Severity::Medium, "its cipher or extension set changed")
                    }
                };
                raise(
                    &mut raised,
                    Detector::NewFingerprint,
                    p.method,
                    &p.key,
                    None,
                    severity,
                    format!(
                        "{} presents {} {} outside its baseline: {what}",
                        o.identity,
                        p.method.as_str().to_uppercase(),
                        p.value
                    ),
                );
            }
            if b.record(p, None, o.ts_us, !established, config) && is_client_method(p.method) {
                adopted.push(Adoption {
                    method: p.method,
                    fingerprint: p.key.clone(),
                    identity: o.identity.clone(),
                    event_id: o.event_id,
                    ts_us: o.ts_us,
                    established,
                });
            }
        }

        // new-fingerprint, the destination's: a known destination presenting differently (a
        // new destination is learnt).
        let dest = Some(o.destination.as_str());
        for p in o.presented.iter().filter(|p| p.side == Side::Destination) {
            let known_dest = b.accepted(p.method, dest).next().is_some();
            let known = b.entry(p.method, &p.key, dest).is_some_and(|e| e.accepted);
            if established && known_dest && !known {
                raise(
                    &mut raised,
                    Detector::NewFingerprint,
                    p.method,
                    &p.key,
                    dest,
                    Severity::Medium,
                    format!(
                        "{} reached {} presenting {} {} instead of what it learnt: a changed \
                         server or something in between",
                        o.identity,
                        o.destination,
                        p.method.as_str().to_uppercase(),
                        p.value
                    ),
                );
            }
            b.record(p, dest, o.ts_us, !established || !known_dest, config);
        }

        // ssh-session.
        for v in &o.ssh {
            let Some(session) = ssh_session(v, config.ssh_session) else {
                continue;
            };
            let had_interactive = b
                .accepted(Method::Ja4ssh, None)
                .any(|e| e.key == "interactive" || e.key == "reverse-shell");
            let p = Presented {
                method: Method::Ja4ssh,
                key: session.as_str().to_owned(),
                value: v.clone(),
                side: Side::Own,
            };
            if config.ssh_session && established && session.is_interactive() && !had_interactive {
                let severity = if session == crate::detect::SshSession::ReverseShell {
                    Severity::High
                } else {
                    Severity::Medium
                };
                raise(
                    &mut raised,
                    Detector::SshSession,
                    Method::Ja4ssh,
                    session.as_str(),
                    dest,
                    severity,
                    format!(
                        "{} opened an SSH session to {} that looks {} (JA4SSH {v}); its \
                         baseline has no interactive sessions",
                        o.identity,
                        o.destination,
                        session.as_str()
                    ),
                );
            }
            b.record(&p, None, o.ts_us, !established, config);
        }

        // path-change.
        if let Some(sample) = o.ja4ls.as_deref().and_then(path_sample) {
            let min_samples = config.path_min_samples;
            let (tol, sigmas, floor) = (
                config.path_hop_tolerance,
                config.path_gap_sigmas,
                config.path_gap_floor_us,
            );
            let identity = &o.identity;
            if let Some(stats) = b.path_mut(&o.destination, sample.hops, config) {
                if !established || stats.samples < min_samples {
                    stats.learn(sample.hops, sample.gap_us);
                } else {
                    let hops = sample.hops;
                    let hop_out = hops > stats.hops_max.saturating_add(tol)
                        || hops.saturating_add(tol) < stats.hops_min;
                    let limit = stats.gap_mean + (sigmas * stats.gap_sd()).max(floor);
                    let gap_out = sample
                        .gap_us
                        .filter(|g| stats.gap_n >= min_samples && *g > limit);
                    if hop_out {
                        raise(
                            &mut raised,
                            Detector::PathChange,
                            Method::Ja4ls,
                            &format!("hops:{hops}"),
                            dest,
                            Severity::Medium,
                            format!(
                                "{identity} reaches {} over {hops} hops where it learnt {}–{}: \
                                 a new route, proxy or interception",
                                o.destination, stats.hops_min, stats.hops_max
                            ),
                        );
                    }
                    if let Some(g) = gap_out {
                        raise(
                            &mut raised,
                            Detector::PathChange,
                            Method::Ja4ls,
                            "latency-gap",
                            dest,
                            Severity::Medium,
                            format!(
                                "{identity}'s TLS handshake with {} takes {:.0} µs longer than \
                                 its TCP handshake where it learnt {:.0} ± {:.0} µs: something \
                                 may terminate TLS in between",
                                o.destination,
                                g,
                                stats.gap_mean,
                                stats.gap_sd()
                            ),
                        );
                    }
                    if !hop_out && gap_out.is_none() {
                        stats.learn(sample.hops, sample.gap_us);
                    }
                }
            }
        }

        for a in adopted {
            self.adopt(a, o, &mut raised);
        }
        for f in raised {
            match self.findings.get_mut(&f.key) {
                Some(old) => old.absorb(&f),
                None => {
                    self.findings.insert(f.key.clone(), f);
                }
            }
        }
    }

    /// shared-fingerprint: counts an adoption; when enough established identities started
    /// presenting the fingerprint within the window and few did before, each of them gets a
    /// finding (those already counted when the threshold is crossed, each later one as it
    /// comes).
    fn adopt(&mut self, a: Adoption, o: &Observation, raised: &mut Vec<Finding>) {
        let c = &self.config;
        let key = (a.method, a.fingerprint.clone());
        self.touched.insert(key.clone());
        let p = self.prevalence.entry(key).or_default();
        p.identities = p.identities.saturating_add(1);
        if a.established {
            let from = a.ts_us.saturating_sub(c.shared_window_us);
            p.recent.retain(|r| r.ts_us > from);
            p.recent.push(a.clone());
            let cap = (c.shared_threshold as usize).saturating_mul(4).max(1);
            let excess = p.recent.len().saturating_sub(cap);
            p.recent.drain(..excess);
            let n = p.recent.len() as u64;
            let prior = p.identities.saturating_sub(n);
            if n >= u64::from(c.shared_threshold) && prior <= u64::from(c.shared_max_prior) {
                let who: &[Adoption] = if n == u64::from(c.shared_threshold) {
                    &p.recent
                } else {
                    std::slice::from_ref(&a)
                };
                for r in who {
                    let attributes = if r.identity == o.identity {
                        o.attributes.clone()
                    } else {
                        BTreeMap::new()
                    };
                    raised.push(Finding::new(
                        FindingKey {
                            identity: r.identity.clone(),
                            detector: Detector::SharedFingerprint,
                            method: r.method,
                            fingerprint: r.fingerprint.clone(),
                            destination: None,
                        },
                        Severity::High,
                        format!(
                            "{} started presenting {} {}, as {n} identities did within {} \
                             minutes after at most {prior} before: one tool spreading across \
                             workloads",
                            r.identity,
                            r.method.as_str().to_uppercase(),
                            r.fingerprint,
                            c.shared_window_us / 60_000_000
                        ),
                        r.event_id,
                        r.ts_us,
                        attributes,
                    ));
                }
            }
        }
        self.adoptions.push(a);
    }

    /// What changed since the last call; the engine keeps its state.
    pub fn take_changes(&mut self) -> Changes {
        let baselines = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.baselines.get(&id).cloned())
            .collect();
        let prevalence = std::mem::take(&mut self.touched)
            .into_iter()
            .filter_map(|k| self.prevalence.get(&k).map(|p| (k, p.clone())))
            .collect();
        Changes {
            baselines,
            findings: std::mem::take(&mut self.findings).into_values().collect(),
            adoptions: std::mem::take(&mut self.adoptions),
            prevalence,
        }
    }
}

/// The identity's own client fingerprints of an observation.
fn own_client(o: &Observation) -> impl Iterator<Item = &Presented> {
    o.presented
        .iter()
        .filter(|p| p.side == Side::Own && is_client_method(p.method))
}
