//! This CPU's scratch area: working memory too large for the 512-byte stack, and what the stages
//! of one packet hand each other (a tail-call chain stays on its CPU). A stage reads here only
//! what a stage before it wrote for the same packet.

use ftp_common::maps::IpBytes;

/// How many payload bytes of a control segment are copied out and parsed at a time. FTP commands
/// and the replies that matter are far shorter; a longer segment is scanned a window of this size
/// at a time (and never rewritten).
pub const SCRATCH_LEN: usize = ftp_common::MAX_LINE_LEN;

/// Size of the scratch buffer. Larger than what is ever copied into it ([`SCRATCH_LEN`]): the
/// verifier cannot relate a slice's end pointer to its length, so it bounds every index the parser
/// may compute by its own arithmetic (an offset plus a bounded scan), which can exceed the copied
/// length but stays within this.
pub const SCRATCH_SIZE: usize = 8 * SCRATCH_LEN;

/// Indexes into the scratch buffer are masked with this, so every read is provably inside it.
pub const SCRATCH_MASK: usize = SCRATCH_SIZE - 1;

/// As [`SCRATCH_MASK`], for the offset of an aligned 8-byte word of the buffer.
pub const SCRATCH_WORD_MASK: usize = SCRATCH_MASK & !7;

/// Per-CPU working memory of one program run: too large for the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    /// The control segment's payload (from 0) and the rewrite's old and new tails.
    pub bytes: [u8; SCRATCH_SIZE],
    /// The headers of the packet a stage works on (see `stage_packet` in main.rs).
    pub packet: core::mem::MaybeUninit<crate::headers::Tcp>,
    /// The scan of the segment the client or server stage is on, between its passes.
    pub scan: Scan,
    /// What that scan reads but never changes.
    pub segment: Segment,
    /// What the line being examined is checked against (see `examine::scan_policy`).
    pub policy_context: ftp_common::PolicyContext,
    /// A PORT/EPRT/227/229 the ALG accepted in this segment, for the rewrite that follows.
    pub pending: RewriteRequest,
    /// What to repeat on a retransmission in this program run (its session in `pending`).
    pub replay: ftp_common::maps::RewriteRecord,
    /// A TCP options area before and after its SACK edges are translated (read at variable
    /// offsets, which the verifier allows in a map value but not on the stack).
    pub options_before: [u8; ftp_common::MAX_TCP_OPTIONS],
    pub options_after: [u8; ftp_common::MAX_TCP_OPTIONS],
    /// The FIB lookup of an opening SYN (see `flows::routed_out_of`).
    pub route: aya_ebpf::bindings::bpf_fib_lookup,
    /// The connection an opening SYN installs (see `flows::opening`).
    pub opening: Opening,
    /// What the rewrite stage did about a window port (see `rewrite`), kept here across its splice.
    pub rewrite_outcome: u8,
    /// The IP header a NAT64 translation writes in place of the packet's (see `nat`).
    pub nat64_header: Nat64Header,
    /// Never used: the verifier bounds a walk over `options_after` by its own arithmetic, which
    /// can reach a little past it; this keeps every such address inside the map value.
    pub _verifier_slack: [u8; 64],
}

// The buffer's words are read as u64 (`scan::skip_ignored_words`): it must start 8-aligned in the
// map value, which is.
const _: () = assert!(core::mem::offset_of!(Scratch, bytes) % 8 == 0);

/// A connection being opened: the expectation it was announced by (for a data connection) and
/// its two flow entries. Over 300 bytes together: built here, not on the open stage's stack.
pub struct Opening {
    pub expectation: ftp_common::maps::Expectation,
    pub original: ftp_common::maps::FlowEntry,
    pub reply: ftp_common::maps::FlowEntry,
    /// The key of a source's count being looked up (see `sources`).
    pub source_key: ftp_common::maps::SourceKey,
    /// The key of the masqueraded prefixes' lookup (see `flows`).
    pub masquerade_key: aya_ebpf::maps::lpm_trie::Key<ftp_common::maps::IpBytes>,
    /// An address a NAT64 connection's translation derives (the IPv4 server its client reaches
    /// through the prefix, or the prefixed address of a server connecting in).
    pub translated: ftp_common::maps::IpBytes,
}

/// Room for either family's header (an IPv4 header in the first 20 bytes).
#[repr(C)]
pub struct Nat64Header {
    pub v6: [u8; 40],
}

/// The scan of one segment, kept in the scratch area between the passes of its stage.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scan {
    /// The session's map value, set again by each pass (the verifier does not let a pointer to a
    /// map value be kept in a map).
    pub(crate) session: *mut ftp_common::maps::SessionEntry,
    /// Scratch offsets of the first new byte and one past the last.
    pub(crate) start: u32,
    pub(crate) end: u32,
    /// Where the pass goes on feeding bytes, and where the line it stopped at ends (its LF).
    pub(crate) next: u32,
    pub(crate) line_end: u32,
    /// 1 if the pass stopped at a complete line.
    pub(crate) line_found: u32,
    /// Held bytes in front of the payload's copy, and 1 if the whole payload was copied.
    pub(crate) held_len: u32,
    pub(crate) scanned_all: u32,
    /// The payload's offset in the packet and its length, and how much of it the windows copied
    /// so far: a payload longer than the scratch area is scanned a window at a time.
    pub(crate) payload_off: u32,
    pub(crate) payload_len: u32,
    pub(crate) window_end: u32,
    /// The lowest scratch offset a field to rewrite may start at: where this segment's new bytes
    /// start, or the held bytes in front of them.
    pub(crate) field_floor: u32,
    /// The line accepted for a rewrite in this segment: its `kind` is a `rewrite_kind` (NONE if
    /// none), the rest as in [`RewriteRequest`].
    pub(crate) rewrite_kind: u8,
    pub(crate) rewrite_delimiter: u8,
    pub(crate) rewrite_line_in_segment: u8,
    pub(crate) rewrite_field_off: u16,
    pub(crate) rewrite_field_len: u16,
    pub(crate) rewrite_line_off: u16,
    pub(crate) rewrite_line_len: u16,
    /// The port it announced; its address goes straight to [`RewriteRequest::addr`].
    pub(crate) rewrite_port: u16,
}

/// What the scan of one segment reads but never changes, written by its first pass beside the
/// [`Scan`] (which each pass copies onto its stack: the stages' call chains have no room for
/// these there).
pub struct Segment {
    /// The session (its control connection's original-direction key).
    pub session_key: ftp_common::maps::FlowKey,
    /// The session's policy: the operator's (`--allow-privileged-data-ports`,
    /// `--max-expectations-per-session`) and a published server's passive ports.
    pub policy: ftp_common::Policy,
    /// A `SessionKind` as `u8`.
    pub session_kind: u8,
    /// The interface of the side behind the router.
    pub lan_ifindex: u32,
    pub expect_timeout_ns: u64,
}

/// This CPU's [`Segment`], as the first pass of the scan wrote it.
#[inline(always)]
pub fn segment() -> Option<&'static Segment> {
    let scratch = crate::maps::SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch area, written by this segment's first pass before any reader.
    Some(unsafe { &(*scratch).segment })
}

// SAFETY: a Scan is kept in a per-CPU map only with its session pointer cleared (`save`); the
// pointer is set again by the pass that reads it back.
unsafe impl Sync for Scan {}

impl Scan {
    /// Keeps the scan in this CPU's scratch area for the next pass.
    #[inline(always)]
    pub(crate) fn save(mut self, scratch: *mut Scratch) {
        self.session = core::ptr::null_mut();
        // SAFETY: this CPU's scratch area; the stage's passes run one after another on this CPU.
        unsafe { (*scratch).scan = self };
    }
}

/// [`RewriteRequest::from_server`] of a server's segment: all bits set, so that it masks a
/// distance between a session's client and server fields to itself (see `held::splice_held`).
pub const FROM_SERVER: u8 = u8::MAX;

/// A PORT/EPRT/227/229 the scan accepted, to rewrite in this segment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RewriteRequest {
    /// A `rewrite_kind` (PORT, EPRT, PASV_227 or EPSV_229).
    pub kind: u8,
    pub delimiter: u8,
    /// Whether the whole line (not only the field) lies in this segment: a refusal replaces the
    /// whole of a 227/229 line.
    pub line_in_segment: u8,
    /// 1 if the field began in the previous segment, whose part of it is held
    /// ([`ftp_common::maps::HeldField`]): the field here is only the rest of it.
    pub completes_hold: u8,
    /// The field's offset in the payload and its length.
    pub field_off: u16,
    pub field_len: u16,
    /// The line's offset in the payload and its length without the LF.
    pub line_off: u16,
    pub line_len: u16,
    /// The announced address and port.
    pub addr: IpBytes,
    pub port: u16,
    /// [`FROM_SERVER`] if the segment is the server's (a cut or give-back then works on the
    /// server's held field and sequence adjustment), 0 if the client's.
    pub from_server: u8,
    pub _pad2: u8,
    /// The control connection (original direction key).
    pub session_key: ftp_common::maps::FlowKey,
}

/// Copies `from` to `to`, two map values' worth of memory the compiler cannot tell apart: as an
/// assignment, it copies them by calling aya-ebpf's byte-by-byte `memmove`; as this, by loads and
/// stores of the type's alignment (a small `memcpy` the BPF backend writes out in place).
#[inline(always)]
pub fn copy<T: Copy>(to: &mut T, from: &T) {
    // SAFETY: two valid references to `T`: `to` is exclusive, so they do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(from, to, 1) };
}
