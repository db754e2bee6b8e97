//! The resize stream of a terminal session: JSON values `{"Width":w,"Height":h}` one after
//! another, as client-go's `json.Encoder` writes them, over SPDY or WebSocket.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::TermSize;

/// Most bytes of an incomplete resize JSON value kept while waiting for its end; a size is
/// about 30 bytes.
const MAX_RESIZE_PENDING: usize = 4096;

/// The resize channel: a stream of JSON values `{"Width":W,"Height":H}` (Go's
/// `json.Encoder`, so newline-separated), which messages may split or join.
#[derive(Debug, Default)]
pub struct ResizeParser {
    pending: Vec<u8>,
}

impl ResizeParser {
    /// The sizes completed by `data`, in order. Errors on malformed JSON or an incomplete
    /// value past [`MAX_RESIZE_PENDING`] bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TermSize>, &'static str> {
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut values =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<serde_json::Value>();
        let mut consumed = 0;
        loop {
            match values.next() {
                Some(Ok(value)) => {
                    consumed = values.byte_offset();
                    sizes.extend(term_size(&value));
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(_)) => return Err("malformed resize json"),
                None => {
                    consumed = values.byte_offset();
                    break;
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_RESIZE_PENDING {
            return Err("resize value too long");
        }
        Ok(sizes)
    }
}

/// A terminal size from one resize value. Go matches field names case-insensitively, so
/// `width` counts as `Width`; a missing field is 0. Sizes with a zero side are ignored (as
/// containerd does), and so are values of the wrong shape.
fn term_size(value: &serde_json::Value) -> Option<TermSize> {
    let object = value.as_object()?;
    let field = |name: &str| -> Option<u16> {
        match object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            None => Some(0),
            Some((_, value)) => value.as_u64().and_then(|n| u16::try_from(n).ok()),
        }
    };
    let size = TermSize {
        width: field("width")?,
        height: field("height")?,
    };
    (size.width > 0 && size.height > 0).then_some(size)
}

/// Feeds the sizes read from `from` to `to` until either ends; a malformed value ends it,
/// as in the kubelet library.
pub async fn forward(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<TermSize>) {
    let mut parser = ResizeParser::default();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(sizes) = parser.feed(&chunk[..n]) else {
            return;
        };
        for size in sizes {
            if to.send(size).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_parser_streams_values() {
        let mut parser = ResizeParser::default();
        assert_eq!(parser.feed(br#"{"Width":80,"#).expect("parse"), []);
        assert_eq!(
            parser
                .feed(b"\"Height\":24}\n{\"width\":100,\"height\":50}\n{\"Wid")
                .expect("parse"),
            [
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        // 0x0, a zero side, wrong types and non-objects are skipped; field case doesn't matter.
        assert_eq!(
            parser
                .feed(br#"th":0,"Height":0} {"Width":0,"Height":9} {"Width":"80","Height":1} [1] 7 {"WIDTH":1,"hEiGhT":2}"#)
                .expect("parse"),
            [TermSize { width: 1, height: 2 }]
        );
        assert_eq!(
            parser
                .feed(br#"{"Width":70000,"Height":2}"#)
                .expect("parse"),
            []
        );
        assert!(parser.pending.is_empty());

        assert!(ResizeParser::default().feed(b"{\"Width\" 1}").is_err());
        let mut long = ResizeParser::default();
        assert!(long.feed(b"{\"Width\":1,\"x\":\"").is_ok());
        assert!(long.feed(&[b'a'; MAX_RESIZE_PENDING]).is_err());
    }
}
