//! Locating the IP (version 4 or 6) and TCP headers of a packet. They are read where they lie, in the skb's
//! linear area (direct packet access: no helper call, which matters on the per-packet fast path);
//! the rare packet whose headers are not all there has them pulled in first.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_skb_pull_data, programs::TcContext};
use ftp_common::maps::{FlowKey, IpBytes, ip};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Where the Ethernet header holds its type.
pub const ETH_TYPE_OFF: usize = 12;
pub const IPPROTO_TCP: u8 = 6;
/// The MF flag and fragment offset bits of the IPv4 `frag_off` field.
const IP_FRAGMENT_MASK: u16 = 0x3fff;
/// The IPv4 header's Don't Fragment bit.
const IP_DF: u16 = 0x4000;

pub const IP_OFF: usize = EthHdr::LEN;
/// Offsets of the fields ftpnat rewrites, from the start of their header.
pub const IP_TOT_LEN_OFF: usize = 2;
pub const IP_TTL_OFF: usize = 8;
pub const IP_CHECK_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP6_PAYLOAD_LEN_OFF: usize = 4;
pub const IP6_HOP_LIMIT_OFF: usize = 7;
pub const IP6_SADDR_OFF: usize = 8;
pub const TCP_SEQ_OFF: usize = 4;
pub const TCP_ACK_OFF: usize = 8;
/// The 16-bit word holding the data offset and the flags.
pub const TCP_FLAGS_WORD_OFF: usize = 12;
pub const TCP_CHECK_OFF: usize = 16;

/// Which checksums cover a header field that changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// The IPv4 header's (TTL, total length). Never an IPv6 packet's: it has no header checksum.
    Ip,
    /// TCP's (ports, sequence numbers, flags).
    Tcp,
}

/// Stores `new` over the 2-byte field `old` at `offset` (from the packet's start) and updates the
/// checksums that cover it incrementally (which also suits CHECKSUM_PARTIAL skbs).
#[inline(always)]
pub fn store16(
    ctx: &TcContext,
    packet: &Tcp,
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
    packet: &Tcp,
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
    packet: &Tcp,
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
#[derive(PartialEq, Eq)]
enum Parsed {
    /// Read into the caller's [`Tcp`].
    Headers,
    /// Not an unfragmented IPv4 or IPv6 TCP packet.
    NotOurs,
    /// The headers do not all lie in the linear area.
    Short,
}

/// The most bytes the headers take: Ethernet, IPv4 with options, TCP with options.
const MAX_HEADERS_LEN: u32 = (IP_OFF + 60 + 60) as u32;
/// Masks a TCP header offset (at most Ethernet + 60 bytes of IPv4 header) into its range.
const MAX_TCP_OFF_MASK: usize = 0x7f;

/// An unfragmented TCP packet over IPv4, or over IPv6 with TCP as the first next header (a packet
/// with extension headers before TCP is not ftpnat's: it goes to the stack as it came). Its
/// addresses are held as the tables hold them (see `ftp_common::maps::ip`). Fields ordered so
/// that there is no padding: the parse writes every byte (see [`Tcp::parse_into`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Tcp {
    /// The connection as the packet names it.
    pub key: FlowKey,
    pub tcp: TcpHdr,
    /// Offset of the TCP header in the packet.
    pub tcp_off: u32,
    /// The IP datagram's length, its header included.
    pub ip_len: u16,
    /// The IPv4 header's checksum (IPv6 has none).
    pub ip_check: [u8; 2],
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4's type of service; IPv6's traffic class is not looked at.
    pub tos: u8,
    /// Whether a router may fragment the packet: IPv4 without DF (IPv6 routers never fragment).
    pub fragmentable: bool,
    pub v6: bool,
}

const _: () = assert!(core::mem::size_of::<Tcp>() == 36 + 20 + 4 + 2 + 2 + 4);

impl Tcp {
    /// [`Tcp::parse`] as a subprogram of its own, so that what it reads does not stay on the
    /// stacks of the stages' deep call chains.
    #[inline(never)]
    pub fn parse_into(ctx: &TcContext, out: &mut MaybeUninit<Tcp>) -> bool {
        Self::parse(ctx, out)
    }

    /// Reads the headers into `out`; false if the packet is not an unfragmented TCP packet ftpnat
    /// reads (and then `out` may be written in part). Every field is written when it returns
    /// true, so `out` may start uninitialised: nothing is zeroed or copied on the per-packet path
    /// (the BPF target turns a struct's zeroing into a byte-by-byte `memset` loop).
    #[inline(always)]
    pub fn parse(ctx: &TcContext, out: &mut MaybeUninit<Tcp>) -> bool {
        match Self::read(ctx, out) {
            Parsed::Headers => return true,
            Parsed::NotOurs => return false,
            Parsed::Short => {}
        }
        // Headers past the linear area (a packet built from fragments by a driver or a tunnel):
        // make them linear, then read them as usual. Pulling more than the packet has fails.
        let want = ctx.len().min(MAX_HEADERS_LEN);
        // SAFETY: plain helper call on the context the kernel handed to the program.
        if unsafe { bpf_skb_pull_data(ctx.skb.skb, want) } != 0 {
            return false;
        }
        Self::read(ctx, out) == Parsed::Headers
    }

    #[inline(always)]
    fn read(ctx: &TcContext, out: &mut MaybeUninit<Tcp>) -> Parsed {
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
        // SAFETY: the Ethernet header lies before `end`, checked above; its field is plain bytes
        // (alignment 1), read by copy.
        let ether_type = unsafe { (*(data as *const EthHdr)).ether_type };
        match u16::from_be(ether_type) {
            ETH_P_IP => Self::read_v4(ctx, out),
            ETH_P_IPV6 => Self::read_v6(ctx, out),
            _ => Parsed::NotOurs,
        }
    }

    #[inline(always)]
    fn read_v4(ctx: &TcContext, out: &mut MaybeUninit<Tcp>) -> Parsed {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + IP_OFF + Ipv4Hdr::LEN > end {
            return Parsed::NotOurs;
        }
        // SAFETY: the header lies before `end`, checked above; plain bytes, read in place.
        let ip = unsafe { &*((data + IP_OFF) as *const Ipv4Hdr) };
        if ip.vihl >> 4 != 4 || ip.proto != IPPROTO_TCP {
            return Parsed::NotOurs;
        }
        // Only whole datagrams carry a TCP header ftpnat can translate; fragments go their way.
        let frags = u16::from_be_bytes(ip.frags);
        if frags & IP_FRAGMENT_MASK != 0 {
            return Parsed::NotOurs;
        }
        let ihl = usize::from(ip.vihl & 0x0f) * 4;
        if ihl < Ipv4Hdr::LEN {
            return Parsed::NotOurs;
        }
        let tcp_off = IP_OFF + ihl;
        if data + tcp_off + TcpHdr::LEN > end {
            return Parsed::Short;
        }
        // SAFETY: the TCP header lies before `end`, checked above.
        let tcp = unsafe { &*((data + tcp_off) as *const TcpHdr) };
        let out = out.as_mut_ptr();
        // SAFETY: `out` is the caller's; every field is written.
        unsafe {
            (*out).key.saddr = ip::v4_mapped(ip.src_addr);
            (*out).key.daddr = ip::v4_mapped(ip.dst_addr);
            (*out).key.sport = tcp.source;
            (*out).key.dport = tcp.dest;
            write_tcp_header(&mut (*out).tcp, tcp);
            (*out).tcp_off = tcp_off as u32;
            (*out).ip_len = u16::from_be_bytes(ip.tot_len);
            (*out).ip_check = ip.check;
            (*out).ttl = ip.ttl;
            (*out).tos = ip.tos;
            (*out).fragmentable = frags & IP_DF == 0;
            (*out).v6 = false;
        }
        Parsed::Headers
    }

    #[inline(always)]
    fn read_v6(ctx: &TcContext, out: &mut MaybeUninit<Tcp>) -> Parsed {
        let (data, end) = (ctx.data(), ctx.data_end());
        let tcp_off = IP_OFF + Ipv6Hdr::LEN;
        if data + tcp_off + TcpHdr::LEN > end {
            return if ctx.len() as usize >= tcp_off + TcpHdr::LEN {
                Parsed::Short
            } else {
                Parsed::NotOurs
            };
        }
        // SAFETY: both headers lie before `end`, checked above; plain bytes, read in place.
        let (ip, tcp) = unsafe {
            (
                &*((data + IP_OFF) as *const Ipv6Hdr),
                &*((data + tcp_off) as *const TcpHdr),
            )
        };
        if ip.vcf[0] >> 4 != 6 || ip.next_hdr != IPPROTO_TCP {
            return Parsed::NotOurs;
        }
        let out = out.as_mut_ptr();
        // SAFETY: `out` is the caller's; every field is written. The addresses are copied first
        // and checked where they landed (aligned: a word at a time), not held in registers.
        unsafe {
            (*out).key.saddr = IpBytes::from_octets(ip.src_addr);
            (*out).key.daddr = IpBytes::from_octets(ip.dst_addr);
            // IPv4-mapped addresses never appear on the wire (RFC 4291 section 2.5.5.2); the
            // tables hold IPv4 addresses that way, so such a packet must not be taken for an IPv4
            // one.
            if ip::is_v4(&(*out).key.saddr) || ip::is_v4(&(*out).key.daddr) {
                return Parsed::NotOurs;
            }
            (*out).key.sport = tcp.source;
            (*out).key.dport = tcp.dest;
            write_tcp_header(&mut (*out).tcp, tcp);
            (*out).tcp_off = tcp_off as u32;
            (*out).ip_len = u16::from_be_bytes(ip.payload_len).wrapping_add(Ipv6Hdr::LEN as u16);
            (*out).ip_check = [0; 2];
            (*out).ttl = ip.hop_limit;
            (*out).tos = 0;
            (*out).fragmentable = false;
            (*out).v6 = true;
        }
        Parsed::Headers
    }

    /// The packet's IP header (IPv4 or IPv6, as [`Tcp::v6`] says) and TCP header where they lie,
    /// for writing, or None if they are no longer in the linear area (a helper call since the
    /// parse may have moved them).
    #[inline(always)]
    pub fn headers_mut(&self, ctx: &TcContext) -> Option<(usize, *mut TcpHdr)> {
        let (data, end) = (ctx.data(), ctx.data_end());
        // Bounded for the verifier: an IP header is at most 60 bytes.
        let tcp_off = self.tcp_off() & MAX_TCP_OFF_MASK;
        if data + IP_OFF + Ipv6Hdr::LEN > end || data + tcp_off + TcpHdr::LEN > end {
            return None;
        }
        Some((data + IP_OFF, (data + tcp_off) as *mut TcpHdr))
    }

    /// Offset of the TCP header in the packet.
    #[inline(always)]
    pub fn tcp_off(&self) -> usize {
        self.tcp_off as usize
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
        let doff = usize::from(self.tcp.doff()) * 4;
        let len = usize::from(self.tcp_len()).checked_sub(doff)?;
        // Bounded for the verifier: no IP datagram ftpnat reads is longer.
        Some((self.tcp_off() + doff, len & 0xffff))
    }

    /// The IP header's length.
    #[inline(always)]
    pub fn ip_header_len(&self) -> u16 {
        (self.tcp_off() - IP_OFF) as u16
    }

    /// Length of the TCP segment (header and payload), from the IP header.
    #[inline(always)]
    pub fn tcp_len(&self) -> u16 {
        self.ip_len.wrapping_sub(self.ip_header_len())
    }

    /// Offset of the TCP checksum in the packet.
    #[inline(always)]
    pub fn tcp_check_off(&self) -> usize {
        self.tcp_off() + TCP_CHECK_OFF
    }

    /// Stores the IP datagram's new length `new` (the whole datagram's) in the field that holds
    /// it: IPv4's total length (its header checksum updated), IPv6's payload length (no checksum).
    #[inline(always)]
    pub fn store_ip_len(&self, ctx: &TcContext, new: u16) -> Result<(), i64> {
        if self.v6 {
            let payload_len = new.wrapping_sub(Ipv6Hdr::LEN as u16);
            ctx.store(IP_OFF + IP6_PAYLOAD_LEN_OFF, &payload_len.to_be_bytes(), 0)
        } else {
            let field = [self.ip_len.to_be_bytes(), new.to_be_bytes()];
            store16(ctx, self, IP_OFF + IP_TOT_LEN_OFF, field, Covered::Ip)
        }
    }
}

/// Copies the TCP header `from` the packet into `to`, field by field: copied whole, the 20 bytes
/// of alignment 1 became a call to the byte-by-byte `memmove` (~100 instructions per packet).
#[inline(always)]
fn write_tcp_header(to: &mut TcpHdr, from: &TcpHdr) {
    to.source = from.source;
    to.dest = from.dest;
    to.seq = from.seq;
    to.ack_seq = from.ack_seq;
    to._bitfield_1 = from._bitfield_1;
    to.window = from.window;
    to.check = from.check;
    to.urg_ptr = from.urg_ptr;
}
