#!/usr/bin/env bash
# Checks Linux-built driver images: scripts/check-sys.sh target/sys/*.sys
#
# For each image, one PASS/FAIL line per check and a summary line; exits
# non-zero if any check of any image failed. The checks (tools/check-sys/check_sys.py):
#   machine x64; subsystem NATIVE; FORCE_INTEGRITY, NX_COMPAT, DYNAMIC_BASE;
#   no writable+executable section; a valid PE checksum; DriverEntry is the
#   only export and the entry point; imports only from ntoskrnl.exe and
#   NETIO.SYS, none delay-loaded or by ordinal, every ntoskrnl.exe import on
#   the allow-list, the NMR imports exactly those the driver needs; the
#   CodeView entry names <driver>.pdb; Control Flow Guard (GUARD_CF, a load
#   configuration with the CFG pointers and flags, a guard function table
#   covering every function the image hands out) and the CET-compatible flag;
#   the stamped <driver>.inf beside it has
#   no [DefaultUninstall] or DelService (a primitive driver under infverif /w)
#   and offers the package only to the Windows builds that export every
#   kernel function the image imports (NTamd64.10.0...19041: ExAllocatePool2).
#
# Needs llvm-readobj (Debian: apt-get install llvm; or `rustup component add
# llvm-tools`) and python3; installs the pefile package into target/sys-tools/
# on first use (pip --target: no venv, nothing system-wide).
#
# Environment: LLVM_READOBJ=/path/to/llvm-readobj, LLVM_OBJDUMP=/path/to/llvm-objdump
# to pick them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pefile_version=2024.8.26
pylib=$root/target/sys-tools/python

if (($# == 0)); then
    echo "usage: scripts/check-sys.sh IMAGE.sys..." >&2
    exit 2
fi

# llvm-readobj: $LLVM_READOBJ, the PATH, Debian's versioned ones, rustup's llvm-tools.
find_readobj() {
    local c
    if [[ -n ${LLVM_READOBJ:-} ]]; then
        echo "$LLVM_READOBJ"
        return
    fi
    if command -v llvm-readobj >/dev/null; then
        command -v llvm-readobj
        return
    fi
    for c in $(compgen -c llvm-readobj- | sort -t- -k3 -rn) \
        "$(rustc --print sysroot 2>/dev/null)"/lib/rustlib/*/bin/llvm-readobj; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return
        fi
    done
    return 1
}
if ! readobj=$(find_readobj); then
    echo "check-sys: llvm-readobj not found (apt-get install llvm, or rustup component add llvm-tools)" >&2
    exit 1
fi
export LLVM_READOBJ=$readobj
# llvm-objdump (the CFG instrumentation check): $LLVM_OBJDUMP, or the one
# beside the llvm-readobj found (same package, same version suffix).
if [[ -z ${LLVM_OBJDUMP:-} ]]; then
    LLVM_OBJDUMP=$(dirname "$readobj")/$(basename "$readobj" | sed 's/readobj/objdump/')
fi
if ! command -v "$LLVM_OBJDUMP" >/dev/null; then
    echo "check-sys: llvm-objdump not found beside $readobj (set LLVM_OBJDUMP)" >&2
    exit 1
fi
export LLVM_OBJDUMP

if ! command -v python3 >/dev/null; then
    echo "check-sys: python3 not found (apt-get install python3)" >&2
    exit 1
fi
export PYTHONPATH=$pylib${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c 'import pefile' 2>/dev/null; then
    echo "check-sys: installing pefile $pefile_version into ${pylib#"$root"/}"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$pylib" "pefile==$pefile_version"
fi

exec python3 "$root/tools/check-sys/check_sys.py" "$@"
