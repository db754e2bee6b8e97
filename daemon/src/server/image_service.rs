//! The CRI ImageService. Nothing of it is implemented yet: every RPC answers UNIMPLEMENTED.

use std::sync::Arc;

use crid_proto::cri::{self, image_service_server::ImageService};

use super::unimplemented::unimplemented_rpcs;
use crate::config::Config;

/// The image service.
pub struct Images {
    _config: Arc<Config>,
}

impl Images {
    pub fn new(config: Arc<Config>) -> Self {
        Images { _config: config }
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    unimplemented_rpcs! {
        list_images("ListImages"): cri::ListImagesRequest => cri::ListImagesResponse;
        image_status("ImageStatus"): cri::ImageStatusRequest => cri::ImageStatusResponse;
        pull_image("PullImage"): cri::PullImageRequest => cri::PullImageResponse;
        remove_image("RemoveImage"): cri::RemoveImageRequest => cri::RemoveImageResponse;
        image_fs_info("ImageFsInfo"): cri::ImageFsInfoRequest => cri::ImageFsInfoResponse;
    }
}
