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
