//! Pod sandboxes. So far: the files a pod gets and the sysctl rules; the lifecycle comes with
//! the pod/container issue.

pub mod files;
pub mod sysctl;
