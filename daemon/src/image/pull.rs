//! Pulling an image: resolve endpoints (mirrors first), fetch manifest and config, then fetch
//! and unpack the missing layers in parallel while they stream, verifying each blob's digest
//! and size and each layer's diff id. Two pulls of the same layer do the work once.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::manifest::{FetchError, Session};
use super::registries::Endpoint;
use super::store::{hex_of, ImageRecord, LayerMeta};
use super::unpack::{self, UnpackLimits};
use super::{ImageError, ImageStore};

/// Largest image config accepted.
const MAX_CONFIG_BYTES: usize = 8 << 20;

/// The parts of an image config we use.
#[derive(Debug, serde::Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ConfigSection>,
    rootfs: RootFs,
}

#[derive(Debug, serde::Deserialize)]
struct ConfigSection {
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Chain ids from diff ids: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n]).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => format!("sha256:{:x}", Sha256::digest(format!("{parent} {diff}"))),
        };
        out.push(next);
    }
    out
}

fn is_not_found(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

fn is_unauthorized(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    }
}

fn is_unreachable(err: &OciDistributionError) -> bool {
    matches!(err, OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout())
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type (OCI `…tar`, `…tar+gzip`, `…tar+zstd`; Docker
/// `…rootfs.diff.tar`, `…rootfs.diff.tar.gzip`).
fn compression_of(media_type: &str) -> Option<Compression> {
    if media_type.ends_with("+zstd") {
        Some(Compression::Zstd)
    } else if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with(".tar") || media_type.ends_with(".v1.tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// Reads through, hashing and counting.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
}

/// Unpacks a compressed layer stream into `dest`, returning its size, the digest and length
/// of the compressed stream and the digest of the uncompressed tar (the diff id).
fn unpack_stream(
    reader: impl Read,
    media_type: &str,
    dest: &std::path::Path,
    limits: UnpackLimits,
) -> Result<(LayerMeta, String, u64, String), ImageError> {
    let mut compressed = HashingReader::new(reader);
    let (meta, diff_id) = {
        let decompressed: Box<dyn Read + '_> = match compression_of(media_type) {
            Some(Compression::Zstd) => Box::new(
                zstd::stream::read::Decoder::new(&mut compressed).map_err(ImageError::layer_io)?,
            ),
            // Multi-member: parallel gzip writers (pgzip, pigz) emit several members.
            Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
            Some(Compression::None) => Box::new(&mut compressed),
            None => {
                return Err(ImageError::Invalid(format!(
                    "unsupported layer media type {media_type:?}"
                )))
            }
        };
        let mut tar = HashingReader::new(decompressed);
        let size = unpack::unpack_layer(&mut tar, dest, limits).map_err(ImageError::Unpack)?;
        // The tar reader stops at the end-of-archive marker; the diff id covers every byte.
        std::io::copy(&mut tar, &mut std::io::sink()).map_err(ImageError::layer_io)?;
        (
            LayerMeta {
                bytes: size.bytes,
                inodes: size.inodes,
            },
            tar.digest(),
        )
    };
    std::io::copy(&mut compressed, &mut std::io::sink()).map_err(ImageError::layer_io)?;
    Ok((meta, compressed.digest(), compressed.count, diff_id))
}

impl ImageStore {
    /// The registry client (bearer-token flow only) and the HTTP client (manifests and blobs,
    /// with the client certificate) for one endpoint, both trusting the endpoint's certs.d CAs.
    fn clients_for(&self, endpoint: &Endpoint) -> Result<(Client, reqwest::Client), ImageError> {
        let cas = super::auth::ca_certificates(&self.config.certs_dir, &endpoint.host);
        let mut http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60));
        for ca in &cas {
            let cert = reqwest::Certificate::from_pem(&ca.data).map_err(|e| {
                ImageError::Invalid(format!("CA certificate for {}: {e}", endpoint.host))
            })?;
            http = http.add_root_certificate(cert);
        }
        if let Some(pem) = super::auth::client_identity(&self.config.certs_dir, &endpoint.host) {
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ImageError::Invalid(format!("client certificate for {}: {e}", endpoint.host))
            })?;
            http = http.identity(identity);
        }
        let http = http
            .build()
            .map_err(|e| ImageError::Invalid(format!("HTTP client for {}: {e}", endpoint.host)))?;
        let config = ClientConfig {
            protocol: if endpoint.insecure {
                ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            extra_root_certificates: cas,
            ..Default::default()
        };
        Ok((Client::new(config), http))
    }

    /// Pulls `reference` and returns the image id.
    pub async fn pull(&self, raw: &str, auth: Option<RegistryAuth>) -> Result<String, ImageError> {
        let reference = super::reference::parse(raw)?;
        let registries = self.registries()?;
        let endpoints = registries
            .endpoints(reference.registry(), reference.repository())
            .map_err(|prefix| ImageError::Blocked {
                reference: reference.whole(),
                prefix,
            })?;
        let mut failures = Vec::new();
        let mut not_found = false;
        let mut unauthorized = None;
        for endpoint in &endpoints {
            let target = match (reference.digest(), reference.tag()) {
                (Some(d), _) => Reference::with_digest(
                    endpoint.host.clone(),
                    endpoint.repository.clone(),
                    d.to_owned(),
                ),
                (None, tag) => Reference::with_tag(
                    endpoint.host.clone(),
                    endpoint.repository.clone(),
                    tag.unwrap_or("latest").to_owned(),
                ),
            };
            let auth = auth.clone().unwrap_or_else(|| {
                super::auth::from_auth_file(&self.config.auth_file, &endpoint.host)
            });
            let (client, http) = self.clients_for(endpoint)?;
            let scheme = if endpoint.insecure { "http" } else { "https" };
            let attempt = match Session::open(&client, http, scheme, &target, &auth).await {
                Ok(session) => self.pull_from(&session, &target, &reference).await,
                Err(FetchError::Registry(err)) => Err(ImageError::Registry {
                    reference: target.whole(),
                    err,
                }),
                Err(FetchError::Content(err)) => Err(err),
            };
            match attempt {
                Ok(id) => return Ok(id),
                Err(ImageError::Registry { err, .. }) => {
                    not_found |= is_not_found(&err);
                    if is_unauthorized(&err) {
                        unauthorized.get_or_insert_with(|| endpoint.host.clone());
                    }
                    let unreachable = is_unreachable(&err);
                    tracing::info!(endpoint = %endpoint.host, error = %err, "pull attempt failed");
                    let why = crid_common::error_chain::error_chain(&err);
                    failures.push((endpoint.host.clone(), why, unreachable));
                }
                Err(other) => return Err(other),
            }
        }
        if let Some(host) = unauthorized {
            return Err(ImageError::Unauthorized {
                reference: reference.whole(),
                host,
            });
        }
        if not_found {
            return Err(ImageError::NotFound(reference.whole()));
        }
        let addresses: Vec<String> = failures
            .iter()
            .map(|(h, e, _)| format!("{h}: {e}"))
            .collect();
        if failures.iter().all(|(_, _, unreachable)| *unreachable) {
            return Err(ImageError::Unavailable(format!(
                "cannot reach a registry for {} ({})",
                reference.whole(),
                addresses.join("; ")
            )));
        }
        Err(ImageError::PullFailed(format!(
            "{} ({})",
            reference.whole(),
            addresses.join("; ")
        )))
    }

    async fn pull_from(
        &self,
        session: &Session,
        target: &Reference,
        requested: &Reference,
    ) -> Result<String, ImageError> {
        let registry = |err| ImageError::Registry {
            reference: target.whole(),
            err,
        };
        let fetched = match session.manifest(target).await {
            Ok(fetched) => fetched,
            Err(FetchError::Registry(err)) => return Err(registry(err)),
            Err(FetchError::Content(err)) => return Err(err),
        };
        let (manifest, manifest_digest) = (fetched.manifest, fetched.digest);
        // The config through the blob stream, read with a bound.
        let mut config_bytes = Vec::new();
        let mut stream = Box::pin(
            session
                .blob(&manifest.config.digest)
                .await
                .map_err(registry)?,
        );
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| registry(OciDistributionError::IoError(e)))?;
            if config_bytes.len() + chunk.len() > MAX_CONFIG_BYTES {
                return Err(ImageError::Invalid(format!(
                    "image config of {} exceeds {MAX_CONFIG_BYTES} bytes",
                    target.whole()
                )));
            }
            config_bytes.extend_from_slice(&chunk);
        }
        let config = String::from_utf8(config_bytes).map_err(|_| {
            ImageError::Invalid(format!("image config of {} is not UTF-8", target.whole()))
        })?;
        let config_digest = format!("sha256:{:x}", Sha256::digest(config.as_bytes()));
        if config_digest != manifest.config.digest {
            return Err(ImageError::Invalid(format!(
                "config of {} has digest {config_digest}, manifest says {}",
                target.whole(),
                manifest.config.digest
            )));
        }
        let doc: ConfigDoc = serde_json::from_str(&config)
            .map_err(|e| ImageError::Invalid(format!("config of {}: {e}", target.whole())))?;
        if doc.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Invalid(format!(
                "{} has {} layers but {} diff ids",
                target.whole(),
                manifest.layers.len(),
                doc.rootfs.diff_ids.len()
            )));
        }
        let chains = chain_ids(&doc.rootfs.diff_ids);
        let mut tasks = Vec::new();
        for ((layer, diff_id), chain) in manifest
            .layers
            .iter()
            .zip(&doc.rootfs.diff_ids)
            .zip(&chains)
        {
            tasks.push(self.ensure_layer(
                session,
                target,
                layer.clone(),
                diff_id.clone(),
                chain.clone(),
            ));
        }
        for result in futures_util::future::join_all(tasks).await {
            result?;
        }
        let size = chains
            .iter()
            .filter_map(|c| self.paths.layer_meta(c))
            .map(|m| m.bytes)
            .sum();
        let name = format!("{}/{}", requested.registry(), requested.repository());
        let tag = requested
            .digest()
            .is_none()
            .then(|| format!("{name}:{}", requested.tag().unwrap_or("latest")));
        let digest_ref = format!("{name}@{manifest_digest}");
        let manifest_json = serde_json::to_string(&manifest).unwrap_or_default();
        let record = ImageRecord {
            id: config_digest.clone(),
            repo_tags: tag.into_iter().collect(),
            repo_digests: vec![digest_ref],
            layers: chains,
            size,
            user: doc.config.and_then(|c| c.user).unwrap_or_default(),
            config,
            manifest: manifest_json,
        };
        self.add_image(record)?;
        Ok(config_digest)
    }

    /// Makes sure one layer is present, downloading and unpacking it at most once at a time.
    async fn ensure_layer(
        &self,
        session: &Session,
        target: &Reference,
        layer: OciDescriptor,
        diff_id: String,
        chain: String,
    ) -> Result<(), ImageError> {
        if self.paths.has_layer(&chain) {
            return Ok(());
        }
        let lock = self.layer_lock(&chain);
        let _guard = lock.lock().await;
        if self.paths.has_layer(&chain) {
            return Ok(());
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| ImageError::Invalid("store is closing".into()))?;
        let tmp: PathBuf =
            self.paths
                .tmp()
                .join(format!("layer-{}-{}", hex_of(&chain), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("diff")).map_err(ImageError::layer_io)?;
        // A layer's root directory is 0755 (the tar's own root entry is not applied), not
        // what crid's umask 077 makes.
        std::fs::set_permissions(
            tmp.join("diff"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(ImageError::layer_io)?;
        let stream = session
            .blob(&layer.digest)
            .await
            .map_err(|err| ImageError::Registry {
                reference: target.whole(),
                err,
            })?;
        let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let limits = UnpackLimits {
            max_bytes: self.config.max_layer_bytes,
            max_entries: self.config.max_layer_entries,
        };
        let media_type = layer.media_type.clone();
        let diff_dir = tmp.join("diff");
        let unpacked = tokio::task::spawn_blocking(move || {
            unpack_stream(bridge, &media_type, &diff_dir, limits)
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("unpack task failed: {e}")))?;
        let result = unpacked.and_then(|(meta, digest, count, got_diff)| {
            if digest != layer.digest || count != layer.size as u64 {
                return Err(ImageError::Invalid(format!(
                    "layer {} of {} arrived as {digest} ({count} bytes), expected {} bytes",
                    layer.digest,
                    target.whole(),
                    layer.size
                )));
            }
            if got_diff != diff_id {
                return Err(ImageError::Invalid(format!(
                    "layer {} of {} unpacks to {got_diff}, config says {diff_id}",
                    layer.digest,
                    target.whole()
                )));
            }
            Ok(meta)
        });
        match result {
            Ok(meta) => self
                .paths
                .commit_layer(&tmp, &chain, meta)
                .map_err(ImageError::Store),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn layer_lock(&self, chain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(chain.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_with_one_file() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &b"hello"[..])
            .expect("append");
        builder.into_inner().expect("finish")
    }

    #[test]
    fn unpacks_gzip_zstd_and_plain_layers_and_reports_both_digests() {
        let tar = tar_with_one_file();
        let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        for (media, blob) in [
            ("application/vnd.oci.image.layer.v1.tar", tar.clone()),
            ("application/vnd.oci.image.layer.v1.tar+gzip", gz),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                tar_gz(&tar),
            ),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zst),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let limits = UnpackLimits {
                max_bytes: 1 << 20,
                max_entries: 100,
            };
            let (meta, digest, count, got_diff) =
                unpack_stream(&blob[..], media, dir.path(), limits).expect(media);
            assert_eq!(
                std::fs::read(dir.path().join("hello.txt")).expect("file"),
                b"hello",
                "{media}"
            );
            assert_eq!(meta.bytes, 5);
            assert_eq!(
                digest,
                format!("sha256:{:x}", Sha256::digest(&blob)),
                "{media}"
            );
            assert_eq!(count, blob.len() as u64);
            assert_eq!(got_diff, diff_id, "{media}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        assert!(unpack_stream(&tar[..], "application/x-unknown", dir.path(), limits).is_err());
    }

    fn tar_gz(tar: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip");
        gz.finish().expect("gzip")
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let diffs = vec!["sha256:a".to_owned(), "sha256:b".to_owned()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:a");
        assert_eq!(
            chains[1],
            format!("sha256:{:x}", Sha256::digest("sha256:a sha256:b"))
        );
    }
}
