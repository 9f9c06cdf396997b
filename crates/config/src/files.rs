//! The files a config names, and where it names them, so that `check-config` can open each
//! one and point at the line that named it. Listing them is pure; opening them is the
//! caller's (`tools::check_config`).

use std::path::PathBuf;

use toml::Spanned;

use super::raw::RawConfig;

/// What a named file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An Ed25519 private key, PKCS#8 PEM (`gridgate keygen`).
    IdentityKey,
    /// An Ed25519 public key, PEM.
    PublicKey,
    /// One or more PEM certificates (a chain, or the CAs to trust).
    Certificates,
    /// A PEM private key for TLS.
    TlsKey,
    /// A page credential (`gridgate web-token`).
    Token,
}

/// A file the config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// Dotted key, e.g. `grpc.cert_file`.
    pub key: String,
    /// 1-based line and column of the value in the config, 0 for a default.
    pub line: usize,
    /// See `line`.
    pub column: usize,
    /// The path as the gateway will open it.
    pub path: PathBuf,
    /// What it must hold.
    pub kind: FileKind,
}

/// Every file `raw` names, in the order of the file's sections. `identity` is the identity
/// key in force (its default when `[gateway] identity` is not written).
pub(super) fn named(text: &str, raw: &RawConfig, identity: &std::path::Path) -> Vec<NamedFile> {
    let mut out = Vec::new();
    let at = |v: &Spanned<String>| super::line_col(text, v.span().start);
    let mut add = |key: String, v: &Spanned<String>, kind: FileKind| {
        let (line, column) = at(v);
        out.push(NamedFile {
            key,
            line,
            column,
            path: PathBuf::from(v.get_ref()),
            kind,
        });
    };
    match &raw.gateway.identity {
        Some(v) => add("gateway.identity".into(), v, FileKind::IdentityKey),
        None => out.push(NamedFile {
            key: "gateway.identity".into(),
            line: 0,
            column: 0,
            path: identity.to_path_buf(),
            kind: FileKind::IdentityKey,
        }),
    }
    let mut add = |key: String, v: &Spanned<String>, kind: FileKind| {
        let (line, column) = at(v);
        out.push(NamedFile {
            key,
            line,
            column,
            path: PathBuf::from(v.get_ref()),
            kind,
        });
    };
    let tls = |section: &str,
               ca: Option<&Spanned<String>>,
               cert: Option<&Spanned<String>>,
               key: Option<&Spanned<String>>,
               add: &mut dyn FnMut(String, &Spanned<String>, FileKind)| {
        if let Some(v) = ca {
            add(format!("{section}.ca_file"), v, FileKind::Certificates);
        }
        if let Some(v) = cert {
            add(format!("{section}.cert_file"), v, FileKind::Certificates);
        }
        if let Some(v) = key {
            add(format!("{section}.key_file"), v, FileKind::TlsKey);
        }
    };
    if let Some(u) = &raw.uplink {
        tls(
            "uplink",
            u.ca_file.as_ref(),
            u.cert_file.as_ref(),
            u.key_file.as_ref(),
            &mut add,
        );
    }
    if let Some(i) = &raw.ingest {
        tls(
            "ingest",
            i.ca_file.as_ref(),
            i.cert_file.as_ref(),
            i.key_file.as_ref(),
            &mut add,
        );
        if let Some(v) = &i.listen_cert_file {
            add("ingest.listen_cert_file".into(), v, FileKind::Certificates);
        }
        if let Some(v) = &i.listen_key_file {
            add("ingest.listen_key_file".into(), v, FileKind::TlsKey);
        }
        if let Some(v) = &i.listen_client_ca_file {
            add(
                "ingest.listen_client_ca_file".into(),
                v,
                FileKind::Certificates,
            );
        }
    }
    if let Some(g) = &raw.grpc {
        add(
            "grpc.cert_file".into(),
            &g.cert_file,
            FileKind::Certificates,
        );
        add("grpc.key_file".into(), &g.key_file, FileKind::TlsKey);
        add(
            "grpc.client_ca_file".into(),
            &g.client_ca_file,
            FileKind::Certificates,
        );
    }
    if let Some(d) = &raw.dr {
        for (i, is) in d.issuers.get_ref().iter().enumerate() {
            add(
                format!("dr.issuers[{i}].public_key"),
                &is.public_key,
                FileKind::PublicKey,
            );
        }
    }
    if let Some(l) = &raw.ledger {
        for (i, m) in l.members.get_ref().iter().enumerate() {
            add(
                format!("ledger.members[{i}].public_key"),
                &m.public_key,
                FileKind::PublicKey,
            );
        }
        tls(
            "ledger",
            l.ca_file.as_ref(),
            l.cert_file.as_ref(),
            l.key_file.as_ref(),
            &mut add,
        );
    }
    if let Some(w) = &raw.web {
        let w = w.get_ref();
        tls(
            "web",
            None,
            w.cert_file.as_ref(),
            w.key_file.as_ref(),
            &mut add,
        );
        if let Some(v) = &w.admin_token_file {
            add("web.admin_token_file".into(), v, FileKind::Token);
        }
        if let Some(v) = &w.read_token_file {
            add("web.read_token_file".into(), v, FileKind::Token);
        }
    }
    out
}
