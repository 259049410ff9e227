//! Throw-away PKI for the test cluster, made with rcgen at run time (no key
//! is ever committed).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// Paths of a leaf certificate and its key written to disk.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A leaf usable as TLS server and client (etcd members are both), valid
    /// for `valid_days` from now, for 127.0.0.1 and localhost. `CN` is what
    /// etcd takes as the user name.
    pub fn issue(&self, common_name: &str, valid_days: i64) -> (String, String) {
        self.issue_in(common_name, None, valid_days)
    }

    /// As [`Ca::issue`], with an organisation (Kubernetes takes `O` as the
    /// user's group, e.g. `system:masters`).
    pub fn issue_in(
        &self,
        common_name: &str,
        org: Option<&str>,
        valid_days: i64,
    ) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.subject_alt_names = vec![
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(valid_days);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem` (0600) into `dir`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, common_name: &str, valid_days: i64) -> Leaf {
        self.write_leaf_in(dir, stem, common_name, None, valid_days)
    }

    pub fn write_leaf_in(
        &self,
        dir: &Path,
        stem: &str,
        common_name: &str,
        org: Option<&str>,
        valid_days: i64,
    ) -> Leaf {
        let (cert, key) = self.issue_in(common_name, org, valid_days);
        let leaf = Leaf {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&leaf.cert, cert).unwrap();
        write_private(&leaf.key, key.as_bytes());
        leaf
    }

    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).unwrap();
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}
