//! Checks that what a test needs is there, and fails loudly (never skips) when it is not.

use std::path::{Path, PathBuf};

/// Finds `name` in $PATH (or takes it as a path), or panics naming it and how to get it.
pub fn tool(name: &str) -> PathBuf {
    let as_path = Path::new(name);
    if as_path.is_absolute() && as_path.is_file() {
        return as_path.to_owned();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("missing: {name} (install the test dependencies: packaging/setup.sh test)")
    })
}

/// Panics unless running as root (the tests create containers, mounts and namespaces).
pub fn root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "missing: root privileges (the end-to-end tests run real containers; run as root)"
    );
}

/// The real crictl (cri-tools v1.32.0): `$CRICTL`, else `<repository top>/../shared/cri-tools/
/// crictl`; a missing one fails the test saying where it was looked for.
pub fn crictl() -> PathBuf {
    let path = std::env::var_os("CRICTL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri-tools/crictl"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "missing: crictl at {} (cri-tools v1.32.0; put it in <repository top>/../shared/cri-tools/ \
         or name it in $CRICTL)",
        path.display()
    );
    path
}
