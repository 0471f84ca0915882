//! JSON written the way Python's `json.dumps` writes it, for chat templates' `tojson`
//! (transformers defines it as `json.dumps(x, ensure_ascii=False, indent=indent,
//! separators=separators, sort_keys=sort_keys)`). Written by hand because no crate writes
//! Python's spacing (`", "`, `": "`) and float repr (`1e-05`, `1.0`); serde_json and
//! minijinja's own filter write compact JSON, and minijinja escapes `<`, `>` and `&` for HTML
//! — each a different token sequence from the one the model was trained on.

use serde_json::Value;
use std::fmt::Write;

/// The keyword arguments of Python's `json.dumps` a template may pass to `tojson`.
#[derive(Debug, Clone)]
pub struct Options {
    pub ensure_ascii: bool,
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

impl Options {
    /// Python's defaults for an `indent`: `None` keeps one line, a number counts spaces, a
    /// string is the indent itself; with an indent the item separator loses its space.
    pub fn with_indent(mut self, indent: Option<String>) -> Self {
        if indent.is_some() {
            self.item_sep = ",".into();
        }
        self.indent = indent;
        self
    }
}

pub fn dumps(v: &Value, o: &Options) -> String {
    let mut out = String::new();
    write_value(&mut out, v, o, 0);
    out
}

fn write_value(out: &mut String, v: &Value, o: &Options, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => write!(out, "{i}").unwrap(),
            (_, Some(u), _) => write!(out, "{u}").unwrap(),
            (_, _, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s, o.ensure_ascii),
        Value::Array(a) => {
            let items: Vec<&Value> = a.iter().collect();
            write_container(out, ('[', ']'), items.len(), o, depth, |out, k| {
                write_value(out, items[k], o, depth + 1)
            });
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            write_container(out, ('{', '}'), entries.len(), o, depth, |out, k| {
                write_string(out, entries[k].0, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_value(out, entries[k].1, o, depth + 1)
            });
        }
    }
}

fn write_container(
    out: &mut String,
    (open, close): (char, char),
    n: usize,
    o: &Options,
    depth: usize,
    mut item: impl FnMut(&mut String, usize),
) {
    out.push(open);
    if n == 0 {
        out.push(close);
        return;
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    for k in 0..n {
        if k > 0 {
            out.push_str(&o.item_sep);
        }
        newline(out, depth + 1);
        item(out, k);
    }
    newline(out, depth);
    out.push(close);
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(out, "\\u{u:04x}").unwrap();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional between 1e-4 and
/// 1e16 (always with a fraction: `1.0`), otherwise `d.ddde±XX` with at least two exponent digits.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "1.2345e3", "-5e-7"
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-10, "1.5e-10"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn spacing_escapes_and_order_match_json_dumps() {
        let v = json!({"z": [1, 2.0, null, true], "a": {"<b>": "é\n\"\u{1}🐋"}, "e": [], "o": {}});
        // json.dumps(v, ensure_ascii=False)
        assert_eq!(
            dumps(&v, &Options::default()),
            r#"{"z": [1, 2.0, null, true], "a": {"<b>": "é\n\"\u0001🐋"}, "e": [], "o": {}}"#
        );
        // json.dumps(v, ensure_ascii=True, sort_keys=True)
        let o = Options {
            ensure_ascii: true,
            sort_keys: true,
            ..Options::default()
        };
        assert_eq!(
            dumps(&v, &o),
            r#"{"a": {"<b>": "\u00e9\n\"\u0001\ud83d\udc0b"}, "e": [], "o": {}, "z": [1, 2.0, null, true]}"#
        );
        // json.dumps(v, indent=2)
        let o = Options::default().with_indent(Some("  ".into()));
        assert_eq!(
            dumps(&json!({"a": [1, {"b": null}], "c": []}), &o),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": []\n}"
        );
    }
}
