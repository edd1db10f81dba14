//! Locating the IPv4 and TCP headers of a packet. They are read where they lie, in the skb's
//! linear area (direct packet access: no helper call, which matters on the per-packet fast path);
//! the rare packet whose headers are not all there has them pulled in first.

use aya_ebpf::{helpers::bpf_skb_pull_data, programs::TcContext};
use ftp_common::maps::FlowKey;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
/// The MF flag and fragment offset bits of the IPv4 `frag_off` field.
const IP_FRAGMENT_MASK: u16 = 0x3fff;

pub const IP_OFF: usize = EthHdr::LEN;
/// Offsets of the fields ftpnat rewrites, from the start of their header.
pub const IP_TOT_LEN_OFF: usize = 2;
pub const IP_TTL_OFF: usize = 8;
pub const IP_CHECK_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const TCP_SEQ_OFF: usize = 4;
pub const TCP_ACK_OFF: usize = 8;
/// The 16-bit word holding the data offset and the flags.
pub const TCP_FLAGS_WORD_OFF: usize = 12;
pub const TCP_CHECK_OFF: usize = 16;

/// Which checksums cover a header field that changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// The IPv4 header's (TTL, total length).
    Ip,
    /// TCP's (ports, sequence numbers, flags).
    Tcp,
}

/// Stores `new` over the 2-byte field `old` at `offset` (from the packet's start) and updates the
/// checksums that cover it incrementally (which also suits CHECKSUM_PARTIAL skbs).
#[inline(always)]
pub fn store16(
    ctx: &TcContext,
    packet: &Tcp4,
    offset: usize,
    [old, new]: [[u8; 2]; 2],
    covered: Covered,
) -> Result<(), i64> {
    ctx.store(offset, &new, 0)?;
    let (old, new) = (
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
    );
    fix_checksums(ctx, packet, old, new, 2, covered)
}

/// As [`store16`], for a 4-byte field.
#[inline(always)]
pub fn store32(
    ctx: &TcContext,
    packet: &Tcp4,
    offset: usize,
    [old, new]: [[u8; 4]; 2],
    covered: Covered,
) -> Result<(), i64> {
    ctx.store(offset, &new, 0)?;
    let (old, new) = (
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
    );
    fix_checksums(ctx, packet, old, new, 4, covered)
}

#[inline(always)]
fn fix_checksums(
    ctx: &TcContext,
    packet: &Tcp4,
    old: u64,
    new: u64,
    size: u64,
    covered: Covered,
) -> Result<(), i64> {
    match covered {
        Covered::Ip => ctx.l3_csum_replace(IP_OFF + IP_CHECK_OFF, old, new, size),
        Covered::Tcp => ctx.l4_csum_replace(packet.tcp_check_off(), old, new, size),
    }
}

/// What reading a packet's headers found.
enum Parsed {
    Headers(Tcp4),
    /// Not an unfragmented IPv4 TCP packet.
    NotOurs,
    /// The headers do not all lie in the linear area.
    Short,
}

/// The most bytes the headers take: Ethernet, IPv4 with options, TCP with options.
const MAX_HEADERS_LEN: u32 = (IP_OFF + 60 + 60) as u32;
/// Masks a TCP header offset (at most Ethernet + 60 bytes of IPv4 header) into its range.
const MAX_TCP_OFF_MASK: usize = 0x7f;

/// An unfragmented IPv4 TCP packet.
#[derive(Clone, Copy)]
pub struct Tcp4 {
    pub ip: Ipv4Hdr,
    pub tcp: TcpHdr,
    pub tcp_off: usize,
}

impl Tcp4 {
    /// Reads the headers into `out`; false if the packet is not an unfragmented IPv4 TCP packet.
    /// A subprogram of its own (with an out-parameter: BPF functions cannot return aggregates), so
    /// the header copies it makes do not stay on the entry point's stack.
    #[inline(never)]
    pub fn parse_into(ctx: &TcContext, out: &mut Tcp4) -> bool {
        match Self::parse(ctx) {
            Some(packet) => {
                *out = packet;
                true
            }
            None => false,
        }
    }

    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Option<Self> {
        match Self::parse_linear(ctx) {
            Parsed::Headers(packet) => return Some(packet),
            Parsed::NotOurs => return None,
            Parsed::Short => {}
        }
        // Headers past the linear area (a packet built from fragments by a driver or a tunnel):
        // make them linear, then read them as usual. Pulling more than the packet has fails.
        let want = ctx.len().min(MAX_HEADERS_LEN);
        // SAFETY: plain helper call on the context the kernel handed to the program.
        if unsafe { bpf_skb_pull_data(ctx.skb.skb, want) } != 0 {
            return None;
        }
        match Self::parse_linear(ctx) {
            Parsed::Headers(packet) => Some(packet),
            Parsed::NotOurs | Parsed::Short => None,
        }
    }

    #[inline(always)]
    fn parse_linear(ctx: &TcContext) -> Parsed {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + IP_OFF + Ipv4Hdr::LEN > end {
            // Too short for an Ethernet and IPv4 header even after a pull: not a TCP packet ftpnat
            // could translate, unless they lie past the linear area.
            return if ctx.len() as usize >= IP_OFF + Ipv4Hdr::LEN {
                Parsed::Short
            } else {
                Parsed::NotOurs
            };
        }
        // SAFETY: both headers lie before `end`, checked above; the structs are plain bytes
        // (alignment 1), read by copy.
        let (eth, ip) = unsafe {
            (
                (data as *const EthHdr).read_unaligned(),
                ((data + IP_OFF) as *const Ipv4Hdr).read_unaligned(),
            )
        };
        if u16::from_be(eth.ether_type) != ETH_P_IP {
            return Parsed::NotOurs;
        }
        if ip.vihl >> 4 != 4 || ip.proto != IPPROTO_TCP {
            return Parsed::NotOurs;
        }
        // Only whole datagrams carry a TCP header ftpnat can translate; fragments go their way.
        if u16::from_be_bytes(ip.frags) & IP_FRAGMENT_MASK != 0 {
            return Parsed::NotOurs;
        }
        let ihl = ip_header_len(&ip);
        if ihl < Ipv4Hdr::LEN {
            return Parsed::NotOurs;
        }
        let tcp_off = IP_OFF + ihl;
        if data + tcp_off + TcpHdr::LEN > end {
            return Parsed::Short;
        }
        // SAFETY: the TCP header lies before `end`, checked above.
        let tcp = unsafe { ((data + tcp_off) as *const TcpHdr).read_unaligned() };
        Parsed::Headers(Self { ip, tcp, tcp_off })
    }

    /// The packet's IPv4 and TCP headers where they lie, for writing, or None if they are no
    /// longer in the linear area (a helper call since the parse may have moved them).
    #[inline(always)]
    pub fn headers_mut(&self, ctx: &TcContext) -> Option<(*mut Ipv4Hdr, *mut TcpHdr)> {
        let (data, end) = (ctx.data(), ctx.data_end());
        // Bounded for the verifier: an IPv4 header is at most 60 bytes.
        let tcp_off = self.tcp_off & MAX_TCP_OFF_MASK;
        if data + IP_OFF + Ipv4Hdr::LEN > end || data + tcp_off + TcpHdr::LEN > end {
            return None;
        }
        Some((
            (data + IP_OFF) as *mut Ipv4Hdr,
            (data + tcp_off) as *mut TcpHdr,
        ))
    }

    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            saddr: self.ip.src_addr,
            daddr: self.ip.dst_addr,
            sport: self.tcp.source,
            dport: self.tcp.dest,
        }
    }

    /// A connection's opening segment: SYN without ACK.
    #[inline(always)]
    pub fn is_opening_syn(&self) -> bool {
        self.tcp.syn() != 0 && self.tcp.ack() == 0
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.tcp.dest)
    }

    /// Offset and length of the TCP payload, from the headers' length fields.
    #[inline(always)]
    pub fn payload(&self) -> Option<(usize, usize)> {
        let ihl = ip_header_len(&self.ip);
        let doff = usize::from(self.tcp.doff()) * 4;
        let len = usize::from(self.ip_len())
            .checked_sub(ihl)?
            .checked_sub(doff)?;
        // Bounded for the verifier: no IPv4 datagram is longer.
        Some((self.tcp_off + doff, len & 0xffff))
    }

    /// Length of the TCP segment (header and payload), from the IPv4 header.
    #[inline(always)]
    pub fn tcp_len(&self) -> u16 {
        self.ip_len().wrapping_sub(ip_header_len(&self.ip) as u16)
    }

    /// Offset of the TCP checksum in the packet.
    #[inline(always)]
    pub fn tcp_check_off(&self) -> usize {
        self.tcp_off + TCP_CHECK_OFF
    }

    /// Length of the IP datagram, from its header.
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        u16::from_be_bytes(self.ip.tot_len)
    }
}

/// The IPv4 header's length in bytes (its IHL field counts 32-bit words).
#[inline(always)]
fn ip_header_len(ip: &Ipv4Hdr) -> usize {
    usize::from(ip.vihl & 0x0f) * 4
}
