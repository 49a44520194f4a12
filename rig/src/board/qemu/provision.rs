//! The provisioning page our firmware reads at a fixed flash address
//! (`provision_t` in firmware-fixtures/sleepy-c/src/hal.h, little-endian):
//! what a factory writes per board (device id, key) plus the fixture's
//! timings and fresh entropy from the OS RNG for every power-on (the
//! emulated board has no TRNG; its nonces come from this).

use rig_proto::Psk;

use super::fixture::Params;

const MAGIC: u32 = 0x5650_4752; // "RGPV"

fn ms(d: crate::units::Dur) -> u32 {
    u32::try_from(d.0.as_millis()).unwrap_or(u32::MAX)
}

/// The page's bytes.
pub fn page(device_id: &str, psk: &Psk, p: &Params, entropy: [u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(180);
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    let mut id = [0u8; 64];
    let n = device_id.len().min(63);
    id[..n].copy_from_slice(&device_id.as_bytes()[..n]);
    v.extend_from_slice(&id);
    v.extend_from_slice(&psk.0);
    v.extend_from_slice(&entropy);
    for x in [
        ms(p.sleep_interval),
        ms(p.sleep_jitter),
        ms(p.awake_window),
        ms(p.attach_time),
        ms(p.resume_timeout),
        ms(p.retransmit),
        ms(p.give_up_after),
        ms(p.handshake_retransmit),
        0, // max_wakes: run forever
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_the_layout_of_provision_t() {
        let p = Params {
            sleep_interval: crate::units::Dur(std::time::Duration::from_secs(3)),
            sleep_jitter: crate::units::Dur(std::time::Duration::from_millis(500)),
            awake_window: crate::units::Dur(std::time::Duration::from_secs(2)),
            attach_time: crate::units::Dur(std::time::Duration::from_millis(100)),
            resume_timeout: crate::units::Dur(std::time::Duration::from_secs(1)),
            retransmit: crate::units::Dur(std::time::Duration::from_millis(300)),
            give_up_after: crate::units::Dur(std::time::Duration::from_secs(8)),
            handshake_retransmit: crate::units::Dur(std::time::Duration::from_millis(300)),
        };
        let page = page("vboard-01", &Psk([7; 32]), &p, [9; 32]);
        // magic, version, id[64], psk[32], entropy[32], 9 x u32
        assert_eq!(page.len(), 4 + 4 + 64 + 32 + 32 + 9 * 4);
        assert_eq!(&page[..4], b"RGPV");
        assert_eq!(&page[8..17], b"vboard-01");
        assert_eq!(page[72], 7);
        assert_eq!(page[104], 9);
        assert_eq!(u32::from_le_bytes(page[136..140].try_into().unwrap()), 3000);
    }
}
