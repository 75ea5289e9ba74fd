//! Compact JSON, one record per line (JSON Lines), as the reference tool prints with `--json`.

use super::Value;

/// Appends `value` as one line of JSON to `out`.
pub fn write_json_line(out: &mut String, value: &Value) {
    write_value(out, value);
    out.push('\n');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Int(n) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => write_str(out, s),
        Value::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v);
            }
            out.push(']');
        }
        Value::Map(map) => {
            out.push('{');
            for (i, (k, v)) in map.0.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::super::Map;
    use super::*;

    #[test]
    fn escapes_and_order() {
        let mut m = Map::new();
        m.push("stream", 3u64);
        m.push("name", "a\"b\\c\n\u{1}");
        m.push("list", Value::List(vec![Value::Null, "x".into()]));
        let mut out = String::new();
        write_json_line(&mut out, &Value::Map(m));
        assert_eq!(
            out,
            "{\"stream\":3,\"name\":\"a\\\"b\\\\c\\n\\u0001\",\"list\":[null,\"x\"]}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["name"], "a\"b\\c\n\u{1}");
    }
}
