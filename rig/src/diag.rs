//! Diagnostics that point into a YAML file: file, line, column, the line
//! itself, a caret, and what was expected.
//!
//! Every input error of plans, benches and fixtures ends up as a
//! [`Diagnostic`]; the CLI prints them all and exits 2.

use std::fmt;
use std::path::Path;

use serde_saphyr::Location;

/// One problem in an input file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
    /// The offending source line, when known.
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// A problem with a whole file (unreadable, missing).
    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            message: message.into(),
            source_line: None,
        }
    }

    /// A problem at `line:col` of `text`.
    pub fn at(path: &Path, text: &str, line: usize, col: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: path.display().to_string(),
            line,
            col,
            message: message.into(),
            source_line: line.checked_sub(1).and_then(|i| text.lines().nth(i)).map(str::to_owned),
        }
    }

    /// A problem at a span recorded by the YAML parser.
    pub fn at_loc(path: &Path, text: &str, loc: &Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(path, text, loc.line() as usize, loc.column() as usize, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: error: {}", self.file, self.message);
        }
        writeln!(f, "{}:{}:{}: error: {}", self.file, self.line, self.col, self.message)?;
        if let Some(src) = &self.source_line {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {src}")?;
            let caret_pad: String = src
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "{pad} | {caret_pad}^")?;
        }
        Ok(())
    }
}

/// Converts a serde-saphyr error into a diagnostic on `path`.
pub fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let message = clean_message(&e.without_snippet().to_string());
    match e.location() {
        Some(loc) if loc.line() > 0 => {
            let mut d = Diagnostic::at_loc(path, text, &loc, message);
            d.message = explain_scalar(&d.message, d.source_line.as_deref(), d.col);
            d
        }
        _ => Diagnostic::file(path, message),
    }
}

/// The parser's terse "invalid u32" becomes what was expected and what was found.
fn explain_scalar(message: &str, line: Option<&str>, col: usize) -> String {
    let expected = match message {
        "invalid u8" | "invalid u16" | "invalid u32" | "invalid u64" | "invalid usize" => "a whole number",
        "invalid i8" | "invalid i16" | "invalid i32" | "invalid i64" => "an integer",
        "invalid f32" | "invalid f64" => "a number",
        "invalid bool" => "true or false",
        _ => return message.to_owned(),
    };
    let found: String = line
        .unwrap_or_default()
        .chars()
        .skip(col.saturating_sub(1))
        .take_while(|c| !matches!(c, ',' | '}' | ']' | '#'))
        .collect();
    let found = found.trim().trim_matches(['"', '\'']);
    if found.is_empty() {
        format!("expected {expected}")
    } else {
        format!("expected {expected}, found `{found}`")
    }
}

/// The parser's message without its own location suffix (we print ours).
fn clean_message(m: &str) -> String {
    let first = m.lines().next().unwrap_or(m).trim();
    let re = regex::Regex::new(r"\s*at line \d+,? column \d+\s*$").expect("static regex");
    let m = re.replace(first, "").into_owned();
    m.strip_prefix("error: ").unwrap_or(&m).to_owned()
}

/// Renders a list of diagnostics, one blank line apart.
pub fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret_under_the_column() {
        let text = "name: x\nsteps:\n  - cache: kil\n";
        let d = Diagnostic::at(Path::new("p.yaml"), text, 3, 12, "unknown cache operation `kil`");
        assert_eq!(
            d.to_string(),
            "p.yaml:3:12: error: unknown cache operation `kil`\n  |\n3 |   - cache: kil\n  |            ^"
        );
    }

    #[test]
    fn yaml_syntax_errors_carry_a_location() {
        let text = "name: x\nsteps: [\n";
        let e = serde_saphyr::from_str::<serde_json::Value>(text).unwrap_err();
        let d = yaml_error(Path::new("p.yaml"), text, &e);
        assert!(d.line >= 2, "{d}");
    }
}
