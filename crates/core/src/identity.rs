//! The gateway's Ed25519 identity key, kept as PKCS#8 PEM (readable by openssl).

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a key cannot be made, read or written.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// File cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a PEM Ed25519 key.
    #[error("{path}: not an Ed25519 {what} in PEM form ({reason})")]
    Format {
        path: PathBuf,
        /// "private key" or "public key".
        what: &'static str,
        /// Parser's reason.
        reason: String,
    },
    /// The system's random source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
    /// Would overwrite an existing key.
    #[error("{0} exists; refusing to overwrite an identity key (move it away first)")]
    Exists(PathBuf),
}

/// The gateway's signing key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity(public {})",
            hex::encode(self.public().to_bytes())
        )
    }
}

impl Identity {
    /// A new random key.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Identity {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| IdentityError::Format {
            path: path.to_path_buf(),
            what: "private key",
            reason: e.to_string(),
        })?;
        Ok(Identity { key })
    }

    /// Writes the private key (mode 0600) and the public key beside it, refusing to
    /// overwrite an existing private key.
    pub fn save(&self, private: &Path, public: &Path) -> Result<(), IdentityError> {
        if private.exists() {
            return Err(IdentityError::Exists(private.to_path_buf()));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        // PKCS#8 v1 (RFC 8410's PrivateKeyInfo, the seed alone): OpenSSL 3.0 refuses the
        // v2 form with the public key inside that ed25519-dalek writes by default, and an
        // operator should be able to look at the key with `openssl pkey`.
        let pem = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Random(e.to_string()))?;
        if let Some(dir) = private.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_private(private, pem.as_bytes()).map_err(io(private))?;
        std::fs::write(public, self.public_pem()).map_err(io(public))?;
        Ok(())
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as PEM (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        self.public()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let s: Signature = self.key.sign(message);
        s.to_bytes()
    }
}

/// Writes a secret file: created new (never over an existing one), owner-only, flushed.
#[cfg(unix)]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Reads a PEM public key (what `gridgate keygen` writes beside the private key).
pub fn load_public(path: &Path) -> Result<VerifyingKey, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| IdentityError::Format {
        path: path.to_path_buf(),
        what: "public key",
        reason: e.to_string(),
    })
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (dir.path().join("id.key"), dir.path().join("id.pub"));
        let id = Identity::generate().unwrap();
        id.save(&k, &p).unwrap();
        let again = Identity::load(&k).unwrap();
        assert_eq!(again.public(), id.public());
        assert_eq!(load_public(&p).unwrap(), id.public());
        assert!(matches!(id.save(&k, &p), Err(IdentityError::Exists(_))));
        std::fs::write(k.with_extension("bad"), "not a key").unwrap();
        assert!(matches!(
            Identity::load(&k.with_extension("bad")),
            Err(IdentityError::Format { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
