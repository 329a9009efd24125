#!/usr/bin/env bash
# CI: cross-builds both driver images on Linux and checks them.
#
#   1. scripts/build-sys.sh             both .sys (+ .pdb, .map, stamped .inf) in target/sys/
#   2. scripts/check-sys.sh             the PE checks on both images
#   3. scripts/sign-sys.sh              test signing (throwaway certificate) and
#      scripts/check-sys.sh again       verification, if osslsigncode is there;
#                                       SKIPPED (loudly) otherwise
#
# Installs what it needs on a fresh Debian machine (llvm for llvm-readobj,
# python3-pip for pefile, openssl and osslsigncode for signing), only when
# missing; apt-get update runs only if an install fails without it.
# Exits non-zero if a step failed. Last line: "ci-sys: N passed, N failed, N skipped".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

passed=0 failed=0 skipped=0
apt_updated=0

apt_install() {
    command -v apt-get >/dev/null || return 1
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || return 1
        sudo=(sudo -n)
    fi
    echo "ci-sys: apt-get install $*"
    if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
        return 0
    fi
    if ((!apt_updated)); then
        apt_updated=1
        "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || return 1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_readobj() {
    command -v llvm-readobj >/dev/null || [[ -n $(compgen -c llvm-readobj-) ]]
}

step() {  # step NAME COMMAND...
    local name=$1
    shift
    echo "ci-sys: ---- $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "ci-sys: PASS $name"
    else
        failed=$((failed + 1))
        echo "ci-sys: FAIL $name"
    fi
}

summary() {
    echo "ci-sys: $passed passed, $failed failed, $skipped skipped"
}

# --- tools ---------------------------------------------------------------------
if ! have_readobj; then
    apt_install llvm || rustup component add llvm-tools || true
fi
if ! command -v python3 >/dev/null; then
    apt_install python3 || true
fi
if ! python3 -c 'import pefile' 2>/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip || true
fi
if ! command -v osslsigncode >/dev/null || ! command -v openssl >/dev/null; then
    apt_install openssl osslsigncode || true
fi

# --- build and check -------------------------------------------------------------
step "build-sys" scripts/build-sys.sh
if ((failed)); then
    summary
    exit 1
fi
images=(target/sys/nmr_client.sys target/sys/nmr_provider.sys)
step "check-sys (unsigned)" scripts/check-sys.sh "${images[@]}"

if command -v osslsigncode >/dev/null && command -v openssl >/dev/null; then
    step "sign-sys (test signing)" scripts/sign-sys.sh "${images[@]}"
    step "check-sys (test-signed)" scripts/check-sys.sh "${images[@]}"
else
    skipped=$((skipped + 2))
    echo "ci-sys: ************************************************************"
    echo "ci-sys: SKIPPED test signing: osslsigncode/openssl not available"
    echo "ci-sys: ************************************************************"
fi

summary
((failed == 0))
