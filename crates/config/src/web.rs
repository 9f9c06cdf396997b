//! `[web]`: the commissioning page and `/metrics`, served by the gateway itself.
//!
//! The page carries the admin credential, so it is HTTPS unless it listens on loopback only;
//! read-only views without a credential are allowed only when the config says so, and then
//! only to callers on the local link (loopback, or a link-local address: a laptop plugged
//! into the gateway's maintenance port).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// `[web]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub listen: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub admin_token_file: Option<Spanned<String>>,
    pub read_token_file: Option<Spanned<String>>,
    pub anonymous_read: Option<Spanned<bool>>,
}

/// Where the page listens when `[web]` names no address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `[web]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Address of the page and `/metrics`.
    pub listen: SocketAddr,
    /// HTTPS certificate chain and key (PEM); plain HTTP only on loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// File holding the admin credential (write actions, and every view).
    pub admin_token_file: Option<PathBuf>,
    /// File holding a read-only credential (Prometheus, `gridgate status`).
    pub read_token_file: Option<PathBuf>,
    /// Read-only views without a credential, for callers on the local link only.
    pub anonymous_read: bool,
}

impl Checker<'_> {
    pub(super) fn check_web(&mut self, raw: Option<&Spanned<RawWeb>>) -> Option<WebConfig> {
        let at = raw?;
        let r = at.get_ref();
        let listen = match &r.listen {
            None => DEFAULT_LISTEN.parse().ok()?,
            Some(l) => match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        l,
                        "web.listen".into(),
                        "write an address and port, e.g. 0.0.0.0:8443".into(),
                    );
                    return None;
                }
            },
        };
        let tls = match (&r.cert_file, &r.key_file) {
            (Some(c), Some(k)) => Some((c.get_ref().into(), k.get_ref().into())),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                self.problem(
                    c,
                    "web".into(),
                    "cert_file and key_file go together (HTTPS needs both)".into(),
                );
                None
            }
        };
        if tls.is_none()
            && !listen.ip().is_loopback()
            && let Some(l) = &r.listen
        {
            self.problem(
                l,
                "web.listen".into(),
                "the page carries the admin credential: off loopback it is HTTPS only; set cert_file and key_file (the site's server certificate from `gridgate keygen --pki`) or listen on 127.0.0.1".into(),
            );
        }
        let anonymous_read = r.anonymous_read.as_ref().is_some_and(|a| *a.get_ref());
        let admin_token_file = r.admin_token_file.as_ref().map(|p| p.get_ref().into());
        let read_token_file = r.read_token_file.as_ref().map(|p| p.get_ref().into());
        if admin_token_file.is_none() && read_token_file.is_none() && !anonymous_read {
            self.problem(
                at,
                "web".into(),
                "nobody could open the page: set admin_token_file (make one with `gridgate web-token`), read_token_file, or anonymous_read = true".into(),
            );
        }
        Some(WebConfig {
            listen,
            tls,
            admin_token_file,
            read_token_file,
            anonymous_read,
        })
    }
}
