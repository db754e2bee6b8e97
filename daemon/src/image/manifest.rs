//! Fetching manifests with a size bound. oci-client reads a manifest whole into memory,
//! however large; a registry (or a man in the middle of an insecure one) could make crid
//! allocate without limit (the class of CVE-2023-25153). Here the body is read as it streams
//! and refused past [`MAX_MANIFEST_BYTES`]; oci-client still does the authentication (its
//! bearer token is reused) and the blob transfers.

use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use super::ImageError;

/// Largest manifest or index accepted (containerd uses the same bound).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest and its digest.
pub struct Fetched {
    pub manifest: OciImageManifest,
    pub digest: String,
}

fn server_error(url: &str, code: u16, message: String) -> OciDistributionError {
    if code == 401 || code == 403 {
        OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        }
    } else {
        OciDistributionError::ServerError {
            code,
            url: url.to_owned(),
            message,
        }
    }
}

/// Why a fetch failed: the registry (try the next endpoint) or the content (stop).
pub enum FetchError {
    Registry(OciDistributionError),
    Content(ImageError),
}

async fn get_bounded(
    http: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> Result<(Vec<u8>, String), FetchError> {
    let mut request = http.get(url).header("Accept", ACCEPT);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| FetchError::Registry(OciDistributionError::RequestError(e)))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if status != 200 {
        return Err(FetchError::Registry(server_error(
            url,
            status,
            format!("HTTP {status}"),
        )));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
    {
        return Err(too_large(url));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| FetchError::Registry(OciDistributionError::RequestError(e)))?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(url));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, content_type))
}

fn too_large(url: &str) -> FetchError {
    FetchError::Content(ImageError::Invalid(format!(
        "manifest at {url} is larger than {MAX_MANIFEST_BYTES} bytes"
    )))
}

/// Fetches the manifest of `target` (resolving an index to the host platform).
pub async fn fetch(
    client: &Client,
    http: &reqwest::Client,
    scheme: &str,
    target: &Reference,
    auth: &RegistryAuth,
) -> Result<Fetched, FetchError> {
    let token = client
        .auth(target, auth, RegistryOperation::Pull)
        .await
        .map_err(FetchError::Registry)?;
    let authorization = match (&token, auth) {
        (Some(token), _) => Some(format!("Bearer {token}")),
        (None, RegistryAuth::Basic(user, pass)) => {
            use base64::Engine;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            Some(format!("Basic {encoded}"))
        }
        _ => None,
    };
    let base = format!(
        "{scheme}://{}/v2/{}/manifests/",
        target.resolve_registry(),
        target.repository()
    );
    let first = target.digest().or(target.tag()).unwrap_or("latest");
    let mut wanted_digest = target.digest().map(str::to_owned);
    let mut url = format!("{base}{first}");
    for _ in 0..2 {
        let (body, content_type) = get_bounded(http, &url, authorization.as_deref()).await?;
        let digest = format!("sha256:{:x}", Sha256::digest(&body));
        if let Some(wanted) = &wanted_digest {
            if *wanted != digest {
                return Err(FetchError::Content(ImageError::Invalid(format!(
                    "manifest at {url} has digest {digest}, expected {wanted}"
                ))));
            }
        }
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            FetchError::Content(ImageError::Invalid(format!("manifest at {url}: {e}")))
        })?;
        let media_type = doc["mediaType"]
            .as_str()
            .unwrap_or(&content_type)
            .to_owned();
        if media_type.contains("index")
            || media_type.contains("manifest.list")
            || doc.get("manifests").is_some()
        {
            let index: OciImageIndex = serde_json::from_value(doc).map_err(|e| {
                FetchError::Content(ImageError::Invalid(format!("index at {url}: {e}")))
            })?;
            let chosen = oci_client::client::current_platform_resolver(&index.manifests)
                .ok_or_else(|| {
                    FetchError::Content(ImageError::Invalid(format!(
                        "index at {url} has no image for linux/{}",
                        std::env::consts::ARCH
                    )))
                })?;
            url = format!("{base}{chosen}");
            wanted_digest = Some(chosen);
            continue;
        }
        let manifest: OciImageManifest = serde_json::from_value(doc).map_err(|e| {
            FetchError::Content(ImageError::Invalid(format!("manifest at {url}: {e}")))
        })?;
        return Ok(Fetched { manifest, digest });
    }
    Err(FetchError::Content(ImageError::Invalid(format!(
        "index at {url} points at another index"
    ))))
}
