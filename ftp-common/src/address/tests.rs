use super::*;
use MalformedReason::*;

/// Reads numbers from the start of `text` as a scanner does: until a byte ends them or the text
/// ends. The numbers and how many bytes they took.
fn octets(text: &[u8], shape: (u8, u8)) -> Result<(Octets, usize), MalformedReason> {
    let mut reader = Octets::new();
    for (used, &byte) in text.iter().enumerate() {
        if reader.push(byte, shape)? == OctetsStep::Ended {
            return Ok((reader, used));
        }
    }
    reader.finish(shape)?;
    Ok((reader, text.len()))
}

fn host_port(text: &[u8]) -> Result<(SocketAddrV4, usize), MalformedReason> {
    let (reader, used) = octets(text, HOST_PORT)?;
    Ok((reader.host_port()?, used))
}

fn ipv4(text: &[u8]) -> Result<(Ipv4Addr, usize), MalformedReason> {
    let (reader, used) = octets(text, DOTTED_QUAD)?;
    Ok((reader.ipv4(), used))
}

fn v6(text: &str) -> Option<Ipv6Addr> {
    let mut reader = Ipv6Text::new();
    for &byte in text.as_bytes() {
        reader.push(byte);
    }
    reader.finish()
}

#[test]
fn host_port_reads_six_numbers() {
    let (addr, used) = host_port(b"192,168,1,10,117,48).").unwrap();
    assert_eq!(addr, "192.168.1.10:30000".parse().unwrap());
    assert_eq!(used, 19);
    let (addr, _) = host_port(b"0,0,0,0,0,1").unwrap();
    assert_eq!(addr, "0.0.0.0:1".parse().unwrap());
    let (addr, _) = host_port(b"255,255,255,255,255,255").unwrap();
    assert_eq!(addr, "255.255.255.255:65535".parse().unwrap());
}

#[test]
fn host_port_refuses_bad_numbers_and_separators() {
    assert_eq!(host_port(b"10,0,0,1,256,22"), Err(OctetOutOfRange));
    assert_eq!(host_port(b"10,0,0,1,0,0"), Err(PortOutOfRange));
    assert_eq!(host_port(b"10,0,0,1,4"), Err(ExpectedSeparator));
    assert_eq!(host_port(b"10.0.0.1,4,1"), Err(ExpectedSeparator));
    assert_eq!(host_port(b"10, 0,0,1,4,1"), Err(ExpectedDigit));
    assert_eq!(host_port(b"10,0,0,1,4,"), Err(ExpectedDigit));
    assert_eq!(host_port(b"10,0,0,1,0004,1"), Err(TooManyDigits));
}

#[test]
fn ipv4_reads_dotted_quads() {
    assert_eq!(ipv4(b"132.235.1.2|"), Ok((Ipv4Addr::new(132, 235, 1, 2), 11)));
    assert_eq!(ipv4(b"1.2.3"), Err(ExpectedSeparator));
    assert_eq!(ipv4(b"1.2.3.256"), Err(OctetOutOfRange));
    assert_eq!(ipv4(b"1..3.4"), Err(ExpectedDigit));
}

#[test]
fn ipv6_reads_full_and_compressed_forms() {
    assert_eq!(v6("::"), Some(Ipv6Addr::UNSPECIFIED));
    assert_eq!(v6("::1"), Some(Ipv6Addr::LOCALHOST));
    assert_eq!(v6("1::"), Some(Ipv6Addr::new(1, 0, 0, 0, 0, 0, 0, 0)));
    assert_eq!(v6("1::2"), Some(Ipv6Addr::new(1, 0, 0, 0, 0, 0, 0, 2)));
    assert_eq!(
        v6("2001:DB8:0:0:0:0:0:1"),
        Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    );
    assert_eq!(
        v6("fe80::a:b:c:d"),
        Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0xa, 0xb, 0xc, 0xd))
    );
    assert_eq!(v6("::1:2:3:4:5:6:7"), Some(Ipv6Addr::new(0, 1, 2, 3, 4, 5, 6, 7)));
    assert_eq!(v6("1:2:3:4:5:6:7::"), Some(Ipv6Addr::new(1, 2, 3, 4, 5, 6, 7, 0)));
}

#[test]
fn ipv6_reads_an_embedded_ipv4_tail() {
    assert_eq!(
        v6("::ffff:192.0.2.1"),
        Some(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())
    );
    assert_eq!(
        v6("1:2:3:4:5:6:1.2.3.4"),
        Some(Ipv6Addr::new(1, 2, 3, 4, 5, 6, 0x0102, 0x0304))
    );
    assert_eq!(v6("::1.2.3.4"), Some(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x0102, 0x0304)));
}

#[test]
fn ipv6_refuses_malformed_text() {
    for bad in [
        "",
        ":",
        ":1",
        "1:",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "1:::2",
        ":::",
        "1:2:3:4:5:6:7::8",
        "::1:2:3:4:5:6:7:8",
        "12345::",
        "g::",
        "fe80::1%eth0",
        "[::1]",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::1.2.3.4:5",
        "::1.2.3.256",
        "::ffff:1.2.3",
        "::ab.1.2.3",
        "::1234.1.2.3",
        "1.2.3.4",
        "1:2:3:4:5:6:7:8:",
        "0000:0000:0000:0000:0000:0000:0000:0000:0",
    ] {
        assert_eq!(v6(bad), None, "{bad:?}");
    }
}

#[test]
fn ipv6_refuses_text_longer_than_the_longest_address() {
    let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    assert_eq!(longest.len(), usize::from(MAX_IPV6_TEXT_LEN));
    assert!(v6(longest).is_some());
    assert_eq!(v6("0:0:0:0:0:0:0:0000000000000000000000000000000000"), None);
}

#[test]
fn zeroed_readers_are_the_initial_state() {
    assert_eq!(Octets::default(), Octets::new());
    assert_eq!(Ipv6Text::default(), Ipv6Text::new());
}

#[test]
fn delimiters_are_printable_non_digits() {
    assert!(is_delimiter(b'|'));
    assert!(is_delimiter(b'!'));
    assert!(is_delimiter(b'~'));
    assert!(is_delimiter(b'a'));
    assert!(!is_delimiter(b' '));
    assert!(!is_delimiter(b'0'));
    assert!(!is_delimiter(b'9'));
    assert!(!is_delimiter(127));
    assert!(!is_delimiter(b'\r'));
}
