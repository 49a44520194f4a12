//! Key schedule, handshake MACs, cookies and record protection.
//!
//! Everything here is built from well-kept primitives (RustCrypto's HKDF and
//! HMAC, ring's ChaCha20-Poly1305, whose assembly seals a short record about
//! seven times faster than the portable crate: a fleet's wakes are mostly
//! records); nothing is hand-rolled beyond choosing inputs. The labels are
//! part of the wire contract (docs/protocol.md) because firmware must derive
//! the same keys.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;

use crate::SessionId;

type HmacSha256 = Hmac<Sha256>;

/// Length of truncated MACs carried on the wire (handshake MACs and cookies).
pub const MAC_LEN: usize = 16;
/// Length of a record's AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of the nonces each side contributes to a handshake.
pub const NONCE_LEN: usize = 16;

/// A device's pre-shared key, as configured in the bench file.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl std::fmt::Debug for Psk {
    // Keys never appear in logs or reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Psk> {
        let s = s.trim();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Psk(out))
    }

    /// A key derived from a label; the simulated bench uses this so its
    /// boards have distinct keys without a key file.
    pub fn derive_for(label: &str) -> Psk {
        let hk = Hkdf::<Sha256>::new(Some(b"rig sim psk"), label.as_bytes());
        let mut out = [0u8; 32];
        hk.expand(b"psk", &mut out).expect("32 bytes is a valid HKDF length");
        Psk(out)
    }
}

/// The keys both sides derive from a completed exchange of nonces.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Protects records from the device to the cloud.
    pub c2s: [u8; 32],
    /// Protects records from the cloud to the device.
    pub s2c: [u8; 32],
    /// Keys the handshake's finished MACs.
    pub mac: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// Direction of a record, bound into its nonce so a record cannot be reflected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToCloud = 0,
    ToDevice = 1,
}

impl SessionKeys {
    /// HKDF-SHA256 with both nonces as salt, the PSK as input keying material
    /// and the session id and device id as context: fresh nonces from both
    /// sides mean a fresh key even if one side's randomness is poor.
    pub fn derive(
        psk: &Psk,
        device_id: &str,
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
        session_id: SessionId,
    ) -> SessionKeys {
        let mut salt = [0u8; NONCE_LEN * 2];
        salt[..NONCE_LEN].copy_from_slice(client_nonce);
        salt[NONCE_LEN..].copy_from_slice(server_nonce);
        let hk = Hkdf::<Sha256>::new(Some(&salt), &psk.0);
        let mut info = Vec::with_capacity(32 + device_id.len());
        info.extend_from_slice(b"rig v1 session keys");
        info.extend_from_slice(&session_id.to_be_bytes());
        info.extend_from_slice(device_id.as_bytes());
        let mut okm = [0u8; 96];
        hk.expand(&info, &mut okm).expect("96 bytes is a valid HKDF length");
        let mut keys = SessionKeys {
            c2s: [0; 32],
            s2c: [0; 32],
            mac: [0; 32],
        };
        keys.c2s.copy_from_slice(&okm[..32]);
        keys.s2c.copy_from_slice(&okm[32..64]);
        keys.mac.copy_from_slice(&okm[64..]);
        keys
    }

    /// Handshake MAC over `label || parts...`, truncated to [`MAC_LEN`].
    pub fn handshake_mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
        mac16(&self.mac, label, parts)
    }

    /// Constant-time check of a handshake MAC.
    pub fn verify_handshake_mac(&self, label: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.mac).expect("HMAC takes keys of any size");
        m.update(label);
        for p in parts {
            m.update(p);
        }
        m.verify_truncated_left(tag).is_ok()
    }

    fn key_for(&self, dir: Direction) -> &[u8; 32] {
        match dir {
            Direction::ToCloud => &self.c2s,
            Direction::ToDevice => &self.s2c,
        }
    }

    /// Encrypts `plaintext` in place and returns the tag. `aad` is the
    /// record header, so flags, session id and counter cannot be altered.
    pub fn seal(&self, dir: Direction, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .cipher(dir)
            .seal_in_place_separate_tag(record_nonce(dir, counter), Aad::from(aad), buf)
            .expect("records are far below ChaCha20-Poly1305's length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts in place; false (and garbage in `buf`) if the tag does not verify.
    pub fn open(&self, dir: Direction, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = Tag::try_from(tag) else {
            return false;
        };
        self.cipher(dir)
            .open_in_place_separate_tag(record_nonce(dir, counter), Aad::from(aad), tag, buf, 0..)
            .is_ok()
    }

    fn cipher(&self, dir: Direction) -> LessSafeKey {
        let key = UnboundKey::new(&CHACHA20_POLY1305, self.key_for(dir)).expect("ChaCha20 keys are 32 bytes");
        LessSafeKey::new(key)
    }
}

// Unique per key: a sender's counters start at 1 and strictly increase
// within a session (docs/protocol.md), and each direction has its own key.
fn record_nonce(dir: Direction, counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[3] = dir as u8;
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn mac16(key: &[u8], label: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any size");
    m.update(label);
    for p in parts {
        m.update(p);
    }
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// The cloud's secret for stateless hello cookies (as DTLS HelloVerifyRequest).
#[derive(Clone)]
pub struct CookieKey(pub [u8; 32]);

/// A cookie as carried on the wire.
pub type Cookie = [u8; MAC_LEN];

impl CookieKey {
    /// The cookie binds the source address, the claimed device and its nonce:
    /// only a client that really receives at that address can echo it, so a
    /// spoofed source gets a 24-byte answer and costs the cloud no state.
    pub fn cookie(&self, peer: &[u8], device_id: &str, client_nonce: &[u8; NONCE_LEN]) -> Cookie {
        mac16(&self.0, b"rig v1 cookie", &[peer, device_id.as_bytes(), client_nonce])
    }

    /// Constant-time check of an echoed cookie.
    pub fn verify(&self, peer: &[u8], device_id: &str, client_nonce: &[u8; NONCE_LEN], cookie: &[u8]) -> bool {
        let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        m.update(b"rig v1 cookie");
        m.update(peer);
        m.update(device_id.as_bytes());
        m.update(client_nonce);
        m.verify_truncated_left(cookie).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::derive(&Psk([7; 32]), "dev-1", &[1; 16], &[2; 16], 42)
    }

    #[test]
    fn seal_then_open_round_trips_and_detects_tampering() {
        let k = keys();
        let mut buf = b"hello cloud".to_vec();
        let tag = k.seal(Direction::ToCloud, 5, b"hdr", &mut buf);
        assert_ne!(&buf, b"hello cloud");
        let mut good = buf.clone();
        assert!(k.open(Direction::ToCloud, 5, b"hdr", &mut good, &tag));
        assert_eq!(&good, b"hello cloud");
        // Wrong counter, direction, header or key must all fail.
        assert!(!k.open(Direction::ToCloud, 6, b"hdr", &mut buf.clone(), &tag));
        assert!(!k.open(Direction::ToDevice, 5, b"hdr", &mut buf.clone(), &tag));
        assert!(!k.open(Direction::ToCloud, 5, b"hdX", &mut buf.clone(), &tag));
        let other = SessionKeys::derive(&Psk([8; 32]), "dev-1", &[1; 16], &[2; 16], 42);
        assert!(!other.open(Direction::ToCloud, 5, b"hdr", &mut buf.clone(), &tag));
    }

    #[test]
    fn fresh_nonces_give_fresh_keys() {
        let a = keys();
        let b = SessionKeys::derive(&Psk([7; 32]), "dev-1", &[1; 16], &[3; 16], 42);
        let c = SessionKeys::derive(&Psk([7; 32]), "dev-1", &[9; 16], &[2; 16], 42);
        assert_ne!(a.c2s, b.c2s);
        assert_ne!(a.c2s, c.c2s);
        assert_ne!(a.c2s, a.s2c);
    }

    #[test]
    fn cookie_is_bound_to_peer_device_and_nonce() {
        let ck = CookieKey([3; 32]);
        let c = ck.cookie(b"127.0.0.1:4000", "dev-1", &[1; 16]);
        assert!(ck.verify(b"127.0.0.1:4000", "dev-1", &[1; 16], &c));
        assert!(!ck.verify(b"127.0.0.1:4001", "dev-1", &[1; 16], &c));
        assert!(!ck.verify(b"127.0.0.1:4000", "dev-2", &[1; 16], &c));
        assert!(!ck.verify(b"127.0.0.1:4000", "dev-1", &[2; 16], &c));
    }

    #[test]
    fn psk_hex_parsing() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(Psk::from_hex(&hex).unwrap().0[31], 0xff);
        assert!(Psk::from_hex("abc").is_none());
        assert!(Psk::from_hex(&"zz".repeat(32)).is_none());
    }
}
