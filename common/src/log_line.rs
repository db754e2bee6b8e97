//! The CRI container log format: one record per line,
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>\n`.
//!
//! `F` ends a line; `P` is a piece of a longer line (or of an unterminated one) and the
//! reader joins pieces up to the next `F`. kubelet reads this format for `kubectl logs`.

use crate::timestamp::TIMESTAMP_LEN;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's name in the log format.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record completes its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A piece of a line; more follows.
    Partial,
    /// The last piece of a line.
    Full,
}

impl Tag {
    fn as_byte(self) -> u8 {
        match self {
            Tag::Partial => b'P',
            Tag::Full => b'F',
        }
    }
}

/// Longest record header: timestamp, space, "stdout", space, tag, space.
pub const HEADER_MAX: usize = TIMESTAMP_LEN + 1 + 6 + 1 + 1 + 1;

/// Builds the header `<timestamp> <stream> <tag> ` into `out`, returning its length.
pub fn header_into(
    timestamp: &[u8; TIMESTAMP_LEN],
    stream: Stream,
    tag: Tag,
    out: &mut [u8; HEADER_MAX],
) -> usize {
    let name = stream.as_str().as_bytes();
    out[..TIMESTAMP_LEN].copy_from_slice(timestamp);
    let mut at = TIMESTAMP_LEN;
    out[at] = b' ';
    at += 1;
    out[at..at + name.len()].copy_from_slice(name);
    at += name.len();
    out[at] = b' ';
    out[at + 1] = tag.as_byte();
    out[at + 2] = b' ';
    at + 3
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: Stream,
    pub tag: Tag,
    pub text: &'a [u8],
}

/// Parses one record (without its trailing newline).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let tag = match parts.next()? {
        b"P" => Tag::Partial,
        b"F" => Tag::Full,
        _ => return None,
    };
    let text = parts.next().unwrap_or_default();
    Some(Record {
        timestamp,
        stream,
        tag,
        text,
    })
}

/// Joins the records of a whole log into full lines per stream, in file order:
/// `(stream, line)` for every `F`, and for a trailing `P` run without its `F`.
pub fn join_lines(log: &[u8]) -> Vec<(Stream, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let slot = |s: Stream| usize::from(s == Stream::Stderr);
    for raw in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(rec) = parse(raw) else { continue };
        let buf = &mut pending[slot(rec.stream)];
        buf.extend_from_slice(rec.text);
        if rec.tag == Tag::Full {
            out.push((rec.stream, std::mem::take(buf)));
        }
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        let rest = std::mem::take(&mut pending[slot(stream)]);
        if !rest.is_empty() {
            out.push((stream, rest));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_parse_agree() {
        let ts = *b"2026-01-01T00:00:00.000000000Z";
        let mut hdr = [0u8; HEADER_MAX];
        let n = header_into(&ts, Stream::Stderr, Tag::Partial, &mut hdr);
        let mut line = hdr[..n].to_vec();
        line.extend_from_slice(b"hello world");
        let rec = parse(&line).expect("parses");
        assert_eq!(rec.stream, Stream::Stderr);
        assert_eq!(rec.tag, Tag::Partial);
        assert_eq!(rec.text, b"hello world");
        assert_eq!(rec.timestamp, "2026-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn joins_partials() {
        let log = b"t stdout P ab\nt stderr F e1\nt stdout F cd\nt stdout P tail\n";
        let lines = join_lines(log);
        assert_eq!(
            lines,
            vec![
                (Stream::Stderr, b"e1".to_vec()),
                (Stream::Stdout, b"abcd".to_vec()),
                (Stream::Stdout, b"tail".to_vec()),
            ]
        );
    }
}
