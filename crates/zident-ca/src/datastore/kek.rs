//! The key-encryption key: root keys are stored in the database sealed with AES-256-GCM under
//! a key that never enters the database (`--kek-file`), so a copy of the database alone signs
//! nothing.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Why the key-encryption key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The file cannot be read.
    #[error("cannot read the key-encryption key {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold a 256-bit key.
    #[error(
        "{} does not hold a 256-bit key: give 32 random bytes, or 64 hex digits (make one with `head -c 32 /dev/urandom > {}`)",
        path.display(), path.display()
    )]
    NotAKey {
        /// The file.
        path: PathBuf,
    },
    /// A sealed key does not open under this key: another KEK, or altered data.
    #[error(
        "the {} of generation {generation} does not decrypt with this --kek-file (another key-encryption key, or the row was altered)",
        kind.describe()
    )]
    Open {
        /// Which key.
        kind: KeyKind,
        /// The root generation.
        generation: u32,
    },
    /// Sealing failed (the system's random source).
    #[error("cannot encrypt a root key: {0}")]
    Seal(String),
}

/// Which of a generation's keys is sealed: bound in with the generation, so neither can be
/// moved into the other's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The root's signing key.
    Root,
    /// The JWT-SVID signing key.
    Jwt,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Root => "root key",
            KeyKind::Jwt => "JWT-SVID key",
        }
    }
}

/// The loaded key-encryption key.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Reads the key from `path`: 32 raw bytes, or 64 hex digits (whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, KekError> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|source| KekError::Read {
            path: path.to_owned(),
            source,
        })?);
        let not_a_key = || KekError::NotAKey {
            path: path.to_owned(),
        };
        let bytes: Zeroizing<Vec<u8>> = if raw.len() == 32 {
            Zeroizing::new(raw.to_vec())
        } else {
            let text = std::str::from_utf8(&raw).map_err(|_| not_a_key())?;
            let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            if hex.len() != 64 {
                return Err(not_a_key());
            }
            Zeroizing::new(
                (0..32)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| not_a_key())?,
            )
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| not_a_key())?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals the PEM key of `kind` of root `generation`: a random nonce, then the ciphertext
    /// and tag. The kind and generation are bound in as associated data, so a sealed key moved
    /// to another row or column does not open.
    pub fn seal(
        &self,
        kind: KeyKind,
        generation: u32,
        key_pem: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KekError::Seal("no randomness".into()))?;
        let mut data = key_pem.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, generation)),
                &mut data,
            )
            .map_err(|_| KekError::Seal("AES-256-GCM failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(out)
    }

    /// Opens what [`Kek::seal`] made for `generation`.
    pub fn open(
        &self,
        kind: KeyKind,
        generation: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let err = || KekError::Open { kind, generation };
        if sealed.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err())?;
        let mut data = Zeroizing::new(data.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(kind, generation)), &mut data)
            .map_err(|_| err())?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

fn aad(kind: KeyKind, generation: u32) -> Vec<u8> {
    match kind {
        KeyKind::Root => format!("zident-root-key/{generation}"),
        KeyKind::Jwt => format!("zident-jwt-key/{generation}"),
    }
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, [7u8; 32]).unwrap();
        let kek = Kek::load(&path).unwrap();
        let sealed = kek
            .seal(KeyKind::Root, 2, b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(
            !sealed.windows(5).any(|w| w == b"BEGIN"),
            "no plaintext in the row"
        );
        assert_eq!(
            &*kek.open(KeyKind::Root, 2, &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(matches!(
            kek.open(KeyKind::Root, 3, &sealed),
            Err(KekError::Open { generation: 3, .. })
        ));
        let e = kek.open(KeyKind::Jwt, 2, &sealed).unwrap_err().to_string();
        assert!(e.contains("JWT-SVID key of generation 2"), "{e}");

        std::fs::write(&path, "ab".repeat(32) + "\n").unwrap();
        let other = Kek::load(&path).unwrap();
        assert!(
            other.open(KeyKind::Root, 2, &sealed).is_err(),
            "another KEK does not open it"
        );

        std::fs::write(&path, "too short").unwrap();
        let err = Kek::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("256-bit") && err.contains("/dev/urandom"),
            "{err}"
        );
    }
}
