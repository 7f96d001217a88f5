//! Terminal keys at rest. A terminal's secret is generated here, shown once to whoever
//! registers the terminal, and stored only sealed under the gateway's terminal key
//! (ChaCha20-Poly1305, an AEAD: it hides the secret and detects a changed record), so
//! that a copied data directory, a backup or the journal shipped to the central store
//! never holds it in clear. The sealed form is bound to the terminal's id and key
//! generation, so a sealed key cannot be moved onto another terminal or an older one
//! replayed as new.
//!
//! The terminal key itself comes from the operator (configuration or environment), never
//! from the data directory. A demo data directory uses `DEMO_TERMINAL_KEY`, published
//! like the demo terminals' secrets, which is why a demo must never hold real money.

use cardgate_domain::model::SealedKey;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

use crate::error::LedgerError;

/// The published terminal key of demo data directories.
pub const DEMO_TERMINAL_KEY: [u8; 32] = *b"cardgate-demo-terminal-key-32-by";

/// The key that seals terminal secrets. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct TerminalKey([u8; 32]);

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalKey(..)")
    }
}

impl TerminalKey {
    pub fn new(bytes: [u8; 32]) -> TerminalKey {
        TerminalKey(bytes)
    }

    /// 64 hex digits, as a configuration file or environment variable holds it.
    pub fn from_hex(hex: &str) -> Result<TerminalKey, String> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the terminal key must be 64 hex digits (32 random bytes)".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(TerminalKey(out))
    }

    pub fn demo() -> TerminalKey {
        TerminalKey(DEMO_TERMINAL_KEY)
    }

    /// A key for another purpose, derived from this one (SHA-256 of a purpose label and
    /// the key): the backup's sealing key, so that the one secret an operator already
    /// keeps off the data directory's disk opens its backups too.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"cardgate-derive-v1\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(self.0);
        h.finalize().into()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }

    /// Seals `secret` for terminal `terminal`, key generation `generation`.
    pub fn seal(&self, terminal: u64, generation: u32, secret: &[u8; 32]) -> SealedKey {
        let nonce: [u8; 12] = rand::random();
        let aad = binding(terminal, generation);
        let ciphertext = self
            .cipher()
            .encrypt(&nonce.into(), Payload { msg: secret, aad: &aad })
            // Sealing 32 bytes cannot exceed the cipher's limits.
            .expect("a terminal secret seals");
        SealedKey { nonce, ciphertext }
    }

    /// The secret sealed for `terminal` and `generation`; an error when this is not
    /// the key it was sealed with, or the record was changed.
    pub fn open(&self, terminal: u64, generation: u32, sealed: &SealedKey) -> Result<[u8; 32], LedgerError> {
        let aad = binding(terminal, generation);
        let plain = self
            .cipher()
            .decrypt(
                &sealed.nonce.into(),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                LedgerError::Invalid(format!(
                    "terminal {terminal}'s key does not open with the configured terminal key (a different key, \
                     or a changed record)"
                ))
            })?;
        plain
            .try_into()
            .map_err(|_| LedgerError::Invalid(format!("terminal {terminal}'s sealed key is not 32 bytes")))
    }
}

/// What a sealed key is bound to.
fn binding(terminal: u64, generation: u32) -> [u8; 28] {
    let mut aad = [0u8; 28];
    aad[..16].copy_from_slice(b"cardgate-tk-v1\0\0");
    aad[16..24].copy_from_slice(&terminal.to_be_bytes());
    aad[24..].copy_from_slice(&generation.to_be_bytes());
    aad
}

/// A new random terminal secret.
pub fn new_secret() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_key_for_its_terminal_and_generation() {
        let k = TerminalKey::new([9; 32]);
        let secret = new_secret();
        let sealed = k.seal(42, 1, &secret);
        assert!(!sealed.ciphertext.windows(32).any(|w| w == secret), "not in clear");
        assert_eq!(k.open(42, 1, &sealed).unwrap(), secret);
        assert!(k.open(43, 1, &sealed).is_err(), "another terminal");
        assert!(k.open(42, 2, &sealed).is_err(), "another generation");
        assert!(TerminalKey::new([8; 32]).open(42, 1, &sealed).is_err(), "another key");
        let mut changed = sealed.clone();
        changed.ciphertext[0] ^= 1;
        assert!(k.open(42, 1, &changed).is_err(), "a changed record");
        assert_ne!(k.seal(42, 1, &secret), sealed, "a fresh nonce each time");
    }

    #[test]
    fn keys_come_as_64_hex_digits_and_never_show() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let k = TerminalKey::from_hex(hex).unwrap();
        assert_eq!(format!("{k:?}"), "TerminalKey(..)");
        assert!(TerminalKey::from_hex("abc").is_err());
        assert!(TerminalKey::from_hex(&hex.replace('a', "g")).is_err());
    }
}
