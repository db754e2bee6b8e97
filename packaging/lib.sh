# Shell functions shared by packaging/setup.sh and packaging/fuzz.sh (sourced, not run).

# Puts rustup's cargo on PATH when the shell does not have it (root's login shell under
# `sudo` or CI often lacks ~/.cargo/bin); fails naming what is missing. $1 names the caller.
need_cargo() {
    local caller=${1:-packaging}
    if ! command -v cargo >/dev/null 2>&1; then
        for dir in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
            if [ -x "$dir/cargo" ]; then
                export PATH="$dir:$PATH"
                break
            fi
        done
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "$caller: missing: cargo (install a Rust toolchain with rustup)" >&2
        exit 1
    }
}
