//! The catalog decodes, and lists exactly the package's members with the
//! attributes inf2cat writes.

use nmr_make_cat::catalog::{self, Member, MemberKind};
use nmr_make_cat::{make_catalog, pe};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

/// A package directory of our own: an INF naming two images, in a fresh temp dir.
fn package(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nmr-make-cat-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("tiny.sys"), dir.join("Tiny.sys")).unwrap();
    std::fs::copy(fixture("tiny_unaligned.sys"), dir.join("helper.dll")).unwrap();
    std::fs::write(
        dir.join("pkg.inf"),
        "[Version]\nSignature=\"$WINDOWS NT$\"\nCatalogFile = pkg.cat\n\
         [SourceDisksFiles]\nTiny.sys = 1,,\nhelper.dll = 1,,\n",
    )
    .unwrap();
    dir
}

#[test]
fn lists_exactly_the_inf_and_the_files_it_names() {
    let dir = package("members");
    let (cat_path, members, der) = make_catalog(&dir.join("pkg.inf"), 1_700_000_000).unwrap();
    assert_eq!(cat_path, dir.join("pkg.cat"));
    let inf_hash = pe::flat_sha256(&std::fs::read(dir.join("pkg.inf")).unwrap());
    let sys_hash = pe::authenticode_sha256(&std::fs::read(dir.join("Tiny.sys")).unwrap()).unwrap();
    let dll_hash =
        pe::authenticode_sha256(&std::fs::read(dir.join("helper.dll")).unwrap()).unwrap();
    assert_eq!(members.len(), 3);

    let cat = catalog::decode(&der).unwrap();
    assert_eq!(cat.signer_count, 0, "written unsigned");
    assert_eq!(cat.attributes, [("OS".to_owned(), "_v100_X64".to_owned())]);
    let mut listed: Vec<(String, Vec<u8>, Option<u32>)> = cat
        .members
        .iter()
        .map(|m| {
            (
                m.value("File").unwrap().to_owned(),
                m.tag.clone(),
                m.member_info2,
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("helper.dll".to_owned(), dll_hash.to_vec(), Some(0)),
            ("pkg.inf".to_owned(), inf_hash.to_vec(), Some(2)),
            ("tiny.sys".to_owned(), sys_hash.to_vec(), Some(0)),
        ]
    );
    for m in &cat.members {
        assert_eq!(m.value("OSAttr"), Some("2:10.0"));
        let indirect = m
            .indirect
            .as_ref()
            .expect("every member carries its digest");
        assert_eq!(indirect.message_digest.digest.as_bytes(), &m.tag[..]);
        assert_eq!(indirect.message_digest.algorithm.oid, catalog::OID_SHA256);
        let expected_kind = if m.member_info2 == Some(2) {
            catalog::OID_SPC_CAB_DATA
        } else {
            catalog::OID_SPC_PE_IMAGE_DATA
        };
        assert_eq!(indirect.data.kind, expected_kind);
    }
    assert_eq!(
        cat.ctl.subject_algorithm.oid,
        catalog::OID_CATALOG_LIST_MEMBER2
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_same_files_and_time_give_the_same_bytes_and_a_changed_file_changes_them() {
    let dir = package("repro");
    let (_, _, first) = make_catalog(&dir.join("pkg.inf"), 1_700_000_000).unwrap();
    let (_, _, again) = make_catalog(&dir.join("pkg.inf"), 1_700_000_000).unwrap();
    assert_eq!(first, again);
    let mut image = std::fs::read(dir.join("Tiny.sys")).unwrap();
    image[0x300] ^= 1;
    std::fs::write(dir.join("Tiny.sys"), &image).unwrap();
    let (_, _, changed) = make_catalog(&dir.join("pkg.inf"), 1_700_000_000).unwrap();
    assert_ne!(first, changed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_or_broken_member_is_a_named_error() {
    let dir = package("missing");
    std::fs::remove_file(dir.join("helper.dll")).unwrap();
    let err = make_catalog(&dir.join("pkg.inf"), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("helper.dll"), "{err}");
    std::fs::write(dir.join("helper.dll"), b"MZ but nothing else").unwrap();
    let err = make_catalog(&dir.join("pkg.inf"), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("helper.dll") && err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn duplicate_names_are_refused() {
    let m = Member {
        file_name: "a.sys".into(),
        kind: MemberKind::PeImage,
        hash: [1; 32],
    };
    let mut other = m.clone();
    other.file_name = "A.SYS".into();
    other.hash = [2; 32];
    assert!(matches!(
        catalog::build(&[m, other], 0),
        Err(catalog::CatalogError::DuplicateFileName(_))
    ));
}
