//! Sign-on proof, session key derivation and the per-frame MAC.
//!
//! All derivations are HMAC-SHA256 keyed with the terminal's 32-byte secret over a label
//! and the sign-on inputs, so a session key is fresh whenever either nonce is:
//!
//! ```text
//! input  = terminal_id (u64 LE) || terminal_nonce (16) || gateway_nonce (16)
//! proof  = HMAC(secret, "cardgate/1/proof" || input)          32 bytes, T→G in PROOF
//! k_up   = HMAC(secret, "cardgate/1/up"    || input)          MAC key of T→G frames
//! k_down = HMAC(secret, "cardgate/1/down"  || input)          MAC key of G→T frames
//! mac    = HMAC(k, length prefix || header || body)[0..16]
//! sale   = HMAC(secret, "cardgate/1/offline" || terminal_id || tx_seq || card
//!               || amount_fen || sale_time_ms)[0..16]         an offline sale's MAC
//! door   = HMAC(secret, "cardgate/1/door-event" || terminal_id || event_seq || card
//!               || door || direction || granted || reason
//!               || event_time_ms)[0..16]                      an offline door event's MAC
//! ```

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::frame::MAC_LEN;

type HmacSha256 = Hmac<Sha256>;

const LABEL_PROOF: &[u8] = b"cardgate/1/proof";
const LABEL_UP: &[u8] = b"cardgate/1/up";
const LABEL_DOWN: &[u8] = b"cardgate/1/down";
const LABEL_DEMO: &[u8] = b"cardgate/1/demo-terminal";
const LABEL_OFFLINE: &[u8] = b"cardgate/1/offline";
const LABEL_DOOR_EVENT: &[u8] = b"cardgate/1/door-event";

/// A terminal's long-term secret. `Debug` never prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TerminalSecret(pub [u8; 32]);

impl fmt::Debug for TerminalSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TerminalSecret(..)")
    }
}

impl TerminalSecret {
    /// The secret of terminal `terminal_id` in a demo campus built from `master`:
    /// `HMAC(master, "cardgate/1/demo-terminal" || terminal_id LE)`. Real deployments
    /// give every terminal a random secret; the demo derives them so that the load test
    /// can sign on thousands of terminals knowing one master secret.
    pub fn derive_demo(master: &[u8], terminal_id: u64) -> TerminalSecret {
        TerminalSecret(hmac(master, &[LABEL_DEMO, &terminal_id.to_le_bytes()]))
    }
}

/// The MAC a terminal puts on a sale it made offline, under its long-term secret (not a
/// session key: the sale is made before the session that uploads it exists), over every
/// field that moves money. All integers little-endian.
pub fn offline_sale_mac(
    secret: &TerminalSecret,
    terminal_id: u64,
    tx_seq: u64,
    card: u64,
    amount_fen: i64,
    sale_time_ms: i64,
) -> [u8; MAC_LEN] {
    let full = hmac(
        &secret.0,
        &[
            LABEL_OFFLINE,
            &terminal_id.to_le_bytes(),
            &tx_seq.to_le_bytes(),
            &card.to_le_bytes(),
            &amount_fen.to_le_bytes(),
            &sale_time_ms.to_le_bytes(),
        ],
    );
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// Whether `mac` is the offline sale MAC under `secret`, compared in constant time.
pub fn verify_offline_sale_mac(
    secret: &TerminalSecret,
    terminal_id: u64,
    tx_seq: u64,
    card: u64,
    amount_fen: i64,
    sale_time_ms: i64,
    mac: &[u8; MAC_LEN],
) -> bool {
    let want = offline_sale_mac(secret, terminal_id, tx_seq, card, amount_fen, sale_time_ms);
    // Folding every byte's difference: no early exit on the first mismatch.
    want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The fields of a door event that its MAC covers: everything the controller decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorEventFields {
    pub terminal_id: u64,
    pub event_seq: u64,
    pub card: u64,
    pub door: u32,
    /// 1 in, 2 out.
    pub direction: u8,
    /// 1 granted, 0 denied.
    pub granted: u8,
    pub reason: u16,
    pub event_time_ms: i64,
}

impl DoorEventFields {
    /// The fields of `event` as controller `terminal_id` recorded it.
    pub fn of(terminal_id: u64, event: &crate::message::DoorEvent) -> DoorEventFields {
        DoorEventFields {
            terminal_id,
            event_seq: event.event_seq,
            card: event.card.0,
            door: event.door,
            direction: event.direction as u8,
            granted: u8::from(event.granted()),
            reason: event.reason.code(),
            event_time_ms: event.event_time_ms,
        }
    }
}

/// The MAC a door controller puts on a decision it made offline, under its long-term
/// secret (like `offline_sale_mac`: the event exists before the session that uploads
/// it), so that an event cannot be forged or altered on its way to security's log.
/// All integers little-endian.
pub fn door_event_mac(secret: &TerminalSecret, f: &DoorEventFields) -> [u8; MAC_LEN] {
    let full = hmac(
        &secret.0,
        &[
            LABEL_DOOR_EVENT,
            &f.terminal_id.to_le_bytes(),
            &f.event_seq.to_le_bytes(),
            &f.card.to_le_bytes(),
            &f.door.to_le_bytes(),
            &[f.direction, f.granted],
            &f.reason.to_le_bytes(),
            &f.event_time_ms.to_le_bytes(),
        ],
    );
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// Whether `mac` is the door event MAC under `secret`, compared in constant time.
pub fn verify_door_event_mac(secret: &TerminalSecret, f: &DoorEventFields, mac: &[u8; MAC_LEN]) -> bool {
    let want = door_event_mac(secret, f);
    want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The inputs every sign-on derivation shares.
#[derive(Clone, Copy, Debug)]
pub struct SignOnInput {
    pub terminal_id: u64,
    pub terminal_nonce: [u8; 16],
    pub gateway_nonce: [u8; 16],
}

impl SignOnInput {
    fn derive(&self, secret: &TerminalSecret, label: &[u8]) -> [u8; 32] {
        hmac(
            &secret.0,
            &[
                label,
                &self.terminal_id.to_le_bytes(),
                &self.terminal_nonce,
                &self.gateway_nonce,
            ],
        )
    }

    /// What the terminal sends in PROOF.
    pub fn proof(&self, secret: &TerminalSecret) -> [u8; 32] {
        self.derive(secret, LABEL_PROOF)
    }

    /// Constant-time check of a received proof.
    pub fn verify_proof(&self, secret: &TerminalSecret, proof: &[u8; 32]) -> bool {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&secret.0).expect("any key length");
        m.update(LABEL_PROOF);
        m.update(&self.terminal_id.to_le_bytes());
        m.update(&self.terminal_nonce);
        m.update(&self.gateway_nonce);
        m.verify_slice(proof).is_ok()
    }

    pub fn session_keys(&self, secret: &TerminalSecret) -> SessionKeys {
        SessionKeys {
            up: MacKey::new(&self.derive(secret, LABEL_UP)),
            down: MacKey::new(&self.derive(secret, LABEL_DOWN)),
        }
    }
}

/// A MAC key with its HMAC state precomputed, so that each frame costs one clone of the
/// keyed state instead of re-hashing the key's padded blocks.
#[derive(Clone)]
pub struct MacKey(HmacSha256);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub fn new(key: &[u8; 32]) -> MacKey {
        MacKey(<HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length"))
    }

    pub fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.0.clone();
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Constant-time comparison of a truncated tag.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.0.clone();
        m.update(data);
        m.verify_truncated_left(tag).is_ok()
    }
}

/// The two directional MAC keys of one session.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    /// Terminal → gateway.
    pub up: MacKey,
    /// Gateway → terminal.
    pub down: MacKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SignOnInput {
        SignOnInput {
            terminal_id: 1001,
            terminal_nonce: [0x11; 16],
            gateway_nonce: [0x22; 16],
        }
    }

    #[test]
    fn proof_verifies_only_with_the_right_secret_and_nonces() {
        let s = TerminalSecret([7; 32]);
        let p = input().proof(&s);
        assert!(input().verify_proof(&s, &p));
        assert!(!input().verify_proof(&TerminalSecret([8; 32]), &p));
        let mut other = input();
        other.gateway_nonce[0] ^= 1;
        assert!(!other.verify_proof(&s, &p));
    }

    #[test]
    fn directions_and_sessions_have_different_keys() {
        let s = TerminalSecret([7; 32]);
        let k = input().session_keys(&s);
        assert_ne!(k.up.tag(b"x"), k.down.tag(b"x"));
        let mut other = input();
        other.terminal_nonce[15] ^= 1;
        let k2 = other.session_keys(&s);
        assert_ne!(k.up.tag(b"x"), k2.up.tag(b"x"));
    }

    #[test]
    fn truncated_tag_verifies_and_rejects_flips() {
        let k = MacKey::new(&[3; 32]);
        let t = k.tag(b"frame");
        assert!(k.verify(b"frame", &t));
        let mut bad = t;
        bad[0] ^= 0x80;
        assert!(!k.verify(b"frame", &bad));
        assert!(!k.verify(b"framf", &t));
    }

    #[test]
    fn demo_secrets_differ_per_terminal() {
        let a = TerminalSecret::derive_demo(b"m", 1);
        let b = TerminalSecret::derive_demo(b"m", 2);
        assert_ne!(a, b);
        assert_eq!(a, TerminalSecret::derive_demo(b"m", 1));
    }

    #[test]
    fn a_door_event_mac_covers_every_field_and_the_controller() {
        let s = TerminalSecret([7; 32]);
        let f = DoorEventFields {
            terminal_id: 100_001,
            event_seq: 9,
            card: 62_220_000_000_001,
            door: 1,
            direction: 1,
            granted: 1,
            reason: 0,
            event_time_ms: 1_772_424_300_000,
        };
        let mac = door_event_mac(&s, &f);
        assert!(verify_door_event_mac(&s, &f, &mac));
        assert!(!verify_door_event_mac(&TerminalSecret([8; 32]), &f, &mac));
        let changed = [
            DoorEventFields {
                terminal_id: 100_002,
                ..f
            },
            DoorEventFields { event_seq: 10, ..f },
            DoorEventFields { card: f.card + 1, ..f },
            DoorEventFields { door: 2, ..f },
            DoorEventFields { direction: 2, ..f },
            DoorEventFields {
                granted: 0,
                reason: 1,
                ..f
            },
            DoorEventFields { reason: 1, ..f },
            DoorEventFields {
                event_time_ms: f.event_time_ms + 1,
                ..f
            },
        ];
        for c in changed {
            assert!(!verify_door_event_mac(&s, &c, &mac), "{c:?}");
        }
        // Not an offline sale's MAC over the same numbers.
        assert_ne!(
            mac,
            offline_sale_mac(&s, f.terminal_id, f.event_seq, f.card, 0, f.event_time_ms)
        );
    }
}
