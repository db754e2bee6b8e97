//! The CRI ImageService over the image store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crid_proto::cri::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};

use crate::error::DaemonError;
use crate::state::State;
use crid_image::store::ImageRecord;
use crid_image::{self as image, ImageStore};

/// The image service.
pub struct Images {
    store: Arc<ImageStore>,
    state: Arc<State>,
}

impl Images {
    pub fn new(store: Arc<ImageStore>, state: Arc<State>) -> Self {
        Images { store, state }
    }
}

fn to_cri(record: &ImageRecord) -> cri::Image {
    let (uid, username) = image::user_of(&record.user);
    cri::Image {
        id: record.id.to_string(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn spec_of(spec: Option<cri::ImageSpec>) -> Result<String, DaemonError> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image),
        _ => Err(DaemonError::InvalidArgument("image spec is empty".into())),
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(spec) => self
                .store
                .lookup(&spec)
                .map_err(DaemonError::from)?
                .map(|(r, _)| vec![to_cri(&r)])
                .unwrap_or_default(),
            None => self.store.list().iter().map(to_cri).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let spec = spec_of(request.image)?;
        let found = self.store.lookup(&spec).map_err(DaemonError::from)?;
        let mut info = HashMap::new();
        if let (true, Some((record, _))) = (request.verbose, &found) {
            let config: serde_json::Value =
                serde_json::from_str(&record.config).unwrap_or_default();
            let manifest: serde_json::Value =
                serde_json::from_str(&record.manifest).unwrap_or_default();
            let detail = serde_json::json!({
                "imageSpec": config,
                "manifest": manifest,
                "layers": record.layers,
            });
            info.insert("info".to_owned(), detail.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: found.map(|(r, _)| to_cri(&r)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let spec = spec_of(request.image)?;
        let auth = match &request.auth {
            Some(a) => image::auth::from_cri(a).map_err(DaemonError::from)?,
            None => None,
        };
        let started = std::time::Instant::now();
        // Not detached, unlike the other mutating calls: a pull whose client leaves stops and
        // removes its temporary files (as CRI-O's pull stops with its request's context, and
        // containerd's after its progress timeout); what it recorded stays, and the retry
        // starts over from the layers already there.
        let id = self
            .store
            .pull(&spec, auth)
            .await
            .map_err(DaemonError::from)?;
        tracing::info!(image = %spec, %id, took = ?started.elapsed(), "pulled");
        Ok(Response::new(cri::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let spec = spec_of(request.into_inner().image)?;
        // Containers mount the image's layers: while one exists (in any state) or is being
        // created, the image stays (CRI-O refuses the same way). Untagging one of several tags
        // is fine. The store asks under its own lock, so no pull can move a tag and no create
        // can take the image between the check and the removal.
        let removal = self
            .store
            .remove(&spec, |id| self.state.container_using_image(id))
            .map_err(DaemonError::from)?;
        if let image::Removal::InUse { id, container } = removal {
            return Err(DaemonError::FailedPrecondition(format!(
                "image {spec} ({id}) is in use by container {container}"
            ))
            .into());
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.store.usage();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        let fs = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.store.paths.layers().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        }))
    }
}
