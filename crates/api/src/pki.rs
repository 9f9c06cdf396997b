//! A small site's PKI for the gRPC API, made by `gridgate keygen --pki`: a CA, the gateway's
//! server certificate, and one client certificate per role (the role is the OU).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

use super::auth::Role;

/// Why the PKI could not be made.
#[derive(Debug, Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file cannot be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Would overwrite an existing CA.
    #[error("{0} exists; refusing to overwrite a CA (move the directory away first)")]
    Exists(PathBuf),
}

/// What was written, for the summary.
#[derive(Debug, Clone)]
pub struct Written {
    /// Files, in the order written.
    pub files: Vec<PathBuf>,
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

fn write(path: &Path, text: &str, secret: bool, out: &mut Written) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(path)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, text).map_err(io)?;
    out.files.push(path.to_path_buf());
    Ok(())
}

/// Writes `dir/ca.pem`, `ca.key`, `server.pem`, `server.key` (valid for `hosts`, `localhost`
/// and `127.0.0.1`), and `client-<role>.pem` / `.key` for every role.
pub fn make_site_pki(dir: &Path, gateway_id: &str, hosts: &[String]) -> Result<Written, PkiError> {
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(PkiError::Exists(ca_path));
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let now = time::OffsetDateTime::now_utc();
    let mut out = Written { files: vec![] };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("gridgate site CA {gateway_id}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - days(1);
    ca_params.not_after = now + days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(&ca_path, &ca.pem(), false, &mut out)?;
    write(&dir.join("ca.key"), &ca_key_pem, true, &mut out)?;

    let mut names: Vec<String> = hosts.to_vec();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    names.dedup();
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, gateway_id.to_string());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - days(1);
    server.not_after = now + days(825);
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &ca)?;
    write(&dir.join("server.pem"), &cert.pem(), false, &mut out)?;
    write(
        &dir.join("server.key"),
        &key.serialize_pem(),
        true,
        &mut out,
    )?;

    for role in Role::ALL {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, format!("{role}@{gateway_id}"));
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, role.name());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = now - days(1);
        p.not_after = now + days(825);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca)?;
        write(
            &dir.join(format!("client-{role}.pem")),
            &cert.pem(),
            false,
            &mut out,
        )?;
        write(
            &dir.join(format!("client-{role}.key")),
            &key.serialize_pem(),
            true,
            &mut out,
        )?;
    }
    Ok(out)
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A consortium member's certificate for its Ed25519 identity key (`identity.pub`, the
/// public half of what signs its ledger entries and votes: the CA never needs the private
/// key), issued by the CA in `ca_dir` (`ca.pem`, `ca.key`, as `gridgate keygen --pki` makes
/// them). The Ledger service knows its callers by this key; `hosts` are the names a
/// validator serves under (its certificate is also good as its server certificate).
/// Returns the PEM.
pub fn member_cert(
    ca_dir: &Path,
    identity_pub: &Path,
    id: &str,
    hosts: &[String],
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(&read_text(&ca_dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read_text(&ca_dir.join("ca.pem"))?, ca_key)?;
    let key = rcgen::SubjectPublicKeyInfo::from_pem(&read_text(identity_pub)?)?;
    let mut names: Vec<String> = hosts.to_vec();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    names.dedup();
    let mut p = CertificateParams::new(names)?;
    p.distinguished_name
        .push(DnType::CommonName, id.to_string());
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "member");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - days(1);
    p.not_after = now + days(825);
    Ok(p.signed_by(&key, &issuer)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_certificate_carries_the_members_identity_key() {
        let dir = tempfile::tempdir().expect("dir");
        make_site_pki(&dir.path().join("pki"), "consortium", &[]).expect("pki");
        let id = gridgate_core::Identity::generate().expect("key");
        let key = dir.path().join("identity.key");
        id.save(&key, &dir.path().join("identity.pub"))
            .expect("save");
        let public = dir.path().join("identity.pub");
        let pem = member_cert(
            &dir.path().join("pki"),
            &public,
            "v1",
            &["v1.example".into()],
        )
        .expect("certificate");
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("DER");
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            id.public().to_bytes().as_slice()
        );
        assert!(
            member_cert(&dir.path().join("nowhere"), &public, "v1", &[])
                .unwrap_err()
                .to_string()
                .contains("ca.key")
        );
    }
}
