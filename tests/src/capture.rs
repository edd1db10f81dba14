//! Reading the router's packet captures segment by segment. tcpdump's text output mixes every
//! packet of the interface (an IPv6 multicast report from the veth coming up, ARP) into the lines
//! of payload, so tests that look at what one TCP segment carried read the pcap file itself.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context as _, bail};

/// One TCP segment as captured (its payload cut at the capture's snap length): IPv4 unless its
/// addresses say otherwise (`TcpSegment<SocketAddrV6>`, from [`tcp6_segments`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment<A = SocketAddrV4> {
    pub src: A,
    pub dst: A,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl<A> TcpSegment<A> {
    /// The payload as text (non-UTF-8 bytes replaced), for comparing control-channel lines.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

const LINKTYPE_ETHERNET: u32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER_LEN: usize = 40;

/// The IPv4 TCP segments of a classic pcap file written by tcpdump on an Ethernet (veth)
/// interface, in capture order. Everything else (IPv6, ARP, fragments) is skipped; a record cut
/// short because tcpdump is still writing it ends the list.
pub fn tcp_segments(pcap: &[u8]) -> anyhow::Result<Vec<TcpSegment>> {
    let (frames, _) = whole_records(pcap)?;
    Ok(frames.into_iter().filter_map(tcp_segment).collect())
}

/// The IPv6 TCP segments of a pcap file as [`tcp_segments`] reads it: those whose TCP header
/// follows the IPv6 header directly (no extension headers, which the lab's TCP never carries).
pub fn tcp6_segments(pcap: &[u8]) -> anyhow::Result<Vec<TcpSegment<SocketAddrV6>>> {
    let (frames, _) = whole_records(pcap)?;
    Ok(frames.into_iter().filter_map(tcp6_segment).collect())
}

/// How many leading bytes of a pcap file hold whole records: tcpdump reports a record still
/// being written as a "truncated dump file" and fails, so a reader during the capture stops there.
pub fn complete_len(pcap: &[u8]) -> anyhow::Result<usize> {
    let (_, len) = whole_records(pcap)?;
    Ok(len)
}

const PCAP_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// The frames of a pcap file's whole records, and how many bytes the header and those records
/// take.
fn whole_records(pcap: &[u8]) -> anyhow::Result<(Vec<&[u8]>, usize)> {
    let header = pcap
        .get(..PCAP_HEADER_LEN)
        .context("the capture has no pcap header")?;
    let magic = u32::from_le_bytes(word(header, 0));
    let little_endian = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        _ if magic.swap_bytes() == 0xa1b2_c3d4 || magic.swap_bytes() == 0xa1b2_3c4d => false,
        _ => bail!("not a pcap file (magic {magic:#x})"),
    };
    let read_u32 = |bytes: &[u8], at: usize| {
        if little_endian {
            u32::from_le_bytes(word(bytes, at))
        } else {
            u32::from_be_bytes(word(bytes, at))
        }
    };
    let link_type = read_u32(header, 20);
    if link_type != LINKTYPE_ETHERNET {
        bail!("the capture's link type is {link_type}, not Ethernet");
    }
    let mut frames = Vec::new();
    let mut len = PCAP_HEADER_LEN;
    while let Some(record) = pcap.get(len..len + RECORD_HEADER_LEN) {
        let captured = usize::try_from(read_u32(record, 8))?;
        let start = len + RECORD_HEADER_LEN;
        let Some(frame) = pcap.get(start..start + captured) else {
            break;
        };
        frames.push(frame);
        len = start + captured;
    }
    Ok((frames, len))
}

fn word(bytes: &[u8], at: usize) -> [u8; 4] {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    word
}

/// The TCP segment in an Ethernet frame, if it holds an unfragmented IPv4 TCP packet.
fn tcp_segment(frame: &[u8]) -> Option<TcpSegment> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff;
    if *ip.get(9)? != IPPROTO_TCP || fragment != 0 || header_len < 20 {
        return None;
    }
    let address = |at: usize| {
        Some(Ipv4Addr::new(
            *ip.get(at)?,
            *ip.get(at + 1)?,
            *ip.get(at + 2)?,
            *ip.get(at + 3)?,
        ))
    };
    let (src_ip, dst_ip) = (address(12)?, address(16)?);
    // The IP length bounds the payload: a short frame is padded to Ethernet's minimum.
    let tcp = ip.get(header_len..total_len.min(ip.len()))?;
    tcp_fields(
        tcp,
        |port| SocketAddrV4::new(src_ip, port),
        |port| SocketAddrV4::new(dst_ip, port),
    )
}

/// The TCP segment in an Ethernet frame, if it holds an IPv6 packet whose next header is TCP.
fn tcp6_segment(frame: &[u8]) -> Option<TcpSegment<SocketAddrV6>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = frame.get(14..)?;
    let payload_len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
    if *ip.get(6)? != IPPROTO_TCP {
        return None;
    }
    let address = |at: usize| {
        let bytes: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(bytes))
    };
    let (src_ip, dst_ip) = (address(8)?, address(24)?);
    let tcp = ip.get(IPV6_HEADER_LEN..(IPV6_HEADER_LEN + payload_len).min(ip.len()))?;
    tcp_fields(
        tcp,
        |port| SocketAddrV6::new(src_ip, port, 0, 0),
        |port| SocketAddrV6::new(dst_ip, port, 0, 0),
    )
}

/// The segment a TCP header and its payload (`tcp`) make, its endpoints the addresses with the
/// ports the header names.
fn tcp_fields<A>(
    tcp: &[u8],
    src: impl FnOnce(u16) -> A,
    dst: impl FnOnce(u16) -> A,
) -> Option<TcpSegment<A>> {
    let port = |at: usize| Some(u16::from_be_bytes([*tcp.get(at)?, *tcp.get(at + 1)?]));
    let seq = u32::from_be_bytes([*tcp.get(4)?, *tcp.get(5)?, *tcp.get(6)?, *tcp.get(7)?]);
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    Some(TcpSegment {
        src: src(port(0)?),
        dst: dst(port(2)?),
        seq,
        payload: tcp.get(data_offset..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, protocol: u8, payload: &[u8], padding: usize) -> Vec<u8> {
        let mut frame = vec![0; 12];
        frame.extend(ethertype.to_be_bytes());
        let total = u16::try_from(20 + 20 + payload.len()).unwrap();
        let mut ip = vec![0x45, 0];
        ip.extend(total.to_be_bytes());
        ip.extend([
            0, 0, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 2, 198, 51, 100, 2,
        ]);
        frame.extend(ip);
        frame.extend(tcp_header());
        frame.extend(payload);
        frame.extend(vec![0; padding]);
        frame
    }

    /// From port 50000 to port 21, sequence number 7.
    fn tcp_header() -> Vec<u8> {
        let mut tcp = vec![0xc3, 0x50, 0, 21];
        tcp.extend(7u32.to_be_bytes());
        tcp.extend([0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
        tcp
    }

    /// An IPv6 packet from fd00:10::2 to 2001:db8:1::10 with `next_header`, carrying a TCP
    /// segment with `payload`, `padding` bytes after it.
    fn frame6(next_header: u8, payload: &[u8], padding: usize) -> Vec<u8> {
        let mut frame = vec![0; 12];
        frame.extend(ETHERTYPE_IPV6.to_be_bytes());
        let len = u16::try_from(20 + payload.len()).unwrap();
        frame.extend([0x60, 0, 0, 0]);
        frame.extend(len.to_be_bytes());
        frame.extend([next_header, 64]);
        frame.extend("fd00:10::2".parse::<Ipv6Addr>().unwrap().octets());
        frame.extend("2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets());
        frame.extend(tcp_header());
        frame.extend(payload);
        frame.extend(vec![0; padding]);
        frame
    }

    fn pcap(frames: &[Vec<u8>], cut_last: usize) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend(0xa1b2_c3d4u32.to_le_bytes());
        file.extend([2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]);
        for frame in frames {
            let len = u32::try_from(frame.len()).unwrap();
            file.extend([0; 8]);
            file.extend(len.to_le_bytes());
            file.extend(len.to_le_bytes());
            file.extend(frame);
        }
        file.truncate(file.len() - cut_last);
        file
    }

    #[test]
    fn reads_tcp_segments_and_skips_everything_else() {
        let file = pcap(
            &[
                frame(ETHERTYPE_IPV4, IPPROTO_TCP, b"PORT ", 0),
                frame(0x86dd, IPPROTO_TCP, b"not ipv4", 0),
                frame(ETHERTYPE_IPV4, 17, b"udp", 0),
                frame(ETHERTYPE_IPV4, IPPROTO_TCP, b"", 6),
            ],
            0,
        );
        let segments = tcp_segments(&file).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].text(), "PORT ");
        assert_eq!(segments[0].src, "10.0.0.2:50000".parse().unwrap());
        assert_eq!(segments[0].dst, "198.51.100.2:21".parse().unwrap());
        assert_eq!(segments[0].seq, 7);
        assert!(
            segments[1].payload.is_empty(),
            "Ethernet padding read as payload"
        );
    }

    #[test]
    fn reads_ipv6_tcp_segments_apart_from_ipv4_ones() {
        let file = pcap(
            &[
                frame6(IPPROTO_TCP, b"EPRT |2|", 0),
                frame(ETHERTYPE_IPV4, IPPROTO_TCP, b"PORT ", 0),
                frame6(17, b"udp", 0),
                frame6(IPPROTO_TCP, b"", 6),
            ],
            0,
        );
        let segments = tcp6_segments(&file).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].text(), "EPRT |2|");
        assert_eq!(segments[0].src, "[fd00:10::2]:50000".parse().unwrap());
        assert_eq!(segments[0].dst, "[2001:db8:1::10]:21".parse().unwrap());
        assert_eq!(segments[0].seq, 7);
        assert!(
            segments[1].payload.is_empty(),
            "Ethernet padding read as payload"
        );
        let ipv4 = tcp_segments(&file).unwrap();
        assert_eq!(ipv4.len(), 1, "an IPv6 segment read as IPv4: {ipv4:?}");
    }

    #[test]
    fn a_record_still_being_written_ends_the_list() {
        let frames = [
            frame(ETHERTYPE_IPV4, IPPROTO_TCP, b"USER anonymous\r\n", 0),
            frame(ETHERTYPE_IPV4, IPPROTO_TCP, b"PASS x\r\n", 0),
        ];
        let file = pcap(&frames, 3);
        let segments = tcp_segments(&file).unwrap();
        assert_eq!(segments.len(), 1);
        let whole = 24 + 16 + frames[0].len();
        assert_eq!(complete_len(&file).unwrap(), whole);
        assert_eq!(complete_len(&pcap(&frames, 0)).unwrap(), file.len() + 3);
        assert_eq!(complete_len(&pcap(&[], 0)).unwrap(), 24);
        assert!(tcp_segments(b"text").is_err());
    }
}
