//! The catalog: a PKCS#7 SignedData whose content is a certificate trust list
//! (CTL, `szOID_CTL`) of usage `szOID_CATALOG_LIST`, one entry per package file.
//!
//! The layout is the one Windows' catalog API (`CryptCAT*`, mssip32) writes for a
//! SHA-256 ("version 2") catalog, as inf2cat makes it for Windows 10 packages:
//!
//! ```text
//! ContentInfo { signedData, SignedData {
//!   version 1, digestAlgorithms {} (filled in by the signer), signerInfos {} (idem),
//!   encapContentInfo { 1.3.6.1.4.1.311.10.1 (szOID_CTL), [0] EXPLICIT CertificateTrustList {
//!     subjectUsage      { 1.3.6.1.4.1.311.12.1.1 (szOID_CATALOG_LIST) }
//!     listIdentifier    OCTET STRING (16 bytes)
//!     thisUpdate        UTCTime
//!     subjectAlgorithm  { 1.3.6.1.4.1.311.12.1.3 (szOID_CATALOG_LIST_MEMBER2), NULL }
//!     trustedSubjects   SEQUENCE OF { tag OCTET STRING (the member's SHA-256), attributes SET OF {
//!         1.3.6.1.4.1.311.12.2.3 (CAT_MEMBERINFO2)  { [0] } for a PE image, { [2] } for a flat file
//!         1.3.6.1.4.1.311.12.2.1 (CAT_NAMEVALUE)    "OSAttr" = "2:10.0"
//!         1.3.6.1.4.1.311.12.2.1 (CAT_NAMEVALUE)    "File"   = the file name, lower case
//!         1.3.6.1.4.1.311.2.1.4  (SPC_INDIRECT_DATA) { SPC_PE_IMAGE_DATA or SPC_CAB_DATA, DigestInfo { sha256, hash } }
//!     } }
//!     ctlExtensions [0] { { 1.3.6.1.4.1.311.12.2.1, OCTET STRING CAT_NAMEVALUE "OS" = "_v100_X64" } }
//! } } }
//! ```
//!
//! docs/linux-build.md compares this, field by field, with a catalog made by
//! Microsoft's tools.

use cms::content_info::CmsVersion;
use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::{
    Any, BitString, BmpString, ContextSpecific, Null, ObjectIdentifier as Oid, OctetString,
    SetOfVec, UtcTime,
};
use der::{Decode, Encode, Sequence, Tag, TagMode, TagNumber, Tagged};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use std::fmt;
use std::time::Duration;
use x509_cert::attr::Attribute;
use x509_cert::ext::Extension;
use x509_cert::time::Time;

/// `szOID_PKCS_7_SIGNED` (RFC 5652 id-signedData).
pub const OID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
/// `szOID_CTL`: the SignedData content is a certificate trust list.
pub const OID_CTL: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.10.1");
/// `szOID_CATALOG_LIST`: the CTL's usage is a catalog.
pub const OID_CATALOG_LIST: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.12.1.1");
/// `szOID_CATALOG_LIST_MEMBER2`: members are tagged by their SHA-256 (catalog version 2).
pub const OID_CATALOG_LIST_MEMBER2: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.12.1.3");
/// `CAT_NAMEVALUE_OBJID`: a name/value attribute (member or catalog).
pub const OID_CAT_NAMEVALUE: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.12.2.1");
/// `CAT_MEMBERINFO2_OBJID`: which subject interface package (SIP) hashed the member.
pub const OID_CAT_MEMBERINFO2: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.12.2.3");
/// `SPC_INDIRECT_DATA_OBJID`: the member's digest, as in an Authenticode signature.
pub const OID_SPC_INDIRECT_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.4");
/// `SPC_PE_IMAGE_DATAOBJ`: the digest is a PE image's Authenticode hash.
pub const OID_SPC_PE_IMAGE_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// `SPC_CAB_DATA_OBJID`: the digest is a flat hash of the whole file.
pub const OID_SPC_CAB_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.25");
/// id-sha256.
pub const OID_SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");

/// Flags of every name/value attribute inf2cat writes:
/// `CRYPTCAT_ATTR_AUTHENTICATED | CRYPTCAT_ATTR_DATAASCII | CRYPTCAT_ATTR_NAMEASCII`.
pub const NAMEVALUE_FLAGS: u32 = 0x1001_0001;
/// Member attribute: the Windows versions the member is for. `2:10.0`: platform 2
/// (`VER_PLATFORM_WIN32_NT`), version 10.0, which covers Windows 10, Windows 11
/// and Windows Server 2016 and later.
pub const OS_ATTR_WIN10: &str = "2:10.0";
/// Catalog attribute `OS`: what `inf2cat /os:10_X64` writes.
pub const OS_CATALOG_WIN10_X64: &str = "_v100_X64";

/// How a member is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A PE image, by its Authenticode hash (the PE SIP).
    PeImage,
    /// Any other file, by the SHA-256 of all its bytes (the flat-file SIP).
    Flat,
}

/// One file of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// File name as the catalog records it (lower case, as inf2cat writes it).
    pub file_name: String,
    /// How `hash` was computed.
    pub kind: MemberKind,
    /// SHA-256 (Authenticode for a PE image, flat otherwise).
    pub hash: [u8; 32],
}

/// A name/value pair (`CRYPTCAT_ATTRIBUTE`): `SEQUENCE { BMPString, INTEGER, OCTET STRING }`,
/// the value in UTF-16LE with a terminating NUL.
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct NameValue {
    /// The attribute's name.
    pub name: BmpString,
    /// `CRYPTCAT_ATTR_*` flags.
    pub flags: u32,
    /// UTF-16LE, NUL-terminated.
    pub value: OctetString,
}

impl NameValue {
    fn new(name: &str, value: &str) -> Result<Self, der::Error> {
        let mut utf16: Vec<u8> = value.encode_utf16().flat_map(u16::to_le_bytes).collect();
        utf16.extend_from_slice(&[0, 0]);
        Ok(Self {
            name: BmpString::from_utf8(name)?,
            flags: NAMEVALUE_FLAGS,
            value: OctetString::new(utf16)?,
        })
    }

    /// The value as text, without its terminating NUL.
    pub fn value_text(&self) -> String {
        let units: Vec<u16> = self
            .value
            .as_bytes()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
}

/// `SpcAttributeTypeAndOptionalValue`.
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct SpcAttributeTypeAndValue {
    /// `SPC_PE_IMAGE_DATAOBJ` or `SPC_CAB_DATA_OBJID`.
    pub kind: Oid,
    /// `SpcPeImageData` or `SpcLink`.
    pub value: Any,
}

/// `DigestInfo` (PKCS#1).
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct DigestInfo {
    /// sha256, with NULL parameters.
    pub algorithm: AlgorithmIdentifierOwned,
    /// The hash.
    pub digest: OctetString,
}

/// `SpcIndirectDataContent`: what the file is and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct SpcIndirectDataContent {
    /// What was hashed.
    pub data: SpcAttributeTypeAndValue,
    /// The digest.
    pub message_digest: DigestInfo,
}

/// `CTLEntry` (RFC-less; wincrypt's `CTL_ENTRY`): a member's tag and attributes.
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct TrustedSubject {
    /// The member tag: its SHA-256, raw.
    pub identifier: OctetString,
    /// The member's attributes.
    pub attributes: SetOfVec<Attribute>,
}

/// `CertificateTrustList` (wincrypt's `CTL_INFO`), without the optional fields
/// a catalog leaves out (version, sequence number, next update).
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
pub struct CertificateTrustList {
    /// `{ szOID_CATALOG_LIST }`.
    pub subject_usage: Vec<Oid>,
    /// 16 bytes naming this list.
    pub list_identifier: OctetString,
    /// When the list was made.
    pub this_update: Time,
    /// `szOID_CATALOG_LIST_MEMBER2`, NULL parameters.
    pub subject_algorithm: AlgorithmIdentifierOwned,
    /// The members.
    pub trusted_subjects: Vec<TrustedSubject>,
    /// Catalog-level name/value attributes.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub extensions: Option<Vec<Extension>>,
}

/// Why a catalog could not be written or read back.
#[derive(Debug)]
pub enum CatalogError {
    /// DER encoding or decoding failed.
    Der(der::Error),
    /// Two members have the same file name.
    DuplicateFileName(String),
    /// The thing read is not a catalog: says what was found where.
    NotACatalog(String),
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Der(e) => write!(f, "DER: {e}"),
            Self::DuplicateFileName(n) => write!(f, "two members are named '{n}'"),
            Self::NotACatalog(what) => write!(f, "not a catalog: {what}"),
        }
    }
}

impl std::error::Error for CatalogError {}

impl From<der::Error> for CatalogError {
    fn from(e: der::Error) -> Self {
        Self::Der(e)
    }
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: OID_SHA256,
        parameters: Some(Any::from(Null)),
    }
}

fn attribute(oid: Oid, value: Any) -> Result<Attribute, der::Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

fn name_value_attribute(name: &str, value: &str) -> Result<Attribute, der::Error> {
    attribute(
        OID_CAT_NAMEVALUE,
        Any::encode_from(&NameValue::new(name, value)?)?,
    )
}

/// An empty context-specific primitive `[n]`.
fn empty_context(number: TagNumber) -> Result<Any, der::Error> {
    Any::new(
        Tag::ContextSpecific {
            constructed: false,
            number,
        },
        Vec::new(),
    )
}

/// `SpcLink ::= [2] EXPLICIT SpcString`, `SpcString ::= [0] IMPLICIT BMPString` (empty).
fn empty_file_link() -> Result<ContextSpecific<Any>, der::Error> {
    Ok(ContextSpecific {
        tag_number: TagNumber::N2,
        tag_mode: TagMode::Explicit,
        value: empty_context(TagNumber::N0)?,
    })
}

/// `SpcPeImageData ::= SEQUENCE { flags BIT STRING, file [0] EXPLICIT SpcLink }`,
/// with the flags and empty link inf2cat and signtool write.
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct SpcPeImageData {
    flags: BitString,
    file: ContextSpecific<ContextSpecific<Any>>,
}

fn indirect_data(member: &Member) -> Result<Any, der::Error> {
    let (kind, value) = match member.kind {
        MemberKind::PeImage => (
            OID_SPC_PE_IMAGE_DATA,
            Any::encode_from(&SpcPeImageData {
                // 5 unused bits, 0xa0: the value every Authenticode tool writes.
                flags: BitString::new(5, vec![0xa0])?,
                file: ContextSpecific {
                    tag_number: TagNumber::N0,
                    tag_mode: TagMode::Explicit,
                    value: empty_file_link()?,
                },
            })?,
        ),
        MemberKind::Flat => (OID_SPC_CAB_DATA, Any::encode_from(&empty_file_link()?)?),
    };
    Any::encode_from(&SpcIndirectDataContent {
        data: SpcAttributeTypeAndValue { kind, value },
        message_digest: DigestInfo {
            algorithm: sha256_algorithm(),
            digest: OctetString::new(member.hash.to_vec())?,
        },
    })
}

fn trusted_subject(member: &Member) -> Result<TrustedSubject, der::Error> {
    let sip = match member.kind {
        MemberKind::PeImage => TagNumber::N0,
        MemberKind::Flat => TagNumber::N2,
    };
    let attributes = vec![
        attribute(OID_CAT_MEMBERINFO2, empty_context(sip)?)?,
        name_value_attribute("OSAttr", OS_ATTR_WIN10)?,
        name_value_attribute("File", &member.file_name)?,
        attribute(OID_SPC_INDIRECT_DATA, indirect_data(member)?)?,
    ];
    Ok(TrustedSubject {
        identifier: OctetString::new(member.hash.to_vec())?,
        // SET OF: sorted into DER order here.
        attributes: SetOfVec::try_from(attributes)?,
    })
}

/// Builds the unsigned catalog (DER) listing `members`, dated `this_update`
/// (seconds since the Unix epoch).
///
/// Members are sorted by tag, and the list identifier is derived from the
/// members, so the same files and time always give the same bytes.
pub fn build(members: &[Member], this_update: u64) -> Result<Vec<u8>, CatalogError> {
    let mut members = members.to_vec();
    for m in &mut members {
        m.file_name = m.file_name.to_lowercase();
    }
    members.sort_by_key(|m| m.hash);
    for (i, m) in members.iter().enumerate() {
        if members[..i].iter().any(|o| o.file_name == m.file_name) {
            return Err(CatalogError::DuplicateFileName(m.file_name.clone()));
        }
    }
    // inf2cat uses a random GUID; a hash of the contents is as unique and reproducible.
    let mut id = Sha256::new();
    for m in &members {
        id.update(m.file_name.as_bytes());
        id.update([0]);
        id.update(m.hash);
    }
    let list_identifier = OctetString::new(id.finalize()[..16].to_vec())?;

    let ctl = CertificateTrustList {
        subject_usage: vec![OID_CATALOG_LIST],
        list_identifier,
        this_update: Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(
            this_update,
        ))?),
        subject_algorithm: AlgorithmIdentifierOwned {
            oid: OID_CATALOG_LIST_MEMBER2,
            parameters: Some(Any::from(Null)),
        },
        trusted_subjects: members
            .iter()
            .map(trusted_subject)
            .collect::<Result<_, _>>()?,
        extensions: Some(vec![Extension {
            extn_id: OID_CAT_NAMEVALUE,
            critical: false,
            extn_value: OctetString::new(NameValue::new("OS", OS_CATALOG_WIN10_X64)?.to_der()?)?,
        }]),
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        // Empty until signed, as in the unsigned catalogs makecat and inf2cat write;
        // the signer adds its digest algorithm and SignerInfo.
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: OID_CTL,
            // PKCS#7 v1.5 style: the CTL itself, not wrapped in an OCTET STRING.
            econtent: Some(Any::encode_from(&ctl)?),
        },
        certificates: None,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: OID_SIGNED_DATA,
        content: Any::encode_from(&signed)?,
    };
    Ok(info.to_der()?)
}

/// A catalog read back: its members and catalog attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCatalog {
    /// The CTL.
    pub ctl: CertificateTrustList,
    /// The members, in catalog order.
    pub members: Vec<DecodedMember>,
    /// Catalog-level name/value attributes.
    pub attributes: Vec<(String, String)>,
    /// How many SignerInfos the SignedData carries (0 before signing).
    pub signer_count: usize,
}

/// One member read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMember {
    /// The tag (the hash).
    pub tag: Vec<u8>,
    /// Name/value attributes, in set order.
    pub name_values: Vec<(String, String)>,
    /// The SIP choice number of `CAT_MEMBERINFO2` (0: PE, 2: flat).
    pub member_info2: Option<u32>,
    /// The indirect data, if present.
    pub indirect: Option<SpcIndirectDataContent>,
}

impl DecodedMember {
    /// The value of the name/value attribute `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.name_values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a catalog (signed or not) back into its parts.
pub fn decode(der_bytes: &[u8]) -> Result<DecodedCatalog, CatalogError> {
    let info = ContentInfo::from_der(der_bytes)?;
    if info.content_type != OID_SIGNED_DATA {
        return Err(CatalogError::NotACatalog(format!(
            "ContentInfo type {}",
            info.content_type
        )));
    }
    let signed: SignedData = info.content.decode_as()?;
    if signed.encap_content_info.econtent_type != OID_CTL {
        return Err(CatalogError::NotACatalog(format!(
            "content type {}",
            signed.encap_content_info.econtent_type
        )));
    }
    let content = signed
        .encap_content_info
        .econtent
        .ok_or_else(|| CatalogError::NotACatalog("no content".into()))?;
    let ctl: CertificateTrustList = content.decode_as()?;
    if ctl.subject_usage != [OID_CATALOG_LIST] {
        return Err(CatalogError::NotACatalog(format!(
            "subject usage {:?}",
            ctl.subject_usage
        )));
    }
    let mut members = Vec::new();
    for subject in &ctl.trusted_subjects {
        let mut member = DecodedMember {
            tag: subject.identifier.as_bytes().to_vec(),
            name_values: Vec::new(),
            member_info2: None,
            indirect: None,
        };
        for attr in subject.attributes.iter() {
            for value in attr.values.iter() {
                if attr.oid == OID_CAT_NAMEVALUE {
                    let nv: NameValue = value.decode_as()?;
                    member
                        .name_values
                        .push((nv.name.to_string(), nv.value_text()));
                } else if attr.oid == OID_CAT_MEMBERINFO2 {
                    if let Tag::ContextSpecific { number, .. } = value.tag() {
                        member.member_info2 = Some(u32::from(number.value()));
                    }
                } else if attr.oid == OID_SPC_INDIRECT_DATA {
                    member.indirect = Some(value.decode_as()?);
                }
            }
        }
        members.push(member);
    }
    let mut attributes = Vec::new();
    for ext in ctl.extensions.iter().flatten() {
        if ext.extn_id == OID_CAT_NAMEVALUE {
            let nv = NameValue::from_der(ext.extn_value.as_bytes())?;
            attributes.push((nv.name.to_string(), nv.value_text()));
        }
    }
    Ok(DecodedCatalog {
        ctl,
        members,
        attributes,
        signer_count: signed.signer_infos.0.len(),
    })
}
