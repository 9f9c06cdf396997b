//! Who is calling: the role in the caller's client certificate (its Organizational Unit).

use std::fmt;

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The master station: pulls and acknowledges.
    Master,
    /// A consortium validator: pulls.
    Validator,
    /// The DR operator.
    Operator,
    /// Read-only: lists, status, live data, pulls without acknowledging.
    Viewer,
}

impl Role {
    /// Every role, as written in certificates.
    pub const ALL: [Role; 4] = [Role::Master, Role::Validator, Role::Operator, Role::Viewer];

    /// The name in certificates (OU) and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Validator => "validator",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// A role by name.
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The caller's role. A TLS caller's certificate (already verified against the client CA by
/// the TLS layer) must name a known role; a caller on the plaintext loopback listener is a
/// viewer.
pub fn role_of<T>(req: &Request<T>) -> Result<Role, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(Role::Viewer);
    };
    let Some(leaf) = certs.first() else {
        return Err(Status::unauthenticated("no client certificate"));
    };
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|_| Status::unauthenticated("client certificate does not parse"))?;
    let ou = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    Role::from_name(ou).ok_or_else(|| {
        Status::permission_denied(format!(
            "client certificate has role {ou:?}; the gateway knows master, validator, operator, viewer (the certificate's OU)"
        ))
    })
}

/// The caller's role, if it is one of `allowed`; else `PermissionDenied` naming both.
pub fn require<T>(req: &Request<T>, rpc: &str, allowed: &[Role]) -> Result<Role, Status> {
    let role = role_of(req)?;
    if allowed.contains(&role) {
        Ok(role)
    } else {
        let need: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
        Err(Status::permission_denied(format!(
            "role {role} may not call {rpc}; it needs {}",
            need.join(" or ")
        )))
    }
}
