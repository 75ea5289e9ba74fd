//! Compiling a policy set: Cedar text from one or more sources (the API's text, the files of a
//! `.cedar` directory) → parsed, checked, validated against [`crate::schema`] in strict mode,
//! and indexed for evaluation ([`Compiled`]). Anything wrong is a [`Problem`] naming the source,
//! line, column and policy; a set with any problem is refused whole, so nothing invalid is ever
//! applied.
//!
//! Our conventions on top of Cedar, checked here:
//! * `@id("name")` names a policy (decisions, violations and alerts cite it); without it a
//!   policy is `<source>#<n>` (its position in its source, from 0). Ids are unique in a set.
//! * `forbid` policies may say `@effect("alert")` or `@effect("deny")` (default `deny`):
//!   both are recorded and alerted, `deny` marks what agents will block once they enforce.
//! * `@severity("info"|"low"|"medium"|"high"|"critical")`: the alert's severity (default `high`
//!   for `deny`, `medium` for `alert`).
//! * `@mode("audit")` on a `forbid`: evaluated and recorded, never part of the enforced decision
//!   and never alerted (Istio's dry-run, Cilium's audit mode). `@mode("enforce")` is the default.
//! * Templates (`?principal` slots) are refused: there is no way to link them yet.

use std::collections::{BTreeSet, HashMap};

use cedar_policy::{
    Effect, Policy, PolicyId, PolicySet, PrincipalConstraint, ValidationMode, Validator,
};
use hais_shared::detection::Severity;
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

/// Largest source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;
/// Most policies in a set.
pub const MAX_POLICIES: usize = 100_000;
/// Deepest nesting of brackets accepted (the parser and its tree are recursive; this keeps a
/// hostile text from exhausting the stack).
pub const MAX_NESTING: usize = 64;
/// Longest `@id` accepted.
pub const MAX_ID_LEN: usize = 128;

/// One source of policies: a name (a file name, or `api`) and its Cedar text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Why a set was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The source's name.
    pub file: String,
    /// 1-based line and column (in characters) of the offending text.
    pub line: u32,
    pub column: u32,
    /// The policy concerned, when the problem is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(p) = &self.policy {
            write!(f, "policy {p}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What a matching policy does to the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Alert,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Alert => "alert",
            Outcome::Deny => "deny",
        }
    }
}

/// What the set says about one of its policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMeta {
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: String,
    /// `allow` for permits; `alert` or `deny` for forbids.
    pub outcome: Outcome,
    pub severity: Severity,
    pub audit: bool,
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// The request fields the policy reads (`context.ja4_a`, `resource.port`, …), to explain
    /// its decisions with their values.
    pub fields: Vec<String>,
}

/// Policies evaluated together, partitioned by their principal scope: a policy scoped to
/// `principal == X`, `principal in X` or `principal is T in X` is only evaluated for
/// principals that are, or are in, `X`; the others for every principal. Cedar's decision is a
/// union over policies (any forbid wins, else any permit), so evaluating the partitions apart and
/// joining their answers gives exactly the decision of the whole set.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) any: PolicySet,
    pub(crate) by_principal: HashMap<String, PolicySet>,
}

impl Index {
    fn add(&mut self, p: Policy) -> Result<(), String> {
        let key = match p.principal_constraint() {
            PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) => Some(u.to_string()),
            PrincipalConstraint::IsIn(_, u) => Some(u.to_string()),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        };
        let set = match key {
            Some(k) => self.by_principal.entry(k).or_default(),
            None => &mut self.any,
        };
        set.add(p).map_err(|e| e.to_string())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.any.is_empty() && self.by_principal.is_empty()
    }
}

/// A valid policy set, ready to evaluate ([`Compiled::evaluate`](crate::eval)).
#[derive(Debug, Default)]
pub struct Compiled {
    pub(crate) meta: HashMap<String, PolicyMeta>,
    pub(crate) enforced: Index,
    pub(crate) audit: Index,
}

impl Compiled {
    /// Number of policies.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The policies, by id.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyMeta> {
        self.meta.values()
    }

    pub fn policy(&self, id: &str) -> Option<&PolicyMeta> {
        self.meta.get(id)
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

fn problem(src: &Source, offset: usize, policy: Option<&str>, message: String) -> Problem {
    let (line, column) = line_col(&src.text, offset);
    Problem {
        file: src.name.clone(),
        line,
        column,
        policy: policy.map(str::to_owned),
        message,
    }
}

/// The first byte offset a diagnostic points at, if it has a label.
fn offset_of(d: &dyn Diagnostic) -> Option<usize> {
    d.labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .or_else(|| {
            d.related()
                .and_then(|mut r| r.find_map(|x| x.labels().and_then(|mut l| l.next())))
                .map(|l| l.offset())
        })
}

/// A diagnostic's message with its help, if any.
fn message_of(d: &dyn Diagnostic) -> String {
    let mut m = d.to_string();
    if let Some(h) = d.help() {
        m.push_str(" (");
        m.push_str(&h.to_string());
        m.push(')');
    }
    m
}

/// Refuses text nested deeper than [`MAX_NESTING`] or larger than [`MAX_SOURCE_BYTES`], before
/// the parser sees it. Brackets inside string literals do not count.
fn precheck(src: &Source) -> Result<(), Problem> {
    if src.text.len() > MAX_SOURCE_BYTES {
        return Err(problem(
            src,
            MAX_SOURCE_BYTES,
            None,
            format!("source larger than {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut in_comment = false;
    let mut prev = '\0';
    for (i, c) in src.text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else {
            match c {
                '"' => in_string = true,
                '/' if prev == '/' => in_comment = true,
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(problem(
                            src,
                            i,
                            None,
                            format!("nested deeper than {MAX_NESTING} brackets"),
                        ));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = if in_comment { '\0' } else { c };
    }
    Ok(())
}

/// The request fields a policy's text reads: `principal`, `action`, `resource` when its scope
/// or conditions name them, and `principal.x`, `resource.x`, `context.x` (also in `has x`).
/// String literals and comments are skipped.
pub fn fields_of(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let flush = |cur: &mut String, tokens: &mut Vec<String>| {
        if !cur.is_empty() {
            tokens.push(std::mem::take(cur));
        }
    };
    while let Some(c) = chars.next() {
        if c == '"' {
            flush(&mut cur, &mut tokens);
            let mut escaped = false;
            for s in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if s == '\\' {
                    escaped = true;
                } else if s == '"' {
                    break;
                }
            }
            tokens.push("\"\"".into());
        } else if c == '/' && chars.peek() == Some(&'/') {
            flush(&mut cur, &mut tokens);
            for s in chars.by_ref() {
                if s == '\n' {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            cur.push(c);
        } else {
            flush(&mut cur, &mut tokens);
        }
    }
    flush(&mut cur, &mut tokens);
    let roots = ["principal", "action", "resource", "context"];
    let mut out = BTreeSet::new();
    for (i, t) in tokens.iter().enumerate() {
        let mut parts = t.split('.');
        let Some(root) = parts.next() else { continue };
        if !roots.contains(&root) {
            continue;
        }
        match parts.next().filter(|a| !a.is_empty()) {
            Some(attr) => {
                out.insert(format!("{root}.{attr}"));
            }
            None if tokens.get(i + 1).map(String::as_str) == Some("has") => {
                if let Some(attr) = tokens.get(i + 2).and_then(|a| a.split('.').next()) {
                    out.insert(format!("{root}.{attr}"));
                }
            }
            None if root != "context" => {
                out.insert(root.to_owned());
            }
            None => {}
        }
    }
    out.into_iter().collect()
}

/// A policy's annotation rules (see the module's documentation), or why it breaks them.
fn conventions(p: &Policy) -> Result<(Outcome, Severity, bool), String> {
    let forbid = p.effect() == Effect::Forbid;
    let outcome = match (forbid, p.annotation("effect")) {
        (false, None) => Outcome::Allow,
        (false, Some(_)) => {
            return Err("@effect applies to forbid policies only (a permit allows)".into());
        }
        (true, None | Some("deny")) => Outcome::Deny,
        (true, Some("alert")) => Outcome::Alert,
        (true, Some(other)) => {
            return Err(format!(
                "@effect(\"{other}\") is not an effect: use \"alert\" or \"deny\""
            ));
        }
    };
    let severity = match p.annotation("severity") {
        None if outcome == Outcome::Deny => Severity::High,
        None if outcome == Outcome::Alert => Severity::Medium,
        None => Severity::Info,
        Some(s) => Severity::parse(s).ok_or_else(|| {
            format!("@severity(\"{s}\") is not a severity: use info, low, medium, high or critical")
        })?,
    };
    let audit = match p.annotation("mode") {
        None | Some("enforce") => false,
        Some("audit") if forbid => true,
        Some("audit") => {
            return Err(
                "@mode(\"audit\") applies to forbid policies only (an audit permit would allow nothing)"
                    .into(),
            );
        }
        Some(other) => {
            return Err(format!(
                "@mode(\"{other}\") is not a mode: use \"enforce\" or \"audit\""
            ));
        }
    };
    Ok((outcome, severity, audit))
}

/// Parses, checks and validates `sources` as one policy set. Every problem found is reported,
/// not just the first; a set with any is refused.
pub fn compile(sources: &[Source]) -> Result<Compiled, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut all = PolicySet::new();
    let mut meta: HashMap<String, PolicyMeta> = HashMap::new();
    let mut where_of: HashMap<String, usize> = HashMap::new();
    let mut policies: Vec<Policy> = Vec::new();
    for (si, src) in sources.iter().enumerate() {
        if let Err(p) = precheck(src) {
            problems.push(p);
            continue;
        }
        let parsed: PolicySet = match src.text.parse() {
            Ok(s) => s,
            Err(errs) => {
                let errs: cedar_policy::ParseErrors = errs;
                for e in errs.iter() {
                    let offset = offset_of(e).unwrap_or(0);
                    problems.push(problem(src, offset, None, message_of(e)));
                }
                continue;
            }
        };
        if let Some(t) = parsed.templates().next() {
            let text = t.to_string();
            let offset = src.text.find(text.trim()).unwrap_or(0);
            problems.push(problem(
                src,
                offset,
                None,
                "templates (?principal / ?resource slots) are not supported".into(),
            ));
            continue;
        }
        // Cedar names parsed policies policy0, policy1, … in the order they appear.
        let mut in_order: Vec<&Policy> = parsed.policies().collect();
        in_order.sort_by_key(|p| {
            let id: &str = p.id().as_ref();
            id.strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        });
        let mut from = 0usize;
        for (n, p) in in_order.into_iter().enumerate() {
            let text = p.to_cedar().unwrap_or_default();
            let offset = src.text[from..]
                .find(text.trim())
                .map(|o| o + from)
                .unwrap_or(from);
            from = offset + text.trim().len().min(src.text.len() - offset);
            let id = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}#{n}", src.name));
            if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
                problems.push(problem(
                    src,
                    offset,
                    None,
                    format!("@id must be 1 to {MAX_ID_LEN} printable characters"),
                ));
                continue;
            }
            if meta.contains_key(&id) {
                problems.push(problem(
                    src,
                    offset,
                    Some(&id),
                    "another policy of the set has this id".into(),
                ));
                continue;
            }
            let (outcome, severity, audit) = match conventions(p) {
                Ok(c) => c,
                Err(m) => {
                    problems.push(problem(src, offset, Some(&id), m));
                    continue;
                }
            };
            let (line, column) = line_col(&src.text, offset);
            meta.insert(
                id.clone(),
                PolicyMeta {
                    id: id.clone(),
                    effect: if p.effect() == Effect::Forbid {
                        "forbid".into()
                    } else {
                        "permit".into()
                    },
                    outcome,
                    severity,
                    audit,
                    file: src.name.clone(),
                    line,
                    column,
                    fields: fields_of(&text),
                },
            );
            where_of.insert(id.clone(), si);
            let renamed = p.new_id(PolicyId::new(id.clone()));
            if let Err(e) = all.add(renamed.clone()) {
                problems.push(problem(src, offset, Some(&id), e.to_string()));
                continue;
            }
            policies.push(renamed);
        }
    }
    if meta.len() > MAX_POLICIES {
        problems.push(Problem {
            file: sources.first().map(|s| s.name.clone()).unwrap_or_default(),
            line: 1,
            column: 1,
            policy: None,
            message: format!("more than {MAX_POLICIES} policies"),
        });
    }
    if problems.is_empty() {
        let validator = Validator::new(crate::schema::schema().clone());
        let result = validator.validate(&all, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let Some(&si) = where_of.get(&id) else {
                continue;
            };
            let src = &sources[si];
            let offset = offset_of(e).unwrap_or_else(|| {
                meta.get(&id)
                    .map(|m| offset_at(&src.text, m.line, m.column))
                    .unwrap_or(0)
            });
            problems.push(problem(src, offset, Some(&id), message_of(e)));
        }
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        // The validator reports a type error once per action the policy applies to.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| {
            seen.insert((
                p.file.clone(),
                p.line,
                p.column,
                p.policy.clone(),
                without_action(&p.message),
            ))
        });
        return Err(problems);
    }
    let mut compiled = Compiled {
        meta,
        ..Compiled::default()
    };
    for p in policies {
        let audit = compiled
            .meta
            .get(p.id().to_string().as_str())
            .is_some_and(|m| m.audit);
        let index = if audit {
            &mut compiled.audit
        } else {
            &mut compiled.enforced
        };
        if let Err(m) = index.add(p) {
            return Err(vec![Problem {
                file: String::new(),
                line: 1,
                column: 1,
                policy: None,
                message: m,
            }]);
        }
    }
    Ok(compiled)
}

/// The sources named by `paths`: each file as it is, each directory's `*.cedar` files (not
/// recursive), in name order. The source name is the path as given (joined for directories).
pub fn load_sources(paths: &[std::path::PathBuf]) -> std::io::Result<Vec<Source>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<std::path::PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "cedar"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
            Ok(Source {
                name: f.display().to_string(),
                text,
            })
        })
        .collect()
}

/// `m` without the ` for Action::"…"` the validator adds to each of its per-action reports.
fn without_action(m: &str) -> String {
    match m.find(" for Action::\"") {
        Some(i) => {
            let rest = &m[i + " for Action::\"".len()..];
            let end = rest.find('"').map(|e| e + 1).unwrap_or(rest.len());
            format!("{}{}", &m[..i], &rest[end..])
        }
        None => m.to_owned(),
    }
}

/// The byte offset of 1-based `line` and `column` in `text` (the inverse of [`line_col`]).
fn offset_at(text: &str, line: u32, column: u32) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let rest = &text[start..];
    start
        + rest
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map(|(i, _)| i)
            .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Compiled, Vec<Problem>> {
        compile(&[Source {
            name: "t.cedar".into(),
            text: text.into(),
        }])
    }

    #[test]
    fn line_and_column_count_characters() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(offset_at(t, 2, 4), 7);
    }

    #[test]
    fn a_syntax_error_names_line_and_column() {
        let e = one("permit(principal, action, resource);\nforbid(principal, action resource);")
            .unwrap_err();
        assert_eq!(e[0].file, "t.cedar");
        assert_eq!(e[0].line, 2, "{e:?}");
        assert!(e[0].column > 1, "{e:?}");
    }

    #[test]
    fn a_type_error_names_the_policy_and_its_place() {
        let e = one(
            "@id(\"ok\") permit(principal, action, resource);\n\n@id(\"bad\")\nforbid(principal, action, resource) when { context.ja4 == \"x\" };",
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].policy.as_deref(), Some("bad"));
        assert_eq!(e[0].line, 4, "{e:?}");
        let e = one("permit(principal, action, resource) when { context.nope == 1 };").unwrap_err();
        assert!(e[0].message.contains("nope"), "{e:?}");
    }

    #[test]
    fn annotations_are_checked() {
        for (text, what) in [
            (
                "@effect(\"alert\") permit(principal, action, resource);",
                "forbid policies only",
            ),
            (
                "@effect(\"block\") forbid(principal, action, resource);",
                "not an effect",
            ),
            (
                "@severity(\"urgent\") forbid(principal, action, resource);",
                "not a severity",
            ),
            (
                "@mode(\"audit\") permit(principal, action, resource);",
                "forbid policies only",
            ),
            (
                "@mode(\"shadow\") forbid(principal, action, resource);",
                "not a mode",
            ),
            (
                "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") permit(principal, action, resource);",
                "another policy",
            ),
            (
                "permit(principal == ?principal, action, resource);",
                "templates",
            ),
        ] {
            let e = one(text).unwrap_err();
            assert!(e[0].message.contains(what), "{text}: {e:?}");
        }
        let c = one(
            "@id(\"a\") @effect(\"alert\") @severity(\"low\") @mode(\"audit\") forbid(principal, action, resource);\npermit(principal, action, resource);",
        )
        .unwrap();
        let a = c.policy("a").unwrap();
        assert_eq!(
            (a.outcome, a.severity, a.audit),
            (Outcome::Alert, Severity::Low, true)
        );
        let p = c.policy("t.cedar#1").unwrap();
        assert_eq!((p.outcome, p.line, p.column), (Outcome::Allow, 2, 1));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let text = format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let e = one(&text).unwrap_err();
        assert!(e[0].message.contains("nested deeper"), "{e:?}");
        // Brackets in strings and comments do not count.
        let ok = format!(
            "// {}\npermit(principal, action, resource) when {{ context.transport != \"{}\" }};",
            "(".repeat(1000),
            "[".repeat(1000)
        );
        one(&ok).unwrap();
    }

    #[test]
    fn fields_are_read_from_the_text() {
        let f = fields_of(
            "forbid(principal in Namespace::\"p\", action == Action::\"tls\", resource) when { context has ja4_a && context.ja4_a like \"t13*\" && resource.port == 443 && \"context.x\" == \"y\" }; // principal.exe",
        );
        assert_eq!(
            f,
            [
                "action",
                "context.ja4_a",
                "principal",
                "resource",
                "resource.port"
            ]
        );
    }
}
