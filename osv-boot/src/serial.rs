//! A 16550 UART (the PC's COM1 at port `0x3f8`), generic over port access.
//!
//! Register offsets from the National Semiconductor PC16550D data sheet:
//! 0 THR/RBR (DLL with DLAB), 1 IER (DLM with DLAB), 2 FCR, 3 LCR, 4 MCR, 5 LSR.

use crate::arch::PortIo;
use core::fmt;

/// COM1's base port.
pub const COM1: u16 = 0x3f8;

const THR: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THRE: u8 = 1 << 5;
/// Give up waiting for THRE after this many polls (a missing UART reads 0xff
/// or never drains; output must not hang the kernel).
const SPIN_LIMIT: u32 = 100_000;

/// A 16550 UART at `base`.
#[derive(Debug)]
pub struct Uart16550<P: PortIo> {
    io: P,
    base: u16,
}

impl<P: PortIo> Uart16550<P> {
    /// A UART at `base` (not yet initialised).
    pub const fn new(io: P, base: u16) -> Self {
        Self { io, base }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        let b = self.base;
        self.io.write8(b + IER, 0x00);
        self.io.write8(b + LCR, 0x80); // DLAB: the next two are the divisor
        self.io.write8(b + THR, 0x01); // divisor 1: 115200 baud
        self.io.write8(b + IER, 0x00);
        self.io.write8(b + LCR, 0x03); // 8 data bits, no parity, 1 stop bit
        self.io.write8(b + FCR, 0xc7); // enable and clear FIFOs, 14-byte threshold
        self.io.write8(b + MCR, 0x03); // DTR, RTS
    }

    /// Sends one byte, waiting (boundedly) for room.
    pub fn send(&mut self, byte: u8) {
        for _ in 0..SPIN_LIMIT {
            if self.io.read8(self.base + LSR) & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.io.write8(self.base + THR, byte);
    }

    /// The port access, for tests.
    pub fn io(&self) -> &P {
        &self.io
    }
}

impl<P: PortIo> fmt::Write for Uart16550<P> {
    /// Writes `s`, turning `\n` into `\r\n` for terminals.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.send(b'\r');
            }
            self.send(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    /// A fake UART: records writes, reports THRE after `busy` polls.
    #[derive(Default)]
    struct Fake {
        writes: Vec<(u16, u8)>,
        busy: u32,
    }

    impl PortIo for Fake {
        fn read8(&mut self, port: u16) -> u8 {
            assert_eq!(port, COM1 + LSR);
            if self.busy > 0 {
                self.busy -= 1;
                0
            } else {
                LSR_THRE
            }
        }
        fn write8(&mut self, port: u16, value: u8) {
            self.writes.push((port, value));
        }
    }

    #[test]
    fn init_sets_115200_8n1() {
        let mut u = Uart16550::new(Fake::default(), COM1);
        u.init();
        let w = &u.io().writes;
        assert!(w.contains(&(COM1 + LCR, 0x80)));
        assert!(w.contains(&(COM1, 0x01)));
        assert_eq!(w.iter().rfind(|(p, _)| *p == COM1 + LCR), Some(&(COM1 + LCR, 0x03)));
    }

    #[test]
    fn newline_becomes_crlf_and_waits_for_room() {
        let mut u = Uart16550::new(Fake { busy: 3, ..Default::default() }, COM1);
        write!(u, "a\nb").unwrap();
        let sent: Vec<u8> = u.io().writes.iter().map(|&(_, b)| b).collect();
        assert_eq!(sent, b"a\r\nb");
    }

    #[test]
    fn a_dead_uart_does_not_hang() {
        let mut u = Uart16550::new(Fake { busy: u32::MAX, ..Default::default() }, COM1);
        u.send(b'x');
        assert_eq!(u.io().writes, [(COM1, b'x')]);
    }
}
