//! Wire types shared by crid and crimon.
//!
//! - [`cri`]: the CRI v1 API (messages, gRPC clients and servers), re-exported from the
//!   `k8s-cri` crate so that every crate of ours speaks the same generated types.
//! - [`monitor`]: the daemon <-> monitor control protocol (`protos/monitor.proto`), served by
//!   crimon over ttrpc. Generated at build time into OUT_DIR.

/// CRI v1 (`runtime.v1`) messages and services.
#[cfg(feature = "cri")]
pub mod cri {
    pub use k8s_cri::v1::*;
}

/// The crimon control protocol.
pub mod monitor {
    /// Messages and the synchronous ttrpc server and client.
    #[cfg(any(feature = "monitor-server", feature = "monitor-sync-client"))]
    pub mod sync {
        include!(concat!(env!("OUT_DIR"), "/sync/wrapped.rs"));
        pub use monitor::*;
        pub use monitor_ttrpc::*;
    }

    /// Messages and the asynchronous ttrpc client.
    #[cfg(feature = "monitor-client")]
    pub mod asynchronous {
        include!(concat!(env!("OUT_DIR"), "/async/wrapped.rs"));
        pub use monitor::*;
        pub use monitor_ttrpc::*;
    }
}

pub use protobuf;
pub use ttrpc;
