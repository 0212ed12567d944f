//! Encryption at rest: XChaCha20-Poly1305 under one master key.
//!
//! The key comes from `GANTRY_MASTER_KEY` (64 hex characters), or else from `master.key` in the
//! data dir, created with mode 0600 on first use. Each sealed value is `nonce (24 bytes) ||
//! ciphertext+tag`, with the value's store key as associated data, so a ciphertext moved to another
//! slot (another secret's name) no longer opens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::StoreError;

pub const KEY_ENV: &str = "GANTRY_MASTER_KEY";
pub const KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 24;

/// The master key. Deliberately not `Debug`.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl MasterKey {
    /// Loads the key from the environment, or from `data_dir/master.key`. With `create`, a missing
    /// key file is created; without (paths that only decrypt), a missing file is an error, since a
    /// new key could not open anything sealed before.
    pub fn load(data_dir: &Path, create: bool) -> Result<MasterKey, StoreError> {
        if let Some(value) = std::env::var_os(KEY_ENV) {
            let text = value.to_string_lossy();
            let bytes = decode_hex(text.trim()).filter(|b| b.len() == 32).ok_or_else(|| {
                StoreError::Key(format!(
                    "{KEY_ENV} must be 64 hex characters (32 bytes); generate one with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`"
                ))
            })?;
            return Ok(MasterKey::from_bytes(&bytes));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(content) => {
                let text = String::from_utf8_lossy(&content);
                let bytes = decode_hex(text.trim())
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        StoreError::Key(format!(
                            "{} is not 64 hex characters; restore it from a backup",
                            path.display()
                        ))
                    })?;
                let mode = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0);
                if mode & 0o077 != 0 {
                    return Err(StoreError::Key(format!(
                        "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    )));
                }
                Ok(MasterKey::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                Err(StoreError::Key(format!(
                    "{} is missing, so values sealed with it cannot be read; restore it from a backup or set {KEY_ENV}",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                OsRng.fill_bytes(&mut bytes);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| {
                        StoreError::io(
                            format!("cannot create the master key file {}", path.display()),
                            e,
                        )
                    })?;
                file.write_all(encode_hex(&bytes).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        StoreError::io(
                            format!("cannot write the master key file {}", path.display()),
                            e,
                        )
                    })?;
                Ok(MasterKey::from_bytes(&bytes))
            }
            Err(e) => Err(StoreError::io(
                format!("cannot read the master key file {}", path.display()),
                e,
            )),
        }
    }

    fn from_bytes(bytes: &[u8]) -> MasterKey {
        let key = chacha20poly1305::Key::from_slice(bytes);
        MasterKey {
            cipher: XChaCha20Poly1305::new(key),
        }
    }

    /// Encrypts `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "cannot seal the value of {}",
                    String::from_utf8_lossy(aad).replace('\0', "/")
                ))
            })?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts what `seal` produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Crypto("sealed value is truncated".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "cannot decrypt a value: the master key differs from the one it was written with ({KEY_ENV} or {KEY_FILE})"
                ))
            })
    }
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes lowercase or uppercase hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes
}

/// Fills a buffer with random bytes from the operating system.
pub fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}
