//! Just enough Ethernet II, IPv4 and TCP parsing to name a packet's flow.
//!
//! # No-panic contract
//!
//! The input is untrusted bytes from the wire. Every view type here
//! (`EthernetFrame`, `Ipv4Packet`, `TcpHeader`) is built only by a
//! `new_checked` constructor that validates every length its accessors rely
//! on; after that, the accessors index within checked bounds and cannot
//! panic. No function in this module panics, for any input.
//!
//! What is checked:
//! * Ethernet: at least the 14-byte header; the EtherType must be IPv4.
//! * IPv4: version 4, `IHL >= 5`, the header fits the buffer, `total length`
//!   covers the header and fits the buffer (trailing Ethernet padding is cut
//!   off by it).
//! * Fragments: a packet with a non-zero fragment offset has no TCP header and
//!   is refused ([`ParseError::Fragment`]); a first fragment (offset 0, "more
//!   fragments" set) does carry it and is classified.
//! * TCP: the 20-byte fixed header and the header length from `data offset`
//!   fit the IP payload.
//!
//! Checksums are not verified: the classifier only routes packets, and the TCP
//! code that receives them from the channel verifies them (as OSv does).

use core::fmt;

/// Result of this module's parsers.
pub type Result<T> = core::result::Result<T, ParseError>;

/// Why bytes could not be classified as an IPv4/TCP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than a header or length field says.
    Truncated,
    /// The Ethernet frame does not carry IPv4 (ARP, IPv6, VLAN...).
    NotIpv4,
    /// The IP version field is not 4.
    BadVersion,
    /// IHL below 5 (20 bytes).
    BadHeaderLen,
    /// IPv4 total length shorter than the header.
    BadTotalLen,
    /// A non-first IPv4 fragment: it carries no TCP header.
    Fragment,
    /// Not TCP (the IPv4 protocol field).
    NotTcp,
    /// TCP data offset below 5 (20 bytes).
    BadTcpHeaderLen,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "packet truncated",
            Self::NotIpv4 => "ethernet frame does not carry IPv4",
            Self::BadVersion => "IP version is not 4",
            Self::BadHeaderLen => "IPv4 header length below 20 bytes",
            Self::BadTotalLen => "IPv4 total length shorter than its header",
            Self::Fragment => "non-first IPv4 fragment",
            Self::NotTcp => "IPv4 payload is not TCP",
            Self::BadTcpHeaderLen => "TCP header length below 20 bytes",
        })
    }
}

impl core::error::Error for ParseError {}

/// An IPv4 address, in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ipv4Addr(pub [u8; 4]);

impl Ipv4Addr {
    /// `a.b.c.d`.
    #[must_use]
    pub const fn new(a: u8, b: u8, c: u8, d: u8) -> Self {
        Self([a, b, c, d])
    }

    /// The address as a big-endian integer.
    #[must_use]
    pub const fn to_bits(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

impl fmt::Display for Ipv4Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A TCP port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Port(pub u16);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A TCP flow as seen on a *received* packet (OSv's `ipv4_tcp_conn_id`):
/// `src` is the peer, `dst` is us. A socket registers the flow the way its
/// incoming packets will carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowId {
    /// Source (remote) address.
    pub src: Ipv4Addr,
    /// Destination (local) address.
    pub dst: Ipv4Addr,
    /// Source (remote) port.
    pub sport: Port,
    /// Destination (local) port.
    pub dport: Port,
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} -> {}:{}", self.src, self.sport, self.dst, self.dport)
    }
}

/// Big-endian `u16` at `at`; callers have checked `at + 2 <= b.len()`.
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        // Unreachable after the callers' length checks; a harmless value
        // rather than a panic keeps the contract obvious.
        _ => 0,
    }
}

/// Four bytes at `at`; callers have checked `at + 4 <= b.len()`.
fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(&[x, y, z, w]) => Ipv4Addr([x, y, z, w]),
        _ => Ipv4Addr::default(),
    }
}

/// Ethernet II framing.
pub mod ethernet {
    /// Byte ranges of the header fields.
    pub mod field {
        use core::ops::Range;
        /// Destination MAC.
        pub const DST: Range<usize> = 0..6;
        /// Source MAC.
        pub const SRC: Range<usize> = 6..12;
        /// EtherType.
        pub const ETHERTYPE: Range<usize> = 12..14;
        /// Start of the payload.
        pub const PAYLOAD: usize = 14;
    }
    /// Header length.
    pub const HEADER_LEN: usize = field::PAYLOAD;
    /// EtherType of IPv4.
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
}

/// A checked view of an Ethernet II frame.
#[derive(Clone, Copy, Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks that `buffer` holds the 14-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < ethernet::HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The EtherType field.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), ethernet::field::ETHERTYPE.start)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(ethernet::field::PAYLOAD..).unwrap_or_default()
    }
}

/// IPv4 header layout.
pub mod ipv4 {
    /// Byte offsets of the header fields.
    pub mod field {
        /// Version (high nibble) and IHL (low nibble).
        pub const VER_IHL: usize = 0;
        /// Total length.
        pub const TOTAL_LEN: usize = 2;
        /// Flags (high 3 bits) and fragment offset (13 bits, in 8-byte units).
        pub const FLAGS_FRAG: usize = 6;
        /// Protocol.
        pub const PROTOCOL: usize = 9;
        /// Source address.
        pub const SRC: usize = 12;
        /// Destination address.
        pub const DST: usize = 16;
    }
    /// Minimum (option-less) header length.
    pub const MIN_HEADER_LEN: usize = 20;
    /// Protocol number of TCP.
    pub const PROTOCOL_TCP: u8 = 6;
    /// "More fragments" flag in the flags/offset word.
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    /// Fragment offset mask in the flags/offset word.
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
}

/// A checked view of an IPv4 packet.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks the version, header length and total length against `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        let Some(&ver_ihl) = b.first() else {
            return Err(ParseError::Truncated);
        };
        if ver_ihl >> 4 != 4 {
            return Err(ParseError::BadVersion);
        }
        if b.len() < ipv4::MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        if header_len < ipv4::MIN_HEADER_LEN {
            return Err(ParseError::BadHeaderLen);
        }
        if header_len > b.len() {
            return Err(ParseError::Truncated);
        }
        let total_len = usize::from(be16(b, ipv4::field::TOTAL_LEN));
        if total_len < header_len {
            return Err(ParseError::BadTotalLen);
        }
        if total_len > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(Self { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header length in bytes (checked: `20..=total_len`).
    pub fn header_len(&self) -> usize {
        usize::from(self.bytes().first().copied().unwrap_or(0) & 0x0f) * 4
    }

    /// Total length in bytes (checked: `header_len..=buffer len`).
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.bytes(), ipv4::field::TOTAL_LEN))
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.bytes(), ipv4::field::FLAGS_FRAG) & ipv4::FRAG_OFFSET_MASK) * 8
    }

    /// The "more fragments" flag.
    pub fn more_frags(&self) -> bool {
        be16(self.bytes(), ipv4::field::FLAGS_FRAG) & ipv4::MORE_FRAGMENTS != 0
    }

    /// The protocol field.
    pub fn protocol(&self) -> u8 {
        self.bytes().get(ipv4::field::PROTOCOL).copied().unwrap_or(0)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(self.bytes(), ipv4::field::SRC)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(self.bytes(), ipv4::field::DST)
    }

    /// The payload, cut at the total length (drops Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        self.bytes().get(self.header_len()..self.total_len()).unwrap_or_default()
    }
}

/// TCP header layout.
pub mod tcp {
    /// Byte offsets of the header fields.
    pub mod field {
        /// Source port.
        pub const SRC_PORT: usize = 0;
        /// Destination port.
        pub const DST_PORT: usize = 2;
        /// Data offset (high nibble).
        pub const DATA_OFF: usize = 12;
        /// Flags.
        pub const FLAGS: usize = 13;
    }
    /// Minimum (option-less) header length.
    pub const MIN_HEADER_LEN: usize = 20;
    /// SYN flag.
    pub const FLAG_SYN: u8 = 0x02;
}

/// A checked view of a TCP header (and whatever follows it).
#[derive(Clone, Copy, Debug)]
pub struct TcpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpHeader<T> {
    /// Checks that the fixed header and the options `data offset` claims fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < tcp::MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let header_len = usize::from(b.get(tcp::field::DATA_OFF).copied().unwrap_or(0) >> 4) * 4;
        if header_len < tcp::MIN_HEADER_LEN {
            return Err(ParseError::BadTcpHeaderLen);
        }
        if header_len > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Source port.
    pub fn src_port(&self) -> Port {
        Port(be16(self.buffer.as_ref(), tcp::field::SRC_PORT))
    }

    /// Destination port.
    pub fn dst_port(&self) -> Port {
        Port(be16(self.buffer.as_ref(), tcp::field::DST_PORT))
    }

    /// The flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref().get(tcp::field::FLAGS).copied().unwrap_or(0)
    }
}

/// The flow of a bare IPv4 packet (no link-layer header).
pub fn ipv4_flow(packet: &[u8]) -> Result<FlowId> {
    let ip = Ipv4Packet::new_checked(packet)?;
    if ip.frag_offset() != 0 {
        return Err(ParseError::Fragment);
    }
    if ip.protocol() != ipv4::PROTOCOL_TCP {
        return Err(ParseError::NotTcp);
    }
    let tcp = TcpHeader::new_checked(ip.payload())?;
    Ok(FlowId { src: ip.src_addr(), dst: ip.dst_addr(), sport: tcp.src_port(), dport: tcp.dst_port() })
}

/// The flow of an Ethernet II frame carrying IPv4 and TCP.
pub fn frame_flow(frame: &[u8]) -> Result<FlowId> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(ParseError::NotIpv4);
    }
    ipv4_flow(eth.payload())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real TCP SYN as captured on a LAN: 192.168.1.100:54321 ->
    /// 192.168.1.1:80, MSS/SACK/timestamps/window-scale options, checksums
    /// valid, 74 bytes.
    #[rustfmt::skip]
    pub(crate) const SYN_FRAME: [u8; 74] = [
        // Ethernet: dst, src, type IPv4
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x08, 0x00,
        // IPv4: ver/ihl, tos, total len 60, id, DF, ttl 64, TCP, checksum
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x9a, 0xc0,
        // src 192.168.1.100, dst 192.168.1.1
        0xc0, 0xa8, 0x01, 0x64, 0xc0, 0xa8, 0x01, 0x01,
        // TCP: sport 54321, dport 80, seq, ack 0
        0xd4, 0x31, 0x00, 0x50, 0x2a, 0x3b, 0x4c, 0x5d, 0x00, 0x00, 0x00, 0x00,
        // data offset 10 (40 bytes), SYN, window 64240, checksum, urgent
        0xa0, 0x02, 0xfa, 0xf0, 0xf9, 0xa0, 0x00, 0x00,
        // options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x1e, 0x84, 0x80, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    pub(crate) fn syn_flow() -> FlowId {
        FlowId {
            src: Ipv4Addr::new(192, 168, 1, 100),
            dst: Ipv4Addr::new(192, 168, 1, 1),
            sport: Port(54321),
            dport: Port(80),
        }
    }

    /// An option-less Ethernet/IPv4/TCP frame for `flow` with `payload`.
    pub(crate) fn build_frame(flow: FlowId, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut f = Vec::with_capacity(14 + total);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0, 0, 64, 6, 0, 0]);
        f[16..18].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        f.extend_from_slice(&flow.src.0);
        f.extend_from_slice(&flow.dst.0);
        f.extend_from_slice(&flow.sport.0.to_be_bytes());
        f.extend_from_slice(&flow.dport.0.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn parses_real_syn() {
        assert_eq!(frame_flow(&SYN_FRAME), Ok(syn_flow()));
        let eth = EthernetFrame::new_checked(&SYN_FRAME[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.header_len(), ip.total_len()), (20, 60));
        assert_eq!((ip.frag_offset(), ip.more_frags()), (0, false));
        let tcp = TcpHeader::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.flags(), tcp::FLAG_SYN);
        assert_eq!(ipv4_flow(&SYN_FRAME[14..]), Ok(syn_flow()));
        assert_eq!(syn_flow().to_string(), "192.168.1.100:54321 -> 192.168.1.1:80");
    }

    /// Internet checksum (RFC 1071) of `parts`; 0 means a valid checksum field.
    fn inet_checksum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 =
            bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap()
    }

    #[test]
    fn fixture_checksums_are_valid() {
        assert_eq!(inet_checksum(&[&SYN_FRAME[14..34]]), 0);
        let pseudo = [&SYN_FRAME[26..34], &[0, 6, 0, 40][..]].concat();
        assert_eq!(inet_checksum(&[&pseudo, &SYN_FRAME[34..]]), 0);
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut padded = SYN_FRAME.to_vec();
        padded.extend_from_slice(&[0xee; 10]);
        assert_eq!(frame_flow(&padded), Ok(syn_flow()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..SYN_FRAME.len() {
            let r = frame_flow(&SYN_FRAME[..len]);
            assert_eq!(r, Err(ParseError::Truncated), "len {len}");
        }
    }

    #[test]
    fn malformed_headers() {
        let set = |at: usize, v: u8| {
            let mut f = SYN_FRAME;
            f[at] = v;
            frame_flow(&f)
        };
        assert_eq!(set(12, 0x86), Err(ParseError::NotIpv4));
        assert_eq!(set(14, 0x65), Err(ParseError::BadVersion));
        assert_eq!(set(14, 0x44), Err(ParseError::BadHeaderLen));
        assert_eq!(set(14, 0x4f), Err(ParseError::Truncated));
        assert_eq!(set(17, 19), Err(ParseError::BadTotalLen));
        assert_eq!(set(17, 61), Err(ParseError::Truncated));
        assert_eq!(set(23, 17), Err(ParseError::NotTcp));
        assert_eq!(set(46, 0x40), Err(ParseError::BadTcpHeaderLen));
        assert_eq!(set(46, 0xb0), Err(ParseError::Truncated));
        // Total length that cuts into the TCP options.
        assert_eq!(set(17, 50), Err(ParseError::Truncated));
    }

    #[test]
    fn fragments() {
        let frag = |hi: u8, lo: u8| {
            let mut f = SYN_FRAME;
            f[20] = hi;
            f[21] = lo;
            frame_flow(&f)
        };
        // First fragment (MF, offset 0) carries the TCP header.
        assert_eq!(frag(0x20, 0x00), Ok(syn_flow()));
        // Later fragments, with or without MF, do not.
        assert_eq!(frag(0x20, 0x01), Err(ParseError::Fragment));
        assert_eq!(frag(0x00, 0xb9), Err(ParseError::Fragment));
        assert_eq!(frag(0x1f, 0xff), Err(ParseError::Fragment));
    }

    #[test]
    fn errors_display() {
        let e: &dyn core::error::Error = &ParseError::Fragment;
        assert_eq!(e.to_string(), "non-first IPv4 fragment");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = frame_flow(&bytes);
            let _ = ipv4_flow(&bytes);
        }

        #[test]
        fn build_parse_round_trip(
            src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let flow = FlowId {
                src: Ipv4Addr(src), dst: Ipv4Addr(dst), sport: Port(sport), dport: Port(dport),
            };
            prop_assert_eq!(frame_flow(&build_frame(flow, &payload)), Ok(flow));
        }

        #[test]
        fn mutated_syn_never_panics(at in 0usize..74, v: u8, cut in 0usize..=74) {
            let mut f = SYN_FRAME;
            f[at] = v;
            let _ = frame_flow(&f[..cut]);
        }
    }
}
