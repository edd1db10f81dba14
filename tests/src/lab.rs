//! The lab topology: a client namespace on the LAN, a router namespace, a server namespace on
//! the WAN, joined by veth pairs.
//!
//! ```text
//!   client            router                     server
//!   eth0 ───────── lan0      wan0 ──────────────── eth0
//!   10.0.0.2/24    10.0.0.1  203.0.113.254/24      203.0.113.10/24
//! ```
//!
//! The addresses are those of `LabSpec::default()`; they exist only inside the lab's namespaces.
//! A dual-stack lab (`LabSpec::dual_stack()`) adds IPv6 on the same links, routed without NAT
//! (the server has a route to the LAN's prefix), as a dual-stack ISP line is:
//!
//! ```text
//!   2001:db8:10::2/64  2001:db8:10::1  2001:db8:1::fe/64     2001:db8:1::10/64
//! ```
//!
//! A NAT66 lab (`LabSpec::nat66()`) numbers the LAN from a ULA prefix the server has no route to,
//! so only what the router translates to its public IPv6 address comes back:
//!
//! ```text
//!   fd00:1::2/64       fd00:1::1       2001:db8:1::fe/64     2001:db8:1::10/64
//! ```
//!
//! A NAT64 lab (`LabSpec::nat64()`) has an IPv6-only LAN in front of an IPv4-only WAN: the client
//! has no IPv4 address and reaches the server only at its RFC 6052 address in the lab's
//! network-specific prefix `2001:db8:ff64::/96` (`2001:db8:ff64::cb00:710a`; the well-known
//! `64:ff9b::/96` never names the server's documentation address, RFC 6052 section 3.1), which
//! only a translator on the router can carry to IPv4; the server
//! and the router's WAN side have IPv6 turned off:
//!
//! ```text
//!   2001:db8:64::2/64  2001:db8:64::1  203.0.113.254/24      203.0.113.10/24
//! ```

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV6},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    agent::Agent,
    capture::{self, TcpSegment},
    clients::SteppedScript,
    netns::{NetNs, remove_stale, run, tcx_programs, unique_prefix},
};

/// `ftpnat_lab.py`, the Python module the test scripts share.
const PYTHON_HELPERS: &str = r#"
import ftplib, hashlib, socket, struct

def login(server, timeout=20):
    """An anonymous session with `server` on port 21."""
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=timeout)
    ftp.login()
    return ftp

def retr_digest(ftp, name):
    """RETR `name` in the session's mode (passive unless told otherwise): the sha256 of what
    arrived."""
    digest = hashlib.sha256()
    ftp.retrbinary('RETR ' + name, digest.update)
    return digest.hexdigest()

def session_with_listener(server):
    """An anonymous session with `server` on port 21, binary, with Nagle off (each send leaves as
    a segment of its own), and a socket listening on the client's address for the server's data
    connection: (ftp, listener, client address, listener's port)."""
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=30)
    ftp.login()
    ftp.voidcmd('TYPE I')
    ftp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host = ftp.sock.getsockname()[0]
    listener = socket.create_server((host, 0), family=family_of(host))
    return ftp, listener, host, listener.getsockname()[1]

def active_command(host, port):
    """The line announcing `host`'s `port` for an active transfer: PORT for an IPv4 address, EPRT
    |2| for an IPv6 one (which PORT cannot carry)."""
    if ':' in host:
        return 'EPRT |2|%s|%d|\r\n' % (host, port)
    return 'PORT %s,%d,%d\r\n' % (host.replace('.', ','), port >> 8, port & 255)

def family_of(host):
    """The socket family of an address literal: IPv6 if it has a colon."""
    return socket.AF_INET6 if ':' in host else socket.AF_INET

def retr_active(ftp, listener, name, timeout=None):
    """RETR `name` after an accepted PORT/EPRT naming `listener`: prints the server's first reply
    and returns the sha256 of what arrived over the connection the server made."""
    ftp.putcmd('RETR ' + name)
    print(ftp.getresp())
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    digest = hashlib.sha256()
    while chunk := conn.recv(65536):
        digest.update(chunk)
    conn.close()
    ftp.voidresp()
    return digest.hexdigest()

FIN, RST, PSH, ACK = 1, 4, 8, 16

def _checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff

def forged_tcp(src, sport, dst, dport, seq, ack, flags, payload=b''):
    """An IPv4 TCP segment from `src:sport` to `dst:dport`, whoever sends it, checksums right."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, 502, 0, 0) + payload
    pseudo = s + d + struct.pack('!BBH', 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, s, d)
    return ip[:10] + struct.pack('!H', _checksum(ip)) + ip[12:] + tcp
"#;

/// The comment on the router's rule that drops unsolicited inbound IPv6, which finds its counter.
const UNSOLICITED_INBOUND_DROP: &str = "ftpnat-lab: unsolicited inbound IPv6";

/// Names of the interfaces inside the namespaces (each namespace has its own, so they can repeat).
pub const ROUTER_LAN_IF: &str = "lan0";
pub const ROUTER_WAN_IF: &str = "wan0";
pub const HOST_IF: &str = "eth0";

/// Whether the server can reach the LAN without the router translating addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The server has a route to the LAN through the router: plain routing, no NAT needed.
    Routed,
    /// The server has no route to the LAN: only translated traffic can come back.
    Nat,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub lan_prefix_len: u8,
    pub client: Ipv4Addr,
    pub router_lan: Ipv4Addr,
    pub wan_prefix_len: u8,
    pub router_wan: Ipv4Addr,
    pub server: Ipv4Addr,
    pub routing: Routing,
    /// Capture the router's interfaces (kept only if the test fails).
    pub capture: bool,
    /// IPv6 on the same links too; `None`: IPv4 only.
    pub ipv6: Option<Ipv6Spec>,
    /// An IPv6-only LAN instead of the IPv4 one (the LAN's IPv4 fields then go unused), the WAN
    /// IPv4 only: NAT64's lab. Excludes `ipv6`.
    pub nat64: Option<Nat64Spec>,
}

impl LabSpec {
    /// The default lab with IPv6 too ([`Ipv6Spec::default`]).
    pub fn dual_stack() -> Self {
        Self {
            ipv6: Some(Ipv6Spec::default()),
            ..Self::default()
        }
    }

    /// The default lab with IPv6 too, its LAN on a ULA prefix the server cannot reach
    /// ([`Ipv6Spec::ula_behind_nat66`]).
    pub fn nat66() -> Self {
        Self {
            ipv6: Some(Ipv6Spec::ula_behind_nat66()),
            ..Self::default()
        }
    }

    /// An IPv6-only client in front of an IPv4-only server ([`Nat64Spec::default`]): the
    /// server can be reached only through a NAT64 on the router.
    pub fn nat64() -> Self {
        Self {
            nat64: Some(Nat64Spec::default()),
            ..Self::default()
        }
    }
}

/// The LAN of a NAT64 lab: IPv6 only. The client's default route is the router's LAN address;
/// the router has no route for [`Nat64Spec::prefix`] (nothing in the lab translates it but the
/// program under test) and no IPv6 on its WAN side; the server has IPv6 turned off.
#[derive(Debug, Clone)]
pub struct Nat64Spec {
    pub lan_prefix_len: u8,
    pub client: Ipv6Addr,
    pub router_lan: Ipv6Addr,
    /// The /96 prefix IPv4 hosts are reached at from the LAN, as a DNS64 would answer for them:
    /// a network-specific prefix (RFC 6052 section 2.2; its last 32 bits zero), since the
    /// well-known `64:ff9b::/96` must not name the lab's documentation addresses (section 3.1).
    pub prefix: Ipv6Addr,
}

impl Default for Nat64Spec {
    fn default() -> Self {
        Self {
            lan_prefix_len: 64,
            client: Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 2),
            router_lan: Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 1),
            prefix: Ipv6Addr::new(0x2001, 0xdb8, 0xff64, 0, 0, 0, 0, 0),
        }
    }
}

impl Nat64Spec {
    /// The IPv6 address the client reaches the IPv4 host `v4` at: [`nat64_address`] in the
    /// lab's prefix.
    pub fn address_of(&self, v4: Ipv4Addr) -> Ipv6Addr {
        nat64_address(self.prefix, v4)
    }

    /// The prefix as `--nat64` takes it: `2001:db8:ff64::/96`.
    pub fn prefix_arg(&self) -> String {
        format!("{}/96", self.prefix)
    }

    /// The LAN's prefix, such as `2001:db8:64::/64`.
    pub fn lan_prefix(&self) -> String {
        prefix6(self.client, self.lan_prefix_len)
    }
}

/// The IPv4-embedded IPv6 address of `v4` in the /96 `prefix` (RFC 6052 section 2.2: the IPv4
/// address in the last 32 bits): `64:ff9b::` and 192.0.2.2 make `64:ff9b::c000:202`.
pub fn nat64_address(prefix: Ipv6Addr, v4: Ipv4Addr) -> Ipv6Addr {
    let prefix = u128::from(prefix) & !u128::from(u32::MAX);
    Ipv6Addr::from(prefix | u128::from(u32::from(v4)))
}

/// The IPv6 side of a dual-stack lab, routed or not as its own [`Ipv6Spec::routing`] says,
/// whatever [`LabSpec::routing`] says for IPv4. Addresses are added without duplicate address
/// detection, so they are usable the moment the links are up.
#[derive(Debug, Clone)]
pub struct Ipv6Spec {
    pub lan_prefix_len: u8,
    /// A global-looking address, as a LAN behind a dual-stack line has from its ISP's prefix, or
    /// a ULA one behind NAT66.
    pub client: Ipv6Addr,
    pub router_lan: Ipv6Addr,
    pub wan_prefix_len: u8,
    pub router_wan: Ipv6Addr,
    pub server: Ipv6Addr,
    /// [`Routing::Routed`]: the server has a route to the LAN's prefix through the router, which
    /// forwards without translating (ftpnat's IPv6 firewall mode). [`Routing::Nat`]: it has
    /// none, so only connections NAT66 gives the router's public IPv6 address can get answers.
    pub routing: Routing,
}

impl Default for Ipv6Spec {
    fn default() -> Self {
        Self {
            lan_prefix_len: 64,
            client: Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 2),
            router_lan: Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 1),
            wan_prefix_len: 64,
            router_wan: Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0xfe),
            server: Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10),
            routing: Routing::Routed,
        }
    }
}

impl Ipv6Spec {
    /// A LAN on the ULA prefix `fd00:1::/64`, which the server has no route to (NAT66's lab):
    /// the WAN side as in [`Ipv6Spec::default`].
    pub fn ula_behind_nat66() -> Self {
        Self {
            client: Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 2),
            router_lan: Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 1),
            routing: Routing::Nat,
            ..Self::default()
        }
    }

    /// The LAN's prefix, such as `2001:db8:10::/64`.
    pub fn lan_prefix(&self) -> String {
        prefix6(self.client, self.lan_prefix_len)
    }
}

/// The network `addr/len` lies in, as `ip route` writes it.
fn prefix6(addr: Ipv6Addr, len: u8) -> String {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    format!("{}/{len}", Ipv6Addr::from(u128::from(addr) & mask))
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            lan_prefix_len: 24,
            client: Ipv4Addr::new(10, 0, 0, 2),
            router_lan: Ipv4Addr::new(10, 0, 0, 1),
            wan_prefix_len: 24,
            router_wan: Ipv4Addr::new(203, 0, 113, 254),
            server: Ipv4Addr::new(203, 0, 113, 10),
            routing: Routing::Nat,
            capture: true,
            ipv6: None,
            nat64: None,
        }
    }
}

/// A running lab. Dropping it stops every process it started, removes the namespaces (and with
/// them the veths and any programs attached to them), unmounts its bpffs and deletes its files —
/// unless the test is panicking, in which case the directory with the captures and logs is kept
/// and its path printed.
pub struct Lab {
    pub spec: LabSpec,
    pub name: String,
    dir: PathBuf,
    bpffs: PathBuf,
    /// Set once the lab has mounted its bpffs (on first use), so that drop unmounts it.
    bpffs_mounted: std::sync::OnceLock<()>,
    captures: Vec<Child>,
    /// Declared after the processes that run inside the namespaces so they drop first.
    pub client: NetNs,
    pub router: NetNs,
    pub server: NetNs,
}

impl Lab {
    pub fn new(spec: LabSpec) -> anyhow::Result<Self> {
        if spec.ipv6.is_some() && spec.nat64.is_some() {
            bail!("a lab is dual-stack (ipv6) or NAT64's (nat64), not both");
        }
        let name = unique_prefix();
        let dir = std::env::temp_dir().join("ftpnat-lab").join(&name);
        if dir.exists() {
            // Kept by a failed run of an earlier process that had our pid: start clean.
            let _ = run("umount", &["-l", &dir.join("bpffs").to_string_lossy()]);
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale {}", dir.display()))?;
        }
        // Namespaces of that earlier process, too: ours are about to take their names.
        for stale in remove_stale(&name)? {
            eprintln!("lab {name}: removed stale namespace {stale}");
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The FTP servers drop privileges: their files must be reachable by other users.
        for path in [dir.parent().unwrap_or(&dir), &dir] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        }
        // Beside every script written later, for `from ftpnat_lab import …` (a script's
        // directory is on Python's import path). Written once: rewriting it while another script
        // starts could let that one import a half-written module.
        fs::write(dir.join("ftpnat_lab.py"), PYTHON_HELPERS)?;
        let client = NetNs::create(&format!("{name}-client"))?;
        let router = NetNs::create(&format!("{name}-router"))?;
        let server = NetNs::create(&format!("{name}-server"))?;
        if spec.ipv6.is_some() || spec.nat64.is_some() {
            for ns in [&client, &router, &server] {
                // No duplicate address detection on any interface made from now on, link-local
                // addresses included: a tentative address can be neither used nor answered for.
                for scope in ["all", "default"] {
                    ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
                }
            }
        }
        if spec.nat64.is_some() {
            // An IPv4-only server: not even a link-local IPv6 address, on any interface made
            // from now on too.
            for scope in ["all", "default"] {
                server.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")?;
            }
        }
        let bpffs = dir.join("bpffs");
        let mut lab = Self {
            spec,
            name,
            dir,
            bpffs,
            bpffs_mounted: std::sync::OnceLock::new(),
            captures: Vec::new(),
            client,
            router,
            server,
        };
        lab.wire()?;
        if lab.spec.capture {
            lab.start_captures()?;
        }
        Ok(lab)
    }

    fn wire(&mut self) -> anyhow::Result<()> {
        let spec = self.spec.clone();
        if let Some(nat64) = &spec.nat64 {
            return self.wire_ipv6_only_lan(nat64);
        }
        self.join(
            ROUTER_LAN_IF,
            None,
            (spec.router_lan, spec.client),
            spec.lan_prefix_len,
            &self.client,
        )?;
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &spec.router_lan.to_string(),
        ])?;
        if let Some(v6) = &spec.ipv6 {
            self.ipv6_lan((v6.router_lan, v6.client), v6.lan_prefix_len)?;
        }
        self.wire_wan()
    }

    /// NAT64's lab: the LAN veth with IPv6 addresses only, the client's default route through
    /// the router (so the NAT64 prefix goes there), forwarding on; then the IPv4-only WAN.
    fn wire_ipv6_only_lan(&self, nat64: &Nat64Spec) -> anyhow::Result<()> {
        self.veth(ROUTER_LAN_IF, None, &self.client)?;
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.ipv6_lan((nat64.router_lan, nat64.client), nat64.lan_prefix_len)?;
        self.wire_wan()
    }

    /// IPv6 on the LAN veth: the router's and the client's `addresses` in one `/prefix_len`,
    /// forwarding on, the client's default route through the router.
    fn ipv6_lan(&self, addresses: (Ipv6Addr, Ipv6Addr), prefix_len: u8) -> anyhow::Result<()> {
        self.address6(ROUTER_LAN_IF, addresses, prefix_len, &self.client)?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &addresses.0.to_string(),
        ])?;
        Ok(())
    }

    /// IPv6 `addresses` (router's, host's) in one `/prefix_len` on the veth from the router's
    /// `router_if` to `HOST_IF` in `host`, without duplicate address detection (`nodad`).
    fn address6(
        &self,
        router_if: &str,
        addresses: (Ipv6Addr, Ipv6Addr),
        prefix_len: u8,
        host: &NetNs,
    ) -> anyhow::Result<()> {
        let (router_addr, host_addr) = (
            format!("{}/{prefix_len}", addresses.0),
            format!("{}/{prefix_len}", addresses.1),
        );
        self.router
            .ip(&["-6", "addr", "add", &router_addr, "dev", router_if, "nodad"])?;
        host.ip(&["-6", "addr", "add", &host_addr, "dev", HOST_IF, "nodad"])?;
        Ok(())
    }

    /// A veth pair from the router's `router_if` (with index `index` if given) to `HOST_IF` in
    /// `host`, the two ends addressed `addresses` (router's, host's) in one `/prefix_len`, up.
    fn join(
        &self,
        router_if: &str,
        index: Option<&str>,
        addresses: (Ipv4Addr, Ipv4Addr),
        prefix_len: u8,
        host: &NetNs,
    ) -> anyhow::Result<()> {
        self.veth(router_if, index, host)?;
        let (router_addr, host_addr) = (
            format!("{}/{prefix_len}", addresses.0),
            format!("{}/{prefix_len}", addresses.1),
        );
        self.router
            .ip(&["addr", "add", &router_addr, "dev", router_if])?;
        host.ip(&["addr", "add", &host_addr, "dev", HOST_IF])?;
        Ok(())
    }

    /// A veth pair from the router's `router_if` (with index `index` if given) to `HOST_IF` in
    /// `host`, both ends up, without addresses.
    fn veth(&self, router_if: &str, index: Option<&str>, host: &NetNs) -> anyhow::Result<()> {
        let mut add = vec!["link", "add", router_if];
        if let Some(index) = index {
            add.extend(["index", index]);
        }
        add.extend([
            "type",
            "veth",
            "peer",
            "name",
            HOST_IF,
            "netns",
            host.name(),
        ]);
        self.router.ip(&add)?;
        if self.spec.nat64.is_some() && router_if == ROUTER_WAN_IF {
            // NAT64's WAN is IPv4 only: no link-local address and no MLD report there, from
            // before the link comes up.
            self.router
                .sysctl(&format!("net.ipv6.conf.{router_if}.disable_ipv6"), "1")?;
        }
        self.router.ip(&["link", "set", router_if, "up"])?;
        host.ip(&["link", "set", HOST_IF, "up"])?;
        Ok(())
    }

    /// The router's WAN veth to the server, with its addresses (and the server's route back to
    /// the LAN when routed): made with the lab, or again after [`Lab::delete_wan`].
    pub fn wire_wan(&self) -> anyhow::Result<()> {
        self.wire_wan_at(None)
    }

    /// [`Lab::wire_wan`], the router's interface with the index `index` if given.
    fn wire_wan_at(&self, index: Option<&str>) -> anyhow::Result<()> {
        let spec = &self.spec;
        self.join(
            ROUTER_WAN_IF,
            index,
            (spec.router_wan, spec.server),
            spec.wan_prefix_len,
            &self.server,
        )?;
        if spec.routing == Routing::Routed {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(spec.lan_prefix_len))
                .unwrap_or(0);
            let lan_net = format!(
                "{}/{}",
                Ipv4Addr::from(u32::from(spec.client) & mask),
                spec.lan_prefix_len
            );
            self.server.ip(&[
                "route",
                "add",
                &lan_net,
                "via",
                &spec.router_wan.to_string(),
            ])?;
        }
        if let Some(v6) = &spec.ipv6 {
            self.address6(
                ROUTER_WAN_IF,
                (v6.router_wan, v6.server),
                v6.wan_prefix_len,
                &self.server,
            )?;
            if v6.routing == Routing::Routed {
                self.server.ip(&[
                    "-6",
                    "route",
                    "add",
                    &v6.lan_prefix(),
                    "via",
                    &v6.router_wan.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    /// The NAT64 lab's LAN; panics in another lab (a test asking is NAT64's).
    pub fn nat64(&self) -> &Nat64Spec {
        self.spec
            .nat64
            .as_ref()
            .expect("the NAT64 LAN of another lab: build it with LabSpec::nat64()")
    }

    /// Where the client of a NAT64 lab reaches the server: its IPv4 address in the lab's
    /// prefix (`2001:db8:ff64::cb00:710a`).
    pub fn server_via_nat64(&self) -> Ipv6Addr {
        self.nat64().address_of(self.spec.server)
    }

    /// The lab's IPv6 addresses; panics in an IPv4-only lab (a test asking is dual-stack).
    pub fn ipv6(&self) -> &Ipv6Spec {
        self.spec
            .ipv6
            .as_ref()
            .expect("an IPv6 address of an IPv4-only lab: build it with LabSpec::dual_stack()")
    }

    /// A namespace of its own (`<lab>-<label>`) on another network of the router: a veth from the
    /// router's `router_if` to its `HOST_IF`, addressed `addresses` (router's, host's) in one
    /// `/prefix_len`, with a default route through the router. The caller owns it: dropping it
    /// removes the namespace and the router's end of the veth with it.
    pub fn add_network(
        &self,
        label: &str,
        router_if: &str,
        addresses: (Ipv4Addr, Ipv4Addr),
        prefix_len: u8,
    ) -> anyhow::Result<NetNs> {
        let host = NetNs::create(&format!("{}-{label}", self.name))?;
        self.join(router_if, None, addresses, prefix_len, &host)?;
        host.ip(&["route", "add", "default", "via", &addresses.0.to_string()])?;
        Ok(host)
    }

    /// Deletes the router's WAN interface (and its peer), as a PPPoE link going down does:
    /// programs attached to it go with it. (The capture of that side ends.)
    pub fn delete_wan(&self) -> anyhow::Result<()> {
        self.router.ip(&["link", "del", ROUTER_WAN_IF])?;
        Ok(())
    }

    /// Deletes the router's WAN interface and creates it again at once under the same name and
    /// addresses.
    pub fn recreate_wan(&self) -> anyhow::Result<()> {
        self.delete_wan()?;
        self.wire_wan()
    }

    /// [`Lab::recreate_wan`] under the old interface's index too: a new device all the same.
    pub fn recreate_wan_keeping_its_index(&self) -> anyhow::Result<()> {
        let shown = self.router.ip(&["-o", "link", "show", ROUTER_WAN_IF])?;
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        // "7: wan0@if2: <…"
        let index = shown
            .split_once(':')
            .map(|(index, _)| index.trim().to_owned())
            .with_context(|| format!("no index in {shown:?}"))?;
        self.delete_wan()?;
        self.wire_wan_at(Some(&index))
    }

    fn start_captures(&mut self) -> anyhow::Result<()> {
        for iface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
            let pcap = self.dir.join(format!("router-{iface}.pcap"));
            let child = self
                .router
                .command(
                    "tcpdump",
                    &[
                        "-i",
                        iface,
                        "-s",
                        "256",
                        // A 32 MiB ring instead of 2 MiB: the 200 MB transfers must not make it
                        // drop the control segments a test looks for.
                        "-B",
                        "32768",
                        "-U",
                        // Hand each packet over at once, not when a kernel block fills: a test
                        // reads the capture while it runs.
                        "--immediate-mode",
                        "-n",
                        "-w",
                        &pcap.to_string_lossy(),
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tcpdump (is it installed? `cargo xtask setup`)")?;
            self.captures.push(child);
            wait_until(Duration::from_secs(5), || {
                fs::metadata(&pcap).is_ok_and(|m| m.len() > 0)
            })
            .with_context(|| format!("tcpdump on router {iface} did not start"))?;
        }
        Ok(())
    }

    /// The lab's private directory (logs, captures, server roots, downloads).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A subdirectory of the lab directory, created world-readable.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// A bpffs mounted for this lab alone, for the agent's pins: `ip netns exec` would hide
    /// /sys/fs/bpf, and a private mount keeps parallel labs apart.
    pub fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        // Checked on every use, not remembered: the mount is what the agent needs, whatever
        // happened to the directory since.
        let path = self.bpffs.to_string_lossy().into_owned();
        if run("mountpoint", &["-q", &path]).is_err() {
            fs::create_dir_all(&self.bpffs)?;
            run("mount", &["-t", "bpf", "bpf", &path])?;
            let _ = self.bpffs_mounted.set(());
        }
        Ok(self.bpffs.join("ftpnat"))
    }

    /// The agent's state directory in the pin dir (`v<layout version>`, the only one there while
    /// an agent's datapath is pinned).
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        let pin_dir = self.pin_dir()?;
        let mut versions = fs::read_dir(&pin_dir)
            .with_context(|| format!("reading {}", pin_dir.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with('v'))
            });
        match (versions.next(), versions.next()) {
            (Some(dir), None) => Ok(dir),
            _ => bail!("not exactly one state directory in {}", pin_dir.display()),
        }
    }

    /// Starts `ftpnat run` on the router for the lab's interfaces, with its pins in the lab's
    /// bpffs, and waits until it reports its programs attached.
    pub fn start_ftpnat(&self, extra_args: &[&str]) -> anyhow::Result<Agent> {
        Agent::start(self, &ftpnat_run_args(&self.pin_dir()?, extra_args))
    }

    /// `ftpnat run` on the router for the lab's interfaces, with its pins in `pin_dir` and
    /// `extra_args`, run to its end: for a start that must fail. Returns its exit status and what
    /// it printed on stderr.
    pub fn run_ftpnat_to_end(&self, pin_dir: &Path, extra_args: &[&str]) -> (ExitStatus, String) {
        let args = ftpnat_run_args(pin_dir, extra_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bin = crate::agent::ftpnat_bin().expect("the ftpnat binary");
        let out = self
            .in_router(&bin.to_string_lossy(), &args)
            .output()
            .expect("ftpnat run");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ftpnat detach` with the lab's pin dir, which must succeed: what it printed.
    pub fn detach(&self) -> String {
        let out = self.ftpnat(&["detach"]).expect("ftpnat detach");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ftpnat detach failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// A PPPoE link going down under a running `agent`: deletes the router's WAN interface and
    /// waits until the agent says that it lost its programs there and waits for the interface to
    /// come back; panics with the agent's log if it does not.
    pub fn lose_wan_under(&self, agent: &Agent) {
        self.delete_wan().expect("deleting wan0");
        let waiting = wait_until(Duration::from_secs(20), || {
            agent
                .log_text()
                .contains("attaching again once the interfaces are all there")
        });
        let log = agent.log_text();
        assert!(waiting.is_ok(), "the agent did not notice wan0 go:\n{log}");
        assert!(
            log.contains("wan0 (ifindex") && log.contains("lost ftpnat's programs"),
            "{log}"
        );
    }

    /// Runs an ftpnat command (e.g. `stats --json`) on the router, with the lab's pin dir.
    pub fn ftpnat(&self, args: &[&str]) -> anyhow::Result<Output> {
        let pin_dir = self.pin_dir()?;
        let output = self
            .in_router(&crate::agent::ftpnat_bin()?.to_string_lossy(), args)
            .args(["--pin-dir", &pin_dir.to_string_lossy()])
            .output()?;
        Ok(output)
    }

    /// Runs an ftpnat command with `--json` on the router and parses its output; an error carries
    /// its stderr.
    pub fn try_ftpnat_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.ftpnat(&full)?;
        if !out.status.success() {
            bail!(
                "ftpnat {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("ftpnat's JSON")
    }

    /// [`Lab::try_ftpnat_json`] for a report the test needs (`&["stats"]`, `&["sessions", id]`):
    /// panics with ftpnat's error if it fails.
    pub fn ftpnat_json(&self, args: &[&str]) -> serde_json::Value {
        self.try_ftpnat_json(args)
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// The datapath counter `name` of `ftpnat stats --json`.
    pub fn datapath_counter(&self, name: &str) -> u64 {
        let stats = self.ftpnat_json(&["stats"]);
        stats["datapath"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no datapath counter {name}: {stats}"))
    }

    /// A passive (PASV) curl download of `file` from `server` into `local`, from the client
    /// namespace, with curl's `options` (such as `-u USER:PASSWORD`): curl's output, whatever it
    /// was.
    pub fn curl_passive(
        &self,
        server: &crate::FtpServer,
        file: &crate::TestFile,
        local: &Path,
        options: &[&str],
    ) -> anyhow::Result<Output> {
        let url = format!("ftp://{}/{}", server.addr, file.name());
        let local = local.to_string_lossy();
        let mut args = vec!["-sS", "--fail", "--disable-epsv"];
        args.extend_from_slice(options);
        args.extend(["-o", &local, &url]);
        Ok(self.client.command("curl", &args).output()?)
    }

    /// [`Lab::curl_passive`] limited to `rate` (curl's `--limit-rate`, such as `10M`), so that
    /// the download lasts while the test acts on the router; checked by sha256. An error carries
    /// curl's stderr.
    pub fn curl_slowly(
        &self,
        server: &crate::FtpServer,
        file: &crate::TestFile,
        rate: &str,
        local: &Path,
    ) -> anyhow::Result<()> {
        let options = ["--limit-rate", rate, "--max-time", "120"];
        let out = self.curl_passive(server, file, local, &options)?;
        if !out.status.success() {
            bail!("curl: {}", String::from_utf8_lossy(&out.stderr));
        }
        if crate::files::sha256_of(local)? != file.sha256 {
            bail!("{} differs from {}", local.display(), file.path.display());
        }
        Ok(())
    }

    /// An agent gone mid-transfer: waits (up to 20 s) until `ftpnat flows` lists a data
    /// connection, then kills `agent` with SIGKILL.
    pub fn kill_agent_once_data_flows(&self, agent: &mut Agent) {
        let flowing = wait_until(Duration::from_secs(20), || {
            self.ftpnat_json(&["flows"])
                .as_array()
                .is_some_and(|flows| flows.iter().any(|f| f["kind"] == "data"))
        });
        assert!(flowing.is_ok(), "the data connection never opened");
        agent.stop_with(libc::SIGKILL).expect("kill -9");
    }

    /// Downloads `file` from `server` with curl in `mode` from the client namespace, and checks
    /// it by sha256.
    pub fn curl_from_client(
        &self,
        server: &crate::FtpServer,
        file: &crate::TestFile,
        mode: crate::Mode,
    ) -> anyhow::Result<()> {
        self.curl_from_client_at(server.addr.into(), server.port, file, mode)
    }

    /// [`Lab::curl_from_client`] from the server reached at `address:port` (such as its address
    /// in a NAT64 prefix).
    pub fn curl_from_client_at(
        &self,
        address: std::net::IpAddr,
        port: u16,
        file: &crate::TestFile,
        mode: crate::Mode,
    ) -> anyhow::Result<()> {
        let local = self.subdir("client")?.join(format!("{mode:?}.bin"));
        crate::Transfer {
            client: crate::Client::Curl,
            mode,
            server: address,
            port,
            remote: file.name(),
            local: &local,
            timeout_secs: 120,
        }
        .run(&self.client)?;
        let got = crate::files::sha256_of(&local)?;
        if got != file.sha256 {
            bail!("{} differs from {}", local.display(), file.path.display());
        }
        Ok(())
    }

    /// A command run in the router's network namespace only (unlike `ip netns exec`, it keeps
    /// this process's mounts, so it sees the lab's bpffs).
    pub fn in_router(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.router.path()))
            .arg(program)
            .args(args);
        cmd
    }

    /// Names of the TC programs attached to a router interface, as the kernel reports them.
    pub fn router_tc_programs(&self, iface: &str) -> anyhow::Result<Vec<String>> {
        let iface = iface.to_owned();
        let programs = self.router.run_inside(move || tcx_programs(&iface))??;
        Ok(programs.into_iter().map(|(name, _id)| name).collect())
    }

    /// The cls_bpf filters at a router interface's clsact hooks, ingress first, as iproute2's
    /// `tc filter show` lists them: how a datapath attached through classic TC shows (a TCX query
    /// does not see it).
    pub fn router_tc_filters(&self, iface: &str) -> anyhow::Result<Vec<TcFilter>> {
        let mut filters = Vec::new();
        for hook in ["ingress", "egress"] {
            let out = self
                .router
                .exec("tc", &["filter", "show", "dev", iface, hook])?;
            filters.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|line| TcFilter::parse(hook, line)),
            );
        }
        Ok(filters)
    }

    /// What the router's capture of `iface` holds so far, as tcpdump prints it with payloads
    /// (`-A`): for checking which addresses crossed that side.
    pub fn capture_text(&self, iface: &str) -> anyhow::Result<String> {
        let pcap = self.capture_snapshot(iface)?;
        let out = run("tcpdump", &["-nn", "-A", "-r", &pcap.to_string_lossy()])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A copy of the whole records of the router's running capture of `iface`, for tcpdump to
    /// read: it fails on a record still being written ("truncated dump file").
    fn capture_snapshot(&self, iface: &str) -> anyhow::Result<PathBuf> {
        let pcap = self.dir.join(format!("router-{iface}.pcap"));
        settle(&pcap);
        let bytes = fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
        let whole =
            capture::complete_len(&bytes).with_context(|| format!("reading {}", pcap.display()))?;
        // Numbered, so that two threads reading the same capture do not share a file.
        static SNAPSHOTS: AtomicUsize = AtomicUsize::new(0);
        let n = SNAPSHOTS.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.dir.join(format!("router-{iface}.snapshot-{n}.pcap"));
        fs::write(&snapshot, &bytes[..whole])
            .with_context(|| format!("writing {}", snapshot.display()))?;
        Ok(snapshot)
    }

    /// The IPv4 TCP segments in the router's capture of `iface` so far, in capture order: for
    /// checking exactly what one segment carried.
    pub fn capture_segments(&self, iface: &str) -> anyhow::Result<Vec<TcpSegment>> {
        self.read_capture(iface, capture::tcp_segments)
    }

    /// [`Lab::capture_segments`] for the IPv6 TCP segments.
    pub fn capture_segments6(&self, iface: &str) -> anyhow::Result<Vec<TcpSegment<SocketAddrV6>>> {
        self.read_capture(iface, capture::tcp6_segments)
    }

    /// The router's capture of `iface` so far, read by `parse`.
    fn read_capture<T>(
        &self,
        iface: &str,
        parse: fn(&[u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let pcap = self.dir.join(format!("router-{iface}.pcap"));
        let bytes = fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
        parse(&bytes).with_context(|| format!("reading {}", pcap.display()))
    }

    /// The router's capture of `iface` so far, as tcpdump prints it with `options` (e.g. `-vv`
    /// to have each checksum verified), limited to the packets `filter` selects.
    pub fn capture_dump(
        &self,
        iface: &str,
        options: &[&str],
        filter: &str,
    ) -> anyhow::Result<String> {
        let pcap = self.capture_snapshot(iface)?;
        let pcap = pcap.to_string_lossy();
        let mut args = vec!["-nn", "-r", &pcap];
        args.extend_from_slice(options);
        args.push(filter);
        let out = run("tcpdump", &args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a Python script (system interpreter, for Debian's modules) in the client namespace.
    pub fn client_python(
        &self,
        script: &str,
        args: &[&str],
        timeout_secs: u32,
    ) -> anyhow::Result<Output> {
        self.python(&self.client, script, args, timeout_secs)
    }

    /// The server's firewall drops the first of every `every` segments to the FTP port that
    /// contain `text` (a `every` larger than the test's segments: only the first).
    pub fn server_drops_first_of_every(&self, text: &str, every: u32) {
        self.server_drops_first_of_every_with("iptables", text, every);
    }

    /// [`Lab::server_drops_first_of_every`] for the segments that come over IPv6.
    pub fn server_drops_first_of_every6(&self, text: &str, every: u32) {
        self.server_drops_first_of_every_with("ip6tables", text, every);
    }

    /// The client's firewall drops the first IPv6 segment from the FTP port that contains
    /// `text`: a reply lost on its way, which the server sends again.
    pub fn client_drops_first_reply6(&self, text: &str) {
        // Larger than any test's count of segments: only the first.
        drops_first_of_every(&self.client, "ip6tables", "--sport", text, 1_000_000);
    }

    /// [`Lab::server_drops_first_of_every`] with the rule added by `iptables` (or `ip6tables`).
    fn server_drops_first_of_every_with(&self, iptables: &str, text: &str, every: u32) {
        drops_first_of_every(&self.server, iptables, "--dport", text, every);
    }

    /// Runs a Python script (system interpreter) in `ns`; an error carries its output.
    pub fn python(
        &self,
        ns: &NetNs,
        script: &str,
        args: &[&str],
        timeout_secs: u32,
    ) -> anyhow::Result<Output> {
        let output = self
            .python_command(ns, script, args, timeout_secs)?
            .output()?;
        if !output.status.success() {
            bail!(
                "python script failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// A Python script (system interpreter) in `ns`, written to the lab directory, under
    /// `timeout`.
    fn python_command(
        &self,
        ns: &NetNs,
        script: &str,
        args: &[&str],
        timeout_secs: u32,
    ) -> anyhow::Result<Command> {
        static SCRIPTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SCRIPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("script-{n}.py"));
        fs::write(&path, script)?;
        let timeout = timeout_secs.to_string();
        let path = path.to_string_lossy().into_owned();
        let mut full = vec![timeout.as_str(), "/usr/bin/python3", path.as_str()];
        full.extend_from_slice(args);
        Ok(ns.command("timeout", &full))
    }

    /// Starts a Python script in `ns` that the test drives line by line (see [`SteppedScript`]).
    pub fn python_stepped(
        &self,
        ns: &NetNs,
        script: &str,
        args: &[&str],
        timeout_secs: u32,
    ) -> anyhow::Result<SteppedScript> {
        let command = self.python_command(ns, script, args, timeout_secs)?;
        static STEPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STEPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SteppedScript::spawn(command, &self.dir.join(format!("stepped-{n}.stderr")))
    }

    /// A file of `size` pseudo-random bytes served by vsftpd on the server, anonymously (over IPv6
    /// too in a dual-stack lab, at [`Ipv6Spec::server`]): what most tests transfer.
    pub fn serve_file(
        &self,
        size: u64,
        seed: u64,
    ) -> anyhow::Result<(crate::FtpServer, crate::TestFile)> {
        self.serve_file_with(size, seed, &crate::servers::VsftpdOptions::default())
    }

    /// As [`Lab::serve_file`], with vsftpd configured by `options`.
    pub fn serve_file_with(
        &self,
        size: u64,
        seed: u64,
        options: &crate::servers::VsftpdOptions,
    ) -> anyhow::Result<(crate::FtpServer, crate::TestFile)> {
        let root = self.subdir("srv")?;
        let file = crate::TestFile::create(&root.join(format!("data-{seed}.bin")), size, seed)?;
        // In a dual-stack lab the server serves both.
        let mut options = options.clone();
        if let Some(v6) = &self.spec.ipv6 {
            options.ipv6.get_or_insert(v6.server);
        }
        let server =
            crate::FtpServer::vsftpd(&self.server, self.spec.server, &root, self.dir(), &options)?;
        Ok((server, file))
    }

    /// Packets received by a namespace's interface, from the kernel's own counters.
    pub fn rx_packets(ns: &NetNs, iface: &str) -> anyhow::Result<u64> {
        let out = ns.exec(
            "cat",
            &[&format!("/sys/class/net/{iface}/statistics/rx_packets")],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }

    /// Makes the router masquerade the LAN behind its WAN address with netfilter, and (if
    /// `ftp_helper`) attach the kernel's FTP helper to control connections: the reference setup.
    pub fn netfilter_masquerade(&self, ftp_helper: bool) -> anyhow::Result<()> {
        self.router.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                ROUTER_WAN_IF,
                "-j",
                "MASQUERADE",
            ],
        )?;
        if ftp_helper {
            self.router.exec(
                "iptables",
                &[
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-i",
                    ROUTER_LAN_IF,
                    "-p",
                    "tcp",
                    "--dport",
                    "21",
                    "-j",
                    "CT",
                    "--helper",
                    "ftp",
                ],
            )?;
        }
        Ok(())
    }

    /// The operator's IPv6 firewall on the router, as a dual-stack home router has it: what comes
    /// in on the WAN is forwarded only if it belongs to a connection conntrack knows (or relates
    /// to one, like an ICMPv6 error); everything else from the WAN is dropped and counted
    /// ([`Lab::unsolicited_inbound_ipv6_dropped`]); the LAN goes out freely. No `CT --helper ftp`
    /// rule (and the kernel assigns no helper by itself): an active data connection, which the
    /// server opens, is unsolicited to it.
    pub fn drop_unsolicited_inbound_ipv6(&self) -> anyhow::Result<()> {
        let rules: [&[&str]; 3] = [
            &[
                "-A",
                "FORWARD",
                "-i",
                ROUTER_WAN_IF,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &[
                "-A",
                "FORWARD",
                "-i",
                ROUTER_WAN_IF,
                "-m",
                "comment",
                "--comment",
                UNSOLICITED_INBOUND_DROP,
                "-j",
                "DROP",
            ],
            &[
                "-A",
                "FORWARD",
                "-i",
                ROUTER_LAN_IF,
                "-o",
                ROUTER_WAN_IF,
                "-j",
                "ACCEPT",
            ],
        ];
        for rule in rules {
            self.router.exec("ip6tables", rule)?;
        }
        Ok(())
    }

    /// Packets the rule of [`Lab::drop_unsolicited_inbound_ipv6`] has dropped so far.
    pub fn unsolicited_inbound_ipv6_dropped(&self) -> anyhow::Result<u64> {
        let out = self
            .router
            .exec("ip6tables", &["-L", "FORWARD", "-v", "-x", "-n"])?;
        let listing = String::from_utf8_lossy(&out.stdout);
        // "      7      560 DROP  0  --  wan0  *  ::/0  ::/0  /* ftpnat-lab: … */"
        let row = listing
            .lines()
            .find(|line| line.contains(UNSOLICITED_INBOUND_DROP))
            .with_context(|| format!("no drop rule in the router's FORWARD chain:\n{listing}"))?;
        let packets = row.split_whitespace().next().unwrap_or_default();
        packets
            .parse()
            .with_context(|| format!("no packet count in {row:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.captures {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // Namespaces go next (fields drop after this body), taking the veths with them; the bpffs
        // and the files are ours to remove.
        if self.bpffs_mounted.get().is_some() {
            let _ = run("umount", &["-l", &self.bpffs.to_string_lossy()]);
        }
        if thread::panicking() {
            eprintln!(
                "lab {}: test failed; captures and logs kept in {}",
                self.name,
                self.dir.display()
            );
        } else if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("lab cleanup: removing {}: {err}", self.dir.display());
        }
    }
}

/// A cls_bpf filter as `tc filter show` prints it: `filter protocol all pref 49152 bpf chain 0
/// handle 0x1 ftpnat_ingress direct-action not_in_hw id 42 name ftpnat_ingress tag … jited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilter {
    pub hook: &'static str,
    pub pref: u16,
    pub handle: String,
    /// The filter's own name (the loader's), which follows the handle.
    pub name: String,
    pub program_id: u32,
}

impl TcFilter {
    /// The filter a line describes; `None` for the line tc prints for each priority, which has no
    /// handle, and for filters of other kinds than bpf.
    fn parse(hook: &'static str, line: &str) -> Option<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|word| *word == key)
                .and_then(|at| words.get(at + 1))
                .copied()
        };
        if !words.contains(&"bpf") {
            return None;
        }
        Some(Self {
            hook,
            pref: after("pref")?.parse().ok()?,
            handle: after("handle")?.to_owned(),
            name: words
                .iter()
                .position(|word| *word == "handle")
                .and_then(|at| words.get(at + 2))?
                .to_string(),
            program_id: after("id")?.parse().ok()?,
        })
    }
}

/// The arguments of `ftpnat run` for the lab's interfaces, its pins in `pin_dir`, then `extra`.
pub fn ftpnat_run_args(pin_dir: &Path, extra: &[&str]) -> Vec<String> {
    let pin_dir = pin_dir.to_string_lossy();
    [
        "run",
        "--wan",
        ROUTER_WAN_IF,
        "--lan",
        ROUTER_LAN_IF,
        "--pin-dir",
        &pin_dir,
    ]
    .iter()
    .chain(extra)
    .map(|arg| (*arg).to_owned())
    .collect()
}

/// Waits until the capture `pcap` has stopped growing for 200 ms (at most 5 s): tcpdump writes
/// each packet as it gets it, but on a loaded machine it gets them late, and a test reading the
/// capture right after its client finished would miss the last ones.
fn settle(pcap: &Path) {
    let size = || fs::metadata(pcap).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let mut last = size();
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(200)
        && start.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(50));
        let now = size();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

/// Adds a rule to `ns`'s INPUT chain with `iptables` (or `ip6tables`) that drops the first of
/// every `every` TCP segments whose FTP port (`port_match`: `--dport 21` for what goes to a
/// server, `--sport 21` for its replies) is 21 and that contain `text`.
fn drops_first_of_every(ns: &NetNs, iptables: &str, port_match: &str, text: &str, every: u32) {
    let every = every.to_string();
    let args = [
        "-A",
        "INPUT",
        "-p",
        "tcp",
        port_match,
        "21",
        "-m",
        "string",
        "--string",
        text,
        "--algo",
        "bm",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        &every,
        "--packet",
        "0",
        "-j",
        "DROP",
    ];
    ns.exec(iptables, &args)
        .unwrap_or_else(|err| panic!("{iptables} in {}: {err:#}", ns.name()));
}

/// Polls `ready` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            bail!("still not ready after {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat64_addresses_embed_ipv4_in_the_last_32_bits() {
        // RFC 6052 section 2.4's example for the well-known prefix.
        let prefix: Ipv6Addr = "64:ff9b::".parse().unwrap();
        let embedded = nat64_address(prefix, Ipv4Addr::new(192, 0, 2, 33));
        assert_eq!(embedded, "64:ff9b::c000:221".parse::<Ipv6Addr>().unwrap());
        assert_eq!(embedded.to_string(), "64:ff9b::c000:221");
        let lab = Nat64Spec::default();
        assert_eq!(
            lab.address_of(Ipv4Addr::new(203, 0, 113, 10)).to_string(),
            "2001:db8:ff64::cb00:710a"
        );
        assert_eq!(lab.prefix_arg(), "2001:db8:ff64::/96");
    }
}
