//! What the command line prints when a command fails: each cause once, a gRPC status as its
//! code and message (not tonic's debug dump of metadata), and for the failures a field
//! engineer meets first (no scheme, nothing listening, no client certificate, the wrong
//! CA, a role that may not) a line that says what to do.

use std::error::Error as StdError;

/// The error as one line of causes, each said once, then a hint where one is known.
pub fn explain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let said = said(cause);
        if said.is_empty() || out.contains(&said) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&said);
    }
    if let Some(hint) = hint(e) {
        out.push_str("\n  hint: ");
        out.push_str(&hint);
    }
    out
}

/// One cause as a person reads it.
fn said(cause: &(dyn StdError + 'static)) -> String {
    if let Some(s) = cause.downcast_ref::<tonic::Status>() {
        let code = format!("{:?}", s.code()).to_uppercase();
        return if s.message().is_empty() {
            format!("the gateway answered {code}")
        } else {
            format!("the gateway answered {code}: {}", s.message())
        };
    }
    // tonic's transport error says only "transport error"; what went wrong is its source.
    let text = cause.to_string();
    if text == "transport error" {
        return String::new();
    }
    text
}

/// What to do about it, for the failures with a known remedy.
fn hint(e: &anyhow::Error) -> Option<String> {
    let mut text = String::new();
    let mut refused = false;
    let mut status = None;
    for cause in e.chain() {
        text.push_str(&cause.to_string());
        text.push('\n');
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            text.push_str(s.message());
            text.push('\n');
            status = Some(s.code());
        }
    }
    refused |= text.contains("Connection refused");
    let hint = if text.contains("scheme is missing") || text.contains("invalid URL") {
        "give the address with its scheme: https://HOST:PORT for the gateway's [grpc] listen with TLS, or http://127.0.0.1:PORT for its loopback plaintext listener"
    } else if refused {
        "nothing listens there: is the gateway running, and is that the address its config's [grpc] listen (or [web] listen, for status) names?"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "the gateway asks every caller for a client certificate: pass --cert and --key (the client-ROLE.pem and client-ROLE.key that `gridgate keygen --pki` wrote)"
    } else if text.contains("UnknownIssuer")
        || text.contains("invalid peer certificate")
        || text.contains("BadSignature")
    {
        "the gateway's certificate is not signed by the --ca given: pass the ca.pem that `gridgate keygen --pki` wrote for this site"
    } else if text.contains("NotValidForName") {
        "the gateway's certificate does not name this host: connect by the name or address it was made for (`gridgate keygen --pki --san ...`)"
    } else if status == Some(tonic::Code::PermissionDenied) {
        "your client certificate's role (its OU) may not do this: use the certificate of a role that may (master, operator, admin)"
    } else if status == Some(tonic::Code::Unauthenticated) {
        "the gateway did not take the caller's identity: pass --cert and --key (a client certificate its CA signed)"
    } else {
        return None;
    };
    Some(hint.to_string())
}

/// A CA file must hold at least one certificate: an empty or wrong file would otherwise
/// show only later as a handshake that fails for no stated reason.
pub fn check_ca_pem(path: &std::path::Path, pem: &[u8]) -> anyhow::Result<()> {
    if String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        anyhow::bail!(
            "{} holds no PEM certificate (--ca takes the CA's certificate, the ca.pem `gridgate keygen --pki` wrote, not a key)",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_said_again() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(gridgate_core::identity::IdentityError::Io {
            path: "/etc/gridgate/identity.key".into(),
            source: io,
        })
        .context("cannot start");
        let text = explain(&e);
        assert_eq!(text.matches("entity not found").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot start: /etc/gridgate/identity.key"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_connection_asks_whether_the_listener_is_up() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            .context("cannot connect to https://10.0.0.5:50051");
        let text = explain(&e);
        assert!(text.contains("hint: nothing listens there"), "{text}");
        assert!(text.contains("[grpc] listen"), "{text}");
    }

    #[test]
    fn a_status_is_its_code_and_message_not_a_dump() {
        let e = anyhow::Error::new(tonic::Status::permission_denied("role reader may not ack"))
            .context("Ack");
        let text = explain(&e);
        assert_eq!(
            text.lines().next(),
            Some("Ack: the gateway answered PERMISSIONDENIED: role reader may not ack")
        );
        assert!(!text.contains("metadata"), "{text}");
        assert!(
            text.contains("hint: your client certificate's role"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_client_certificate_says_to_pass_one() {
        let e = anyhow::Error::new(tonic::Status::unavailable(
            "tls handshake: received fatal alert: CertificateRequired",
        ))
        .context("GetIdentity");
        assert!(explain(&e).contains("pass --cert and --key"));
    }

    #[test]
    fn an_error_without_a_known_remedy_has_no_hint() {
        let e = anyhow::anyhow!("batch 7: signature does not verify").context("pull");
        assert!(!explain(&e).contains("hint"));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_by_name() {
        let path = std::path::Path::new("/etc/gridgate/ca.key");
        let err = check_ca_pem(path, b"-----BEGIN PRIVATE KEY-----\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("/etc/gridgate/ca.key holds no PEM certificate")
        );
        check_ca_pem(path, b"-----BEGIN CERTIFICATE-----\nMII\n").expect("a certificate");
    }
}
