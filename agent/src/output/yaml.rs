//! Block-style YAML in the layout the reference tool prints by default (a list with one
//! item per stream), so the two outputs diff cleanly.

use super::{Map, Value};

/// Appends one list item (`- key: value` ...) at the top level.
pub fn write_yaml_list_item(out: &mut String, value: &Value) {
    write_item(out, value, 0);
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// Writes `- <value>` at column `col`.
fn write_item(out: &mut String, value: &Value, col: usize) {
    indent(out, col);
    out.push_str("- ");
    match value {
        Value::Map(m) if !m.is_empty() => write_map_body(out, m, col + 2, true),
        Value::List(l) if !l.is_empty() => {
            out.push('\n');
            for v in l {
                write_item(out, v, col + 2);
            }
        }
        other => {
            write_scalar(out, other);
            out.push('\n');
        }
    }
}

/// Writes the entries of a map at column `col`; the first entry continues the current line
/// when `inline_first` (after a `- `).
fn write_map_body(out: &mut String, m: &Map, col: usize, inline_first: bool) {
    for (i, (k, v)) in m.0.iter().enumerate() {
        if i > 0 || !inline_first {
            indent(out, col);
        }
        write_key(out, k);
        out.push(':');
        match v {
            Value::Map(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map_body(out, inner, col + 2, false);
            }
            Value::List(items) if !items.is_empty() => {
                out.push('\n');
                for item in items {
                    write_item(out, item, col);
                }
            }
            other => {
                out.push(' ');
                write_scalar(out, other);
                out.push('\n');
            }
        }
    }
}

fn write_key(out: &mut String, k: &str) {
    if needs_quotes(k) {
        write_quoted(out, k);
    } else {
        out.push_str(k);
    }
}

fn write_scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Int(n) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => {
            if needs_quotes(s) {
                write_quoted(out, s);
            } else {
                out.push_str(s);
            }
        }
        Value::List(_) => out.push_str("[]"),
        Value::Map(_) => out.push_str("{}"),
    }
}

/// Conservative: quote anything a YAML 1.1 or 1.2 reader could take for something other
/// than this exact string.
fn needs_quotes(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "null"
            | "~"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".nan"
            | ".inf"
            | "-.inf"
    ) {
        return true;
    }
    if s.parse::<f64>().is_ok() || s.starts_with("0x") || s.starts_with("0o") {
        return true;
    }
    let first = s.as_bytes()[0];
    if b"-?:,[]{}#&*!|>'\"%@` ".contains(&first) {
        return true;
    }
    if s.ends_with(' ') || s.ends_with(':') {
        return true;
    }
    if s.contains(": ") || s.contains(" #") {
        return true;
    }
    s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

fn write_quoted(out: &mut String, s: &str) {
    if s.chars().any(|c| c.is_control()) {
        // Double quotes with escapes for control characters.
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    use std::fmt::Write;
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    } else {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_reference_style() {
        let mut cert = Map::new();
        cert.push("ja4x", "a_b_c");
        cert.push("subjectCommonName", "*.google.com");
        let mut certs = Map::new();
        certs.push("x509", Value::List(vec![Value::Map(cert)]));
        let mut extras = Map::new();
        extras.push("hassh", "abc");
        extras.push("encryption_algorithm", Value::Null);
        let mut rec = Map::new();
        rec.push("stream", 0u64);
        rec.push("ja4l_c", "2177_64");
        rec.push("tls_certs", Value::List(vec![Value::Map(certs)]));
        rec.push("ja4ssh", Value::List(vec!["c1s1_c1s1_c0s0".into()]));
        rec.push("ssh_extras", Value::Map(extras));
        let mut out = String::new();
        write_yaml_list_item(&mut out, &Value::Map(rec));
        assert_eq!(
            out,
            "- stream: 0\n  ja4l_c: 2177_64\n  tls_certs:\n  - x509:\n    - ja4x: a_b_c\n      subjectCommonName: '*.google.com'\n  ja4ssh:\n  - c1s1_c1s1_c0s0\n  ssh_extras:\n    hassh: abc\n    encryption_algorithm: null\n"
        );
    }

    #[test]
    fn quoting() {
        for s in ["", "null", "123", "1e5", "- x", "a: b", "'q'", "yes"] {
            assert!(needs_quotes(s), "{s:?}");
        }
        for s in [
            "2177_64",
            "t13d1516h2_8daaf6152771_e5627efa2ab1",
            "SSH-2.0-OpenSSH_7.4",
            "bad.curveballtest.com",
        ] {
            assert!(!needs_quotes(s), "{s:?}");
        }
    }
}
