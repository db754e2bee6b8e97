//! Registry credentials: from the CRI request's AuthConfig, else from an auth file in the
//! containers auth.json / docker config.json format; per-registry CA certificates from
//! containers-certs.d(5) directories (`<certs-dir>/<host:port>/*.crt`).

use std::path::Path;

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::secrets::RegistryAuth;

use super::ImageError;

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 1 << 20;

fn decode_basic(auth: &str) -> Option<RegistryAuth> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned()))
}

/// Credentials from a CRI AuthConfig; `None` when it carries none.
pub fn from_cri(config: &crid_proto::cri::AuthConfig) -> Result<Option<RegistryAuth>, ImageError> {
    if !config.registry_token.is_empty() {
        return Ok(Some(RegistryAuth::Bearer(config.registry_token.clone())));
    }
    if !config.username.is_empty() || !config.password.is_empty() {
        return Ok(Some(RegistryAuth::Basic(
            config.username.clone(),
            config.password.clone(),
        )));
    }
    if !config.auth.is_empty() {
        return decode_basic(&config.auth).map(Some).ok_or_else(|| {
            ImageError::InvalidAuth("auth is not base64 of \"user:password\"".into())
        });
    }
    if !config.identity_token.is_empty() {
        // An identity token is an OAuth refresh token: sent as the password of the
        // "<token>" user, as docker and containerd do.
        return Ok(Some(RegistryAuth::Basic(
            "<token>".into(),
            config.identity_token.clone(),
        )));
    }
    Ok(None)
}

/// Credentials for `host` from the auth file, or anonymous.
pub fn from_auth_file(path: &Path, host: &str) -> RegistryAuth {
    use std::io::Read;
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_AUTH_FILE).read_to_string(&mut text));
    if read.is_err() {
        return RegistryAuth::Anonymous;
    }
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(path = %path.display(), "auth file is not valid JSON; pulling anonymously");
        return RegistryAuth::Anonymous;
    };
    let entry = doc["auths"].as_object().and_then(|auths| {
        auths.iter().find_map(|(key, value)| {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let key = key.split('/').next().unwrap_or(key);
            (key == host).then_some(value)
        })
    });
    entry
        .and_then(|e| e["auth"].as_str())
        .and_then(decode_basic)
        .unwrap_or(RegistryAuth::Anonymous)
}

/// The client certificate for `host`: `<certs_dir>/<host>/<name>.cert` with its key
/// `<name>.key`, as one PEM bundle (certificate, then key).
pub fn client_identity(certs_dir: &Path, host: &str) -> Option<Vec<u8>> {
    let dir = certs_dir.join(host);
    let mut certs: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cert"))
        .collect();
    certs.sort();
    let cert = certs.into_iter().next()?;
    let key = cert.with_extension("key");
    let mut pem = std::fs::read(&cert).ok()?;
    pem.push(b'\n');
    pem.extend(std::fs::read(&key).ok()?);
    Some(pem)
}

/// CA certificates for `host` from `<certs_dir>/<host>/*.crt`.
pub fn ca_certificates(certs_dir: &Path, host: &str) -> Vec<Certificate> {
    let dir = certs_dir.join(host);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "crt") {
            if let Ok(data) = std::fs::read(&path) {
                out.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
    }
    out
}
