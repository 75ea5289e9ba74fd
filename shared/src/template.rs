//! Registration templates: SPIFFE IDs assigned automatically from what a workload is, the way
//! spire-controller-manager's `ClusterSPIFFEID` resources do, so that a fleet gets identities
//! without an entry written per workload.
//!
//! A template is a SPIFFE ID pattern (`spiffe://{td}/ns/{namespace}/sa/{service_account}`) and a
//! scope of selectors. It applies to a workload when every scope selector is among the workload's
//! selectors (the entry rule) **and** every placeholder of the pattern has a value for that
//! workload; the rendered ID is then the workload's. A matching registration entry always wins
//! over a template (an entry is a deliberate decision about one workload); among templates the
//! most specific scope wins, then the oldest, as for entries.
//!
//! Placeholders (`{name}`), each from the event's facts:
//!
//! | placeholder         | value                                                           |
//! |---------------------|-----------------------------------------------------------------|
//! | `{td}`              | the control plane's trust domain                                |
//! | `{namespace}`       | Kubernetes namespace                                            |
//! | `{service_account}` | Kubernetes service account                                      |
//! | `{workload}`        | the owning workload's name (`web` for `deployment/web`)         |
//! | `{workload_kind}`   | its kind (`deployment`, `statefulset`, `workload`, `pod`)       |
//! | `{pod}`             | the pod's name                                                  |
//! | `{image}`           | container image without tag or digest (slashes kept)            |
//! | `{container}`       | container name                                                  |
//! | `{host}`            | the host name                                                   |
//! | `{agent}`           | the reporting agent's id                                        |
//! | `{executable}`      | executable path without its leading `/` (slashes kept)          |
//! | `{process}`         | short process name                                              |
//! | `{user}`            | user name, else the uid                                         |
//! | `{uid}`             | the uid                                                         |
//!
//! Values are made path-safe: characters a SPIFFE path segment may not hold (anything but
//! letters, digits, `.`, `-` and `_`) become `_`, and `{image}` and `{executable}` keep their
//! slashes as segment separators.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::FingerprintEvent;
use crate::registration::{EntryError, MAX_SELECTORS_PER_ENTRY};
use crate::selector::Selector;
use crate::spiffe::SpiffeId;

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 2048;

/// The placeholders a pattern may use, in the table's order.
pub const PLACEHOLDERS: [&str; 14] = [
    "td",
    "namespace",
    "service_account",
    "workload",
    "workload_kind",
    "pod",
    "image",
    "container",
    "host",
    "agent",
    "executable",
    "process",
    "user",
    "uid",
];

/// A validated template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationTemplate {
    /// Time-ordered id (UUIDv7 text) assigned by the identity service.
    pub id: String,
    /// The SPIFFE ID pattern.
    pub pattern: String,
    /// Sorted, without duplicates; may be empty (every workload with the facts the pattern
    /// names).
    pub selectors: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("pattern: {0}")]
    Pattern(String),
    #[error(transparent)]
    Entry(#[from] EntryError),
}

/// Validates a pattern and a scope (the caller assigns the id).
pub fn validate(pattern: &str, selectors: &[String]) -> Result<Vec<Selector>, TemplateError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(TemplateError::Pattern(format!(
            "longer than {MAX_PATTERN_LEN} bytes"
        )));
    }
    if !pattern.starts_with("spiffe://") {
        return Err(TemplateError::Pattern("must start with spiffe://".into()));
    }
    // Every placeholder known, braces balanced; then a rendering with sample values must be a
    // valid SPIFFE ID, which checks the literal parts.
    let sample = render_with(pattern, |name| {
        Some(match name {
            "td" => "example.org".to_owned(),
            "image" | "executable" => "a/b".to_owned(),
            _ => "x".to_owned(),
        })
    })
    .map_err(TemplateError::Pattern)?
    .ok_or_else(|| TemplateError::Pattern("unknown placeholder".into()))?;
    SpiffeId::parse(&sample).map_err(|e| TemplateError::Pattern(e.to_string()))?;
    if selectors.len() > MAX_SELECTORS_PER_ENTRY {
        return Err(EntryError::SelectorCount(selectors.len()).into());
    }
    let mut parsed = selectors
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Selector::parse(s).map_err(|source| EntryError::Selector { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// Replaces each `{name}` with `value(name)`: `Err` for a malformed pattern, `Ok(None)` when a
/// placeholder has no value.
fn render_with(
    pattern: &str,
    mut value: impl FnMut(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a '{' is not closed".to_owned())?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
        match value(name) {
            Some(v) => out.push_str(&v),
            None => return Ok(None),
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("a '}' has no '{'".into());
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// A fact made safe for a SPIFFE path: one segment, or several when `slashes` (empty segments
/// dropped).
fn path_safe(v: &str, slashes: bool) -> Option<String> {
    let clean = |seg: &str| -> String {
        seg.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let out = if slashes {
        v.split('/')
            .filter(|s| !s.is_empty() && *s != "." && *s != "..")
            .map(clean)
            .collect::<Vec<_>>()
            .join("/")
    } else {
        clean(v)
    };
    (!out.is_empty() && out != "." && out != "..").then_some(out)
}

/// The value of placeholder `name` for event `e` in trust domain `td`.
fn fact(e: &FingerprintEvent, td: &str, name: &str) -> Option<String> {
    let w = &e.workload;
    let pod = || {
        w.k8s_pod_name
            .clone()
            .or_else(|| w.container_labels.get("io.kubernetes.pod.name").cloned())
    };
    let owner = || pod().map(|p| crate::workload::pod_owner(&p));
    let v = match name {
        "td" => return Some(td.to_owned()),
        "namespace" => w.k8s_namespace.clone().or_else(|| {
            w.container_labels
                .get("io.kubernetes.pod.namespace")
                .cloned()
        }),
        "service_account" => w.k8s_service_account.clone(),
        "workload" => owner().and_then(|o| o.split_once('/').map(|(_, n)| n.to_owned())),
        "workload_kind" => owner().and_then(|o| o.split_once('/').map(|(k, _)| k.to_owned())),
        "pod" => pod(),
        "image" => {
            return w
                .container_image
                .as_deref()
                .map(crate::workload::image_repository)
                .and_then(|i| path_safe(i, true));
        }
        "container" => w
            .container_name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_owned()),
        "host" => Some(e.host.clone()),
        "agent" => Some(e.agent_id.clone()),
        "executable" => return w.exe.as_deref().and_then(|x| path_safe(x, true)),
        "process" => w.process.clone(),
        "user" => w.user.clone().or_else(|| w.uid.map(|u| u.to_string())),
        "uid" => w.uid.map(|u| u.to_string()),
        _ => None,
    };
    v.and_then(|v| path_safe(&v, false))
}

impl RegistrationTemplate {
    /// A validated template from text.
    pub fn from_text(
        id: impl Into<String>,
        pattern: &str,
        selectors: &[&str],
        description: Option<String>,
    ) -> Result<RegistrationTemplate, TemplateError> {
        let texts: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        Ok(RegistrationTemplate {
            id: id.into(),
            pattern: pattern.to_owned(),
            selectors: validate(pattern, &texts)?,
            description,
        })
    }

    /// The SPIFFE ID this template gives the workload of `e`, whose selectors are `observed`,
    /// or `None` when it does not apply.
    pub fn render(
        &self,
        td: &str,
        e: &FingerprintEvent,
        observed: &BTreeSet<Selector>,
    ) -> Option<SpiffeId> {
        if !self.selectors.iter().all(|s| observed.contains(s)) {
            return None;
        }
        // Only workloads (a process was attributed) get template IDs, never bare nodes.
        e.workload.pid?;
        let text = render_with(&self.pattern, |name| fact(e, td, name)).ok()??;
        SpiffeId::parse(&text).ok()
    }
}

/// The template that names the workload of `e`: the most specific applicable one (most scope
/// selectors), the oldest on a tie.
pub fn best_template<'a>(
    templates: &'a [RegistrationTemplate],
    td: &str,
    e: &FingerprintEvent,
    observed: &BTreeSet<Selector>,
) -> Option<(&'a RegistrationTemplate, SpiffeId)> {
    let mut best: Option<(&RegistrationTemplate, SpiffeId)> = None;
    for t in templates {
        if let Some((b, _)) = &best {
            let (n, bn) = (t.selectors.len(), b.selectors.len());
            if n < bn || (n == bn && t.id >= b.id) {
                continue;
            }
        }
        if let Some(id) = t.render(td, e, observed) {
            best = Some((t, id));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Flow, Transport};
    use crate::registration::selectors_for;

    fn ev() -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a7",
            "web-01",
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.workload.pid = Some(10);
        e.workload.uid = Some(0);
        e.workload.user = Some("root".into());
        e.workload.exe = Some("/usr/bin/curl".into());
        e
    }

    #[test]
    fn host_processes_get_an_id_from_host_and_executable() {
        let t = RegistrationTemplate::from_text(
            "01",
            "spiffe://{td}/host/{host}/{executable}",
            &[],
            None,
        )
        .unwrap();
        let e = ev();
        let id = t.render("hais.local", &e, &selectors_for(&e)).unwrap();
        assert_eq!(id.as_str(), "spiffe://hais.local/host/web-01/usr/bin/curl");
        // A Kubernetes-only pattern does not apply to a host process.
        let k = RegistrationTemplate::from_text(
            "02",
            "spiffe://{td}/ns/{namespace}/sa/{service_account}",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(k.render("hais.local", &e, &selectors_for(&e)), None);
        let mut p = ev();
        p.workload.k8s_namespace = Some("shop".into());
        p.workload.k8s_service_account = Some("api".into());
        p.workload.k8s_pod_name = Some("api-7d4b9c8f6d-x2x9q".into());
        assert_eq!(
            k.render("hais.local", &p, &selectors_for(&p))
                .unwrap()
                .as_str(),
            "spiffe://hais.local/ns/shop/sa/api"
        );
        let w = RegistrationTemplate::from_text(
            "03",
            "spiffe://{td}/k8s/{namespace}/{workload_kind}/{workload}",
            &["k8s:ns:shop"],
            None,
        )
        .unwrap();
        assert_eq!(
            w.render("t", &p, &selectors_for(&p)).unwrap().as_str(),
            "spiffe://t/k8s/shop/deployment/api"
        );
        // Scoped: not in namespace "shop", not applied.
        p.workload.k8s_namespace = Some("dev".into());
        assert_eq!(w.render("t", &p, &selectors_for(&p)), None);
    }

    #[test]
    fn no_process_no_template_and_odd_facts_are_made_safe() {
        let t = RegistrationTemplate::from_text("01", "spiffe://{td}/u/{user}", &[], None).unwrap();
        let mut e = ev();
        e.workload.user = Some("do main\\user".into());
        assert_eq!(
            t.render("t", &e, &selectors_for(&e)).unwrap().as_str(),
            "spiffe://t/u/do_main_user"
        );
        e.workload.pid = None;
        assert_eq!(t.render("t", &e, &selectors_for(&e)), None);
        let mut e = ev();
        e.workload.exe = Some("/../".into());
        let x = RegistrationTemplate::from_text("02", "spiffe://{td}/x/{executable}", &[], None)
            .unwrap();
        assert_eq!(x.render("t", &e, &selectors_for(&e)), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (p, why) in [
            ("http://x/{host}", "spiffe://"),
            ("spiffe://{td}/{nope}", "unknown placeholder"),
            ("spiffe://{td}/{host", "not closed"),
            ("spiffe://{td}/host}", "no '{'"),
            ("spiffe://{td}//x", ""),
        ] {
            let e = validate(p, &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(validate("spiffe://{td}/a", &["nope".into()]).is_err());
    }

    #[test]
    fn most_specific_then_oldest_template_wins() {
        let all =
            RegistrationTemplate::from_text("01", "spiffe://{td}/h/{host}", &[], None).unwrap();
        let scoped = RegistrationTemplate::from_text(
            "02",
            "spiffe://{td}/root/{process}",
            &["unix:uid:0"],
            None,
        )
        .unwrap();
        let mut e = ev();
        e.workload.process = Some("curl".into());
        let obs = selectors_for(&e);
        let ts = [all.clone(), scoped.clone()];
        let (t, id) = best_template(&ts, "td", &e, &obs).unwrap();
        assert_eq!(t.id, "02");
        assert_eq!(id.as_str(), "spiffe://td/root/curl");
        let ts = [
            all.clone(),
            RegistrationTemplate {
                id: "00".into(),
                ..all.clone()
            },
        ];
        assert_eq!(best_template(&ts, "td", &e, &obs).unwrap().0.id, "00");
        e.workload.uid = Some(5);
        let obs = selectors_for(&e);
        assert_eq!(
            best_template(&[scoped], "td", &e, &obs).map(|(t, _)| t.id.clone()),
            None
        );
    }
}
