//! Pulling an image: resolve endpoints (mirrors first), fetch manifest and config, then fetch
//! and unpack the missing layers in parallel while they stream, verifying each blob's digest
//! and size and each layer's diff id. Two pulls of the same layer do the work once.
//!
//! Everything a registry sends is bounded as it streams, not after: a blob stops at its
//! descriptor's size (one byte more is an error), a config at its descriptor's size and
//! [`MAX_CONFIG_BYTES`], a layer at `max_layer_bytes` (compressed and unpacked), and what
//! follows the end of a layer's tar at [`MAX_TAIL_BYTES`].
//!
//! Time is bounded too: a pull that waits on its registry and receives less than
//! [`MIN_PULL_PROGRESS_BYTES`] in a whole window of `pull_progress_timeout_secs` is cut off
//! (containerd's `image_pull_progress_timeout`), which releases its download slots and
//! removes its temporary directories.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use super::digest::{chain_ids, Digest};
use super::manifest::{Blob, FetchError, Session};
use super::registries::Endpoint;
use super::store::{ImageRecord, LayerMeta};
use super::unpack::{self, UnpackLimits};
use super::{ImageError, ImageStore, LayerRefused};

/// Bytes a pull must receive in each window of `pull_progress_timeout_secs` while it waits
/// on its registry. containerd asks for one byte (any progress), which a registry dripping a
/// byte a minute satisfies for ever; 64 KiB per window (218 bytes/s at the default five
/// minutes) is far below any working registry and makes a drip cost the registry something.
pub(crate) const MIN_PULL_PROGRESS_BYTES: u64 = 64 << 10;

/// Longest time between two checks of a pull's progress (containerd's report interval);
/// shorter windows are checked twice per window.
const PROGRESS_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What one pull attempt received from its registry, and what it is waiting for from it now
/// (nothing while it waits for a download slot or for another pull of the same layer).
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    waiting: std::sync::Mutex<Vec<String>>,
}

/// Marks a wait on the registry for as long as it lives.
struct Waiting {
    progress: Arc<Progress>,
    what: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.progress.lock();
        if let Some(i) = waiting.iter().position(|w| *w == self.what) {
            waiting.swap_remove(i);
        }
    }
}

impl Progress {
    fn received(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn waiting_for(self: &Arc<Self>, what: String) -> Waiting {
        self.lock().push(what.clone());
        Waiting {
            progress: self.clone(),
            what,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the pull received less than [`MIN_PULL_PROGRESS_BYTES`] over a whole
    /// `window` during which it was waiting on the registry, with what it was waiting for.
    async fn stalled(&self, window: Duration) -> Vec<String> {
        let check = (window / 2).clamp(Duration::from_millis(100), PROGRESS_CHECK_INTERVAL);
        let mut ticks = tokio::time::interval(check);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut since) = (self.bytes.load(Ordering::Relaxed), Instant::now());
        loop {
            ticks.tick().await;
            let bytes = self.bytes.load(Ordering::Relaxed);
            let waiting = self.lock().clone();
            if waiting.is_empty() || bytes.saturating_sub(seen) >= MIN_PULL_PROGRESS_BYTES {
                (seen, since) = (bytes, Instant::now());
                continue;
            }
            if since.elapsed() >= window {
                return waiting;
            }
        }
    }
}

/// Largest image config accepted.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Bytes accepted after the end of a layer's tar, decompressed and again compressed: the
/// zero blocks a writer pads its last record with (GNU tar: to 10 KiB) and the end of the
/// compressed stream. More is a decompression bomb hiding behind the archive's end.
const MAX_TAIL_BYTES: u64 = 1 << 20;

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
    fn digest(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone())
    }
}

/// How far a blob may be read, shared between the reader deep inside the decompressor and
/// the code that drives it.
struct Budget {
    /// Bytes read so far.
    read: Cell<u64>,
    /// Bytes that may be read.
    limit: Cell<u64>,
    /// Whether the limit is the descriptor's size (else the tail's).
    whole_blob: Cell<bool>,
    /// Set when the blob went past the limit.
    exceeded: Cell<bool>,
}

/// A blob's bytes, up to the budget: one byte more is an error, detected as it arrives.
struct BoundedBlob<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for BoundedBlob<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let budget = &self.budget;
        let left = budget.limit.get().saturating_sub(budget.read.get());
        if left == 0 {
            // At the limit: the blob must end here.
            let mut probe = [0u8; 1];
            if buf.is_empty() || self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            budget.exceeded.set(true);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "blob is longer than allowed",
            ));
        }
        let want = left.min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        budget.read.set(budget.read.get() + n as u64);
        Ok(n)
    }
}

/// One layer's unpacking as both sides see it: the pull that awaits it (whose future is
/// dropped when the client gives up) and the blocking thread that does it.
#[derive(Debug, Default)]
struct Unpacking {
    /// The pull is gone: stop, and remove the temporary directory.
    abandoned: bool,
    /// The thread is working in the temporary directory.
    running: bool,
}

/// Held by the pull while a layer is fetched: when the pull's future is dropped, the thread
/// stops at its next read and the temporary directory goes (removed here when no thread is in
/// it, else by the thread when it stops).
struct AbandonOnDrop {
    state: Arc<std::sync::Mutex<Unpacking>>,
    dir: std::path::PathBuf,
    /// Ends the blob stream: a thread blocked on a registry that sends nothing wakes at once
    /// (sees the end of the stream) instead of at the next byte or the read timeout.
    stream: futures_util::stream::AbortHandle,
    armed: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.abandoned = true;
        self.stream.abort();
        if !state.running {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a layer's download reports to and is stopped by.
struct Fetch {
    /// Counts the blob's bytes.
    progress: Arc<Progress>,
    /// Ends the blob's stream when the pull is abandoned ([`AbandonOnDrop::stream`]).
    registration: futures_util::stream::AbortRegistration,
}

/// A blob stream that fails once its pull is abandoned.
struct Cancellable<R> {
    inner: R,
    state: Arc<std::sync::Mutex<Unpacking>>,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abandoned
        {
            return Err(std::io::Error::other("the pull was abandoned"));
        }
        self.inner.read(buf)
    }
}

/// Why a layer stream was refused.
#[derive(Debug)]
enum StreamError {
    MediaType(String),
    /// More bytes than the descriptor says.
    LongerThanDescriptor,
    /// More than [`MAX_TAIL_BYTES`] after the tar's end.
    Tail,
    Unpack(unpack::UnpackError),
    Io(std::io::Error),
}

/// A layer unpacked from its stream.
#[derive(Debug)]
struct Unpacked {
    meta: LayerMeta,
    /// Digest and length of the blob as received.
    digest: Digest,
    count: u64,
    /// Digest of the uncompressed tar.
    diff_id: Digest,
}

/// Unpacks a layer blob of `size` bytes (its descriptor's) into `dest`, returning its unpacked
/// size, the digest and length of the blob and the digest of the uncompressed tar (the diff
/// id). The stream is bounded throughout: at `size`, at the unpack limits, and after the end
/// of the tar at [`MAX_TAIL_BYTES`] both decompressed and compressed.
fn unpack_stream(
    reader: impl Read,
    media_type: &str,
    blob_size: u64,
    dest: &std::path::Path,
    limits: UnpackLimits,
) -> Result<Unpacked, StreamError> {
    let budget = Rc::new(Budget {
        read: Cell::new(0),
        limit: Cell::new(blob_size),
        whole_blob: Cell::new(true),
        exceeded: Cell::new(false),
    });
    let overrun = |err: StreamError| match (budget.exceeded.get(), budget.whole_blob.get()) {
        (true, true) => StreamError::LongerThanDescriptor,
        (true, false) => StreamError::Tail,
        _ => err,
    };
    let mut compressed = HashingReader::new(BoundedBlob {
        inner: reader,
        budget: budget.clone(),
    });
    let (meta, diff_id) = {
        let decompressed: Box<dyn Read + '_> = match compression_of(media_type) {
            Some(Compression::Zstd) => Box::new(
                zstd::stream::read::Decoder::new(&mut compressed)
                    .map_err(|e| overrun(StreamError::Io(e)))?,
            ),
            // Multi-member: parallel gzip writers (pgzip, pigz) emit several members.
            Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
            Some(Compression::None) => Box::new(&mut compressed),
            None => return Err(StreamError::MediaType(media_type.to_owned())),
        };
        let mut tar = HashingReader::new(decompressed);
        let size = unpack::unpack_layer(&mut tar, dest, limits)
            .map_err(|e| overrun(StreamError::Unpack(e)))?;
        // The tar reader stops at the end-of-archive marker; the diff id covers every byte
        // after it too, and there may be only so many of them, compressed or not.
        budget.limit.set(
            budget
                .limit
                .get()
                .min(budget.read.get().saturating_add(MAX_TAIL_BYTES)),
        );
        budget.whole_blob.set(budget.limit.get() == blob_size);
        let tail = std::io::copy(
            &mut (&mut tar).take(MAX_TAIL_BYTES + 1),
            &mut std::io::sink(),
        )
        .map_err(|e| overrun(StreamError::Io(e)))?;
        if tail > MAX_TAIL_BYTES {
            return Err(StreamError::Tail);
        }
        (
            LayerMeta {
                bytes: size.bytes,
                inodes: size.inodes,
            },
            tar.digest(),
        )
    };
    std::io::copy(&mut compressed, &mut std::io::sink())
        .map_err(|e| overrun(StreamError::Io(e)))?;
    Ok(Unpacked {
        meta,
        digest: compressed.digest(),
        count: compressed.count,
        diff_id,
    })
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
        if let Some(digest) = reference.digest() {
            Digest::parse(digest).map_err(|e| ImageError::InvalidReference {
                reference: raw.to_owned(),
                why: e.to_string(),
            })?;
        }
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
        // The last attempt's stall, when it stalled.
        let mut last_stall = None;
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
            let progress = Arc::new(Progress::default());
            let attempt = async {
                let waiting = progress.waiting_for(format!("registry {}", endpoint.host));
                let session = Session::open(&client, http, scheme, &target, &auth).await;
                drop(waiting);
                match session {
                    Ok(session) => {
                        self.pull_from(&session, &target, &reference, &progress)
                            .await
                    }
                    Err(FetchError::Registry(err)) => Err(ImageError::Registry {
                        reference: target.whole(),
                        err,
                    }),
                    Err(FetchError::Content(err)) => Err(err),
                }
            };
            // Cut off when the registry stalls: the attempt's future is dropped, which
            // releases its download slots and removes its temporary directories.
            let attempt = match self.config.pull_progress_timeout_secs {
                0 => attempt.await,
                secs => tokio::select! {
                    result = attempt => result,
                    waiting = progress.stalled(Duration::from_secs(secs)) => {
                        Err(ImageError::Stalled {
                            reference: reference.whole(),
                            host: endpoint.host.clone(),
                            waiting: waiting.join(", "),
                            secs,
                            tried: Vec::new(),
                        })
                    }
                },
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
                    last_stall = None;
                }
                // A mirror that drips is no reason not to try the registry behind it.
                Err(ImageError::Stalled { waiting, secs, .. }) => {
                    tracing::info!(endpoint = %endpoint.host, %waiting, secs, "pull attempt stalled");
                    let why = format!(
                        "sent less than {MIN_PULL_PROGRESS_BYTES} bytes in {secs} s while crid waited for {waiting}"
                    );
                    failures.push((endpoint.host.clone(), why, false));
                    last_stall = Some((endpoint.host.clone(), waiting, secs));
                }
                Err(other) => return Err(other),
            }
        }
        // Every endpoint failed, the last one by stalling: DeadlineExceeded, as when a pull
        // from a single registry stalls, naming the endpoints tried before it.
        if let Some((host, waiting, secs)) = last_stall {
            failures.pop();
            return Err(ImageError::Stalled {
                reference: reference.whole(),
                host,
                waiting,
                secs,
                tried: failures
                    .iter()
                    .map(|(h, e, _)| format!("{h}: {e}"))
                    .collect(),
            });
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
        progress: &Arc<Progress>,
    ) -> Result<String, ImageError> {
        let registry = |err| ImageError::Registry {
            reference: target.whole(),
            err,
        };
        let image = requested.whole();
        let invalid = |why: String| ImageError::Invalid(format!("image {image}: {why}"));
        let waiting = progress.waiting_for(format!("the manifest of {}", target.whole()));
        let fetched = match session.manifest(target).await {
            Ok(fetched) => fetched,
            Err(FetchError::Registry(err)) => return Err(registry(err)),
            Err(FetchError::Content(err)) => return Err(err),
        };
        drop(waiting);
        let (manifest, manifest_digest) = (fetched.manifest, fetched.digest);
        // Every descriptor is checked before anything is fetched by it.
        let config_blob = Blob::check(&manifest.config, &image, "config descriptor")?;
        let layers = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| Blob::check(layer, &image, &format!("layers[{i}] descriptor")))
            .collect::<Result<Vec<_>, _>>()?;
        for layer in &layers {
            if layer.size > self.config.max_layer_bytes {
                return Err(invalid(format!(
                    "layer {} is {} bytes, more than max_layer_bytes ({})",
                    layer.digest, layer.size, self.config.max_layer_bytes
                )));
            }
        }
        // The config through the blob stream, read with a bound: its descriptor's size, at
        // most MAX_CONFIG_BYTES.
        if config_blob.size > MAX_CONFIG_BYTES {
            return Err(invalid(format!(
                "image config is {} bytes, more than {MAX_CONFIG_BYTES}",
                config_blob.size
            )));
        }
        let mut config_bytes = Vec::new();
        let waiting = progress.waiting_for(format!("config {}", config_blob.digest));
        let mut stream = Box::pin(session.blob(&config_blob.digest).await.map_err(registry)?);
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| registry(OciDistributionError::IoError(e)))?;
            progress.received(chunk.len());
            if (config_bytes.len() + chunk.len()) as u64 > config_blob.size {
                return Err(invalid(format!(
                    "image config {} is longer than its descriptor's {} bytes",
                    config_blob.digest, config_blob.size
                )));
            }
            config_bytes.extend_from_slice(&chunk);
        }
        drop(waiting);
        let config_digest = Digest::of(&config_bytes);
        if config_digest != config_blob.digest {
            return Err(invalid(format!(
                "config has digest {config_digest}, manifest says {}",
                config_blob.digest
            )));
        }
        let config = String::from_utf8(config_bytes)
            .map_err(|_| invalid("image config is not UTF-8".into()))?;
        let pulled = super::config::parse_pulled(&config, layers.len())
            .map_err(|e| invalid(crid_common::error_chain::error_chain(&e)))?;
        let chains = chain_ids(&pulled.diff_ids);
        // Held before the store is asked whether it has them: a RemoveImage from now on
        // leaves them in place until the image is recorded (or the pull gives up).
        let hold = self.hold_layers(&chains);
        let mut tasks = Vec::new();
        for ((layer, diff_id), chain) in layers.iter().zip(&pulled.diff_ids).zip(&chains) {
            tasks.push(self.ensure_layer(session, target, &image, layer, diff_id, chain, progress));
        }
        let mut failure = None;
        for result in futures_util::future::join_all(tasks).await {
            if let Err(err) = result {
                failure.get_or_insert(err);
            }
        }
        if let Some(err) = failure {
            drop(hold);
            if matches!(err, ImageError::Invalid(_) | ImageError::Unpack(_)) {
                self.drop_unused_layers(&chains);
            }
            return Err(err);
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
            user: pulled.runtime.user,
            config,
            manifest: manifest_json,
        };
        self.add_image(record)?;
        drop(hold);
        Ok(config_digest.to_string())
    }

    /// Makes sure one layer is present, downloading and unpacking it at most once at a time.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_layer(
        &self,
        session: &Session,
        target: &Reference,
        image: &str,
        layer: &Blob,
        diff_id: &Digest,
        chain: &Digest,
        progress: &Arc<Progress>,
    ) -> Result<(), ImageError> {
        if self.paths.has_layer(chain) {
            return Ok(());
        }
        let lock = self.layer_lock(chain);
        let _guard = lock.lock().await;
        if self.paths.has_layer(chain) {
            return Ok(());
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| ImageError::Invalid("store is closing".into()))?;
        let tmp = self.paths.new_temp_dir("layer")?;
        let (stream, registration) = futures_util::stream::AbortHandle::new_pair();
        let mut abandon = AbandonOnDrop {
            state: Arc::default(),
            dir: tmp.clone(),
            stream,
            armed: true,
        };
        let waiting = progress.waiting_for(format!("layer {}", layer.digest));
        let fetch = Fetch {
            progress: progress.clone(),
            registration,
        };
        let result = self
            .fetch_layer(session, target, image, layer, diff_id, &abandon, fetch)
            .await;
        // Committing is crid's own disk work, not a wait on the registry: however slow (a
        // slow fsync), it is not a stall.
        drop(waiting);
        abandon.armed = false;
        let committed = result.and_then(|meta| {
            self.paths
                .commit_layer(&tmp, chain, meta)
                .map_err(ImageError::Store)
        });
        if committed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        committed
    }

    /// Downloads and unpacks a layer into `<tmp>/diff` (`tmp` is `abandon.dir`) and verifies
    /// it.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        session: &Session,
        target: &Reference,
        image: &str,
        layer: &Blob,
        diff_id: &Digest,
        abandon: &AbandonOnDrop,
        fetch: Fetch,
    ) -> Result<LayerMeta, ImageError> {
        let diff_dir = abandon.dir.join("diff");
        std::fs::create_dir(&diff_dir).map_err(ImageError::layer_io)?;
        // A layer's root directory is 0755 (the tar's own root entry is not applied), not
        // what crid's umask 077 makes.
        std::fs::set_permissions(
            &diff_dir,
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
        let Fetch {
            progress,
            registration,
        } = fetch;
        let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
            if let Ok(chunk) = chunk {
                progress.received(chunk.len());
            }
        });
        let stream = futures_util::stream::Abortable::new(stream, registration);
        let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let limits = UnpackLimits {
            max_bytes: self.config.max_layer_bytes,
            max_entries: self.config.max_layer_entries,
        };
        let (media_type, size) = (layer.media_type.clone(), layer.size);
        let (state, tmp) = (abandon.state.clone(), abandon.dir.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            {
                let mut unpacking = state.lock().unwrap_or_else(|e| e.into_inner());
                if unpacking.abandoned {
                    return Err(StreamError::Io(std::io::Error::other("abandoned")));
                }
                unpacking.running = true;
            }
            let reader = Cancellable {
                inner: bridge,
                state: state.clone(),
            };
            let result = unpack_stream(reader, &media_type, size, &diff_dir, limits);
            let mut unpacking = state.lock().unwrap_or_else(|e| e.into_inner());
            unpacking.running = false;
            if unpacking.abandoned {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("unpack task failed: {e}")))?;
        let invalid = |why: String| {
            ImageError::Invalid(format!("image {image}: layer {}: {why}", layer.digest))
        };
        let unpacked = unpacked.map_err(|err| match err {
            StreamError::MediaType(media) => invalid(format!("unsupported media type {media:?}")),
            StreamError::LongerThanDescriptor => invalid(format!(
                "the blob is longer than its descriptor's {} bytes",
                layer.size
            )),
            StreamError::Tail => invalid(format!(
                "more than {MAX_TAIL_BYTES} bytes follow the end of its tar archive"
            )),
            StreamError::Unpack(err) => ImageError::Unpack(Box::new(LayerRefused {
                image: image.to_owned(),
                layer: layer.digest.clone(),
                err,
            })),
            StreamError::Io(err) => ImageError::LayerIo(err),
        })?;
        if unpacked.digest != layer.digest || unpacked.count != layer.size {
            return Err(invalid(format!(
                "arrived as {} ({} bytes), expected {} bytes",
                unpacked.digest, unpacked.count, layer.size
            )));
        }
        if unpacked.diff_id != *diff_id {
            return Err(invalid(format!(
                "unpacks to {}, config says {diff_id}",
                unpacked.diff_id
            )));
        }
        Ok(unpacked.meta)
    }

    fn layer_lock(&self, chain: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(chain.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

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

    const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    #[test]
    fn unpacks_gzip_zstd_and_plain_layers_and_reports_both_digests() {
        let tar = tar_with_one_file();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        for (media, blob) in [
            (PLAIN, tar.clone()),
            ("application/vnd.oci.image.layer.v1.tar+gzip", gz),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                tar_gz(&tar),
            ),
            (ZSTD, zst),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let unpacked = unpack_stream(&blob[..], media, blob.len() as u64, dir.path(), LIMITS)
                .expect(media);
            assert_eq!(
                std::fs::read(dir.path().join("hello.txt")).expect("file"),
                b"hello",
                "{media}"
            );
            assert_eq!(unpacked.meta.bytes, 5);
            assert_eq!(unpacked.digest, Digest::of(&blob), "{media}");
            assert_eq!(unpacked.count, blob.len() as u64);
            assert_eq!(unpacked.diff_id, diff_id, "{media}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            unpack_stream(&tar[..], "application/x-unknown", 0, dir.path(), LIMITS),
            Err(StreamError::MediaType(_))
        ));
    }

    fn tar_gz(tar: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip");
        gz.finish().expect("gzip")
    }

    /// A reader that fails the test past `limit` bytes.
    struct Tripwire<R> {
        inner: R,
        read: u64,
        limit: u64,
    }

    impl<R: Read> Read for Tripwire<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            assert!(self.read <= self.limit, "read {} bytes", self.read);
            Ok(n)
        }
    }

    #[test]
    fn a_blob_stops_at_its_descriptor_size_while_it_streams() {
        let tar = tar_with_one_file();
        let gz = tar_gz(&tar);
        for (media, blob) in [
            (PLAIN, &tar),
            ("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
        ] {
            // An endless blob: the descriptor's size and one byte are read, no more.
            let endless = Tripwire {
                inner: blob.as_slice().chain(std::io::repeat(7)),
                read: 0,
                limit: blob.len() as u64 + (1 << 16),
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let err = unpack_stream(endless, media, blob.len() as u64, dir.path(), LIMITS)
                .expect_err("longer than its descriptor");
            assert!(
                matches!(err, StreamError::LongerThanDescriptor),
                "{media}: {err:?}"
            );
            // Shorter than the descriptor arrives as what it is (the caller compares).
            let dir = tempfile::tempdir().expect("tempdir");
            let short = unpack_stream(&blob[..], media, blob.len() as u64 + 10, dir.path(), LIMITS)
                .expect("short blob unpacks");
            assert_eq!(short.count, blob.len() as u64);
        }
    }

    /// A zstd frame of `len` zero bytes made of RLE blocks: a few bytes per 128 KiB.
    fn zstd_zeros(len: u64) -> Vec<u8> {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
        let mut left = len;
        while left > 0 {
            let n = left.min(128 << 10);
            left -= n;
            let header = (n as u32) << 3 | 1 << 1 | u32::from(left == 0);
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.push(0);
        }
        frame
    }

    #[test]
    fn what_follows_the_end_of_the_tar_is_bounded() {
        let tar = tar_with_one_file();
        // Decompressed: a 16 GiB tail of zeros in a few hundred KiB of zstd.
        let mut bomb = zstd::encode_all(&tar[..], 3).expect("zstd");
        bomb.extend(zstd_zeros(16 << 30));
        let dir = tempfile::tempdir().expect("tempdir");
        let started = std::time::Instant::now();
        let err = unpack_stream(&bomb[..], ZSTD, bomb.len() as u64, dir.path(), LIMITS)
            .expect_err("tail bomb");
        assert!(matches!(err, StreamError::Tail), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Compressed: zstd skippable frames decompress to nothing but still cost reading.
        let mut skippable = zstd::encode_all(&tar[..], 3).expect("zstd");
        for _ in 0..4 {
            skippable.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
            skippable.extend_from_slice(&(1u32 << 20).to_le_bytes());
            skippable.extend(std::iter::repeat_n(0u8, 1 << 20));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack_stream(
            &skippable[..],
            ZSTD,
            skippable.len() as u64,
            dir.path(),
            LIMITS,
        )
        .expect_err("compressed tail");
        assert!(matches!(err, StreamError::Tail), "{err:?}");
        // A writer's padding after the end-of-archive blocks is fine and in the diff id.
        let mut padded = tar.clone();
        padded.extend(std::iter::repeat_n(0u8, 10 << 10));
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = unpack_stream(&padded[..], PLAIN, padded.len() as u64, dir.path(), LIMITS)
            .expect("padding");
        assert_eq!(ok.diff_id, Digest::of(&padded));
    }

    /// Anchor D33 (containerd's `image_pull_progress_timeout`): a pull waiting on its
    /// registry is cut off when a whole window brings no bytes, or a drip of fewer than
    /// MIN_PULL_PROGRESS_BYTES; a pull that waits on nothing (a download slot, another
    /// pull of the same layer) or that streams is never cut off.
    #[tokio::test]
    async fn anchor_d33_progress_is_whole_window_bytes_while_waiting_on_the_registry() {
        let window = Duration::from_millis(400);
        let cut_off = Duration::from_millis(1500);
        // Waiting on nothing: never stalled.
        let idle = Arc::new(Progress::default());
        assert!(tokio::time::timeout(cut_off, idle.stalled(window))
            .await
            .is_err());
        // Waiting, nothing arrives: stalled after about a window, naming the wait.
        let silent = Arc::new(Progress::default());
        let _waiting = silent.waiting_for("layer sha256:aa".into());
        let started = Instant::now();
        let what = tokio::time::timeout(cut_off, silent.stalled(window))
            .await
            .expect("a silent registry is cut off");
        assert_eq!(what, ["layer sha256:aa"]);
        assert!(started.elapsed() >= window);
        // A drip: a KiB every 50 ms is less than MIN_PULL_PROGRESS_BYTES per window.
        let drip = Arc::new(Progress::default());
        let _waiting = drip.waiting_for("config sha256:bb".into());
        let dripper = {
            let drip = drip.clone();
            tokio::spawn(async move {
                loop {
                    drip.received(1024);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let what = tokio::time::timeout(cut_off, drip.stalled(window))
            .await
            .expect("a dripping registry is cut off");
        assert_eq!(what, ["config sha256:bb"]);
        dripper.abort();
        // Streaming: MIN_PULL_PROGRESS_BYTES every 50 ms keeps it going.
        let streaming = Arc::new(Progress::default());
        let _waiting = streaming.waiting_for("layer sha256:cc".into());
        let streamer = {
            let streaming = streaming.clone();
            tokio::spawn(async move {
                loop {
                    streaming.received(MIN_PULL_PROGRESS_BYTES as usize);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        assert!(tokio::time::timeout(cut_off, streaming.stalled(window))
            .await
            .is_err());
        streamer.abort();
        // The wait ended (the guard dropped): not waiting any more.
        drop(_waiting);
        assert!(streaming.lock().is_empty());
    }

    #[test]
    fn the_rle_helper_makes_valid_zstd() {
        let zeros = zstd::decode_all(&zstd_zeros(300 << 10)[..]).expect("decode");
        assert_eq!(zeros.len(), 300 << 10);
        assert!(zeros.iter().all(|b| *b == 0));
    }
}
