//! Classic TC, the attachment of kernels without TCX (before 6.6): a `clsact` qdisc on the
//! interface and a direct-action `cls_bpf` filter per hook, made over rtnetlink.
//!
//! aya attaches, replaces and deletes such filters, but lists neither filters nor qdiscs: this
//! module reads both with an rtnetlink dump (`RTM_GETTFILTER`, `RTM_GETQDISC`), which is what the
//! agent needs to tell whether ftpnat's programs are attached, and whether an interface's qdisc
//! at the ingress handle is one its programs can hang from.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    TcAttachType,
    links::Link as _,
    tc::{self, SchedClassifierLink, TcHandle},
};

use super::{
    hooks::{attach_type_of, is_ftpnat_program},
    interface::ifindex_of,
    records::{FilterRecord, PinnedHook},
};

/// The major number of the `clsact` (and `ingress`) qdisc's handle, `ffff:`.
const INGRESS_QDISC_HANDLE: u32 = 0xffff_0000;
/// `TC_H_MIN_INGRESS` and `TC_H_MIN_EGRESS`: the minor numbers of clsact's two hooks.
const CLSACT_INGRESS: u32 = 0xfff2;
const CLSACT_EGRESS: u32 = 0xfff3;

/// `TCA_BPF_NAME` and `TCA_BPF_ID` in a cls_bpf filter's `TCA_OPTIONS` (linux/pkt_cls.h).
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
/// The flag bits of an attribute's type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_HEADER_LEN: usize = 16;
const TCMSG_LEN: usize = 20;

/// A cls_bpf filter at an interface's clsact hook, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    /// `pref` in tc's words: filters run in increasing order of it.
    pub priority: u16,
    pub handle: TcHandle,
    /// The name the loader gave the filter (aya gives the program's).
    pub name: String,
    pub program_id: u32,
}

/// The parent of a clsact hook's filters.
fn clsact_parent(attach_type: TcAttachType) -> u32 {
    match attach_type {
        TcAttachType::Ingress => INGRESS_QDISC_HANDLE | CLSACT_INGRESS,
        TcAttachType::Egress => INGRESS_QDISC_HANDLE | CLSACT_EGRESS,
        TcAttachType::Custom(parent) => parent,
    }
}

/// The cls_bpf filters at `ifindex`'s clsact hook: none when the interface has no clsact qdisc.
/// (Call it only where the qdisc at `ffff:` is clsact or absent: a plain `ingress` qdisc answers
/// for both hooks with its one list, see [`ingress_qdisc_kind`].)
pub fn bpf_filters(ifindex: u32, attach_type: TcAttachType) -> io::Result<Vec<BpfFilter>> {
    let messages = dump(libc::RTM_GETTFILTER, ifindex, clsact_parent(attach_type))?;
    Ok(messages
        .iter()
        .filter(|message| message.ifindex == ifindex)
        .filter_map(TcMessage::bpf_filter)
        .collect())
}

/// The kind of the qdisc at `ifindex`'s ingress handle `ffff:` — `clsact`, or `ingress`, which
/// takes filters only at ingress — or `None` when there is none.
pub fn ingress_qdisc_kind(ifindex: u32) -> io::Result<Option<String>> {
    let messages = dump(libc::RTM_GETQDISC, ifindex, 0)?;
    Ok(messages
        .iter()
        .find(|message| message.ifindex == ifindex && message.handle == INGRESS_QDISC_HANDLE)
        .and_then(|message| message.kind()))
}

/// Makes sure `interface` has a clsact qdisc, the one classic TC attaches both hooks to: adds it
/// if the interface has no qdisc at `ffff:`, refuses one of another kind.
pub fn ensure_clsact(interface: &str, ifindex: u32) -> anyhow::Result<()> {
    let context = || format!("looking up the qdiscs of {interface}");
    let added = match ingress_qdisc_kind(ifindex).with_context(context)? {
        None => Some(tc::qdisc_add_clsact(interface)),
        Some(_) => None,
    };
    // Asked again, not taken from `added`: another tool may have added one meanwhile, and an
    // `ingress` qdisc also answers "exists".
    match (ingress_qdisc_kind(ifindex).with_context(context)?, added) {
        (Some(kind), _) if kind == "clsact" => Ok(()),
        (Some(kind), _) => bail!(
            "interface '{interface}' has an '{kind}' qdisc where classic TC attaches (handle \
             ffff:), not clsact: a filter at its egress would run at ingress. Replace it with \
             `tc qdisc del dev {interface} {kind}` (which drops its filters), or attach through \
             TCX on Linux ≥ 6.6 (--tc-attach tcx)"
        ),
        (None, Some(Err(err))) => {
            Err(err).with_context(|| format!("adding a clsact qdisc to {interface}"))
        }
        (None, _) => bail!("a clsact qdisc added to {interface} is not listed by the kernel"),
    }
}

/// Deletes the filter `record` names at `hook` if it is still there with one of ftpnat's
/// programs. A filter goes with its interface: if the interface is gone, or its name is another
/// device's now (created again, as a PPPoE reconnect does), there is nothing to delete, and
/// nothing that is not ftpnat's is ever deleted.
pub fn delete_ftpnat_filter(hook: &PinnedHook, record: &FilterRecord) -> anyhow::Result<()> {
    let context = || {
        format!(
            "deleting the filter {record} at {}/{}",
            hook.interface, hook.hook
        )
    };
    let attach_type =
        attach_type_of(&hook.hook).with_context(|| format!("{}: no such hook", context()))?;
    if ifindex_of(&hook.interface).with_context(context)? != Some(record.ifindex) {
        return Ok(());
    }
    let ours = bpf_filters(record.ifindex, attach_type)
        .with_context(context)?
        .iter()
        .any(|filter| {
            filter.priority == record.priority
                && u32::from(filter.handle) == record.handle
                && is_ftpnat_program(&filter.name)
        });
    if !ours {
        return Ok(());
    }
    SchedClassifierLink::attached(
        &hook.interface,
        attach_type,
        record.priority,
        record.handle.into(),
        None,
    )
    .with_context(context)?
    .detach()
    .with_context(context)
}

/// One `tcmsg` of a dump's answer, with its attributes.
#[derive(Debug)]
struct TcMessage {
    ifindex: u32,
    handle: u32,
    info: u32,
    attributes: Vec<(u16, Vec<u8>)>,
}

impl TcMessage {
    fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, value)| value.as_slice())
    }

    fn kind(&self) -> Option<String> {
        self.attribute(libc::TCA_KIND).map(c_string)
    }

    /// The filter this message describes, if it is a cls_bpf filter (not the header the kernel
    /// sends for each priority, which has no options).
    fn bpf_filter(&self) -> Option<BpfFilter> {
        if self.kind().as_deref() != Some("bpf") {
            return None;
        }
        let options = attributes(self.attribute(libc::TCA_OPTIONS)?);
        let option = |kind| {
            options
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.as_slice())
        };
        Some(BpfFilter {
            // tcm_info holds the priority over the protocol.
            priority: (self.info >> 16) as u16,
            handle: TcHandle::from(self.handle),
            name: option(TCA_BPF_NAME).map(c_string)?,
            program_id: u32::from_ne_bytes(option(TCA_BPF_ID)?.get(..4)?.try_into().ok()?),
        })
    }
}

/// A NUL-terminated attribute string.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Netlink attributes (`struct nlattr`, each padded to 4 bytes), as (type, value); a truncated
/// one ends the list.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut found = Vec::new();
    while let (Some(len), Some(kind)) = (bytes.get(..2), bytes.get(2..4)) {
        let len = usize::from(u16::from_ne_bytes([len[0], len[1]]));
        let kind = u16::from_ne_bytes([kind[0], kind[1]]) & NLA_TYPE_MASK;
        let Some(value) = bytes.get(4..len) else {
            break;
        };
        found.push((kind, value.to_vec()));
        bytes = bytes.get(align4(len)..).unwrap_or_default();
    }
    found
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The messages of one netlink answer buffer; `Ok(true)` once the dump is done.
fn parse_answer(mut buffer: &[u8], into: &mut Vec<TcMessage>) -> io::Result<bool> {
    let truncated = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
    while buffer.len() >= NLMSG_HEADER_LEN {
        let len = u32::from_ne_bytes(buffer[..4].try_into().map_err(|_| truncated())?) as usize;
        let kind = u16::from_ne_bytes([buffer[4], buffer[5]]);
        let message = buffer.get(..len).filter(|_| len >= NLMSG_HEADER_LEN);
        let Some(message) = message else {
            return Err(truncated());
        };
        let body = &message[NLMSG_HEADER_LEN..];
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let code = body.get(..4).ok_or_else(truncated)?;
                let code = i32::from_ne_bytes(code.try_into().map_err(|_| truncated())?);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            _ if kind == libc::RTM_NEWTFILTER || kind == libc::RTM_NEWQDISC => {
                let tcmsg = body.get(..TCMSG_LEN).ok_or_else(truncated)?;
                let word = |at: usize| {
                    u32::from_ne_bytes(tcmsg[at..at + 4].try_into().unwrap_or_default())
                };
                into.push(TcMessage {
                    ifindex: word(4),
                    handle: word(8),
                    info: word(16),
                    attributes: attributes(&body[TCMSG_LEN..]),
                });
            }
            _ => {}
        }
        buffer = buffer.get(align4(len)..).unwrap_or_default();
    }
    Ok(false)
}

/// Sends a dump request of `request` (`RTM_GET*`) for `ifindex` and `parent` and gathers the
/// answer's messages.
fn dump(request: u16, ifindex: u32, parent: u32) -> io::Result<Vec<TcMessage>> {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut message = Vec::with_capacity(NLMSG_HEADER_LEN + TCMSG_LEN);
    message.extend_from_slice(&((NLMSG_HEADER_LEN + TCMSG_LEN) as u32).to_ne_bytes());
    message.extend_from_slice(&request.to_ne_bytes());
    message.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // tcmsg: family AF_UNSPEC and padding, ifindex, handle, parent, info.
    message.extend_from_slice(&[0; 4]);
    message.extend_from_slice(&ifindex.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&parent.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // SAFETY: `message` is valid for its length; the kernel is the default destination.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut messages = Vec::new();
    // Large enough for any one message of a dump (the kernel fills up to a page, or 32 KiB).
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buffer` is valid for writes of its length.
        let received = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
        if received == 0 || parse_answer(&buffer[..received], &mut messages)? {
            return Ok(messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    fn message(kind: u16, tcmsg: [u32; 4], attributes: &[u8]) -> Vec<u8> {
        let len = NLMSG_HEADER_LEN + TCMSG_LEN + attributes.len();
        let mut bytes = (len as u32).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&[0; 4]);
        for word in tcmsg {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        bytes.extend_from_slice(attributes);
        bytes
    }

    /// A dump of one priority as the kernel sends it: the priority's header, then its filter.
    #[test]
    fn a_filter_dump_gives_each_bpf_filter_with_its_priority_handle_name_and_program() {
        let ifindex = 7;
        let info = (49152u32 << 16) | 0x0300; // priority over protocol ETH_P_ALL
        let parent = clsact_parent(TcAttachType::Egress);
        let mut options = attribute(TCA_BPF_NAME, b"ftpnat_egress\0");
        options.extend(attribute(TCA_BPF_ID, &42u32.to_ne_bytes()));
        // NLA_F_NESTED set on the options, as the kernel sends them.
        let mut filter = attribute(libc::TCA_KIND, b"bpf\0");
        filter.extend(attribute(libc::TCA_OPTIONS | 0x8000, &options));
        let mut answer = message(
            libc::RTM_NEWTFILTER,
            [ifindex, 0, parent, info],
            &attribute(libc::TCA_KIND, b"bpf\0"),
        );
        answer.extend(message(
            libc::RTM_NEWTFILTER,
            [ifindex, 1, parent, info],
            &filter,
        ));
        let mut messages = Vec::new();
        assert!(!parse_answer(&answer, &mut messages).unwrap());
        let done = message(libc::NLMSG_DONE as u16, [0; 4], &[]);
        assert!(parse_answer(&done, &mut messages).unwrap());

        let filters: Vec<BpfFilter> = messages.iter().filter_map(TcMessage::bpf_filter).collect();
        assert_eq!(
            filters,
            [BpfFilter {
                priority: 49152,
                handle: TcHandle::new(0, 1),
                name: "ftpnat_egress".to_owned(),
                program_id: 42,
            }]
        );
    }

    #[test]
    fn an_error_answer_is_the_kernels_errno() {
        let mut answer = message(libc::NLMSG_ERROR as u16, [0; 4], &[]);
        // nlmsgerr's error is the first word of the body, negative.
        answer[NLMSG_HEADER_LEN..NLMSG_HEADER_LEN + 4]
            .copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
        let err = parse_answer(&answer, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_qdisc_dump_names_the_kind_at_the_ingress_handle() {
        let answer = message(
            libc::RTM_NEWQDISC,
            [3, INGRESS_QDISC_HANDLE, 0xffff_fff1, 0],
            &attribute(libc::TCA_KIND, b"clsact\0"),
        );
        let mut messages = Vec::new();
        parse_answer(&answer, &mut messages).unwrap();
        assert_eq!(messages[0].handle, INGRESS_QDISC_HANDLE);
        assert_eq!(messages[0].kind().as_deref(), Some("clsact"));
    }

    /// The real kernel: the loopback interface of this namespace has no clsact qdisc of ours to
    /// list, but the dump itself must work (root runs the tests that reach it).
    #[test]
    fn the_kernel_accepts_the_dump_requests() {
        let lo = 1;
        match bpf_filters(lo, TcAttachType::Ingress) {
            Ok(_) => {}
            Err(err) => panic!("dumping lo's filters: {err}"),
        }
        ingress_qdisc_kind(lo).expect("dumping lo's qdiscs");
    }
}
