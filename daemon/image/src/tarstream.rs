//! A tar reader for untrusted layers, in crid's hands so that every bound is applied before
//! anything is buffered.
//!
//! General-purpose readers (the `tar` crate included) read a GNU long name, a GNU long link or
//! a PAX header whole into memory, whatever size its header claims: a layer can make the
//! reader allocate gigabytes (CVE-2025-58183's class, there through GNU sparse maps). Here a
//! metadata entry larger than [`MAX_METADATA_BYTES`] is refused from its header, before any
//! of it is read; GNU sparse files are refused outright; a PAX `size` replaces the header's as
//! POSIX says (a reader that ignored it would see other entries than the one that verified
//! the layer: RUSTSEC-2026-0068). The caller reads each entry's data through [`Archive::data`]
//! and bounds its total; [`Archive::headers`] counts every header for the caller's entry
//! bound, metadata ones included.
//!
//! Formats: V7, ustar (with its name prefix), GNU (long names and links) and PAX (local
//! headers; global ones are read, bounded, and ignored, as the `tar` crate and Go's
//! archive/tar do). Numbers are octal or base-256. The archive ends at the first all-zero
//! block or at the end of the stream on a block boundary.

use std::io::{self, Read};

/// Largest GNU long name, GNU long link or PAX header accepted (Go's archive/tar bound,
/// `maxSpecialFileSize`).
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Why a tar stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("failed to read the layer's tar stream")]
    Io(#[source] io::Error),
    #[error("tar header at offset {offset} is invalid: {why}")]
    Header { offset: u64, why: &'static str },
    #[error(
        "tar {what} at offset {offset} claims {size} bytes, more than the bound of {MAX_METADATA_BYTES}"
    )]
    MetadataTooLarge {
        what: &'static str,
        offset: u64,
        size: u64,
    },
    #[error("tar stream ends inside an entry")]
    Truncated,
    #[error("tar {0} is not supported")]
    Unsupported(&'static str),
    #[error("PAX header at offset {offset} is malformed: {why}")]
    Pax { offset: u64, why: &'static str },
}

/// The type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Anything else (GNU dump dirs, volume labels, vendor types): the caller skips it.
    Other(u8),
}

/// One member of the archive, with its PAX and GNU metadata applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// `SCHILY.xattr.<name>` records: (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a PAX header says about the next member.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Metadata gathered for the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// A tar stream read member by member.
pub struct Archive<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    offset: u64,
    /// Data bytes of the current member not read yet.
    remaining: u64,
    /// Padding after the current member's data.
    padding: u64,
    done: bool,
    headers: u64,
}

fn padding_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes of a NUL-terminated field.
fn c_field(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A numeric field: octal (space or NUL padded) or base-256 (high bit set), as Go's
/// archive/tar reads it.
fn number(field: &[u8]) -> Option<i64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let inv = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 > 0 {
            return None;
        }
        let x = x as i64;
        return Some(if inv == 0xff { !x } else { x });
    }
    let trimmed = {
        let start = field.iter().position(|b| *b != b' ' && *b != 0);
        let end = field.iter().rposition(|b| *b != b' ' && *b != 0);
        match (start, end) {
            (Some(s), Some(e)) => &field[s..=e],
            _ => return Some(0),
        }
    };
    let text = std::str::from_utf8(trimmed).ok()?;
    u64::from_str_radix(text, 8)
        .ok()
        .and_then(|n| i64::try_from(n).ok())
}

fn unsigned(field: &[u8]) -> Option<u64> {
    number(field).and_then(|n| u64::try_from(n).ok())
}

fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time (`[-]seconds[.fraction]`), to whole seconds.
fn pax_time(value: &[u8]) -> Option<i64> {
    let whole = value.split(|b| *b == b'.').next()?;
    let (negative, digits) = match whole.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, whole),
    };
    let n = i64::try_from(decimal(digits)?).ok()?;
    Some(if negative { -n } else { n })
}

fn parse_pax(data: &[u8], offset: u64) -> Result<Pax, TarError> {
    let bad = |why| TarError::Pax { offset, why };
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("a record has no length"))?;
        let len = decimal(&rest[..space]).ok_or_else(|| bad("a record length is not a number"))?;
        let len = usize::try_from(len).map_err(|_| bad("a record is too long"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("a record length is out of range"));
        }
        let (record, next) = rest.split_at(len);
        rest = next;
        let Some(body) = record[space + 1..].strip_suffix(b"\n") else {
            return Err(bad("a record does not end with a newline"));
        };
        let eq = body
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("a record has no '='"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(decimal(value).ok_or_else(|| bad("size is not a number"))?),
            b"uid" => pax.uid = Some(decimal(value).ok_or_else(|| bad("uid is not a number"))?),
            b"gid" => pax.gid = Some(decimal(value).ok_or_else(|| bad("gid is not a number"))?),
            b"mtime" => {
                pax.mtime = Some(pax_time(value).ok_or_else(|| bad("mtime is not a time"))?)
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported("GNU sparse file (PAX)"))
            }
            k => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(pax)
}

impl<R: Read> Archive<R> {
    pub fn new(inner: R) -> Self {
        Archive {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            done: false,
            headers: 0,
        }
    }

    /// Headers read so far, metadata headers included.
    pub fn headers(&self) -> u64 {
        self.headers
    }

    /// Fills `buf` exactly; `Ok(false)` at a clean end of stream (nothing read).
    fn read_block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    /// Reads and drops `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(TarError::Io)?;
        self.offset += copied;
        if copied < n {
            return Err(TarError::Truncated);
        }
        Ok(())
    }

    /// Reads the data of a metadata entry of `size` bytes (checked against the bound first)
    /// and its padding.
    fn read_metadata(
        &mut self,
        what: &'static str,
        size: u64,
        offset: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > MAX_METADATA_BYTES {
            return Err(TarError::MetadataTooLarge { what, offset, size });
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                TarError::Truncated
            } else {
                TarError::Io(e)
            }
        })?;
        self.offset += size;
        self.skip(padding_of(size))?;
        Ok(data)
    }

    /// The next member, or `None` at the end of the archive. Whatever of the previous
    /// member's data was not read is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining.saturating_add(self.padding))?;
        self.remaining = 0;
        self.padding = 0;
        let mut pending = Pending::default();
        loop {
            let offset = self.offset;
            let mut block = [0u8; BLOCK];
            let more = self.read_block(&mut block)?;
            if !more || block.iter().all(|b| *b == 0) {
                self.done = true;
                if !pending.is_empty() {
                    return Err(TarError::Header {
                        offset,
                        why: "metadata entries describe a member that never comes",
                    });
                }
                return Ok(None);
            }
            self.headers += 1;
            let bad = |why| TarError::Header { offset, why };
            let stored = number(&block[148..156]).ok_or_else(|| bad("checksum is not a number"))?;
            let unsigned_sum: i64 = block
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(*b)
                    }
                })
                .sum();
            let signed_sum: i64 = block
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(*b as i8)
                    }
                })
                .sum();
            if stored != unsigned_sum && stored != signed_sum {
                return Err(bad("checksum mismatch"));
            }
            let size = unsigned(&block[124..136]).ok_or_else(|| bad("size is not a number"))?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    if pending.pax.is_some() {
                        return Err(bad("two PAX headers for one member"));
                    }
                    let data = self.read_metadata("PAX header", size, offset)?;
                    pending.pax = Some(parse_pax(&data, offset)?);
                    continue;
                }
                b'g' => {
                    self.read_metadata("PAX global header", size, offset)?;
                    continue;
                }
                b'L' => {
                    if pending.long_name.is_some() {
                        return Err(bad("two GNU long names for one member"));
                    }
                    let mut name = self.read_metadata("GNU long name", size, offset)?;
                    trim_nuls(&mut name);
                    pending.long_name = Some(name);
                    continue;
                }
                b'K' => {
                    if pending.long_link.is_some() {
                        return Err(bad("two GNU long links for one member"));
                    }
                    let mut link = self.read_metadata("GNU long link", size, offset)?;
                    trim_nuls(&mut link);
                    pending.long_link = Some(link);
                    continue;
                }
                b'S' => return Err(TarError::Unsupported("GNU sparse file")),
                _ => {}
            }
            let magic = &block[257..265];
            let ustar = &magic[..6] == b"ustar\0";
            let mut path = c_field(&block[0..100]).to_vec();
            if ustar {
                let prefix = c_field(&block[345..500]);
                if !prefix.is_empty() {
                    let mut full = prefix.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(&path);
                    path = full;
                }
            }
            let kind = match typeflag {
                b'0' | b'7' => Kind::File,
                // V7: a regular file whose name ends with '/' is a directory.
                0 if path.ends_with(b"/") => Kind::Dir,
                0 => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                other => Kind::Other(other),
            };
            let mode = number(&block[100..108]).ok_or_else(|| bad("mode is not a number"))?;
            let mut entry = Entry {
                kind,
                path,
                link: c_field(&block[157..257]).to_vec(),
                mode: (mode & 0o7777) as u32,
                uid: unsigned(&block[108..116]).ok_or_else(|| bad("uid is not a number"))?,
                gid: unsigned(&block[116..124]).ok_or_else(|| bad("gid is not a number"))?,
                mtime: number(&block[136..148]).ok_or_else(|| bad("mtime is not a number"))?,
                size,
                dev_major: 0,
                dev_minor: 0,
                xattrs: Vec::new(),
            };
            if matches!(kind, Kind::Char | Kind::Block) {
                entry.dev_major = unsigned(&block[329..337])
                    .ok_or_else(|| bad("device major is not a number"))?;
                entry.dev_minor = unsigned(&block[337..345])
                    .ok_or_else(|| bad("device minor is not a number"))?;
            }
            if let Some(name) = pending.long_name {
                entry.path = name;
            }
            if let Some(link) = pending.long_link {
                entry.link = link;
            }
            if let Some(pax) = pending.pax {
                if let Some(path) = pax.path {
                    entry.path = path;
                }
                if let Some(link) = pax.linkpath {
                    entry.link = link;
                }
                if let Some(size) = pax.size {
                    entry.size = size;
                }
                if let Some(uid) = pax.uid {
                    entry.uid = uid;
                }
                if let Some(gid) = pax.gid {
                    entry.gid = gid;
                }
                if let Some(mtime) = pax.mtime {
                    entry.mtime = mtime;
                }
                entry.xattrs = pax.xattrs;
            }
            self.remaining = entry.size;
            self.padding = padding_of(entry.size);
            return Ok(Some(entry));
        }
    }

    /// The current member's data (what is left of it).
    pub fn data(&mut self) -> Data<'_, R> {
        Data { archive: self }
    }
}

fn trim_nuls(bytes: &mut Vec<u8>) {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
}

/// The data of the current member; reading past it returns end of file, and a stream that
/// ends before it is an error.
pub struct Data<'a, R> {
    archive: &'a mut Archive<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.archive.remaining).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.archive.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TarError::Truncated,
            ));
        }
        self.archive.remaining -= n as u64;
        self.archive.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
        let mut archive = Archive::new(bytes);
        let mut out = Vec::new();
        while let Some(entry) = archive.next_entry()? {
            let mut data = Vec::new();
            archive
                .data()
                .read_to_end(&mut data)
                .map_err(TarError::Io)?;
            out.push((entry, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_what_the_tar_crate_writes_long_names_pax_and_all() {
        let mut builder = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(150));
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o4755);
        header.set_uid(1000);
        header.set_gid(1001);
        header.set_mtime(1_600_000_000);
        builder
            .append_data(&mut header, &long, &b"abc"[..])
            .expect("gnu long name");
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, "link", "l".repeat(200))
            .expect("long link");
        builder
            .append_pax_extensions([
                ("path", &b"pax/name"[..]),
                ("SCHILY.xattr.user.k", &b"v"[..]),
                ("uid", &b"4000000"[..]),
                ("mtime", &b"-5.25"[..]),
            ])
            .expect("pax");
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "short", &b"x"[..])
            .expect("pax member");
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Char);
        header.set_device_major(1).expect("major");
        header.set_device_minor(3).expect("minor");
        header.set_size(0);
        header.set_mode(0o666);
        builder
            .append_data(&mut header, "dev/null", &b""[..])
            .expect("device");
        let bytes = builder.into_inner().expect("finish");
        let entries = read_all(&bytes).expect("reads");
        assert_eq!(entries.len(), 4);
        let (e, data) = &entries[0];
        assert_eq!(e.path, long.as_bytes());
        assert_eq!(
            (e.kind, e.mode, e.uid, e.gid),
            (Kind::File, 0o4755, 1000, 1001)
        );
        assert_eq!(e.mtime, 1_600_000_000);
        assert_eq!(data, b"abc");
        let (e, _) = &entries[1];
        assert_eq!((e.kind, e.path.as_slice()), (Kind::Symlink, &b"link"[..]));
        assert_eq!(e.link, "l".repeat(200).as_bytes());
        let (e, data) = &entries[2];
        assert_eq!(e.path, b"pax/name");
        assert_eq!(e.uid, 4_000_000);
        assert_eq!(e.mtime, -5);
        assert_eq!(e.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
        assert_eq!(data, b"x");
        let (e, _) = &entries[3];
        assert_eq!((e.kind, e.dev_major, e.dev_minor), (Kind::Char, 1, 3));
    }

    /// A raw header block with a valid checksum.
    fn header(name: &str, typeflag: u8, size_field: &[u8]) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        block[..name.len()].copy_from_slice(name.as_bytes());
        block[100..107].copy_from_slice(b"0000644");
        block[124..124 + size_field.len()].copy_from_slice(size_field);
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        block
    }

    /// A reader that fails the test if more than `limit` bytes are read from it.
    struct Tripwire<R> {
        inner: R,
        read: u64,
        limit: u64,
    }

    impl<R: Read> Read for Tripwire<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            assert!(self.read <= self.limit, "read {} bytes", self.read);
            Ok(n)
        }
    }

    #[test]
    fn huge_metadata_is_refused_from_its_header_before_it_is_read() {
        // Headers claiming 8 GiB (base-256 size) followed by an endless stream.
        let mut size = [0u8; 12];
        size[0] = 0x80;
        size[7] = 2; // 2 << 32 = 8 GiB
        for (typeflag, what) in [
            (b'x', "PAX header"),
            (b'L', "GNU long name"),
            (b'K', "GNU long link"),
            (b'g', "PAX global header"),
        ] {
            let block = header("././@LongLink", typeflag, &size);
            let stream = block.as_slice().chain(io::repeat(b'a'));
            let mut archive = Archive::new(Tripwire {
                inner: stream,
                read: 0,
                limit: BLOCK as u64,
            });
            let err = archive.next_entry().expect_err("refused");
            assert!(
                matches!(
                    err,
                    TarError::MetadataTooLarge {
                        size: 8589934592,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn sparse_files_and_malformed_pax_records_are_refused() {
        let sparse = header("s", b'S', b"00000000000");
        assert!(matches!(
            Archive::new(&sparse[..]).next_entry(),
            Err(TarError::Unsupported(_))
        ));
        for records in [
            &b"99 path=x\n"[..],
            b"5 path=x\n",
            b"x path=x\n",
            b"11 pathx=x\0",
            b"10 pathxx\n",
            b"28 GNU.sparse.map=0,1,2,3,4\n",
            b"11 size=-1\n",
        ] {
            let mut bytes =
                header("pax", b'x', format!("{:011o}", records.len()).as_bytes()).to_vec();
            bytes.extend_from_slice(records);
            bytes.resize(bytes.len() + padding_of(records.len() as u64) as usize, 0);
            bytes.extend_from_slice(&header("f", b'0', b"00000000000"));
            bytes.extend_from_slice(&[0u8; 1024]);
            assert!(
                read_all(&bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(records)
            );
        }
    }

    #[test]
    fn a_pax_size_replaces_the_header_size() {
        let records = b"12 size=700\n";
        let mut bytes = header("pax", b'x', b"00000000014").to_vec();
        bytes.extend_from_slice(records);
        bytes.resize(BLOCK * 2, 0);
        // The header says 0 bytes; PAX says 700: the data is 700 bytes, not a next header.
        bytes.extend_from_slice(&header("f", b'0', b"00000000000"));
        bytes.extend(std::iter::repeat_n(b'z', 700));
        bytes.resize(bytes.len() + padding_of(700) as usize, 0);
        bytes.extend_from_slice(&[0u8; 1024]);
        let entries = read_all(&bytes).expect("reads");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.size, 700);
        assert_eq!(entries[0].1, vec![b'z'; 700]);
    }

    #[test]
    fn checksums_truncation_and_dangling_metadata_are_errors() {
        let mut bad = header("f", b'0', b"00000000000");
        bad[0] = b'g';
        assert!(matches!(
            Archive::new(&bad[..]).next_entry(),
            Err(TarError::Header {
                why: "checksum mismatch",
                ..
            })
        ));
        let mut cut = header("f", b'0', b"00000000010").to_vec();
        cut.extend_from_slice(b"abc");
        assert!(read_all(&cut).is_err());
        let mut dangling = header("n", b'L', b"00000000002").to_vec();
        dangling.extend_from_slice(b"n\0");
        dangling.resize(BLOCK * 2, 0);
        dangling.extend_from_slice(&[0u8; 1024]);
        assert!(read_all(&dangling).is_err());
        // A stream that simply stops on a block boundary ends the archive.
        let short = header("f", b'0', b"00000000000");
        assert_eq!(read_all(&short).expect("ends").len(), 1);
    }

    #[test]
    fn numbers_in_octal_and_base_256() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0"), Some(0));
        assert_eq!(number(b"9"), None);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1]), Some(1));
        assert_eq!(number(&[0xff; 8]), Some(-1));
        assert_eq!(number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(unsigned(&[0xff; 8]), None);
    }
}
