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

/// The header is the compiler-style `file:line:col: error: message` on one
/// line, which editors and CI problem matchers (gcc's errorformat, GitHub
/// Actions and VS Code `$gcc` matchers) parse; annotate-snippets (rustc's
/// renderer) has no such layout (its location is a separate ` --> ` line),
/// so the header is ours and the snippet under it — gutter, source line,
/// caret at the character's display column — is annotate-snippets'.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: error: {}", self.file, self.message);
        }
        write!(f, "{}:{}:{}: error: {}", self.file, self.line, self.col, self.message)?;
        if let Some(src) = &self.source_line {
            f.write_str("\n")?;
            f.write_str(&snippet(src, self.line, self.col))?;
        }
        Ok(())
    }
}

/// The source line with a caret under column `col` (1-based, characters).
fn snippet(src: &str, line: usize, col: usize) -> String {
    use annotate_snippets::{Level, Renderer, Snippet};
    let start = src
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(src.len(), |(i, _)| i);
    let end = src[start..].chars().next().map_or(start, |c| start + c.len_utf8());
    let message = Level::Error.title("").snippet(
        Snippet::source(src)
            .line_start(line)
            .annotation(Level::Error.span(start..end)),
    );
    let rendered = Renderer::plain().render(message).to_string();
    // The title line (ours is above) and the closing empty gutter go.
    let mut lines: Vec<&str> = rendered.lines().skip(1).collect();
    if lines.last().is_some_and(|l| l.trim() == "|") {
        lines.pop();
    }
    lines.iter().map(|l| l.trim_end()).collect::<Vec<_>>().join("\n")
}

/// Largest plan, bench or fixture file the rig reads: far above any real
/// one, far below what could exhaust memory (`rig check /dev/zero`).
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024;

/// Reads an input file as UTF-8 text. Bytes that are not UTF-8, a file too
/// large to be a plan, or something that is not a regular file are
/// diagnostics with the position of the problem.
pub fn read_text(path: &Path, what: &str) -> Result<String, Diagnostic> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Diagnostic::file(path, format!("cannot read {what}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Diagnostic::file(path, format!("cannot read {what}: {e}")))?;
    if !meta.is_file() {
        return Err(Diagnostic::file(
            path,
            format!("cannot read {what}: not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    // Bounded even if the file grows while it is read.
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Diagnostic::file(path, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Diagnostic::file(
            path,
            format!(
                "{what} is larger than {} KiB; that is not a plan, bench or fixture file",
                MAX_INPUT_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        let bad = e.as_bytes()[good.len()];
        Diagnostic::at(
            path,
            &lossy,
            line,
            col,
            format!("expected UTF-8 text, found the byte 0x{bad:02x}"),
        )
    })
}

/// Where a flow collection (`{` or `[`) is opened and never closed, or closed
/// by the wrong bracket: the YAML parser only notices lines later.
pub fn unclosed_flow(text: &str) -> Option<(usize, usize, String)> {
    let mut stack: Vec<(char, usize, usize)> = Vec::new();
    let mut block_indent: Option<usize> = None;
    for (li, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(bi) = block_indent {
            if line.trim().is_empty() || indent > bi {
                continue;
            }
            block_indent = None;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some('"') if c == '\\' => i += 1,
                Some('\'') if c == '\'' && chars.get(i + 1) == Some(&'\'') => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' if i == 0 || matches!(chars[i - 1], ' ' | '{' | '[' | ',' | ':' | '-') => {
                        quote = Some(c)
                    }
                    '#' if i == 0 || chars[i - 1] == ' ' => break,
                    '{' | '[' => stack.push((c, li + 1, i + 1)),
                    '}' | ']' => {
                        let want = if c == '}' { '{' } else { '[' };
                        match stack.pop() {
                            Some((open, _, _)) if open == want => {}
                            Some((open, l, col)) => {
                                return Some((
                                    l,
                                    col,
                                    format!("`{open}` opened here is closed by `{c}` at line {}", li + 1),
                                ));
                            }
                            None => {}
                        }
                    }
                    _ => {}
                },
            }
            i += 1;
        }
        // A block scalar (`key: |`) holds text, not YAML, on its deeper lines.
        let t = line.trim_end();
        if stack.is_empty() && (t.ends_with('|') || t.ends_with('>') || t.ends_with("|-") || t.ends_with(">-")) {
            block_indent = Some(indent);
        }
    }
    stack
        .pop()
        .map(|(open, l, col)| (l, col, format!("`{open}` opened here is never closed")))
}

/// Longest regex pattern accepted in a plan or fixture.
pub const MAX_REGEX_LEN: usize = 1000;
/// Compiled size limit for those regexes (the `regex` crate's default is 10 MiB).
pub const MAX_REGEX_COMPILED: usize = 1024 * 1024;

/// A user-supplied regex the rig will not use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BadRegex {
    #[error("the pattern is {0} characters long; at most {MAX_REGEX_LEN} are accepted")]
    TooLong(usize),
    #[error("it compiles to more than {} KiB (limit {} KiB)", .0 / 1024, .0 / 1024)]
    TooBig(usize),
    #[error("{0}")]
    Syntax(#[source] regex::Error),
}

/// Compiles a user-supplied regex with bounded size, so a short pattern
/// like `(a{1000}){1000}` cannot take the rig's memory.
pub fn regex(pattern: &str) -> Result<regex::Regex, BadRegex> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(BadRegex::TooLong(pattern.len()));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_COMPILED)
        .dfa_size_limit(MAX_REGEX_COMPILED)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => BadRegex::TooBig(limit),
            other => BadRegex::Syntax(other),
        })
}

/// Converts a serde-saphyr error into a diagnostic on `path`.
pub fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let message = clean_message(&e.without_snippet().to_string());
    let loc = e.location();
    if let Some((line, col, what)) = unclosed_flow(text)
        && loc.as_ref().is_none_or(|l| l.line() as usize >= line)
    {
        return Diagnostic::at(path, text, line, col, format!("{what} ({message})"));
    }
    match loc {
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
