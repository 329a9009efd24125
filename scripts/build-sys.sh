#!/usr/bin/env bash
# Builds nmr_client.sys and nmr_provider.sys on a Linux host, without the WDK.
#
# The same driver shells as the Windows build (cargo make with wdk-build), on
# the hand-declared kernel surface (feature `raw-kernel`: raw-dylib imports
# from ntoskrnl.exe and NETIO.SYS), compiled for x86_64-pc-windows-msvc and
# linked by the toolchain's own rust-lld in lld-link mode with the linker
# flags wdk-build passes for a WDM driver. See docs/linux-build.md.
#
# Output, in target/sys/:
#   nmr_client.sys   nmr_client.pdb   nmr_client.map   nmr_client.inf   nmr_client.cat
#   nmr_provider.sys nmr_provider.pdb nmr_provider.map nmr_provider.inf nmr_provider.cat
# The .cat is the package's catalog (what inf2cat makes on Windows), written
# unsigned by tools/make-cat (package nmr-make-cat, a host build).
#
# Usage: scripts/build-sys.sh [--sign] [--no-cfg]
#   --sign   then test-sign both images and catalogs and export the
#            certificate as target/sys/nmr_test.cer (scripts/sign-sys.sh;
#            test signing only)
#   --no-cfg build the images without the hardening flags (no Control Flow
#            Guard, not CET-compatible) into target/sys-nocfg/ instead: the
#            baseline of the CFG benchmark (docs/benchmarks.md) and the image
#            that scripts/check-sys.sh must fail. Never shipped.
#
# Environment:
#   SYS_BUILD_NUMBER  4th field of DriverVer (default: the commit count of HEAD)
#   SOURCE_DATE_EPOCH date of DriverVer (default: today, UTC)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

target=x86_64-pc-windows-msvc
build_dir=target/sys-build  # its own cache: the host build's is left alone
out=target/sys
drivers=(nmr_client nmr_provider)  # image names; packages are nmr-client, nmr-provider

sign=0
hardening=1
for arg in "$@"; do
    case $arg in
        --sign) sign=1 ;;
        --no-cfg) hardening=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-sys: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# --- toolchain ---------------------------------------------------------------
if ! rustc --print target-list | grep -qx "$target"; then
    echo "build-sys: this rustc does not know $target" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "build-sys: installing the $target standard library (rustup target add)"
    rustup target add "$target"
fi

# The linker flags wdk-build emits for DriverConfig::Wdm
# (windows-drivers-rs, crates/wdk-build/src/lib.rs, Config::configure_binary_build),
# in its order: the WDM ones, then those common to all driver models.
wdk_wdm_link_args=(
    /DRIVER /NODEFAULTLIB /SUBSYSTEM:NATIVE /KERNEL
    /ENTRY:DriverEntry
    /IGNORE:4257 /IGNORE:4216
    /NXCOMPAT /DYNAMICBASE
    /MAP /MAPINFO:EXPORTS
    "/OPT:REF,ICF"
    /INTEGRITYCHECK
    /MANIFEST:NO
)
# Added here: /RELEASE writes the PE checksum (the WDK's SetChecksum=true does
# the same), /DEBUG writes the .pdb.
extra_link_args=(/RELEASE /DEBUG)

# --- hardening: Control Flow Guard and CET (issue 19) ------------------------
# The one place of the flags (the cargo make build gets the same ones: the
# compiler flag from Makefile.toml's build task, the link flags from the
# drivers' build.rs):
# - every crate of the image, `core` included, compiled with
#   -C control-flow-guard=checks: each indirect call goes through
#   __guard_dispatch_icall_fptr, the address-taken functions are listed
#   (.gfids$y). It is given as the target's rustflags, so that it reaches
#   every crate, not only the driver's (cargo rustc's own arguments do);
#   the precompiled `core` comes in as bitcode and is compiled again under
#   the release profile's LTO, with the flag (docs/linux-build.md says how
#   much of the image is instrumented).
# - /guard:cf: the linker writes the guard function table and the
#   __guard_* symbols the shell's _load_config_used points at
#   (shell/src/cfg_support.rs), and sets IMAGE_DLLCHARACTERISTICS_GUARD_CF;
# - /cetcompat: the IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT debug entry
#   (kernel-mode hardware-enforced stack protection loads only such images).
# scripts/check-sys.sh fails an image without any of the three.
hardening_rustflags=(-C control-flow-guard=checks)
hardening_link_args=(/guard:cf /cetcompat)

config_args=()
if ((sign && !hardening)); then
    echo "build-sys: --no-cfg images are a baseline, never signed: drop --sign" >&2
    exit 2
fi
if ((hardening)); then
    extra_link_args+=("${hardening_link_args[@]}")
    flags=$(printf '"%s", ' "${hardening_rustflags[@]}")
    config_args=(--config "target.$target.rustflags = [${flags%, }]")
else
    build_dir=target/sys-build-nocfg
    out=target/sys-nocfg
fi

rustc_args=(-C linker=rust-lld -C linker-flavor=lld-link)
for a in "${wdk_wdm_link_args[@]}" "${extra_link_args[@]}"; do
    rustc_args+=(-C "link-arg=$a")
done

# --- build ---------------------------------------------------------------------
# The package directory and the test-signing key of the previous build go together.
rm -rf "${out:?}"
if ((hardening)); then rm -rf target/sys-signing; fi
mkdir -p "$out"

for drv in "${drivers[@]}"; do
    pkg=${drv//_/-}
    echo "build-sys: $pkg -> $out/$drv.sys"
    # `cargo rustc` passes the link arguments to this package's cdylib only.
    # Debug info for every crate (LTO merges them): the .pdb gets all lines.
    CARGO_PROFILE_RELEASE_DEBUG=full \
        cargo rustc --quiet -p "$pkg" --lib --crate-type cdylib --release \
        --target "$target" --target-dir "$build_dir" \
        --no-default-features --features raw-kernel "${config_args[@]}" \
        -- "${rustc_args[@]}"
    dir=$build_dir/$target/release
    cp "$dir/$drv.dll" "$out/$drv.sys"
    cp "$dir/$drv.pdb" "$out/$drv.pdb"
    cp "$dir/deps/$drv.map" "$out/$drv.map"
done

# --- INF: what stampinf does (DriverVer, $ARCH$) -------------------------------
id=$(cargo pkgid --quiet -p nmr-client)
version=${id##*[#@]}  # the workspace version, A.B.C
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "build-sys: cannot read the workspace version from '$id'" >&2
    exit 1
fi
build_number=${SYS_BUILD_NUMBER:-$(git rev-list --count HEAD 2>/dev/null || echo 0)}
if ! [[ $build_number =~ ^[0-9]+$ ]] || ((build_number > 65535)); then
    echo "build-sys: build number '$build_number' is not in 0..65535" >&2
    exit 1
fi
if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
    date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%m/%d/%Y)
else
    date=$(date -u +%m/%d/%Y)
fi
driver_ver="$date,$version.$build_number"

for drv in "${drivers[@]}"; do
    inx=inf/$drv.inx
    if [[ ! -f $inx ]]; then
        echo "build-sys: missing $inx" >&2
        exit 1
    fi
    if ! grep -Eq '^[[:space:]]*DriverVer[[:space:]]*=' "$inx"; then
        echo "build-sys: $inx has no DriverVer line to stamp" >&2
        exit 1
    fi
    # Replace the whole DriverVer line (its placeholder comment included).
    sed -E \
        -e "s|^([[:space:]]*)DriverVer[[:space:]]*=.*$|\1DriverVer   = $driver_ver|" \
        -e "s/[\$]ARCH[\$]/amd64/g" \
        "$inx" >"$out/$drv.inf"
    echo "build-sys: $out/$drv.inf  DriverVer = $driver_ver"
done

# --- catalog: what inf2cat /os:10_X64 does ------------------------------------
# Each INF's CatalogFile, listing the INF and the files of its [SourceDisksFiles]
# (SOURCE_DATE_EPOCH, when set, dates it). Host build, in the host target dir.
infs=()
for drv in "${drivers[@]}"; do infs+=("$out/$drv.inf"); done
cargo run --quiet --release -p nmr-make-cat -- "${infs[@]}" | sed 's/^make-cat/build-sys/'
for drv in "${drivers[@]}"; do
    if [[ ! -f $out/$drv.cat ]]; then
        echo "build-sys: make-cat wrote no $out/$drv.cat (does the INF say CatalogFile = $drv.cat?)" >&2
        exit 1
    fi
done

for drv in "${drivers[@]}"; do
    printf 'build-sys: %-28s %7d bytes\n' "$out/$drv.sys" "$(stat -c %s "$out/$drv.sys")"
done

if ((sign)); then
    images=()
    for drv in "${drivers[@]}"; do images+=("$out/$drv.sys"); done
    "$root/scripts/sign-sys.sh" "${images[@]}"
fi
