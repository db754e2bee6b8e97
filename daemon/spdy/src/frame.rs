//! SPDY/3 frames: pure encoding, and incremental decoding of partial input.
//!
//! Header blocks stay compressed here ([`Frame::SynStream::header_block`] and friends);
//! [`crate::headers`] owns the per-connection zlib contexts. All integers are big-endian.
//! A frame is either a control frame (`1 | version(15) | type(16) | flags(8) | length(24)`)
//! or a DATA frame (`0 | stream-id(31) | flags(8) | length(24)`), then `length` payload bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};

/// The protocol version in every control frame header.
pub const VERSION: u16 = 3;
/// Size of the common frame header.
pub const HEADER_LEN: usize = 8;
/// Largest DATA payload accepted. Go's spdystream writes each `Write` as one frame (32 KiB
/// from `io.Copy`); a flow-control-abiding peer never exceeds the 64 KiB window.
pub const MAX_DATA_LEN: usize = 1 << 20;
/// Largest control-frame payload accepted: Kubernetes header blocks are a few dozen bytes.
pub const MAX_CONTROL_LEN: usize = 64 << 10;
/// Largest payload the 24-bit length field can carry.
pub const MAX_WIRE_LEN: usize = 0xff_ffff;
/// FIN flag of DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag of SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS flag of SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// Control frame type codes.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const INVALID_CREDENTIALS: u32 = 10;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

// Here rather than in error.rs, which then needs nothing of this module.
impl Error {
    /// The GOAWAY status that tells the peer about this error, if one should be sent.
    pub(crate) fn goaway_status(&self) -> Option<u32> {
        match self {
            Error::Io(_) | Error::Truncated | Error::ConnectionClosed => None,
            Error::IdleTimeout(_) => Some(goaway::OK),
            Error::Compress(_) => Some(goaway::INTERNAL_ERROR),
            _ => Some(goaway::PROTOCOL_ERROR),
        }
    }
}

/// One SETTINGS entry: `flags(8) id(24) value(32)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame. Stream ids are 31-bit; the reserved top bit is dropped on decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this crate does not know; the spec says to ignore it.
    Unknown {
        kind: u16,
        flags: u8,
        payload: Bytes,
    },
}

/// Decodes one frame from the front of `buf`, consuming its bytes.
///
/// Returns `Ok(None)` while `buf` holds less than a whole frame. The length is checked as soon
/// as the 8-byte header is present, so an oversized frame is refused before its payload is
/// buffered; at most the (bounded) frame size is ever reserved.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    let control = word & 0x8000_0000 != 0;
    let max = if control {
        MAX_CONTROL_LEN
    } else {
        MAX_DATA_LEN
    };
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    if control && version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    let mut payload = buf.split_to(HEADER_LEN + len).freeze();
    payload.advance(HEADER_LEN);
    if !control {
        let stream_id = word & STREAM_ID_MASK;
        if stream_id == 0 {
            return Err(invalid("data", "stream id 0"));
        }
        let fin = flags & FLAG_FIN != 0;
        return Ok(Some(Frame::Data {
            stream_id,
            fin,
            data: payload,
        }));
    }
    decode_control(word as u16, flags, payload).map(Some)
}

fn invalid(kind: &'static str, reason: &'static str) -> Error {
    Error::InvalidFrame { kind, reason }
}

fn decode_control(code: u16, flags: u8, mut p: Bytes) -> Result<Frame> {
    // Per known type: name, fixed part of the payload, and whether that is all of it.
    let (name, fixed, exact) = match code {
        kind::SYN_STREAM => ("syn_stream", 10, false),
        kind::SYN_REPLY => ("syn_reply", 4, false),
        kind::HEADERS => ("headers", 4, false),
        kind::RST_STREAM => ("rst_stream", 8, true),
        kind::SETTINGS => ("settings", 4, false),
        kind::PING => ("ping", 4, true),
        kind::GOAWAY => ("goaway", 8, true),
        kind::WINDOW_UPDATE => ("window_update", 8, true),
        kind => {
            return Ok(Frame::Unknown {
                kind,
                flags,
                payload: p,
            })
        }
    };
    if p.len() < fixed || (exact && p.len() != fixed) {
        return Err(invalid(name, "wrong length"));
    }
    let fin = flags & FLAG_FIN != 0;
    // Every type but SETTINGS and PING starts with a stream id; for these four it must not be
    // 0 (GOAWAY's last-good id may, and WINDOW_UPDATE's 0 means the session).
    let stream_id = match code {
        kind::SETTINGS | kind::PING => 0,
        _ => p.get_u32() & STREAM_ID_MASK,
    };
    let stream_frame = matches!(
        code,
        kind::SYN_STREAM | kind::SYN_REPLY | kind::HEADERS | kind::RST_STREAM
    );
    if stream_frame && stream_id == 0 {
        return Err(invalid(name, "stream id 0"));
    }
    let frame = match code {
        kind::SYN_STREAM => Frame::SynStream {
            stream_id,
            associated_id: p.get_u32() & STREAM_ID_MASK,
            priority: p.get_u8() >> 5,
            slot: p.get_u8(),
            fin,
            unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
            header_block: p,
        },
        kind::SYN_REPLY => Frame::SynReply {
            stream_id,
            fin,
            header_block: p,
        },
        kind::HEADERS => Frame::Headers {
            stream_id,
            fin,
            header_block: p,
        },
        kind::RST_STREAM => Frame::RstStream {
            stream_id,
            status: p.get_u32(),
        },
        kind::SETTINGS => {
            let count = p.get_u32() as usize;
            // Checked against the (bounded) payload before anything is allocated.
            if count.checked_mul(8) != Some(p.len()) {
                return Err(invalid(name, "entry count does not match length"));
            }
            let entries = (0..count)
                .map(|_| {
                    let word = p.get_u32();
                    let value = p.get_u32();
                    Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0xff_ffff,
                        value,
                    }
                })
                .collect();
            Frame::Settings {
                clear: flags & FLAG_CLEAR_SETTINGS != 0,
                entries,
            }
        }
        kind::PING => Frame::Ping { id: p.get_u32() },
        kind::GOAWAY => Frame::GoAway {
            last_good_stream_id: stream_id,
            status: p.get_u32(),
        },
        _ => Frame::WindowUpdate {
            stream_id,
            delta: p.get_u32() & 0x7fff_ffff,
        },
    };
    Ok(frame)
}

/// Appends the 8-byte header of a DATA frame carrying `len` bytes (the payload follows it on
/// the wire, from wherever the caller keeps it).
pub fn encode_data_header(stream_id: u32, fin: bool, len: usize, dst: &mut BytesMut) -> Result<()> {
    let len = wire_len(len)?;
    let flags = if fin { FLAG_FIN } else { 0 };
    dst.put_u32(stream_id & STREAM_ID_MASK);
    dst.put_u32(u32::from(flags) << 24 | len);
    Ok(())
}

/// Appends the wire form of `frame` to `dst`. Fails only if a payload exceeds the 24-bit
/// length field.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<()> {
    let flag = |b: bool, f: u8| if b { f } else { 0 };
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            dst.reserve(HEADER_LEN + data.len());
            encode_data_header(*stream_id, *fin, data.len(), dst)?;
            dst.put_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            slot,
            fin,
            unidirectional,
            header_block,
        } => {
            let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
            control(dst, kind::SYN_STREAM, flags, 10 + header_block.len())?;
            dst.put_u32(stream_id & STREAM_ID_MASK);
            dst.put_u32(associated_id & STREAM_ID_MASK);
            dst.put_u8(priority << 5);
            dst.put_u8(*slot);
            dst.put_slice(header_block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            header_block,
        }
        | Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            let code = match frame {
                Frame::Headers { .. } => kind::HEADERS,
                _ => kind::SYN_REPLY,
            };
            control(dst, code, flag(*fin, FLAG_FIN), 4 + header_block.len())?;
            dst.put_u32(stream_id & STREAM_ID_MASK);
            dst.put_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            control(dst, kind::RST_STREAM, 0, 8)?;
            dst.put_u32(stream_id & STREAM_ID_MASK);
            dst.put_u32(*status);
        }
        Frame::Settings { clear, entries } => {
            let len = entries.len().checked_mul(8).and_then(|n| n.checked_add(4));
            let len = len.ok_or(Error::FrameTooLarge {
                len: usize::MAX,
                max: MAX_WIRE_LEN,
            })?;
            control(dst, kind::SETTINGS, flag(*clear, FLAG_CLEAR_SETTINGS), len)?;
            dst.put_u32(entries.len() as u32);
            for e in entries {
                dst.put_u32(u32::from(e.flags) << 24 | (e.id & 0xff_ffff));
                dst.put_u32(e.value);
            }
        }
        Frame::Ping { id } => {
            control(dst, kind::PING, 0, 4)?;
            dst.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control(dst, kind::GOAWAY, 0, 8)?;
            dst.put_u32(last_good_stream_id & STREAM_ID_MASK);
            dst.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(dst, kind::WINDOW_UPDATE, 0, 8)?;
            dst.put_u32(stream_id & STREAM_ID_MASK);
            dst.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Unknown {
            kind,
            flags,
            payload,
        } => {
            control(dst, *kind, *flags, payload.len())?;
            dst.put_slice(payload);
        }
    }
    Ok(())
}

fn wire_len(len: usize) -> Result<u32> {
    match len <= MAX_WIRE_LEN {
        true => Ok(len as u32),
        false => Err(Error::FrameTooLarge {
            len,
            max: MAX_WIRE_LEN,
        }),
    }
}

fn control(dst: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<()> {
    let len = wire_len(len)?;
    dst.reserve(HEADER_LEN + len as usize);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u32(u32::from(flags) << 24 | len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> BytesMut {
        let s: String = s.split_whitespace().collect();
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"));
        bytes.collect::<Vec<u8>>().as_slice().into()
    }

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf).expect("encode");
        assert_eq!(decode(&mut buf).expect("decode"), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_type_round_trips() {
        let block = Bytes::from_static(b"\x78\xf9compressed");
        round_trip(Frame::SynStream {
            stream_id: 7,
            associated_id: 0,
            priority: 3,
            slot: 0,
            fin: false,
            unidirectional: true,
            header_block: block.clone(),
        });
        round_trip(Frame::SynReply {
            stream_id: 7,
            fin: true,
            header_block: block.clone(),
        });
        round_trip(Frame::Headers {
            stream_id: 9,
            fin: false,
            header_block: block,
        });
        round_trip(Frame::RstStream {
            stream_id: 7,
            status: rst::CANCEL,
        });
        let entries = vec![Setting {
            flags: 1,
            id: 7,
            value: 65536,
        }];
        round_trip(Frame::Settings {
            clear: true,
            entries,
        });
        round_trip(Frame::Ping { id: 0x7fff_ffff });
        round_trip(Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::PROTOCOL_ERROR,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 32768,
        });
        round_trip(Frame::Data {
            stream_id: 3,
            fin: false,
            data: Bytes::from_static(b"x"),
        });
        round_trip(Frame::Data {
            stream_id: 3,
            fin: true,
            data: Bytes::new(),
        });
        round_trip(Frame::Unknown {
            kind: 10,
            flags: 0,
            payload: Bytes::from_static(b"ab"),
        });
    }

    /// Byte sequences of the `crictl exec … echo -n hello` trace in
    /// `shared/reference/streaming-protocol.md` §3.6.
    #[test]
    fn decodes_real_frames() {
        let mut buf = hex(
            "80 03 00 02 00 00 00 14 00 00 00 01 78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff
             00 00 00 03 00 00 00 05 68 65 6c 6c 6f
             00 00 00 03 01 00 00 00
             80 03 00 06 00 00 00 04 00 00 00 01
             00 00 00 01 01 00 00 22",
        );
        buf.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
        let block = hex("78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff").freeze();
        let expected = [
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                header_block: block,
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Ping { id: 1 },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(br#"{"metadata":{},"status":"Success"}"#),
            },
        ];
        for frame in expected {
            assert_eq!(decode(&mut buf).expect("decode"), Some(frame));
        }
        assert!(buf.is_empty());
        // And the encoder produces exactly these bytes back.
        let mut out = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut out).expect("encode");
        assert_eq!(out, hex("80 03 00 06 00 00 00 04 00 00 00 01"));
    }

    #[test]
    fn partial_input_decodes_only_when_complete() {
        let mut wire = BytesMut::new();
        let frame = Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::from_static(b"abc"),
        };
        encode(&frame, &mut wire).expect("encode");
        encode(&Frame::Ping { id: 3 }, &mut wire).expect("encode");
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            if let Some(f) = decode(&mut buf).expect("decode") {
                decoded.push((f, buf.len()));
            }
        }
        assert_eq!(decoded, vec![(frame, 0), (Frame::Ping { id: 3 }, 0)]);
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        // A DATA header claiming 16 MiB - 1: refused with only 8 bytes present.
        let mut buf = hex("00 00 00 01 00 ff ff ff");
        let err = decode(&mut buf).expect_err("oversized");
        assert!(matches!(
            err,
            Error::FrameTooLarge {
                len: 0xff_ffff,
                max: MAX_DATA_LEN
            }
        ));
        assert!(buf.capacity() < 1024, "claimed size was not allocated");
        let mut buf = hex("80 03 00 01 00 01 00 01");
        assert!(matches!(decode(&mut buf), Err(Error::FrameTooLarge { .. })));
        let big = Bytes::from(vec![0; MAX_WIRE_LEN + 1]);
        let data = Frame::Data {
            stream_id: 1,
            fin: false,
            data: big,
        };
        assert!(encode(&data, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn malformed_frames_are_errors() {
        for (bytes, what) in [
            ("80 02 00 06 00 00 00 04 00 00 00 01", "spdy/2 ping"),
            ("80 03 00 03 00 00 00 04 00 00 00 01", "short rst_stream"),
            ("80 03 00 06 00 00 00 05 00 00 00 01 00", "long ping"),
            (
                "80 03 00 04 00 00 00 0c 00 00 00 02 00 00 00 07 00 00 00 01",
                "settings count",
            ),
            ("00 00 00 00 00 00 00 00", "data on stream 0"),
            (
                "80 03 00 01 00 00 00 0a 00 00 00 00 00 00 00 00 00 00",
                "syn_stream id 0",
            ),
        ] {
            assert!(decode(&mut hex(bytes)).is_err(), "{what} accepted");
        }
    }
}
