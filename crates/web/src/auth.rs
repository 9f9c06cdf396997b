//! Who may see and do what on the page: a bearer credential (admin or read-only, each kept in
//! a file the config names), or nothing at all for read-only views when the config allows it
//! and the caller is on the local link.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use thiserror::Error;

use gridgate_config::web::WebConfig;

/// Shortest credential accepted: 128 bits as hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing but the page's own files.
    None,
    /// Every view and `/metrics`.
    Read,
    /// Views and write actions (test reads, overrides).
    Admin,
}

impl Access {
    /// For logs and the page.
    pub fn name(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Admin => "admin",
        }
    }
}

/// A credential file is unusable.
#[derive(Debug, Error)]
#[error("[web] credential {path}: {reason}")]
pub struct TokenError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads one credential file: one word of at least [`MIN_TOKEN_LEN`] characters.
pub fn load_token(path: &Path) -> Result<String, TokenError> {
    let err = |reason: String| TokenError {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "{e}; make one with `gridgate web-token --out {}`",
            path.display()
        ))
    })?;
    let token = text.trim().to_string();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
        return Err(err(format!(
            "a credential is one word of at least {MIN_TOKEN_LEN} characters; make one with `gridgate web-token --out {}`",
            path.display()
        )));
    }
    Ok(token)
}

/// The credentials in force.
#[derive(Clone)]
pub struct Gate {
    admin: Option<String>,
    read: Option<String>,
    anonymous_read: bool,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials themselves.
        f.debug_struct("Gate")
            .field("admin", &self.admin.is_some())
            .field("read", &self.read.is_some())
            .field("anonymous_read", &self.anonymous_read)
            .finish()
    }
}

/// Loopback, or an address that only reaches the local link.
pub fn on_local_link(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || v4.is_link_local(),
            None => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

impl Gate {
    /// Reads the credential files `cfg` names.
    pub fn load(cfg: &WebConfig) -> Result<Gate, TokenError> {
        Ok(Gate {
            admin: cfg
                .admin_token_file
                .as_deref()
                .map(load_token)
                .transpose()?,
            read: cfg.read_token_file.as_deref().map(load_token).transpose()?,
            anonymous_read: cfg.anonymous_read,
        })
    }

    /// Whether write actions can be done at all.
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// What a caller from `peer` presenting `bearer` may do. A wrong credential is no
    /// access at all, even where anonymous reads are allowed: a typo must show.
    pub fn access(&self, peer: SocketAddr, bearer: Option<&str>) -> Access {
        match bearer {
            Some(t) => {
                if self
                    .admin
                    .as_deref()
                    .is_some_and(|a| gridgate_core::tls::same_secret(a.as_bytes(), t.as_bytes()))
                {
                    Access::Admin
                } else if self
                    .read
                    .as_deref()
                    .is_some_and(|r| gridgate_core::tls::same_secret(r.as_bytes(), t.as_bytes()))
                {
                    Access::Read
                } else {
                    Access::None
                }
            }
            None if self.anonymous_read && on_local_link(peer.ip()) => Access::Read,
            None => Access::None,
        }
    }
}

/// A new credential: 32 random bytes as hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(anonymous_read: bool) -> Gate {
        Gate {
            admin: Some("a".repeat(40)),
            read: Some("r".repeat(40)),
            anonymous_read,
        }
    }

    #[test]
    fn credentials_and_the_local_link_decide_access() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let link: SocketAddr = "[fe80::1]:5000".parse().unwrap();
        let lan: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        let g = gate(true);
        assert_eq!(g.access(lan, Some(&"a".repeat(40))), Access::Admin);
        assert_eq!(g.access(lan, Some(&"r".repeat(40))), Access::Read);
        assert_eq!(g.access(local, Some("wrong")), Access::None);
        assert_eq!(g.access(local, None), Access::Read);
        assert_eq!(g.access(link, None), Access::Read);
        assert_eq!(
            g.access("169.254.3.4:1".parse().unwrap(), None),
            Access::Read
        );
        assert_eq!(g.access(lan, None), Access::None);
        assert_eq!(gate(false).access(local, None), Access::None);
    }

    #[test]
    fn a_short_or_missing_credential_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = load_token(&short).unwrap_err().to_string();
        assert!(
            e.contains("at least 32") && e.contains("gridgate web-token"),
            "{e}"
        );
        let e = load_token(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gridgate web-token"), "{e}");
        let ok = dir.path().join("ok");
        let t = new_token().unwrap();
        std::fs::write(&ok, format!("{t}\n")).unwrap();
        assert_eq!(load_token(&ok).unwrap(), t);
    }
}
