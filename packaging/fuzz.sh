#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time; fails on the first crash (a
# panic, a timeout of one input, or memory past the limit), leaving the input that caused it
# in fuzz/artifacts/<target>/ and printing how to replay it.
#
#   packaging/fuzz.sh [target...]      every target (or the ones named), FUZZ_SECONDS each
#
# FUZZ_SECONDS (default 25) bounds each target: seven targets take about three minutes after
# the build. The corpus grows in fuzz/corpus/<target>/ (not checked in) from the seeds in
# fuzz/seeds/<target>/ (checked in; daemon/src/fuzzing.rs's test keeps them current).
#
# The toolchain is stable: `-s none` builds with libFuzzer's coverage instrumentation
# (sanitizer-coverage passes, stable codegen flags) and no sanitizer, which needs nightly.
# Rust's own checks (bounds, overflow and debug assertions, kept on in fuzz/Cargo.toml) are
# what turns a bug into a crash.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-25}

# shellcheck source=packaging/lib.sh
. "$top/packaging/lib.sh"
need_cargo fuzz.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd "$top/fuzz"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
started=$(date +%s)
cargo fuzz build -s none -a
echo "fuzz.sh: built ${#targets[@]} targets in $(( $(date +%s) - started )) s"

# The binaries cargo fuzz built, run directly: what `cargo fuzz run` would do, without
# its check for a rebuild before each target.
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "fuzz.sh: $target for $seconds s"
    # -timeout: one input taking 10 s is a hang (a crash); -rss_limit_mb: an allocation
    # bomb is a crash too.
    if ! "$bin/$target" -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "corpus/$target" "seeds/$target" 2> "corpus/$target.log"; then
        tail -n 40 "corpus/$target.log" >&2
        echo "fuzz.sh: $target crashed; the input is in fuzz/artifacts/$target/ (replay:" \
            "cd fuzz && cargo fuzz run -s none -a $target <artifact>)" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "corpus/$target.log" |
        sed "s/^/fuzz.sh: $target: /"
done
echo "fuzz.sh: ${#targets[@]} targets, no crash, $(( $(date +%s) - started )) s"
