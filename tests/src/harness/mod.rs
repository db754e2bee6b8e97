//! The harness: images, registry, bundles, crimon and crid launchers.

pub mod bundle;
pub mod containerd;
pub mod crid;
pub mod image;
pub mod monitor;
pub mod pods;
pub mod registry;
pub mod require;
pub mod streaming_client;

use std::path::PathBuf;

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary by name; `CRID_BIN_DIR` overrides where they are looked for.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CRID_BIN_DIR").map_or_else(bin_dir, PathBuf::from);
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "missing: {} (build it first: cargo build --workspace --all-targets)",
        path.display()
    );
    path
}

/// A process-unique name for ids and directories.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
