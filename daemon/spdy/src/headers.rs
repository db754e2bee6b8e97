//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! Uncompressed block: `u32 count`, then per pair `u32 name_len, name, u32 value_len, value`,
//! several values of one name joined by NUL. Each direction of a connection is **one** zlib
//! stream, preset with [`DICTIONARY`], shared by every SYN_STREAM/SYN_REPLY/HEADERS frame and
//! sync-flushed at the end of each block: a block can only be decoded after all earlier ones.

use bytes::{BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, Result};

/// Largest decompressed header block accepted. Kubernetes sends three short headers.
pub const MAX_HEADER_BLOCK_LEN: usize = 64 << 10;
/// Largest number of name/value pairs accepted in one block.
pub const MAX_HEADERS: usize = 128;

/// Length of the SPDY/3 dictionary; its Adler-32 is `0xe3c6a7c2`.
pub const DICTIONARY_LEN: usize = 1423;

/// The SPDY/3 zlib dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1), built at compile time
/// from the spec's two parts: length-prefixed header names and values, then plain text.
pub const DICTIONARY: [u8; DICTIONARY_LEN] = build_dictionary();

const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TEXT: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

const fn build_dictionary() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut pos = 0;
    let mut w = 0;
    while w < DICTIONARY_WORDS.len() {
        let word = DICTIONARY_WORDS[w].as_bytes();
        let len = (word.len() as u32).to_be_bytes();
        let mut i = 0;
        while i < 4 {
            out[pos] = len[i];
            pos += 1;
            i += 1;
        }
        i = 0;
        while i < word.len() {
            out[pos] = word[i];
            pos += 1;
            i += 1;
        }
        w += 1;
    }
    let text = DICTIONARY_TEXT.as_bytes();
    let mut i = 0;
    while i < text.len() {
        out[pos] = text[i];
        pos += 1;
        i += 1;
    }
    // A wrong length fails the build here (or with an out-of-bounds index above).
    assert!(pos == DICTIONARY_LEN);
    out
}

/// An ordered list of header pairs; names are lower-case, a name may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; the name is lower-cased (SPDY header names are lower-case).
    pub fn append(&mut self, name: &str, value: &str) {
        self.entries
            .push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The first value of `name` (matched case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut entries = self.entries.iter();
        entries
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order (e.g. all `x-stream-protocol-version` values).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let entries = self
            .entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name));
        entries.map(|(_, v)| v.as_str())
    }

    /// All pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.append(n.as_ref(), v.as_ref());
        }
        headers
    }
}

/// Serializes `headers` uncompressed. Repeated names become one NUL-joined pair: Go's reader
/// rejects a block that names a header twice.
pub fn encode_block(headers: &Headers) -> Result<Vec<u8>> {
    let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, value) in headers.iter() {
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    let too_long = |_| Error::InvalidHeaderBlock("header longer than 4 GiB");
    let mut out = Vec::new();
    out.put_u32(u32::try_from(grouped.len()).map_err(too_long)?);
    for (name, values) in grouped {
        let value = values.join("\0");
        for field in [name, value.as_str()] {
            out.put_u32(u32::try_from(field.len()).map_err(too_long)?);
            out.put_slice(field.as_bytes());
        }
    }
    Ok(out)
}

/// Parses an uncompressed block, bounded by [`MAX_HEADERS`].
pub fn decode_block(mut raw: &[u8]) -> Result<Headers> {
    fn take<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8]> {
        let len = take_u32(raw)? as usize;
        if raw.len() < len {
            return Err(Error::InvalidHeaderBlock("field longer than the block"));
        }
        let (field, rest) = raw.split_at(len);
        *raw = rest;
        Ok(field)
    }
    fn take_u32(raw: &mut &[u8]) -> Result<u32> {
        let Some((word, rest)) = raw.split_first_chunk::<4>() else {
            return Err(Error::InvalidHeaderBlock("truncated"));
        };
        *raw = rest;
        Ok(u32::from_be_bytes(*word))
    }
    let count = take_u32(&mut raw)?;
    if count as usize > MAX_HEADERS {
        return Err(Error::TooManyHeaders {
            count,
            max: MAX_HEADERS,
        });
    }
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = std::str::from_utf8(take(&mut raw)?);
        let name = name.map_err(|_| Error::InvalidHeaderBlock("name is not utf-8"))?;
        if name.is_empty() {
            return Err(Error::InvalidHeaderBlock("empty header name"));
        }
        let value = std::str::from_utf8(take(&mut raw)?);
        let value = value.map_err(|_| Error::InvalidHeaderBlock("value is not utf-8"))?;
        for v in value.split('\0') {
            headers.append(name, v);
        }
        if headers.len() > MAX_HEADERS {
            return Err(Error::TooManyHeaders {
                count,
                max: MAX_HEADERS,
            });
        }
    }
    if !raw.is_empty() {
        return Err(Error::InvalidHeaderBlock("trailing bytes"));
    }
    Ok(headers)
}

/// The sending direction's compression context (one per connection).
pub struct HeaderEncoder {
    z: Compress,
}

impl HeaderEncoder {
    /// A fresh context with the SPDY dictionary, at Go's level (best compression).
    pub fn new() -> Result<Self> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&DICTIONARY).map_err(Error::Compress)?;
        Ok(Self { z })
    }

    /// Serializes and compresses `headers` as the next block of this context.
    pub fn encode(&mut self, headers: &Headers) -> Result<Bytes> {
        let raw = encode_block(headers)?;
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut input = raw.as_slice();
        loop {
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(Error::Compress)?;
            input = &input[(self.z.total_in() - before) as usize..];
            // zlib has flushed everything once it leaves output space unused.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out.into());
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// The receiving direction's decompression context (one per connection).
pub struct HeaderDecoder {
    z: Decompress,
}

impl HeaderDecoder {
    /// A fresh context; the dictionary is supplied when the stream asks for it.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Decompresses and parses the next block of this context, bounded by
    /// [`MAX_HEADER_BLOCK_LEN`]. The whole compressed block must be consumed.
    pub fn decode(&mut self, mut block: &[u8]) -> Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity((block.len() * 4).clamp(64, 4096));
        loop {
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let result = self
                .z
                .decompress_vec(block, &mut out, FlushDecompress::Sync);
            block = &block[(self.z.total_in() - before_in) as usize..];
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(Error::InvalidHeaderBlock("zlib stream ended"));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.z
                            .set_dictionary(&DICTIONARY)
                            .map_err(Error::Decompress)?;
                        continue;
                    }
                    None => return Err(Error::Decompress(e)),
                },
            }
            if block.is_empty() && out.len() < out.capacity() {
                return decode_block(&out);
            }
            if out.len() > MAX_HEADER_BLOCK_LEN {
                return Err(Error::HeaderBlockTooLarge {
                    max: MAX_HEADER_BLOCK_LEN,
                });
            }
            let progress = self.z.total_in() != before_in || self.z.total_out() != before_out;
            if !progress && out.len() < out.capacity() {
                return Err(Error::InvalidHeaderBlock("incomplete compressed block"));
            }
            if out.len() == out.capacity() {
                let room = out
                    .capacity()
                    .min(MAX_HEADER_BLOCK_LEN + 1 - out.len())
                    .max(1);
                out.reserve_exact(room);
            }
        }
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    #[test]
    fn dictionary_matches_the_spec() {
        // set_dictionary returns the Adler-32 that zlib puts in the stream header (DICTID).
        let mut z = Compress::new(Compression::best(), true);
        assert_eq!(
            z.set_dictionary(&DICTIONARY).expect("dictionary"),
            0xe3c6_a7c2
        );
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[test]
    fn uncompressed_block_matches_the_reference() {
        // `streamtype: error` from shared/reference/streaming-protocol.md §3.4.
        let raw = encode_block(&headers(&[("streamtype", "error")])).expect("encode");
        assert_eq!(
            raw,
            hex("000000010000000a73747265616d74797065000000056572726f72")
        );
        let pairs = headers(&[
            ("X-Stream-Protocol-Version", "v4"),
            ("x-stream-protocol-version", "v3"),
        ]);
        let raw = encode_block(&pairs).expect("encode");
        let back = decode_block(&raw).expect("decode");
        assert_eq!(
            back.get_all("x-stream-protocol-version")
                .collect::<Vec<_>>(),
            ["v4", "v3"]
        );
        // One pair with NUL-joined values: Go rejects a block naming a header twice.
        assert_eq!(raw[..4], [0, 0, 0, 1]);
        assert!(raw.windows(5).any(|w| w == b"v4\0v3"));
    }

    #[test]
    fn empty_blocks_compress_like_zlib() {
        // Python zlib, level 9, SPDY dictionary (reference §3.4).
        let mut enc = HeaderEncoder::new().expect("encoder");
        let first = enc.encode(&Headers::new()).expect("encode");
        assert_eq!(first.as_ref(), hex("78f9e3c6a7c202a6230600000000ffff"));
        let second = enc.encode(&Headers::new()).expect("encode");
        assert_eq!(second.as_ref(), hex("020100000000ffff"));
    }

    /// Blocks compressed by Python's zlib (level 9, dictionary, one stream, sync flush each).
    const GOLDEN: [&str; 3] = [
        "78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff",
        "c22a054ccc29f9a52500000000ffff",
        "02a55548b15d04ce2116061606186a41251228c3701641223f139429180d00000000ffff",
    ];

    #[test]
    fn context_is_shared_across_blocks() {
        let mut dec = HeaderDecoder::new();
        assert_eq!(
            dec.decode(&hex(GOLDEN[0])).expect("1"),
            headers(&[("streamtype", "error")])
        );
        assert_eq!(
            dec.decode(&hex(GOLDEN[1])).expect("2"),
            headers(&[("streamtype", "stdout")])
        );
        let pf = headers(&[("port", "8080"), ("streamtype", "data"), ("requestid", "0")]);
        assert_eq!(dec.decode(&hex(GOLDEN[2])).expect("3"), pf);
        // The second block means nothing without the first one's context.
        assert!(HeaderDecoder::new().decode(&hex(GOLDEN[1])).is_err());

        // Our own encoder, many blocks through one context each way.
        let mut enc = HeaderEncoder::new().expect("encoder");
        let mut dec = HeaderDecoder::new();
        let blocks: Vec<Bytes> = (0..5)
            .map(|i| {
                enc.encode(&headers(&[("requestid", &i.to_string())]))
                    .expect("encode")
            })
            .collect();
        for (i, block) in blocks.iter().enumerate() {
            assert_eq!(
                dec.decode(block).expect("decode").get("requestid"),
                Some(&*i.to_string())
            );
        }
        assert!(HeaderDecoder::new().decode(&blocks[3]).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut enc = HeaderEncoder::new().expect("encoder");
        let huge = "x".repeat(MAX_HEADER_BLOCK_LEN);
        let block = enc.encode(&headers(&[("a", &huge)])).expect("encode");
        assert!(block.len() < 1024, "compresses well");
        let err = HeaderDecoder::new().decode(&block).expect_err("too large");
        assert!(matches!(err, Error::HeaderBlockTooLarge { .. }));

        let many: Headers = (0..=MAX_HEADERS).map(|i| (format!("h{i}"), "v")).collect();
        let raw = encode_block(&many).expect("encode");
        assert!(matches!(
            decode_block(&raw),
            Err(Error::TooManyHeaders { .. })
        ));
        let mut claims_many = vec![0xff, 0xff, 0xff, 0xff];
        claims_many.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_block(&claims_many),
            Err(Error::TooManyHeaders { .. })
        ));
        assert!(
            decode_block(&hex("00000001000000ff61")).is_err(),
            "name longer than block"
        );
        assert!(HeaderDecoder::new().decode(b"garbage!").is_err());
    }

    #[test]
    fn names_are_lowercased() {
        let raw = hex("0000000100000004506f727400000002383000");
        let err = decode_block(&raw).expect_err("trailing byte");
        assert!(matches!(err, Error::InvalidHeaderBlock("trailing bytes")));
        let back = decode_block(&raw[..raw.len() - 1]).expect("decode");
        assert_eq!(back.iter().collect::<Vec<_>>(), [("port", "80")]);
    }
}
