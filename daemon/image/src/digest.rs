//! Content digests, the only names the store gives to anything on disk.
//!
//! Digests, diff ids, chain ids and image ids come from registries, that is from whoever wrote
//! the image: a manifest or config can say `sha256:../../../etc`, carry a NUL byte or a
//! multi-byte character where a store path takes a fixed-length slice. Each is checked where it
//! enters (manifest, index, config) against the exact form `sha256:` + 64 lowercase hex digits
//! (other algorithms are refused: crid hashes with SHA-256 only), and every store path is built
//! from a [`Digest`], which cannot hold anything else. Ref: go-digest's `Digest.Validate`
//! (containerd, CRI-O), which also refuses what it does not know.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The algorithm prefix of every digest crid accepts.
const PREFIX: &str = "sha256:";
/// Hex digits of a SHA-256 digest.
const HEX_LEN: usize = 64;
/// Hex digits of a layer's short link name under `layers/l/`.
pub const SHORT_LEN: usize = 26;
/// Characters of a refused value quoted in an error (a hostile value can be megabytes long).
const SHOWN_CHARS: usize = 80;

/// Why a value is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0} is not sha256:<64 lowercase hex digits>")]
    Malformed(String),
    #[error("digest {0} uses an algorithm crid does not support (only sha256)")]
    Algorithm(String),
}

/// The start of a refused value, quoted and escaped (NUL, control characters), for errors.
fn shown(raw: &str) -> String {
    let mut head: String = raw.chars().take(SHOWN_CHARS).collect();
    if head.len() < raw.len() {
        head.push('…');
    }
    format!("{head:?}")
}

/// A `sha256:<64 lowercase hex>` digest: ASCII, fixed length, no `/`, `.` or NUL, so it is
/// safe as a file name and to slice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Checks `raw` and keeps it.
    pub fn parse(raw: &str) -> Result<Digest, DigestError> {
        let Some(hex) = raw.strip_prefix(PREFIX) else {
            let algorithm = raw.split_once(':').map(|(a, _)| a).unwrap_or_default();
            let known_shape = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if known_shape {
                DigestError::Algorithm(shown(raw))
            } else {
                DigestError::Malformed(shown(raw))
            });
        };
        if hex.len() != HEX_LEN || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Malformed(shown(raw)));
        }
        Ok(Digest(raw.to_owned()))
    }

    /// The digest of a finished hash.
    pub fn from_sha256(hasher: Sha256) -> Digest {
        Digest(format!("{PREFIX}{:x}", hasher.finalize()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::new_with_prefix(bytes))
    }

    /// The digest whose hex part is `hex` (a store directory or record name), if it is one.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        Digest::parse(&format!("{PREFIX}{hex}")).ok()
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits: the name of the layer directory or image record.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The first [`SHORT_LEN`] hex digits: the layer's short link name.
    pub fn short(&self) -> &str {
        &self.hex()[..SHORT_LEN]
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(raw: &str) -> Result<Self, DigestError> {
        Digest::parse(raw)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(raw: String) -> Result<Self, DigestError> {
        Digest::parse(&raw)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

/// Chain ids from diff ids (OCI image spec): chain[0] = diff[0]; chain[n] =
/// sha256(chain[n-1] + " " + diff[n]). Each is a [`Digest`] by construction.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_only_sha256_with_64_lowercase_hex_digits() {
        let d = Digest::parse(GOOD).expect("valid");
        assert_eq!(d.hex(), &GOOD[7..]);
        assert_eq!(d.short(), &GOOD[7..33]);
        assert_eq!(d, GOOD);
        let non_ascii = format!("sha256:{}é{}", "a".repeat(19), "b".repeat(43));
        let refused = [
            "",
            "sha256:",
            "sha256",
            &GOOD[..70],
            &format!("{GOOD}0"),
            &GOOD.to_uppercase(),
            &GOOD.replace("sha256:", "SHA256:"),
            &GOOD.replacen('a', "A", 1),
            "sha256:../../../../../../etc/passwd",
            &format!("sha256:../{}", &GOOD[10..]),
            &format!("sha256:{}/{}", &GOOD[7..38], &GOOD[39..]),
            &format!("sha256:{}\0{}", &GOOD[7..38], &GOOD[39..]),
            &non_ascii,
            &format!("sha256:{}", "g".repeat(64)),
            &format!(" {GOOD}"),
            &format!("{GOOD}\n"),
        ];
        for raw in refused {
            assert!(
                matches!(Digest::parse(raw), Err(DigestError::Malformed(_))),
                "{raw:?}"
            );
        }
        for raw in [
            format!("sha512:{}", "a".repeat(128)),
            format!("md5:{}", "a".repeat(32)),
            "blake3:x".to_owned(),
        ] {
            assert!(
                matches!(Digest::parse(&raw), Err(DigestError::Algorithm(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn errors_quote_a_bounded_escaped_value_and_never_panic() {
        let huge = format!("sha256:{}", "é".repeat(1 << 20));
        let err = Digest::parse(&huge).expect_err("refused").to_string();
        assert!(err.len() < 400, "{}", err.len());
        let err = Digest::parse("sha256:a\0b")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("\\0"), "{err}");
    }

    #[test]
    fn serde_refuses_what_parse_refuses() {
        let ok: Digest = serde_json::from_str(&format!("\"{GOOD}\"")).expect("valid");
        assert_eq!(
            serde_json::to_string(&ok).expect("encode"),
            format!("\"{GOOD}\"")
        );
        assert!(serde_json::from_str::<Digest>("\"sha256:../x\"").is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
