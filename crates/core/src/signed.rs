//! The signed DR messages: events and cancels signed by their issuer (an operator), and
//! performance reports signed by the gateway that measured. Signing covers the exact
//! protobuf bytes carried beside the signature, so whoever checks decodes what was signed.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;

use crate::identity::Identity;

/// A signed report that does not check.
#[derive(Debug, Error)]
pub enum ReportError {
    /// Not a decodable report.
    #[error("not a gridgate.v1.PerformanceReport: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The signature does not verify with the gateway's key.
    #[error("the report's signature does not verify with the gateway's key")]
    Signature,
}

/// Encodes and signs a cancel with `key`.
pub fn sign_cancel(cancel: &pb::DrCancel, key: &Identity) -> pb::SignedDrCancel {
    let bytes = cancel.encode_to_vec();
    pb::SignedDrCancel {
        signature: key.sign(&bytes).to_vec(),
        cancel: bytes,
    }
}

/// Encodes and signs `event` with `key`: what `gridgate dr sign` and the DR operator do.
pub fn sign_event(event: &pb::DrEvent, key: &Identity) -> pb::SignedDrEvent {
    let bytes = event.encode_to_vec();
    let signature = key.sign(&bytes).to_vec();
    pb::SignedDrEvent {
        event: bytes,
        signature,
    }
}

/// Signs a report with the gateway's identity.
pub fn sign_report(
    identity: &Identity,
    report: &pb::PerformanceReport,
) -> pb::SignedPerformanceReport {
    let bytes = report.encode_to_vec();
    let signature = identity.sign(&bytes).to_vec();
    pb::SignedPerformanceReport {
        report: bytes,
        signature,
    }
}

/// Checks a signed report against the gateway's public key and decodes it.
pub fn verify_report(
    key: &VerifyingKey,
    signed: &pb::SignedPerformanceReport,
) -> Result<pb::PerformanceReport, ReportError> {
    let sig = Signature::from_slice(&signed.signature).map_err(|_| ReportError::Signature)?;
    key.verify(&signed.report, &sig)
        .map_err(|_| ReportError::Signature)?;
    Ok(pb::PerformanceReport::decode(signed.report.as_slice())?)
}
