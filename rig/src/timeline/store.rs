//! The stored form: `events.jsonl` read back (a header line, then one event
//! per line; a torn last line is ignored), or the same lines as one zstd
//! stream in `events.jsonl.zst` (`journal: { compress: true }`), told apart
//! by the zstd magic number, not by the name.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{Event, FORMAT, FORMAT_VERSION, Header};

/// Errors reading a stored timeline.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
}

/// The compressed journal's name beside `events.jsonl`.
pub const COMPRESSED: &str = "events.jsonl.zst";

/// A run folder's journal: `events.jsonl`, or `events.jsonl.zst` if only
/// that one is there.
pub fn journal_in(dir: &Path) -> PathBuf {
    let plain = dir.join("events.jsonl");
    let zst = dir.join(COMPRESSED);
    if !plain.exists() && zst.exists() { zst } else { plain }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A compressed journal cut off mid-frame (the rig was killed): what was
/// decoded is intact, the rest reads as the end of the file.
struct TornIsEnd<R>(R);

impl<R: Read> Read for TornIsEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

/// Opens a journal, plain or compressed, as lines.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>, ReadError> {
    let p = path.display().to_string();
    let io = |source: std::io::Error| ReadError::Io {
        path: p.clone(),
        source,
    };
    let file = crate::fsutil::open_read_nofollow(path).map_err(|e| io(std::io::Error::other(e)))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    if r.fill_buf().map_err(io)?.starts_with(&ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::with_buffer(r).map_err(io)?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, TornIsEnd(d))))
    } else {
        Ok(Box::new(r))
    }
}

/// Reads `events.jsonl` (or a compressed journal). A torn last line (the
/// rig was killed mid-write) is ignored: everything before it is intact by
/// construction.
pub fn read_jsonl(path: &Path) -> Result<(Header, Vec<Event>), ReadError> {
    let p = path.display().to_string();
    read_jsonl_named(open_lines(path)?, &p)
}

/// [`read_jsonl`] on bytes already in memory.
pub fn read_jsonl_from(data: &[u8]) -> Result<(Header, Vec<Event>), ReadError> {
    read_jsonl_named(data, "events.jsonl")
}

/// Longest line `events.jsonl` may hold: a garbled file must not make the
/// reader buffer gigabytes looking for a newline.
pub const MAX_LINE: usize = 1024 * 1024;

/// The next line (without its end), bounded by [`MAX_LINE`].
fn next_line<R: BufRead>(r: &mut R, p: &str) -> Result<Option<String>, ReadError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|source| ReadError::Io {
            path: p.to_owned(),
            source,
        })?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 0,
            message: format!("a line is longer than {MAX_LINE} bytes: not a rig journal"),
        });
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    // The rig writes UTF-8: checked, not copied; anything else is mended.
    Ok(Some(String::from_utf8(buf).unwrap_or_else(|e| {
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })))
}

fn read_jsonl_named<R: BufRead>(r: R, p: &str) -> Result<(Header, Vec<Event>), ReadError> {
    let mut events = Vec::new();
    let header = stream_named(r, p, |_| true, |ev| events.push(ev))?;
    Ok((header, events))
}

/// Feeds every event of a journal, plain or compressed, to `f` in order
/// without holding them: what `rig report` and the run's reports read, so
/// memory does not grow with the journal. Returns the header.
pub fn stream(path: &Path, f: impl FnMut(Event)) -> Result<Header, ReadError> {
    let p = path.display().to_string();
    stream_named(open_lines(path)?, &p, |_| true, f)
}

/// [`stream`] of the events whose journal line `keep` accepts (given the
/// line's `kind` and `device` as written): a reader that needs a few kinds
/// does not pay for parsing the rest.
pub fn stream_filtered(
    path: &Path,
    keep: impl Fn(&str, Option<&str>) -> bool,
    f: impl FnMut(Event),
) -> Result<Header, ReadError> {
    let p = path.display().to_string();
    stream_named(open_lines(path)?, &p, |line| wanted(line, &keep), f)
}

/// Whether `keep` wants a journal line, read from its `kind` and `device`
/// as the rig writes them (`"device":"…"` before `"kind":"…"`); a line
/// written otherwise is parsed, so nothing is missed.
pub(crate) fn wanted(line: &str, keep: &impl Fn(&str, Option<&str>) -> bool) -> bool {
    match kind_and_device(line) {
        Some((kind, device)) => keep(kind, device),
        None => true,
    }
}

/// A line's `kind` and `device` as the rig writes them (`"device":"…"`
/// before `"kind":"…"`, neither escaped); None when it cannot tell.
pub(crate) fn kind_and_device(line: &str) -> Option<(&str, Option<&str>)> {
    use std::sync::LazyLock;
    static KIND: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"kind\":\""));
    static DEVICE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"device\":\""));
    let at = KIND.find(line.as_bytes())?;
    let kind = quoted(&line[at + KIND.needle().len()..])?;
    let device = match DEVICE.find(&line.as_bytes()[..at]) {
        None => None,
        Some(d) => Some(quoted(&line[d + DEVICE.needle().len()..at])?),
    };
    Some((kind, device))
}

/// `(seq, cell, t_ms)` read from the front of a line as the rig writes it
/// (`{"seq":N,"cell":C,"t_ms":T,…`); None for any other shape.
pub(crate) fn sort_key(line: &str) -> Option<(u64, u32, u64)> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(",\"cell\":")?;
    let (cell, rest) = number(rest)?;
    let rest = rest.strip_prefix(",\"t_ms\":")?;
    let (t_ms, rest) = number(rest)?;
    rest.starts_with(',').then_some((seq, u32::try_from(cell).ok()?, t_ms))
}

/// The decimal number a text starts with (at most 19 digits: no overflow).
fn number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take(20).take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = s.as_bytes()[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, &s[digits..]))
}

/// [`stream`] of the events whose journal line `keep` accepts, given the
/// line's cell, `kind` and `device` as written (lines the rig did not
/// write are parsed in full, so nothing is missed).
pub fn stream_in_cells(
    path: &Path,
    keep: impl Fn(u32, &str, Option<&str>) -> bool,
    f: impl FnMut(Event),
) -> Result<Header, ReadError> {
    let p = path.display().to_string();
    stream_named(
        open_lines(path)?,
        &p,
        |line| match (sort_key(line), kind_and_device(line)) {
            (Some((_, cell, _)), Some((kind, device))) => keep(cell, kind, device),
            _ => true,
        },
        f,
    )
}

/// The text up to the closing quote; None if it holds an escape.
fn quoted(s: &str) -> Option<&str> {
    let end = memchr::memchr(b'"', s.as_bytes())?;
    let v = &s[..end];
    memchr::memchr(b'\\', v.as_bytes()).is_none().then_some(v)
}

/// The header of a journal, with the `format`/`version` check of [`stream`].
pub fn header(path: &Path) -> Result<Header, ReadError> {
    let p = path.display().to_string();
    read_header(&mut open_lines(path)?, &p)
}

fn read_header<R: BufRead>(r: &mut R, p: &str) -> Result<Header, ReadError> {
    let Some(header_line) = next_line(r, p)? else {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 1,
            message: "empty file: expected a rig.events header line".into(),
        });
    };
    let header: Header = serde_json::from_str(&header_line).map_err(|e| ReadError::Parse {
        path: p.to_owned(),
        line: 1,
        message: format!("not a rig.events header: {e}"),
    })?;
    if header.format != FORMAT || header.version > FORMAT_VERSION {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 1,
            message: format!(
                "format {} version {} is not readable by this rig (reads {FORMAT} up to version {FORMAT_VERSION})",
                header.format, header.version
            ),
        });
    }
    Ok(header)
}

fn stream_named<R: BufRead>(
    r: R,
    p: &str,
    keep: impl Fn(&str) -> bool,
    mut f: impl FnMut(Event),
) -> Result<Header, ReadError> {
    let (header, mut lines) = EventLines::new(r, p)?;
    while let Some(line) = lines.next_line()? {
        if !keep(&line) {
            continue;
        }
        match lines.parse(&line)? {
            Some(ev) => f(ev),
            None => break,
        }
    }
    Ok(header)
}

/// A journal's event lines after its header, one at a time (what a reader
/// that interleaves several journals pulls from), with the torn-last-line
/// rule of [`stream`].
pub(crate) struct EventLines<R> {
    r: R,
    path: String,
    lineno: usize,
    next: Option<String>,
}

impl EventLines<Box<dyn BufRead + Send>> {
    pub(crate) fn open(path: &Path) -> Result<(Header, Self), ReadError> {
        EventLines::new(open_lines(path)?, &path.display().to_string())
    }
}

impl<R: BufRead> EventLines<R> {
    fn new(mut r: R, p: &str) -> Result<(Header, Self), ReadError> {
        let header = read_header(&mut r, p)?;
        let next = next_line(&mut r, p)?;
        Ok((
            header,
            EventLines {
                r,
                path: p.to_owned(),
                lineno: 1,
                next,
            },
        ))
    }

    /// The next line that is not blank.
    pub(crate) fn next_line(&mut self) -> Result<Option<String>, ReadError> {
        loop {
            let Some(line) = self.next.take() else { return Ok(None) };
            self.lineno += 1;
            self.next = next_line(&mut self.r, &self.path)?;
            if !line.trim().is_empty() {
                return Ok(Some(line));
            }
        }
    }

    /// The event on the line [`Self::next_line`] gave last; `None` for a
    /// torn last line (the rig was killed mid-write): the journal ends there.
    pub(crate) fn parse(&self, line: &str) -> Result<Option<Event>, ReadError> {
        match serde_json::from_str::<Event>(line) {
            Ok(ev) => Ok(Some(ev)),
            Err(_) if self.next.is_none() => Ok(None),
            Err(e) => Err(ReadError::Parse {
                path: self.path.clone(),
                line: self.lineno,
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wanted;

    /// The line filter reads `kind` and `device` as the rig writes them and
    /// parses anything else in full rather than miss it.
    #[test]
    fn the_line_filter_reads_kind_and_device_and_keeps_what_it_cannot_read() {
        let seen = std::cell::RefCell::new(Vec::new());
        let keep = |k: &str, d: Option<&str>| {
            seen.borrow_mut().push((k.to_owned(), d.map(str::to_owned)));
            false
        };
        let line = r#"{"seq":1,"cell":0,"t_ms":5,"wall":"x","device":"dev-1","source":"cloud","kind":"cloud.resumed","session":"5"}"#;
        assert!(!wanted(line, &keep));
        let bench = r#"{"seq":2,"cell":0,"t_ms":5,"wall":"x","source":"runner","kind":"plan.mark","name":"a \"device\":\"x\""}"#;
        assert!(!wanted(bench, &keep));
        assert_eq!(
            *seen.borrow(),
            vec![
                ("cloud.resumed".to_owned(), Some("dev-1".to_owned())),
                ("plan.mark".to_owned(), None)
            ]
        );
        // An escaped id, or no kind where the rig puts it: parsed in full.
        let escaped = r#"{"seq":3,"device":"a\"b","kind":"cloud.resumed"}"#;
        assert!(wanted(escaped, &keep));
        assert!(wanted(r#"{"seq":4}"#, &keep));
    }
}
