//! SLIP (RFC 1055) framing of datagrams on the modem UART: `END` (0xC0)
//! before and after each datagram, `END` and `ESC` inside escaped. SLIP and
//! not a length prefix because a board that resets mid-frame resynchronises
//! at the next `END` instead of misreading every frame after it.

const END: u8 = 0xC0;
const ESC: u8 = 0xDB;
const ESC_END: u8 = 0xDC;
const ESC_ESC: u8 = 0xDD;

/// One datagram as it goes on the wire.
pub fn encode(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() + 8);
    out.push(END);
    for &b in d {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            _ => out.push(b),
        }
    }
    out.push(END);
    out
}

/// Reassembles datagrams from a byte stream; a frame longer than `max` is
/// dropped whole (never allowed to grow without bound).
pub struct Decoder {
    buf: Vec<u8>,
    esc: bool,
    overflow: bool,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            esc: false,
            overflow: false,
            max,
        }
    }

    /// Feeds bytes; returns the datagrams they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                END => {
                    if !self.buf.is_empty() && !self.overflow {
                        out.push(std::mem::take(&mut self.buf));
                    }
                    self.buf.clear();
                    self.esc = false;
                    self.overflow = false;
                }
                ESC => self.esc = true,
                _ => {
                    let b = match (self.esc, b) {
                        (true, ESC_END) => END,
                        (true, ESC_ESC) => ESC,
                        _ => b,
                    };
                    self.esc = false;
                    if self.buf.len() < self.max {
                        self.buf.push(b);
                    } else {
                        self.overflow = true;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_with_every_special_byte_survive_split_anywhere() {
        let a = vec![1, END, 2, ESC, 3, ESC_END, ESC_ESC];
        let b = vec![END, END, ESC];
        let mut wire = encode(&a);
        wire.extend(encode(&b));
        for cut in 0..wire.len() {
            let mut d = Decoder::new(100);
            let mut got = d.feed(&wire[..cut]);
            got.extend(d.feed(&wire[cut..]));
            assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
        }
    }

    #[test]
    fn a_reset_mid_frame_loses_only_that_frame() {
        let mut d = Decoder::new(100);
        let good = vec![7u8; 10];
        let mut wire = encode(&[9u8; 20]);
        wire.truncate(8); // the board reset while sending
        wire.extend(encode(&good));
        let got = d.feed(&wire);
        assert_eq!(got.last(), Some(&good));
    }

    #[test]
    fn an_endless_frame_is_bounded_and_dropped() {
        let mut d = Decoder::new(16);
        assert!(d.feed(&[1u8; 10_000]).is_empty());
        assert!(d.buf.len() <= 16);
        assert!(d.feed(&[END]).is_empty(), "the oversized frame is dropped");
        assert_eq!(d.feed(&encode(&[5, 6])), vec![vec![5, 6]]);
    }
}
