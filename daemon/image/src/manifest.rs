//! crid's side of the registry protocol: manifests read with a size bound, blobs streamed,
//! over an HTTP client that carries the certs.d CAs and client certificate.
//!
//! oci-client reads a manifest whole into memory, however large, so a registry (or a man in
//! the middle of an insecure one) could make crid allocate without limit (the class of
//! CVE-2023-25153); and it cannot present a client certificate. Here manifests are read as
//! they stream and refused past [`MAX_MANIFEST_BYTES`]. oci-client still does the bearer-token
//! flow when a registry's challenge asks for it.

use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::digest::Digest;
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
    pub digest: Digest,
}

/// A descriptor (of a config or a layer) whose digest and size were checked.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    /// Checks a descriptor of image `image`; `what` says which one (for the error).
    pub fn check(descriptor: &OciDescriptor, image: &str, what: &str) -> Result<Blob, ImageError> {
        let digest = Digest::parse(&descriptor.digest)
            .map_err(|e| ImageError::Invalid(format!("image {image}: {what}: {e}")))?;
        let size = u64::try_from(descriptor.size).map_err(|_| {
            ImageError::Invalid(format!(
                "image {image}: {what} {digest} has a negative size ({})",
                descriptor.size
            ))
        })?;
        Ok(Blob {
            media_type: descriptor.media_type.clone(),
            digest,
            size,
        })
    }
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

/// What a manifest body turned out to be.
#[derive(Debug)]
pub enum Document {
    /// An index (or a Docker manifest list): the digest of the manifest it names for this
    /// platform.
    Index(Digest),
    Manifest(Box<OciImageManifest>),
}

/// Parses a manifest or index body read from `url` (already bounded by
/// [`MAX_MANIFEST_BYTES`]); `content_type` is the registry's, used when the body names no
/// media type. The error says what is wrong, naming `url`.
pub fn parse_document(body: &[u8], content_type: &str, url: &str) -> Result<Document, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("manifest at {url}: {e}"))?;
    let media_type = doc["mediaType"].as_str().unwrap_or(content_type).to_owned();
    if media_type.contains("index")
        || media_type.contains("manifest.list")
        || doc.get("manifests").is_some()
    {
        let index: OciImageIndex =
            serde_json::from_value(doc).map_err(|e| format!("index at {url}: {e}"))?;
        let chosen =
            oci_client::client::current_platform_resolver(&index.manifests).ok_or_else(|| {
                format!(
                    "index at {url} has no image for linux/{}",
                    std::env::consts::ARCH
                )
            })?;
        let chosen = Digest::parse(&chosen)
            .map_err(|e| format!("index at {url} names a manifest by {e}"))?;
        return Ok(Document::Index(chosen));
    }
    let manifest: OciImageManifest =
        serde_json::from_value(doc).map_err(|e| format!("manifest at {url}: {e}"))?;
    Ok(Document::Manifest(Box::new(manifest)))
}

/// Why a fetch failed: the registry (try the next endpoint) or the content (stop).
pub enum FetchError {
    Registry(OciDistributionError),
    Content(ImageError),
}

fn too_large(url: &str) -> FetchError {
    FetchError::Content(ImageError::Invalid(format!(
        "manifest at {url} is larger than {MAX_MANIFEST_BYTES} bytes"
    )))
}

/// One registry endpoint as crid talks to it: the HTTP client (with certs.d CAs and client
/// identity), the base URL and the Authorization header the registry asked for.
pub struct Session {
    http: reqwest::Client,
    base: String,
    repository: String,
    authorization: Option<String>,
}

impl Session {
    /// Probes `/v2/` and authenticates as the registry's challenge asks: nothing, HTTP Basic
    /// with the credentials, or a bearer token obtained through oci-client's token flow.
    pub async fn open(
        client: &Client,
        http: reqwest::Client,
        scheme: &str,
        target: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Session, FetchError> {
        let base = format!("{scheme}://{}", target.resolve_registry());
        let probe = http
            .get(format!("{base}/v2/"))
            .send()
            .await
            .map_err(|e| FetchError::Registry(OciDistributionError::RequestError(e)))?;
        let challenge = probe
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let basic = || match auth {
            RegistryAuth::Basic(user, pass) => {
                use base64::Engine;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {encoded}"))
            }
            _ => None,
        };
        let authorization = match (probe.status().as_u16(), auth) {
            // A CRI registry_token is a bearer token, ready to send.
            (401, RegistryAuth::Bearer(token)) => Some(format!("Bearer {token}")),
            (401, _) if challenge.starts_with("bearer") => client
                .auth(target, auth, RegistryOperation::Pull)
                .await
                .map_err(FetchError::Registry)?
                .map(|token| format!("Bearer {token}")),
            (401, _) => basic(),
            _ => None,
        };
        Ok(Session {
            http,
            base,
            repository: target.repository().to_owned(),
            authorization,
        })
    }

    fn get(&self, url: &str, accept: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self.http.get(url);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        request
    }

    /// A blob as a stream of bytes (redirects are followed; reqwest drops the Authorization
    /// header when a redirect leaves the host).
    pub async fn blob(
        &self,
        digest: &Digest,
    ) -> Result<
        impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>,
        OciDistributionError,
    > {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let response = self
            .get(&url, None)
            .send()
            .await
            .map_err(OciDistributionError::RequestError)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(server_error(&url, status, format!("HTTP {status}")));
        }
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other)))
    }

    /// The manifest of `target`'s tag or digest (an index resolved to the host platform).
    /// Every digest that names something to fetch is checked first: the one asked for
    /// (by the caller), the one an index chooses.
    pub async fn manifest(&self, target: &Reference) -> Result<Fetched, FetchError> {
        let image = target.whole();
        let invalid =
            |why: String| FetchError::Content(ImageError::Invalid(format!("image {image}: {why}")));
        let base = format!("{}/v2/{}/manifests/", self.base, self.repository);
        let mut wanted_digest = match target.digest() {
            Some(raw) => Some(Digest::parse(raw).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        let first = target.digest().or(target.tag()).unwrap_or("latest");
        let mut url = format!("{base}{first}");
        for _ in 0..2 {
            let (body, content_type) = self.get_bounded(&url).await?;
            let digest = Digest::of(&body);
            if let Some(wanted) = &wanted_digest {
                if *wanted != digest {
                    return Err(invalid(format!(
                        "manifest at {url} has digest {digest}, expected {wanted}"
                    )));
                }
            }
            match parse_document(&body, &content_type, &url).map_err(invalid)? {
                Document::Index(chosen) => {
                    url = format!("{base}{chosen}");
                    wanted_digest = Some(chosen);
                }
                Document::Manifest(manifest) => {
                    return Ok(Fetched {
                        manifest: *manifest,
                        digest,
                    })
                }
            }
        }
        Err(invalid(format!("index at {url} points at another index")))
    }

    async fn get_bounded(&self, url: &str) -> Result<(Vec<u8>, String), FetchError> {
        let response = self
            .get(url, Some(ACCEPT))
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
}
