//! The handshake's MAC transcripts, shared by both sides so the cloud and
//! device models cannot drift apart. Labels are part of the wire contract.

use crate::SessionId;
use crate::crypto::{MAC_LEN, NONCE_LEN, SessionKeys};

/// What both sides know once the server hello has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    pub client_nonce: [u8; NONCE_LEN],
    pub server_nonce: [u8; NONCE_LEN],
    pub session_id: SessionId,
}

impl Transcript {
    fn sid(&self) -> [u8; 8] {
        self.session_id.to_be_bytes()
    }

    pub fn server_hello_mac(&self, keys: &SessionKeys, cert: &[u8]) -> [u8; MAC_LEN] {
        keys.handshake_mac(
            b"server hello",
            &[&self.client_nonce, &self.server_nonce, &self.sid(), cert],
        )
    }

    pub fn verify_server_hello(&self, keys: &SessionKeys, cert: &[u8], mac: &[u8]) -> bool {
        keys.verify_handshake_mac(
            b"server hello",
            &[&self.client_nonce, &self.server_nonce, &self.sid(), cert],
            mac,
        )
    }

    pub fn client_finished_mac(&self, keys: &SessionKeys, cert: &[u8]) -> [u8; MAC_LEN] {
        keys.handshake_mac(
            b"client finished",
            &[&self.client_nonce, &self.server_nonce, &self.sid(), cert],
        )
    }

    pub fn verify_client_finished(&self, keys: &SessionKeys, cert: &[u8], mac: &[u8]) -> bool {
        keys.verify_handshake_mac(
            b"client finished",
            &[&self.client_nonce, &self.server_nonce, &self.sid(), cert],
            mac,
        )
    }

    pub fn server_finished_mac(&self, keys: &SessionKeys) -> [u8; MAC_LEN] {
        keys.handshake_mac(
            b"server finished",
            &[&self.client_nonce, &self.server_nonce, &self.sid()],
        )
    }

    pub fn verify_server_finished(&self, keys: &SessionKeys, mac: &[u8]) -> bool {
        keys.verify_handshake_mac(
            b"server finished",
            &[&self.client_nonce, &self.server_nonce, &self.sid()],
            mac,
        )
    }
}

/// Deterministic filler standing in for a certificate chain of `len` bytes.
pub fn certificate(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Psk;

    #[test]
    fn each_mac_verifies_only_under_its_own_label() {
        let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], 5);
        let t = Transcript {
            client_nonce: [1; 16],
            server_nonce: [2; 16],
            session_id: 5,
        };
        let cert = certificate(100, 1);
        let sh = t.server_hello_mac(&keys, &cert);
        assert!(t.verify_server_hello(&keys, &cert, &sh));
        assert!(
            !t.verify_client_finished(&keys, &cert, &sh),
            "labels separate the flights"
        );
        let cf = t.client_finished_mac(&keys, &cert);
        assert!(t.verify_client_finished(&keys, &cert, &cf));
        assert!(!t.verify_client_finished(&keys, &certificate(100, 2), &cf));
        let sf = t.server_finished_mac(&keys);
        assert!(t.verify_server_finished(&keys, &sf));
        let other = Transcript { session_id: 6, ..t };
        assert!(!other.verify_server_finished(&keys, &sf));
    }
}
