#!/usr/bin/env bash
# TEST SIGNING ONLY. Signs the Linux-built driver packages in place with a
# throwaway self-signed code-signing certificate made here: each image, then
# its catalog, and verifies both.
#
#   scripts/sign-sys.sh [target/sys/X.sys ...]     (default: target/sys/*.sys)
#
# For each X.sys it signs X.sys (Authenticode, SHA-256) and X.cat (the
# catalog scripts/build-sys.sh wrote next to it; missing = error), and exports
# the certificate as target/sys/nmr_test.cer (DER), so target/sys/ is a
# complete package: .inf .sys .cat .cer .pdb. The order does not matter: the
# catalog lists each image by its Authenticode hash, which leaves the
# signature out (scripts/ci-sys.sh checks the signed images against the
# catalogs made before signing).
#
# The key and certificate (target/sys-signing/nmr-test-signing.{key,pem}) are
# made on first use, outside the package directory; scripts/build-sys.sh
# starts a new pair with each build. The certificate chains to nothing: Windows
# accepts a package signed with it only in test-signing mode, and only after
# nmr_test.cer is imported into the machine's Trusted Root and TrustedPublisher
# stores (scripts/install.ps1 -TrustTestCertificate; docs/windows.md).
# Never use it, or anything signed with it, outside a test VM.
#
# Needs openssl and osslsigncode (Debian: apt-get install openssl osslsigncode).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
certdir=target/sys-signing
subject="/CN=nmr Rust driver TEST SIGNING ONLY (throwaway)/O=nmr test/"

for tool in openssl osslsigncode; do
    if ! command -v "$tool" >/dev/null; then
        echo "sign-sys: $tool not found (apt-get install $tool)" >&2
        exit 1
    fi
done

images=("$@")
if ((${#images[@]} == 0)); then
    shopt -s nullglob
    images=(target/sys/*.sys)
    shopt -u nullglob
fi
if ((${#images[@]} == 0)); then
    echo "sign-sys: nothing to sign (run scripts/build-sys.sh first)" >&2
    exit 1
fi

mkdir -p "$certdir"
key=$certdir/nmr-test-signing.key
pem=$certdir/nmr-test-signing.pem
if [[ ! -f $key || ! -f $pem ]]; then
    echo "sign-sys: making a throwaway test-signing certificate in $certdir"
    (
        umask 077
        openssl req -x509 -newkey rsa:3072 -sha256 -days 30 -nodes \
            -subj "$subject" \
            -addext "keyUsage=critical,digitalSignature" \
            -addext "extendedKeyUsage=codeSigning" \
            -keyout "$key" -out "$pem" 2>/dev/null
    )
fi
echo "sign-sys: certificate $(openssl x509 -in "$pem" -noout -subject -fingerprint -sha1)"

for img in "${images[@]}"; do
    name=$(basename "$img" .sys)
    tmp=$img.signing
    rm -f "$tmp"
    osslsigncode sign -h sha256 -certs "$pem" -key "$key" \
        -n "$name (test signing)" -in "$img" -out "$tmp" >/dev/null
    mv "$tmp" "$img"
    # The signature must verify against our throwaway root; against the
    # system's roots it cannot (printed for the record, not an error).
    if ! out=$(osslsigncode verify -CAfile "$pem" -in "$img" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "FAIL $img: osslsigncode verify against the test certificate" >&2
        exit 1
    fi
    echo "PASS $img: signed (sha256), osslsigncode verify with the test certificate as CA:"
    grep -E '^(Message digest algorithm|Current message digest|Calculated message digest|Signature verification|Number of verified signatures|Succeeded|Failed)' \
        <<<"$out" | sed 's/^/    /' || true
    if sys_out=$(osslsigncode verify -in "$img" 2>&1); then
        echo "    against the system's trusted roots: verified (unexpected for a throwaway cert)"
    else
        echo "    against the system's trusted roots: $(grep -m1 -E 'Signature verification|error' <<<"$sys_out" || echo failed) (expected: test signing)"
    fi
done

# The catalogs: each image's X.cat, signed with the same certificate.
for img in "${images[@]}"; do
    cat=${img%.sys}.cat
    if [[ ! -f $cat ]]; then
        echo "FAIL $img: no catalog $cat (scripts/build-sys.sh writes it)" >&2
        exit 1
    fi
    tmp=$cat.signing
    rm -f "$tmp"
    osslsigncode sign -h sha256 -certs "$pem" -key "$key" -in "$cat" -out "$tmp" >/dev/null
    mv "$tmp" "$cat"
    if ! out=$(osslsigncode verify -CAfile "$pem" -in "$img" -catalog "$cat" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "FAIL $cat: osslsigncode verify -catalog with the test certificate as CA" >&2
        exit 1
    fi
    echo "PASS $cat: signed (sha256); $(basename "$img") verifies against it:"
    grep -E '^(Current message digest|Calculated message digest|File is signed in catalog|Signature verification)' \
        <<<"$out" | sed 's/^/    /' || true
done

# The certificate, next to the package files (DER, for certutil / Import-Certificate).
for img in "${images[@]}"; do
    cer=$(dirname "$img")/nmr_test.cer
    openssl x509 -in "$pem" -outform DER -out "$cer"
done
echo "sign-sys: exported the test certificate as $cer (DER)"
