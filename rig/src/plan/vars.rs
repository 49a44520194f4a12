//! `${name}` substitution in plan text, keeping a map back to the original
//! columns so errors in substituted text still point at what the engineer
//! wrote. `$${` is a literal `${`.

use std::collections::BTreeMap;

/// One substitution made on a line.
#[derive(Debug, Clone)]
struct Sub {
    line: usize,
    /// 1-based column of `${` in the original line.
    orig_col: usize,
    orig_len: usize,
    /// 1-based column of the value in the substituted line.
    new_col: usize,
    new_len: usize,
}

/// A reference to an undefined variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undefined {
    pub name: String,
    pub line: usize,
    pub col: usize,
}

/// Text after substitution, with the column map.
#[derive(Debug, Clone)]
pub struct Substituted {
    pub text: String,
    subs: Vec<Sub>,
}

impl Substituted {
    /// Maps a 1-based column on `line` of the substituted text back to the
    /// original text (a column inside a substituted value maps to its `${`).
    pub fn orig_col(&self, line: usize, col: usize) -> usize {
        let mut shift: isize = 0;
        for s in self.subs.iter().filter(|s| s.line == line) {
            if col < s.new_col {
                break;
            }
            if col < s.new_col + s.new_len {
                return s.orig_col;
            }
            shift = s.orig_col as isize + s.orig_len as isize - (s.new_col as isize + s.new_len as isize);
        }
        (col as isize + shift).max(1) as usize
    }
}

/// Replaces `${name}` with `vars[name]`. Undefined names are collected, and
/// replaced by the empty string so parsing can go on to find other errors.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> (Substituted, Vec<Undefined>) {
    let mut out = String::with_capacity(text.len());
    let mut subs = Vec::new();
    let mut undefined = Vec::new();
    for (li, line) in text.split_inclusive('\n').enumerate() {
        let lineno = li + 1;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut new_col = 1;
        while i < chars.len() {
            if chars[i] == '$' && chars.get(i + 1) == Some(&'$') && chars.get(i + 2) == Some(&'{') {
                out.push_str("${");
                i += 3;
                new_col += 2;
                continue;
            }
            if chars[i] == '$'
                && chars.get(i + 1) == Some(&'{')
                && let Some(close) = chars[i + 2..].iter().position(|&c| c == '}')
            {
                let name: String = chars[i + 2..i + 2 + close].iter().collect();
                let orig_len = close + 3;
                let value = match vars.get(name.trim()) {
                    Some(v) => v.clone(),
                    None => {
                        undefined.push(Undefined {
                            name: name.trim().to_owned(),
                            line: lineno,
                            col: i + 1,
                        });
                        String::new()
                    }
                };
                let new_len = value.chars().count();
                subs.push(Sub {
                    line: lineno,
                    orig_col: i + 1,
                    orig_len,
                    new_col,
                    new_len,
                });
                out.push_str(&value);
                new_col += new_len;
                i += orig_len;
                continue;
            }
            out.push(chars[i]);
            new_col += 1;
            i += 1;
        }
    }
    (Substituted { text: out, subs }, undefined)
}

/// The text with every `${...}` replaced by underscores of the same length:
/// parses like the real thing (a plain scalar) and keeps every column, so the
/// plan's header (vars, matrix) can be read before values are known.
pub fn blank(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$'
            && chars.get(i + 1) == Some(&'{')
            && let Some(close) = chars[i + 2..].iter().position(|&c| c == '}' || c == '\n')
            && chars[i + 2 + close] == '}'
        {
            for _ in 0..close + 3 {
                out.push('_');
            }
            i += close + 3;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn substitutes_and_maps_columns_back() {
        let (s, undef) = substitute(
            "a: ${x} and ${long_name}!\nb: $${lit}\n",
            &vars(&[("x", "1"), ("long_name", "v")]),
        );
        assert!(undef.is_empty());
        assert_eq!(s.text, "a: 1 and v!\nb: ${lit}\n");
        // `1` is at new col 4, original `${x}` at col 4.
        assert_eq!(s.orig_col(1, 4), 4);
        // ` and ` follows: new col 5 → orig col 8.
        assert_eq!(s.orig_col(1, 5), 8);
        // `!` new col 11 → orig col 25.
        assert_eq!(s.orig_col(1, 11), 25);
        assert_eq!(s.orig_col(2, 4), 4, "other lines untouched");
    }

    #[test]
    fn undefined_names_are_reported_with_position() {
        let (_, undef) = substitute("x: 1\ny: \"${nope}\"\n", &vars(&[]));
        assert_eq!(
            undef,
            vec![Undefined {
                name: "nope".into(),
                line: 2,
                col: 5
            }]
        );
    }

    #[test]
    fn blanking_keeps_length() {
        let t = "cloud: { mitigation: ${mitigation} }\n";
        let b = blank(t);
        assert_eq!(b.len(), t.len());
        assert_eq!(b, "cloud: { mitigation: _____________ }\n");
    }
}
