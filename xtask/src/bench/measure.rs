//! One measurement each: P1 a download with the router's CPU read, P2 ftpnat's programs' run time
//! under a workload, P3 sessions per second, P4 the flow table filled.

use std::{
    collections::BTreeMap,
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    beds::{Bed, Cpus},
    system::{self, ProgramRuns},
};

/// P1: one download through a router.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub mb_per_s: f64,
    /// The router CPU's softirq time per forwarded packet.
    pub ns_per_packet: f64,
    /// The router CPU's share of softirq time without the bench's traffic, just before (0..1).
    pub background: f64,
    /// Forwarded packets the router CPU took from its backlog (RPS) over those forwarded.
    pub steered: f64,
    pub packets: u64,
    /// The router CPU's softirq time over the download, in ms: with tick-sampled accounting, a
    /// figure of a few ticks is rough.
    pub softirq_ms: f64,
}

/// Downloads the bed's big file (curl, EPSV) on the endpoints' CPU again and again until
/// `at_least` has passed (once at least), reading the router CPU's softirq time and the router's
/// packet counters around them all: the longer, the more timer ticks a tick-sampled softirq time
/// rests on.
pub fn throughput(
    bed: &Bed,
    cpus: Cpus,
    background_span: Duration,
    at_least: Duration,
) -> anyhow::Result<Throughput> {
    let background = system::background_softirq(cpus.router, background_span)?;
    let url = format!("ftp://{}/{}", bed.server.addr, bed.big.name());
    let busy_before = system::cpu_softirq_ticks(cpus.router)?;
    let steered_before = system::softnet_processed(cpus.router)?;
    let packets_before = bed.router_packets()?;
    let started = Instant::now();
    let (mut bytes, mut seconds) = (0.0, 0.0);
    loop {
        let out = bed
            .client_command(
                cpus,
                "curl",
                &[
                    "-sS",
                    "--fail",
                    "--max-time",
                    "300",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download} %{time_total}",
                    &url,
                ],
            )
            .output()?;
        let out = succeeded(out, "curl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (size, time) = text
            .trim()
            .split_once(' ')
            .with_context(|| format!("curl -w printed {text:?}"))?;
        bytes += size.parse::<f64>()?;
        seconds += time.parse::<f64>()?;
        if started.elapsed() >= at_least {
            break;
        }
    }
    let busy = system::cpu_softirq_ticks(cpus.router)? - busy_before;
    let steered = system::softnet_processed(cpus.router)? - steered_before;
    let packets = bed.router_packets()? - packets_before;
    Ok(Throughput {
        mb_per_s: bytes / seconds.max(1e-9) / 1e6,
        ns_per_packet: system::ticks_to_ns(busy) / packets.max(1) as f64,
        background,
        steered: steered as f64 / packets.max(1) as f64,
        packets,
        softirq_ms: system::ticks_to_ns(busy) / 1e6,
    })
}

fn succeeded(out: Output, what: &str) -> anyhow::Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// What ftpnat's programs ran during one workload, by program name.
#[derive(Debug, Clone, Default)]
pub struct Runs(pub BTreeMap<String, ProgramRuns>);

impl Runs {
    /// What `f` made the agent's programs run (BPF run-time statistics must be on).
    pub fn during(pid: u32, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let before = system::program_runs(pid)?;
        f()?;
        let after = system::program_runs(pid)?;
        Ok(Self(
            after
                .into_iter()
                .map(|(name, runs)| {
                    let earlier = before.get(&name).copied().unwrap_or_default();
                    (name, runs.since(earlier))
                })
                .collect(),
        ))
    }

    pub fn of(&self, program: &str) -> ProgramRuns {
        self.0.get(program).copied().unwrap_or_default()
    }

    /// Everything every program ran.
    pub fn total(&self) -> ProgramRuns {
        self.0
            .values()
            .fold(ProgramRuns::default(), |sum, r| sum.add(*r))
    }

    /// Run time of ftpnat's programs per packet through the router: each forwarded packet runs
    /// the ingress program on the interface it arrives by (and the stages it tail-calls, whose
    /// time the kernel counts in the ingress program's).
    pub fn ns_per_forwarded_packet(&self) -> f64 {
        self.total().run_time_ns as f64 / self.of(INGRESS).runs.max(1) as f64
    }
}

pub const INGRESS: &str = "ftpnat_ingress";

/// A control-connection workload: `sessions` anonymous sessions one after another, each sending
/// `ports` PORT commands (each rewritten by the router, each answered 200) and, if `stat` is not
/// `-`, `STAT stat` (a directory listing as a multi-line reply on the control connection).
const CONTROL_WORKLOAD: &str = r#"
import ftplib, sys
server, sessions, ports, stat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(sessions):
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=20)
    ftp.login()
    host = ftp.sock.getsockname()[0].replace('.', ',')
    for i in range(ports):
        ftp.sendcmd('PORT %s,100,%d' % (host, i + 1))
    if stat != '-':
        reply = ftp.sendcmd('STAT ' + stat)
        if reply.count('\n') < 10:
            sys.exit('STAT gave a short reply: ' + reply[:200])
    ftp.quit()
"#;

/// Runs [`CONTROL_WORKLOAD`] from the client, pinned to the endpoints' CPU.
pub fn control_workload(
    bed: &Bed,
    cpus: Cpus,
    sessions: usize,
    ports: usize,
    stat: Option<&str>,
) -> anyhow::Result<()> {
    let out = bed.client_python(
        cpus,
        ("control-workload.py", CONTROL_WORKLOAD),
        300,
        &[
            &bed.server.addr.to_string(),
            &sessions.to_string(),
            &ports.to_string(),
            stat.unwrap_or("-"),
        ],
    )?;
    succeeded(out, "the control workload")?;
    Ok(())
}

/// Pure ACKs on an established control connection: after login, the client's socket is put in
/// repair mode (TCP_REPAIR, which needs CAP_NET_ADMIN) to read its next sequence number and the
/// next one it expects, and `count` copies of the ACK it would send — a duplicate ACK, no
/// payload — leave through a raw socket. The server's TCP ignores them; the router forwards
/// each.
const PURE_ACKS: &str = r#"
import ftplib, socket, struct, sys
server, count = sys.argv[1], int(sys.argv[2])
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, RECV_QUEUE, SEND_QUEUE = 19, 20, 21, 1, 2
ftp = ftplib.FTP()
ftp.connect(server, 21, timeout=20)
ftp.login()
ftp.voidcmd('NOOP')
sock = ftp.sock
(src, sport), (dst, dport) = sock.getsockname(), sock.getpeername()
sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)
seq = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xffffffff
sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)
ack = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xffffffff
sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)  # TCP_REPAIR_OFF_NO_WP
def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, 0x10, 502, 0, 0)
tcp = tcp[:16] + struct.pack('!H', checksum(saddr + daddr + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, saddr, daddr)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
packet = ip + tcp
for _ in range(count):
    raw.sendto(packet, (dst, 0))
ftp.voidcmd('NOOP')
ftp.quit()
"#;

/// Sends `count` pure ACKs on one control connection ([`PURE_ACKS`]).
pub fn pure_acks(bed: &Bed, cpus: Cpus, count: usize) -> anyhow::Result<()> {
    let out = bed.client_python(
        cpus,
        ("pure-acks.py", PURE_ACKS),
        300,
        &[&bed.server.addr.to_string(), &count.to_string()],
    )?;
    succeeded(out, "the pure-ACK workload")?;
    Ok(())
}

/// P3: `clients` concurrent ftplib clients for `seconds`, each looping: login, EPSV (even
/// clients) or PORT (odd ones), RETR of a 4 KiB file, QUIT; a client pauses 50 ms after a failed
/// session. Prints `ok failed seconds` and the
/// kinds of failure.
const SESSIONS_WORKLOAD: &str = r#"
import collections, ftplib, sys, threading, time
server, name, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()
ok, failed, errors = 0, 0, collections.Counter()
start = time.monotonic()
deadline = start + seconds

def session(passive):
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=10)
    try:
        ftp.login()
        if passive:
            ftp.makepasv = lambda: ftplib.parse229(ftp.sendcmd('EPSV'), ftp.sock.getpeername())
        else:
            ftp.set_pasv(False)
        data = []
        ftp.retrbinary('RETR ' + name, data.append)
        if sum(map(len, data)) != 4096:
            raise ValueError('short file')
        ftp.quit()
    finally:
        ftp.close()

def client(n):
    global ok, failed
    while time.monotonic() < deadline:
        try:
            session(n % 2 == 0)
            with lock:
                ok += 1
        except Exception as err:
            with lock:
                failed += 1
                errors[('EPSV ' if n % 2 == 0 else 'PORT ') + type(err).__name__ + ': ' + str(err)[:60]] += 1
            # A refused connection fails at once: without a pause a client would count thousands.
            time.sleep(0.05)

threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(ok, failed, time.monotonic() - start)
for what, count in errors.most_common(3):
    print(count, what)
"#;

/// P3: one run of [`SESSIONS_WORKLOAD`].
#[derive(Debug, Clone)]
pub struct Sessions {
    pub per_second: f64,
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

pub fn sessions(bed: &Bed, cpus: Cpus, clients: usize, seconds: u64) -> anyhow::Result<Sessions> {
    let out = bed.client_python(
        cpus,
        ("sessions-workload.py", SESSIONS_WORKLOAD),
        seconds + 60,
        &[
            &bed.server.addr.to_string(),
            bed.tiny.name(),
            &clients.to_string(),
            &seconds.to_string(),
        ],
    )?;
    let out = succeeded(out, "the sessions workload")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let first: Vec<&str> = lines
        .next()
        .context("the sessions workload printed nothing")?
        .split_whitespace()
        .collect();
    let [ok, failed, elapsed] = first[..] else {
        bail!("unexpected sessions workload output: {text}");
    };
    let ok: u64 = ok.parse()?;
    let elapsed: f64 = elapsed.parse()?;
    Ok(Sessions {
        per_second: ok as f64 / elapsed,
        ok,
        failed: failed.parse()?,
        failures: lines.map(str::to_owned).collect(),
    })
}
