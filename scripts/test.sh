#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what
# the tests need (coturn's client tools, openssl, Python's aioice, and for the
# admin tests promtool, chromium and playwright-core); each install is skipped
# when already present. Exits non-zero if any step fails.
#
# Everything runs from main(), so bash has read the whole file before it starts
# (editing this file during a run cannot break that run).
set -uo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*"; }

install_deps() {
    # Debian packages, with a single apt-get update when any is missing.
    local missing=()
    command -v turnutils_uclient >/dev/null 2>&1 || missing+=(coturn)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # Admin tests: promtool checks /metrics; the dashboard test drives Debian's
    # chromium through playwright-core (which never downloads a browser of its own).
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # tests/deploy.rs: systemd-analyze checks the unit (Debian's minimal images lack it).
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # tests/deploy.rs: strace lists turnd's system calls to check the unit's filter.
    command -v strace >/dev/null 2>&1 || missing+=(strace)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
    # WebRTC and NAT tests (tests/webrtc.rs, tests/nat.rs): network namespaces and veth
    # pairs (iproute2), NATs (iptables), and an NSS database Chromium trusts (certutil).
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
    # tests/udp_offload.rs and the load bench's veth path turn GRO on at a veth's ends.
    command -v ethtool >/dev/null 2>&1 || [ -x /usr/sbin/ethtool ] || missing+=(ethtool)
    # tests/fail2ban.rs: the shipped filter against turnd's logs (fail2ban-regex).
    command -v fail2ban-regex >/dev/null 2>&1 || missing+=(fail2ban)
    # tests/descriptors.rs runs turnd under prlimit (util-linux).
    command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
    # tests/proxy_protocol.rs: a real HAProxy in front of turnd (send-proxy, TLS passthrough).
    [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    # tests/tls_passthrough.rs: curl fetches a page through a passthrough TLS listener.
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # tests/cluster.rs: a real Redis for the fleet registry (started by the test on an
    # ephemeral loopback port, no persistence; the package's own service is not used);
    # tests/deploy.rs runs the fleet manifest's Redis script with it, and redis-cli
    # (redis-tools, a dependency of redis-server) reads the registry.
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    # tests/cluster.rs: the front's 300 to Chromium read off the wire in a namespace.
    command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    # tests/xdp.rs (cargo feature xdp): clang builds the XDP program against libbpf's
    # headers; iproute2 attaches a pass-through copy on the far end of the veth.
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    [ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
    if [ ${#missing[@]} -ne 0 ]; then
        log "installing ${missing[*]}"
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
    fi
    if ! "$PYTHON" -c 'import aioice' >/dev/null 2>&1; then
        log "installing Python aioice"
        "$PYTHON" -m pip install -q --disable-pip-version-check aioice \
            || "$PYTHON" -m pip install -q --disable-pip-version-check --break-system-packages aioice \
            || return 1
    fi
    # tests/deploy.rs: the Kubernetes manifests' schema check (bundled schemas, offline).
    if ! "$PYTHON" -c 'import kubernetes_validate' >/dev/null 2>&1; then
        log "installing Python kubernetes-validate"
        "$PYTHON" -m pip install -q --disable-pip-version-check kubernetes-validate \
            || "$PYTHON" -m pip install -q --disable-pip-version-check --break-system-packages kubernetes-validate \
            || return 1
    fi
    # tests/deploy.rs builds the .deb; compiling cargo-deb takes a few minutes, once.
    # Pinned: the version tests/deploy.rs was written against.
    if ! command -v cargo-deb >/dev/null 2>&1; then
        log "installing cargo-deb"
        cargo install --locked --quiet cargo-deb --version 3.8.0 || return 1
    fi
    if [ ! -d tests/browser/node_modules/playwright-core ]; then
        log "installing playwright-core for the dashboard test"
        (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent) || return 1
    fi
    if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
        log "installing clippy and rustfmt"
        rustup component add clippy rustfmt >/dev/null || return 1
    fi
}

main() {
    cd "$(dirname "$0")/.." || exit 1
    local failed=()
    step() {
        local name="$1"; shift
        log "$name"
        if ! "$@"; then
            failed+=("$name")
            log "FAILED: $name"
        fi
    }

    step "install test dependencies" install_deps
    step "cargo fmt --check" cargo fmt --all --check
    step "cargo clippy" cargo clippy --all-targets --quiet -- -D warnings
    step "cargo test" cargo test --all-targets --no-fail-fast
    # The XDP fast path is behind its cargo feature (it needs clang), so its test runs
    # on its own: two network namespaces over veth, turnd with [relay] xdp = "on".
    step "cargo test --features xdp --test xdp" cargo test --features xdp --test xdp
    step "cargo test --doc" cargo test --doc --quiet
    step "cargo doc (no broken links)" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet
    # A bounded libFuzzer run of every fuzz target (fuzz/) when rustup has a nightly
    # toolchain (scripts/fuzz.sh skips otherwise): about 5 min of build on 2 cores, then
    # FUZZ_SECONDS (20) per target; FUZZ_SECONDS=0 leaves it out. See docs/robustness.md.
    if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
        step "fuzz (${FUZZ_SECONDS:-20} s per target)" bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
    fi

    if [ ${#failed[@]} -ne 0 ]; then
        log "failed steps: ${failed[*]}"
        exit 1
    fi
    log "all steps passed"
    exit 0
}

main "$@"
