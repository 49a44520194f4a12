//! The wire format of rig's local device cloud: what a device and the cloud
//! put in each UDP datagram, and the cryptography that binds it to a device.
//!
//! This crate owns bytes and keys only. It holds no sockets, no clocks, no
//! session storage and no policy (what a cloud does with an unknown session or
//! when a device retransmits is decided by its users). `docs/protocol.md` in the
//! repository is the prose version of the same contract for firmware written
//! in C; the constants here and that document must agree.
//!
//! # Layout
//! - [`frame`]: the datagram envelope and every message type, encode/decode
//!   with a `Malformed` error for anything that does not parse (never a panic).
//! - [`crypto`]: key schedule (HKDF-SHA256), handshake MACs (HMAC-SHA256),
//!   stateless cookies, and record protection (ChaCha20-Poly1305).
//! - [`handshake`]: the MAC transcripts of the handshake flights.
//! - [`client`]: the device side as a state machine without I/O (handshake
//!   flights, sealing and opening records), which every device model drives.

pub mod client;
pub mod crypto;
pub mod frame;
pub mod handshake;

pub use crypto::{Cookie, CookieKey, Direction, Psk, SessionKeys};
pub use frame::{
    ClientFinished, ClientHello, Frame, HelloVerify, Inner, InnerKind, Malformed, Record, RecordHeader, ServerFinished,
    ServerHello, SessionUnknown,
};
pub use handshake::Transcript;

/// Protocol version carried in every datagram.
pub const VERSION: u8 = 1;

/// Two magic bytes ("RG") open every datagram so stray traffic is rejected cheaply.
pub const MAGIC: [u8; 2] = *b"RG";

/// Largest datagram either side sends or accepts. Bigger input is malformed.
pub const MAX_DATAGRAM: usize = 4096;

/// Size of the certificate chain the cloud sends in its server hello. Real
/// device clouds of the incident's era sent ~3 KB of certificates; this is what
/// makes a full handshake cost ~5.5 KB on the air, the figure the bench has to
/// reproduce for byte budgets to mean anything.
pub const SERVER_CERT_LEN: usize = 3_050;

/// Size of the client certificate a device sends in its finished flight.
pub const CLIENT_CERT_LEN: usize = 1_850;

/// Filler a device puts in its client hello (cipher suites, extensions in DTLS).
pub const CLIENT_HELLO_PADDING: usize = 120;

/// A session identifier chosen by the cloud at handshake time.
pub type SessionId = u64;
