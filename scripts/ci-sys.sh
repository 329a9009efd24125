#!/usr/bin/env bash
# CI: cross-builds both driver images on Linux and checks them.
#
#   1. scripts/build-sys.sh             both .sys (+ .pdb, .map, stamped .inf, unsigned .cat) in target/sys/
#   2. scripts/check-sys.sh             the PE checks on both images
#   3. scripts/sign-sys.sh              test signing (throwaway certificate) of images and catalogs,
#      scripts/check-sys.sh again       verification, if osslsigncode is there;
#                                       SKIPPED (loudly) otherwise
#   4. the catalogs, checked with osslsigncode, openssl and sha256sum only (not
#      with the code that wrote them): every member verifies against its
#      catalog; each catalog lists exactly its .inf and .sys; its signature
#      verifies against the exported nmr_test.cer and no other certificate; a
#      copy of a signed .sys with one byte changed fails the catalog check.
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

# --- catalog checks (step 4) ------------------------------------------------------
drivers=(nmr_client nmr_provider)
work=target/sys-ci  # scratch: copies and certificates, never the package itself

# PEM of the certificate sign-sys.sh exported (DER) next to the package.
exported_pem() {
    mkdir -p "$work"
    openssl x509 -inform DER -in target/sys/nmr_test.cer -out "$work/nmr_test.pem"
    echo "$work/nmr_test.pem"
}

catalog_members_verify() {
    local pem drv out ok=1
    pem=$(exported_pem) || return 1
    for drv in "${drivers[@]}"; do
        if out=$(osslsigncode verify -CAfile "$pem" -in "target/sys/$drv.sys" -catalog "target/sys/$drv.cat" 2>&1) &&
            grep -q '^File is signed in catalog' <<<"$out"; then
            echo "PASS $drv.sys is in $drv.cat: $(grep -m1 '^Calculated message digest' <<<"$out")"
        else
            printf '%s\n' "$out"
            echo "FAIL $drv.sys: osslsigncode verify -catalog $drv.cat"
            ok=0
        fi
    done
    # osslsigncode hashes only PE files against a catalog; the .inf (a flat
    # SHA-256) is checked by catalog_lists_exactly.
    ((ok))
}

# The member tags of a catalog: each trusted subject of the CTL is a SEQUENCE
# (depth 7) of an OCTET STRING, the tag (depth 8), and a SET of attributes
# (depth 8). (Other 32-byte OCTET STRINGs at depth 8, such as the signer's
# messageDigest, are not followed by a SET.)
catalog_tags() {
    openssl asn1parse -inform DER -in "$1" -i |
        awk '
            tag != "" && /^ *[0-9]+:d=8 .* SET/ { print tag }
            { tag = "" }
            match($0, /^ *[0-9]+:d=8 .*OCTET STRING +\[HEX DUMP\]:/) { tag = substr($0, RLENGTH + 1) }
        ' | sort
}

utf16le_hex() {  # the hex of a NUL-terminated UTF-16LE string, as asn1parse prints it
    python3 -c 'import sys; print((sys.argv[1] + "\0").encode("utf-16-le").hex().upper())' "$1"
}

catalog_lists_exactly() {
    local pem drv cat dump sys_hash inf_hash expected actual ok=1 name
    pem=$(exported_pem) || return 1
    for drv in "${drivers[@]}"; do
        cat=target/sys/$drv.cat
        dump=$(openssl asn1parse -inform DER -in "$cat" -i) || { echo "FAIL $cat: not DER"; ok=0; continue; }
        # The image's Authenticode hash as osslsigncode computes it (verifying its own signature).
        sys_hash=$(osslsigncode verify -CAfile "$pem" -in "target/sys/$drv.sys" 2>&1 |
            sed -nE 's/^Calculated message digest *: *([0-9A-F]{64}).*/\1/p' | head -1)
        inf_hash=$(sha256sum "target/sys/$drv.inf" | cut -d' ' -f1 | tr a-f A-F)
        expected=$(printf '%s\n' "$sys_hash" "$inf_hash" | sort)
        actual=$(catalog_tags "$cat")
        if [[ -n $sys_hash && $actual == "$expected" ]]; then
            echo "PASS $cat lists exactly: $drv.sys $sys_hash, $drv.inf $inf_hash"
        else
            echo "FAIL $cat members:"; echo "$actual" | sed 's/^/    /'
            echo "  expected ($drv.sys by osslsigncode, $drv.inf by sha256sum):"; echo "$expected" | sed 's/^/    /'
            ok=0
        fi
        for name in "$drv.sys" "$drv.inf"; do
            if grep -q "$(utf16le_hex "$name")" <<<"$dump"; then
                echo "PASS $cat: member File = $name"
            else
                echo "FAIL $cat: no File attribute $name"; ok=0
            fi
        done
        if [[ $(grep -c "$(utf16le_hex '2:10.0')" <<<"$dump") -eq 2 ]]; then
            echo "PASS $cat: both members carry OSAttr 2:10.0"
        else
            echo "FAIL $cat: OSAttr 2:10.0 not on both members"; ok=0
        fi
        if grep -q ':1.3.6.1.4.1.311.12.1.1$' <<<"$dump" && grep -q ':1.3.6.1.4.1.311.12.1.3$' <<<"$dump"; then
            echo "PASS $cat: a CTL of usage szOID_CATALOG_LIST, members szOID_CATALOG_LIST_MEMBER2 (SHA-256)"
        else
            echo "FAIL $cat: not a szOID_CATALOG_LIST CTL with MEMBER2 entries"; ok=0
        fi
    done
    ((ok))
}

catalog_signature() {
    local pem drv cat out ok=1 signer exported
    pem=$(exported_pem) || return 1
    exported=$(openssl x509 -in "$pem" -noout -fingerprint -sha256)
    # A second throwaway certificate that signed nothing: verifying against it must fail.
    if [[ ! -f $work/other.pem ]]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=nmr ci: signed nothing" \
            -keyout "$work/other.key" -out "$work/other.pem" 2>/dev/null
    fi
    for drv in "${drivers[@]}"; do
        cat=target/sys/$drv.cat
        if out=$(osslsigncode verify -CAfile "$pem" -in "$cat" 2>&1) && grep -q '^Signature verification: ok' <<<"$out"; then
            echo "PASS $cat: signature verifies with nmr_test.cer as the only CA"
        else
            printf '%s\n' "$out"; echo "FAIL $cat: osslsigncode verify -CAfile nmr_test.cer"; ok=0
        fi
        signer=$(openssl pkcs7 -inform DER -in "$cat" -print_certs | openssl x509 -noout -fingerprint -sha256)
        if [[ $signer == "$exported" ]]; then
            echo "PASS $cat: its certificate is nmr_test.cer ($exported)"
        else
            echo "FAIL $cat: carries $signer, nmr_test.cer is $exported"; ok=0
        fi
        if out=$(osslsigncode verify -CAfile "$work/other.pem" -in "$cat" 2>&1); then
            echo "FAIL $cat: also verifies against an unrelated certificate"; ok=0
        else
            echo "PASS $cat: rejected with an unrelated CA ($(grep -m1 -E 'Verify error|verification: failed' <<<"$out" | sed 's/.*\(Verify error\)/\1/'))"
        fi
    done
    ((ok))
}

catalog_rejects_tampering() {
    local pem drv copy out offset ok=1 inf_hash
    pem=$(exported_pem) || return 1
    for drv in "${drivers[@]}"; do
        copy=$work/$drv.tampered.sys
        cp "target/sys/$drv.sys" "$copy"
        # One byte in the middle of the image: inside a section, far from the
        # checksum and the signature at the end.
        offset=$(python3 -c '
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
o = len(b) // 2
b[o] ^= 0x01
open(p, "wb").write(b)
print(hex(o))' "$copy")
        if out=$(osslsigncode verify -CAfile "$pem" -in "$copy" -catalog "target/sys/$drv.cat" 2>&1); then
            printf '%s\n' "$out"
            echo "FAIL $drv.sys with byte $offset flipped still verifies against $drv.cat"; ok=0
        else
            echo "PASS $drv.sys with byte $offset flipped fails the catalog check; osslsigncode printed:"
            grep -v '^$' <<<"$out" | sed 's/^/    /'
        fi
        copy=$work/$drv.tampered.inf
        cp "target/sys/$drv.inf" "$copy"
        printf ' ' >>"$copy"
        inf_hash=$(sha256sum "$copy" | cut -d' ' -f1 | tr a-f A-F)
        if catalog_tags "target/sys/$drv.cat" | grep -qx "$inf_hash"; then
            echo "FAIL $drv.inf with a byte added is still listed"; ok=0
        else
            echo "PASS $drv.inf with a byte added: its hash $inf_hash is not in $drv.cat"
        fi
    done
    ((ok))
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
rm -rf "$work"
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
    step "catalog: every member verifies (osslsigncode verify -catalog)" catalog_members_verify
    step "catalog: lists exactly its .inf and .sys (openssl asn1parse, sha256sum)" catalog_lists_exactly
    step "catalog: signature verifies against nmr_test.cer, and only against it" catalog_signature
    step "catalog: a signed .sys with one byte changed fails the catalog check" catalog_rejects_tampering
else
    skipped=$((skipped + 6))
    echo "ci-sys: ************************************************************"
    echo "ci-sys: SKIPPED test signing and the 4 catalog checks: osslsigncode/openssl not available"
    echo "ci-sys: ************************************************************"
fi

summary
((failed == 0))
