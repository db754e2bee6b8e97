//! Image references, normalised the usual way: `busybox` is
//! `docker.io/library/busybox:latest`.

use oci_client::Reference;

use super::ImageError;

/// Parses and normalises a reference; a malformed one is an InvalidArgument.
pub fn parse(raw: &str) -> Result<Reference, ImageError> {
    if raw.is_empty() {
        return Err(ImageError::InvalidReference {
            reference: raw.to_owned(),
            why: "it is empty".into(),
        });
    }
    raw.parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            reference: raw.to_owned(),
            why: e.to_string(),
        })
}

/// `registry/repository` of a reference.
pub fn name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_short_names() {
        let r = parse("busybox").expect("parse");
        assert_eq!(name(&r), "docker.io/library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        let r = parse("127.0.0.1:5000/a/b@sha256:0123456789012345678901234567890123456789012345678901234567890123").expect("parse");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert!(r.digest().is_some());
        assert!(parse("has spaces in it").is_err());
        assert!(parse("busybox@sha256:nothex").is_err());
        assert!(parse("Library/UPPER").is_err());
        assert!(parse("").is_err());
    }
}
