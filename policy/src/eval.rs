//! Evaluating one flow against a compiled set: Cedar's decision (default deny, any satisfied
//! `forbid` wins, else any satisfied `permit` allows), with the policies that decided, the
//! fields they read and their values, the audit-mode policies that matched, and any policy that
//! failed to evaluate.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, PolicySet, Request};
use hais_shared::detection::Severity;
use serde::{Deserialize, Serialize};

use crate::facts::{Facts, FactsError};
use crate::set::{Compiled, Index, Outcome, PolicyMeta};

/// The rule a violation cites when no policy permitted the flow (Cedar's default deny).
pub const DEFAULT_DENY: &str = "default-deny";
/// The severity of a default deny.
pub const DEFAULT_DENY_SEVERITY: Severity = Severity::Medium;

/// A policy that decided (or, in audit mode, would have), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deciding {
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: String,
    pub outcome: Outcome,
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    /// The fields the policy reads, with this flow's values (absent ones left out).
    pub fields: BTreeMap<String, String>,
}

/// A policy that could not be evaluated for this flow (Cedar skips it: it neither permits nor
/// forbids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalError {
    pub policy: String,
    pub message: String,
}

/// The explained decision on one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What the enforced policies decided: `allow`, or for a denial the strongest effect among
    /// the deciding forbids (`alert` or `deny`; `deny` for a default deny).
    pub outcome: Outcome,
    /// The highest severity among the deciding forbids; `None` when allowed.
    pub severity: Option<Severity>,
    /// True when no policy permitted the flow and none forbade it.
    pub default_deny: bool,
    /// The deciding policies: the satisfied forbids of a denial, or the satisfied permits of an
    /// allow; empty for a default deny.
    pub policies: Vec<Deciding>,
    /// Audit-mode forbids the flow satisfied (recorded, never alerted).
    pub audit: Vec<Deciding>,
    pub errors: Vec<EvalError>,
}

impl Decision {
    /// Whether the enforced decision is a violation (alerted).
    pub fn is_violation(&self) -> bool {
        self.outcome != Outcome::Allow
    }

    /// The rule a violation cites: the deciding policies' ids joined by `+`, or
    /// [`DEFAULT_DENY`].
    pub fn rule(&self) -> String {
        if self.default_deny || self.policies.is_empty() {
            DEFAULT_DENY.to_owned()
        } else {
            self.policies
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>()
                .join("+")
        }
    }
}

/// What the partitions of one index said.
#[derive(Default)]
struct Joined {
    forbids: BTreeSet<String>,
    permits: BTreeSet<String>,
    errors: Vec<EvalError>,
}

fn ask(
    auth: &Authorizer,
    request: &Request,
    entities: &Entities,
    set: &PolicySet,
    out: &mut Joined,
) {
    if set.is_empty() {
        return;
    }
    let r = auth.is_authorized(request, set, entities);
    let reasons = r.diagnostics().reason().map(|id| id.to_string());
    match r.decision() {
        CedarDecision::Deny => out.forbids.extend(reasons),
        CedarDecision::Allow => out.permits.extend(reasons),
    }
    out.errors.extend(r.diagnostics().errors().map(|e| match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => EvalError {
            policy: pe.policy_id().to_string(),
            message: pe.inner().to_string(),
        },
    }));
}

/// Evaluates the partitions of `index` that can apply to the principal (`keys`: its uid and
/// its groups' uids, as text).
fn evaluate_index(
    index: &Index,
    keys: &[String],
    request: &Request,
    entities: &Entities,
) -> Joined {
    let auth = Authorizer::new();
    let mut out = Joined::default();
    ask(&auth, request, entities, &index.any, &mut out);
    for k in keys {
        if let Some(set) = index.by_principal.get(k) {
            ask(&auth, request, entities, set, &mut out);
        }
    }
    out
}

fn deciding(meta: &PolicyMeta, facts: &Facts) -> Deciding {
    Deciding {
        id: meta.id.clone(),
        effect: meta.effect.clone(),
        outcome: meta.outcome,
        severity: meta.severity,
        file: meta.file.clone(),
        line: meta.line,
        fields: meta
            .fields
            .iter()
            .filter_map(|f| facts.field(f).map(|v| (f.clone(), v)))
            .collect(),
    }
}

impl Compiled {
    /// The explained decision on `facts`.
    pub fn evaluate(&self, facts: &Facts) -> Result<Decision, FactsError> {
        let (request, entities) = facts.to_cedar()?;
        let (me, parents) = facts.principal_uids();
        let keys: Vec<String> = std::iter::once(me)
            .chain(parents)
            .map(|u| u.to_string())
            .collect();
        let enforced = evaluate_index(&self.enforced, &keys, &request, &entities);
        let metas = |ids: &BTreeSet<String>| -> Vec<Deciding> {
            ids.iter()
                .filter_map(|id| self.meta.get(id))
                .map(|m| deciding(m, facts))
                .collect()
        };
        let mut errors = enforced.errors;
        let (outcome, severity, default_deny, policies) = if !enforced.forbids.is_empty() {
            let d = metas(&enforced.forbids);
            let outcome = d.iter().map(|x| x.outcome).max().unwrap_or(Outcome::Deny);
            let severity = d.iter().map(|x| x.severity).max();
            (outcome, severity, false, d)
        } else if !enforced.permits.is_empty() {
            (Outcome::Allow, None, false, metas(&enforced.permits))
        } else {
            (Outcome::Deny, Some(DEFAULT_DENY_SEVERITY), true, Vec::new())
        };
        let audit = if self.audit.is_empty() {
            Vec::new()
        } else {
            let a = evaluate_index(&self.audit, &keys, &request, &entities);
            errors.extend(a.errors);
            metas(&a.forbids)
        };
        Ok(Decision {
            outcome,
            severity,
            default_deny,
            policies,
            audit,
            errors,
        })
    }
}
