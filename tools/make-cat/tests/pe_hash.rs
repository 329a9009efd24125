//! The Authenticode PE hash against an independent computation: the hashes in
//! tests/fixtures/pe_hashes.txt were computed by gen_pe_fixtures.py with the
//! `pefile` package, section by section, as the Authenticode specification
//! describes (the Rust code hashes linearly around the excluded fields).

use nmr_make_cat::pe::{PeError, PeLayout, authenticode_sha256, flat_sha256};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (file, expected hash) from pe_hashes.txt.
fn expected() -> Vec<(String, String)> {
    let text = String::from_utf8(fixture("pe_hashes.txt")).unwrap();
    let rows: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (hash, name) = l.split_once("  ").expect("'<hash>  <file>'");
            (name.to_owned(), hash.to_owned())
        })
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "pe_hashes.txt lists the three hashed fixtures"
    );
    rows
}

#[test]
fn matches_the_independent_pefile_computation() {
    for (name, hash) in expected() {
        assert_eq!(
            hex(&authenticode_sha256(&fixture(&name)).unwrap()),
            hash,
            "{name}"
        );
    }
}

#[test]
fn signing_does_not_change_the_hash() {
    // Checksum, certificate-table entry and the table itself all differ between these.
    let unsigned = fixture("tiny.sys");
    let signed = fixture("tiny_signed.sys");
    assert_ne!(unsigned, signed[..unsigned.len()]);
    assert_eq!(authenticode_sha256(&unsigned), authenticode_sha256(&signed));
    assert_ne!(flat_sha256(&unsigned), flat_sha256(&signed));
}

#[test]
fn an_unaligned_unsigned_image_hashes_with_the_padding_signing_adds() {
    assert_eq!(
        authenticode_sha256(&fixture("tiny_unaligned.sys")),
        authenticode_sha256(&fixture("tiny_unaligned_signed.sys"))
    );
    assert_ne!(
        authenticode_sha256(&fixture("tiny_unaligned.sys")),
        authenticode_sha256(&fixture("tiny.sys"))
    );
}

#[test]
fn only_the_three_excluded_ranges_are_ignored() {
    let image = fixture("tiny_signed.sys");
    let layout = PeLayout::parse(&image).unwrap();
    let (table, table_len) = layout.certificate_table.expect("signed fixture");
    let base = authenticode_sha256(&image).unwrap();
    let excluded = |i: usize| {
        (layout.checksum_offset..layout.checksum_offset + 4).contains(&i)
            || (layout.security_entry_offset..layout.security_entry_offset + 8).contains(&i)
            || (table..table + table_len).contains(&i)
    };
    for i in 0..image.len() {
        let mut changed = image.clone();
        changed[i] ^= 0x01;
        let result = authenticode_sha256(&changed);
        if excluded(i) {
            // A changed certificate-table entry may make the file invalid; it never changes the hash.
            if let Ok(hash) = result {
                assert_eq!(hash, base, "byte {i:#x} is excluded");
            }
        } else if let Ok(hash) = result {
            assert_ne!(hash, base, "byte {i:#x} must be hashed");
        }
        // Errors are fine for header bytes (e.g. the magic); the error tests name them.
    }
}

#[test]
fn bad_images_are_named_errors() {
    assert_eq!(
        authenticode_sha256(b"not a PE"),
        Err(PeError::NoDosSignature)
    );
    let mut image = fixture("tiny.sys");
    image[0x80] = b'X';
    assert_eq!(
        authenticode_sha256(&image),
        Err(PeError::NoPeSignature { e_lfanew: 0x80 })
    );
    let image = fixture("tiny.sys");
    assert!(matches!(
        authenticode_sha256(&image[..0x90]),
        Err(PeError::Truncated { .. })
    ));
    let mut signed = fixture("tiny_signed.sys");
    signed.extend_from_slice(b"trailer!");
    assert!(matches!(
        authenticode_sha256(&signed),
        Err(PeError::DataAfterCertificateTable { .. })
    ));
    let mut image = fixture("tiny.sys");
    let layout = PeLayout::parse(&image).unwrap();
    image[layout.security_entry_offset..layout.security_entry_offset + 8]
        .copy_from_slice(&[0, 0x10, 0, 0, 0x10, 0, 0, 0]);
    assert!(matches!(
        authenticode_sha256(&image),
        Err(PeError::BadCertificateTable { .. })
    ));
}
