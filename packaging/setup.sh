#!/usr/bin/env bash
# Sets up a Debian machine for crid, as root, from a checkout of this repository.
#
#   packaging/setup.sh run    install what crid needs, build it, install it, run it in the
#                             foreground with its default configuration
#   packaging/setup.sh test   install what the tests need, build everything once, run the
#                             whole test suite (format, lints, unit and end-to-end tests)
#   packaging/setup.sh fuzz [target...]
#                             run the cargo-fuzz targets of fuzz/ for a bounded time each
#                             (packaging/fuzz.sh; also part of `test`)
#   packaging/setup.sh bench  install what the benchmarks need, build in release, run them
#   packaging/setup.sh conformance [critest flags...]
#                             install what critest's images need, build (debug), run
#                             cri-tools' critest against a private crid (crid-conformance)
#
# A Rust toolchain (rustup, with the version pinned in rust-toolchain.toml) must be present;
# every system package comes from Debian through apt-get.
set -euo pipefail

mode=${1:-}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

# Packages crid needs at run time, and protoc, which the CRI protobufs' build script runs.
RUN_PACKAGES=(runc containernetworking-plugins iptables iproute2 ca-certificates protobuf-compiler)
# Packages the tests and benchmarks need besides: the peers (crun, conmon, containerd), the
# registry and image tools, busybox for test images, apparmor_parser (to compile crid's
# AppArmor profile; this host's kernel need not have AppArmor).
TEST_PACKAGES=(crun conmon containerd docker-registry skopeo umoci busybox-static procps openssl apache2-utils python3-grpcio apparmor strace)
# Packages the conformance run needs besides: the pause process, the real ipcs and pgrep its
# busybox image holds, ldd and dpkg-deb to assemble images, and the libraries of the nginx it
# fetches with apt-get download (never installs).
CONFORMANCE_PACKAGES=(catatonit util-linux procps libc-bin dpkg libcrypt1 libpcre2-8-0 libssl3 zlib1g)

# CI builds once from a clean checkout: incremental caches would only take disk (gigabytes).
ci_build_env() {
    export CARGO_INCREMENTAL=0
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: run as root (crid runs containers)" >&2
        exit 1
    fi
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# shellcheck source=packaging/lib.sh
. "$top/packaging/lib.sh"

install_crid() {
    install -m 0755 target/release/crid target/release/crimon target/release/crid-pinns /usr/local/bin/
    install -d -m 0755 /etc/crid /etc/crid/crid.conf.d /etc/cni/net.d
    [ -e /etc/crid/crid.toml ] || /usr/local/bin/crid config >/etc/crid/crid.toml
    if ! ls /etc/cni/net.d/*.conf* >/dev/null 2>&1; then
        install -m 0644 packaging/cni/10-crid-bridge.conflist /etc/cni/net.d/
    fi
    if [ -d /etc/systemd/system ]; then
        install -m 0644 packaging/systemd/crid.service /etc/systemd/system/crid.service
    fi
}

case "$mode" in
run)
    need_root
    install_packages "${RUN_PACKAGES[@]}"
    need_cargo setup.sh
    cargo build --release -p crid-daemon -p crid-monitor -p crid-pinns
    install_crid
    echo "setup.sh: starting crid (socket /run/crid/crid.sock); stop it with Ctrl-C or SIGTERM"
    exec /usr/local/bin/crid
    ;;
test)
    need_root
    install_packages "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    need_cargo setup.sh
    ci_build_env
    started=$(date +%s)
    cargo fmt --all -- --check
    cargo build --workspace --all-targets
    cargo clippy --workspace --all-targets -- -D warnings
    # No module imports one that imports it back (python3 comes with python3-grpcio).
    python3 packaging/module-graph.py
    log=$(mktemp)
    status=0
    cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
    # Every fuzz target for a bounded time (FUZZ_SECONDS each, 25 by default).
    packaging/fuzz.sh || status=$?
    echo "setup.sh: test suite finished in $(( $(date +%s) - started )) s"
    # One closing line over every test binary (cargo's own last lines are the doc tests').
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
         END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
    rm -f "$log"
    exit "$status"
    ;;
bench)
    need_root
    install_packages "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    need_cargo setup.sh
    cargo build --release --workspace --bins
    shift
    exec target/release/crid-bench "$@"
    ;;
fuzz)
    need_cargo setup.sh
    shift
    exec packaging/fuzz.sh "$@"
    ;;
conformance)
    need_root
    install_packages "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${CONFORMANCE_PACKAGES[@]}"
    need_cargo setup.sh
    ci_build_env
    cargo build --workspace --bins
    shift
    exec target/debug/crid-conformance "$@"
    ;;
*)
    echo "usage: $0 run|test|fuzz|bench|conformance [fuzz targets | bench args | critest flags]" >&2
    exit 2
    ;;
esac
