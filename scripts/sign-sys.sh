#!/usr/bin/env bash
# TEST SIGNING ONLY. Signs Linux-built driver images in place with a throwaway
# self-signed code-signing certificate made here, then verifies the signature.
#
#   scripts/sign-sys.sh [target/sys/X.sys ...]     (default: target/sys/*.sys)
#
# The certificate (target/sys/cert/nmr-test-signing.{key,pem,cer}) is made on
# first use and lives as long as target/sys: scripts/build-sys.sh starts a new
# one each build. It chains to nothing: Windows loads an image signed with it
# only in test-signing mode, and only after the .cer is imported into the
# machine's Trusted Root and TrustedPublisher stores (docs/linux-build.md).
# Never use it, or anything signed with it, outside a test VM.
#
# Needs openssl and osslsigncode (Debian: apt-get install openssl osslsigncode).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
certdir=target/sys/cert
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
cer=$certdir/nmr-test-signing.cer
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
    # DER, for certutil / certmgr on the test VM.
    openssl x509 -in "$pem" -outform DER -out "$cer"
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
