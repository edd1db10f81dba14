//! `cargo xtask kernels`: the kernel matrix. Boots Debian's own kernel packages under qemu and, in
//! each, runs the lab's scenario (client | router | server namespaces, vsftpd on the server, `ftpnat
//! run` on the router masquerading the client, an active and a passive curl download checked by
//! sha256); runs the same scenario natively on this machine's kernel; prints one row per kernel.
//!
//! A VM is one qemu process with `-accel tcg`: this machine kind's `/dev/kvm` is PVM, under which
//! stock kernels die ("KVM internal error ... emulation failure"). Its initramfs holds busybox,
//! iproute2's `ip` (busybox's cannot make veth), curl, vsftpd and ftpnat with their shared
//! libraries, the kernel's modules the lab needs (decompressed, in dependency order) and
//! `kernels/init.sh` as PID 1, which runs the steps and reports them on the serial console.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ftpnat_tests::{FtpServer, Lab, LabSpec, Mode, Routing, TestFile, lab::Nat64Spec};

use crate::{
    build,
    verify::{self, ProgramFigures},
    workspace_root,
};

/// A Debian kernel series in the matrix: the newest package apt lists whose name is `prefix`,
/// then a number, then `suffix`. To add a kernel, add a series (and a line in DEVELOPERS.md).
pub struct Series {
    pub prefix: &'static str,
    pub suffix: &'static str,
    /// What the series proves.
    pub about: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
        about: "Debian 12's stock kernel (no TCX: classic TC only)",
    },
    Series {
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64",
        about: "Debian 12's backports kernel (TCX)",
    },
];

/// Modules the lab needs that Debian's cloud kernels build as modules: veth pairs, the clsact
/// qdisc and the classic TC classifier. The VM has no modprobe for the kernel to call on demand.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

/// The whole life of one VM, boot to power-off (about 20 s on this machine kind). Its steps have
/// limits of their own in init.sh; this one only stops a VM that hangs, well within CI's time.
const VM_TIME_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Memory of a VM: the initramfs (~70 MB, unpacked into RAM) and the verifier's states.
const VM_MEMORY: &str = "2048";
/// What the native row downloads; the VMs download the same size (FILE_BYTES in init.sh).
const FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the matrix keeps its downloads, extracted kernels, initramfs and consoles.
fn kernels_dir() -> PathBuf {
    workspace_root().join("target").join("kernels")
}

fn debs_dir() -> PathBuf {
    kernels_dir().join("debs")
}

/// The numbered part of `name` if it belongs to `series`.
fn series_number(series: &Series, name: &str) -> Option<u64> {
    let number = name
        .strip_prefix(series.prefix)?
        .strip_suffix(series.suffix)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The newest package of `series` among `names` (by its number, not by text: 6.1.0-100 > -99).
fn newest_in<'a>(series: &Series, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter_map(|name| series_number(series, name).map(|n| (n, name)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, name)| name)
}

fn output_text(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest package of `series` in apt's lists, if any.
fn newest_package(series: &Series) -> anyhow::Result<Option<String>> {
    let names = output_text(Command::new("apt-cache").args(["pkgnames", series.prefix]))?;
    Ok(newest_in(series, names.lines()).map(str::to_owned))
}

/// A kernel package of the matrix and where its download is kept.
pub struct KernelDeb {
    pub package: String,
    pub path: PathBuf,
}

/// The newest package of `series` and the file `apt-get download` makes of it, running apt-get
/// update once (`updated`) if apt lists none, as on a fresh machine.
fn resolve(series: &Series, updated: &mut bool) -> anyhow::Result<KernelDeb> {
    let package = match newest_package(series)? {
        Some(package) => package,
        None if !*updated => {
            println!(
                "xtask setup: apt lists no {}*: apt-get update",
                series.prefix
            );
            crate::run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
            *updated = true;
            newest_package(series)?.with_context(|| {
                format!("apt lists no {}N{} package", series.prefix, series.suffix)
            })?
        }
        None => bail!("apt lists no {}N{} package", series.prefix, series.suffix),
    };
    // The pool file's name, which apt-get download gives the candidate version (`:` as `%3a`).
    let shown =
        output_text(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?;
    let file_name = shown
        .lines()
        .find_map(|line| line.strip_prefix("Filename: "))
        .and_then(|pool_path| pool_path.rsplit('/').next())
        .with_context(|| format!("apt-cache show {package} names no file"))?;
    let path = debs_dir().join(file_name);
    Ok(KernelDeb { package, path })
}

/// Downloads (into target/kernels/debs) the newest package of each series that is not there yet,
/// saying what it did. Part of `cargo xtask setup`.
pub fn fetch_kernel_packages() -> anyhow::Result<()> {
    let mut updated = false;
    for series in SERIES {
        let deb = resolve(series, &mut updated)?;
        let file_name = deb.path.file_name().unwrap_or_default().to_string_lossy();
        if deb.path.exists() {
            println!("xtask setup: kernel package {file_name} present");
            continue;
        }
        println!(
            "xtask setup: downloading {} — for the kernel matrix: {}",
            deb.package, series.about
        );
        fs::create_dir_all(debs_dir())?;
        // As root into a directory apt's sandbox user cannot write: download as root, quietly.
        crate::run_checked(
            Command::new("apt-get")
                .args([
                    "download",
                    "-qq",
                    "-o",
                    "APT::Sandbox::User=root",
                    &deb.package,
                ])
                .current_dir(debs_dir()),
        )?;
        if !deb.path.exists() {
            bail!(
                "apt-get download {} did not leave {}",
                deb.package,
                deb.path.display()
            );
        }
    }
    Ok(())
}

/// The kernel packages setup downloaded, one per series.
fn downloaded_kernel_packages() -> anyhow::Result<Vec<KernelDeb>> {
    let mut updated = false;
    SERIES
        .iter()
        .map(|series| {
            let deb = resolve(series, &mut updated)?;
            if !deb.path.exists() {
                bail!(
                    "{} is missing: `cargo xtask setup` downloads it",
                    deb.path.display()
                );
            }
            Ok(deb)
        })
        .collect()
}

/// A kernel extracted from its package, ready to boot.
struct BootableKernel {
    /// `uname -r` of the kernel.
    release: String,
    vmlinuz: PathBuf,
    /// The extracted package: `lib/modules/<release>` holds the modules, with depmod's index.
    root: PathBuf,
}

/// Extracts `deb` under target/kernels (once: a stamp marks a complete extraction) and indexes its
/// modules with depmod (Debian's packages leave that to their postinst).
fn extract(deb: &KernelDeb) -> anyhow::Result<BootableKernel> {
    let stem = deb
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("kernel package file name")?;
    let root = kernels_dir().join(stem);
    let stamp = root.join(".extracted");
    if !stamp.exists() {
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        crate::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb.path).arg(&root))?;
        let release = single_release(&root)?;
        crate::run_checked(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
        fs::write(&stamp, "")?;
        println!("kernels: extracted {}", deb.package);
    }
    let release = single_release(&root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no {}", deb.path.display(), vmlinuz.display());
    }
    Ok(BootableKernel {
        release,
        vmlinuz,
        root,
    })
}

/// The one kernel release under `root/lib/modules`.
fn single_release(root: &Path) -> anyhow::Result<String> {
    let dir = root.join("lib/modules");
    let mut releases = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok());
    match (releases.next(), releases.next()) {
        (Some(release), None) => Ok(release),
        _ => bail!("not exactly one kernel release in {}", dir.display()),
    }
}

/// The first `name` on PATH.
fn on_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH (`cargo xtask setup` installs it)"))
}

/// The shared libraries `binary` loads, the dynamic loader included (none for a static binary).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed ({})", binary.display(), out.status);
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

/// The paths in ldd's output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has none.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("a library is missing: {}", line.trim());
        }
        let path = line.split_once("=>").map_or(line, |(_, rest)| rest).trim();
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Copies `source` into the tree at `root` as `dest` (absolute inside the tree), with the shared
/// libraries it loads at the paths the loader looks for them.
fn install_with_libraries(root: &Path, source: &Path, dest: &str) -> anyhow::Result<()> {
    copy_into(root, source, dest)?;
    for library in shared_libraries(source)? {
        copy_into(root, &library, &library.to_string_lossy())?;
    }
    Ok(())
}

/// Copies `source` (following symlinks) to `root/dest`, creating directories.
fn copy_into(root: &Path, source: &Path, dest: &str) -> anyhow::Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(source, &target)
        .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    Ok(())
}

/// Packs the tree at `root` as a newc cpio archive (what the kernel unpacks as its initramfs).
fn pack_cpio(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let script = format!(
        "find . | LC_ALL=C sort | cpio --quiet -o -H newc > '{}'",
        archive.display()
    );
    crate::run_checked(Command::new("sh").args(["-c", &script]).current_dir(root))
}

/// The part of every VM's initramfs that does not depend on the kernel: init.sh, busybox, the
/// tools and ftpnat. Built afresh each run (a second or two), so it always holds today's ftpnat.
fn common_initramfs(ftpnat: &Path) -> anyhow::Result<PathBuf> {
    let root = kernels_dir().join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    install_with_libraries(&root, &on_path("busybox")?, "/bin/busybox")?;
    // The kernel runs /init with /bin/sh before init.sh installs busybox's other applets.
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    // PATH inside the VM puts /usr before busybox's /bin: these win over its applets.
    install_with_libraries(&root, &on_path("ip")?, "/usr/sbin/ip")?;
    install_with_libraries(&root, &on_path("curl")?, "/usr/bin/curl")?;
    install_with_libraries(&root, &on_path("vsftpd")?, "/usr/sbin/vsftpd")?;
    install_with_libraries(&root, ftpnat, "/usr/bin/ftpnat")?;
    let init = root.join("init");
    fs::write(&init, include_str!("kernels/init.sh"))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // vsftpd's anonymous user and its unprivileged one; root for ftpnat and the rest.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         ftp:x:101:101:ftp:/srv/ftp:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nftp:x:101:\nnogroup:x:65534:\n",
    )?;
    let archive = kernels_dir().join("common.cpio");
    pack_cpio(&root, &archive)?;
    Ok(archive)
}

/// The initramfs of `kernel`: the common archive followed by one with its modules (the kernel
/// unpacks concatenated archives in turn).
fn kernel_initramfs(
    kernel: &BootableKernel,
    common: &Path,
    run_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let root = run_dir.join("modules-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(root.join("modules"))?;
    let mut loaded = BTreeSet::new();
    let mut order = 0;
    for module in MODULES {
        let depends = output_text(Command::new("modprobe").arg("-d").arg(&kernel.root).args([
            "-S",
            &kernel.release,
            "--show-depends",
            module,
        ]))?;
        // "insmod /…/veth.ko.xz" per module, dependencies first; "builtin X" for built-in ones.
        for path in depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("insmod "))
        {
            let path = path.split_whitespace().next().unwrap_or(path);
            if !loaded.insert(path.to_owned()) {
                continue;
            }
            order += 1;
            let file_name = Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .context("module file name")?;
            let base = file_name
                .split_once(".ko")
                .map_or(file_name, |(base, _)| base);
            let dest = root.join("modules").join(format!("{order:02}-{base}.ko"));
            decompress_module(Path::new(path), &dest)?;
        }
    }
    let modules_archive = run_dir.join("modules.cpio");
    pack_cpio(&root, &modules_archive)?;
    let initramfs = run_dir.join("initramfs.cpio");
    let mut bytes = fs::read(common)?;
    bytes.extend(fs::read(&modules_archive)?);
    fs::write(&initramfs, bytes)?;
    Ok(initramfs)
}

/// Writes `module` uncompressed to `dest`: busybox's insmod hands the kernel the bytes as they are.
/// Debian's 6.1 packages ship plain `.ko` files, its 6.12 ones `.ko.xz`.
fn decompress_module(module: &Path, dest: &Path) -> anyhow::Result<()> {
    let name = module.to_string_lossy();
    if name.ends_with(".ko") {
        fs::copy(module, dest)?;
        return Ok(());
    }
    if !name.ends_with(".ko.xz") {
        bail!("{name}: a compression the matrix does not unpack yet (it knows .ko and .ko.xz)");
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(module)
        .output()
        .context("running xz (`cargo xtask setup` installs xz-utils)")?;
    if !out.status.success() {
        bail!("xz -dc {name} failed ({})", out.status);
    }
    fs::write(dest, out.stdout)?;
    Ok(())
}

/// The steps of one kernel's run, in order: each runs only if the ones before it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The lab is up: (VM booted,) namespaces, veth, vsftpd listening.
    Lab,
    /// `ftpnat verify --json` loaded every program.
    Loads,
    /// `ftpnat run` said "attached to".
    Attaches,
    /// A PORT download through the masquerade, sha256-checked.
    Active,
    /// A PASV download through the masquerade, sha256-checked.
    Passive,
    /// The client's IPv6 to the server's IPv4 through NAT64: an EPSV and an EPRT download (the
    /// server gets a PASV and a PORT), sha256-checked.
    Nat64,
}

const STEPS: [Step; 6] = [
    Step::Lab,
    Step::Loads,
    Step::Attaches,
    Step::Active,
    Step::Passive,
    Step::Nat64,
];

impl Step {
    /// The name init.sh reports the step under.
    fn name(self) -> &'static str {
        match self {
            Step::Lab => "lab",
            Step::Loads => "loads",
            Step::Attaches => "attaches",
            Step::Active => "active",
            Step::Passive => "passive",
            Step::Nat64 => "nat64",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Step::Lab => "lab",
            Step::Loads => "loads",
            Step::Attaches => "attaches",
            Step::Active => "active (PORT)",
            Step::Passive => "passive (PASV)",
            Step::Nat64 => "NAT64 (EPSV, EPRT)",
        }
    }

    fn from_name(name: &str) -> Option<Step> {
        STEPS.into_iter().find(|step| step.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(String),
    NotRun,
}

impl Outcome {
    fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// The figures in `ftpnat verify --json`'s output (as `cargo xtask verify` reads them), or why
/// there are none.
fn parse_verify_output(stdout: &str) -> anyhow::Result<Vec<ProgramFigures>> {
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).context("`ftpnat verify --json` printed no report")?;
    verify::parse(&report)
}

/// The refused programs' names and the tails of their verifier logs.
fn refusals(programs: &[ProgramFigures]) -> String {
    programs
        .iter()
        .filter(|p| !p.loaded)
        .map(|p| {
            format!(
                "{} refused: {}",
                p.program,
                last_lines(p.error.as_deref().unwrap_or("(no verifier log)"), 6)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One row of the matrix.
#[derive(Debug)]
struct KernelRun {
    /// `uname -r` and where it ran.
    kernel: String,
    outcomes: [Outcome; STEPS.len()],
    programs: Vec<ProgramFigures>,
    /// What went wrong outside the steps (a VM that stopped after its last step's result).
    problems: Vec<String>,
    /// A VM's console, named under the table when the row failed.
    console_log: Option<PathBuf>,
    took: Duration,
}

impl KernelRun {
    fn new(kernel: String) -> Self {
        Self {
            kernel,
            outcomes: std::array::from_fn(|_| Outcome::NotRun),
            programs: Vec::new(),
            problems: Vec::new(),
            console_log: None,
            took: Duration::ZERO,
        }
    }

    fn outcome_mut(&mut self, step: Step) -> &mut Outcome {
        &mut self.outcomes[STEPS.iter().position(|s| *s == step).unwrap_or(0)]
    }

    /// The VM stopped before its init script reported anything.
    fn never_reached_init(&self) -> bool {
        matches!(
            self.outcomes.first(),
            Some(Outcome::Failed(reason)) if reason.ends_with(BEFORE_INIT)
        )
    }

    fn all_passed(&self) -> bool {
        self.outcomes.iter().all(Outcome::passed) && self.problems.is_empty()
    }

    /// Sets the loads outcome from `ftpnat verify --json`'s report (`stdout`), whether it
    /// `exited_ok`, and what else it said (`output_tail`, the reason when there is no refusal to
    /// name).
    fn take_verify_output(&mut self, stdout: &str, exited_ok: bool, output_tail: String) {
        let outcome = match parse_verify_output(stdout) {
            Ok(programs) => {
                let refused = refusals(&programs);
                self.programs = programs;
                match (exited_ok, refused.is_empty()) {
                    (true, true) => Outcome::Passed,
                    (_, false) => Outcome::Failed(refused),
                    (false, true) => Outcome::Failed(output_tail),
                }
            }
            Err(err) => Outcome::Failed(format!("{err:#}\n{output_tail}")),
        };
        *self.outcome_mut(Step::Loads) = outcome;
    }
}

/// Reads a VM's console: step markers, details and verify's JSON.
#[derive(Default)]
struct ConsoleParser {
    release: Option<String>,
    started: Vec<Step>,
    results: Vec<(Step, String)>,
    details: Vec<(Step, String)>,
    verify_json: Option<String>,
    in_json: bool,
    done: bool,
}

const MARKER: &str = "@@ftpnat-kernels ";

impl ConsoleParser {
    /// Takes one console line; returns a progress message for the markers worth showing.
    fn line(&mut self, raw: &str) -> Option<String> {
        let line = raw.trim_end_matches(['\r', '\n']);
        if self.in_json {
            if line.starts_with(MARKER) && line.ends_with("verify-json-end") {
                self.in_json = false;
            } else {
                let json = self.verify_json.get_or_insert_with(String::new);
                json.push_str(line);
                json.push('\n');
            }
            return None;
        }
        // A kernel message may precede the marker on the same line.
        let rest = &line[line.find(MARKER)? + MARKER.len()..];
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "release" => self.release = Some(rest.trim().to_owned()),
            "verify-json-begin" => {
                self.in_json = true;
                self.verify_json = Some(String::new());
            }
            "done" => self.done = true,
            "start" => {
                let step = Step::from_name(rest.trim())?;
                self.started.push(step);
                return Some(format!("{} …", step.heading()));
            }
            "detail" => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                self.details.push((Step::from_name(name)?, text.to_owned()));
            }
            "result" => {
                let (name, result) = rest.split_once(' ')?;
                let step = Step::from_name(name)?;
                self.results.push((step, result.trim().to_owned()));
                return Some(format!("{}: {}", step.heading(), result.trim()));
            }
            _ => {}
        }
        None
    }

    /// The row these markers make; `ended` says how the VM ended when init.sh did not finish.
    fn into_run(self, kernel: String, ended: Option<String>) -> KernelRun {
        let mut run = KernelRun::new(kernel);
        for (step, result) in &self.results {
            let detail: Vec<&str> = self
                .details
                .iter()
                .filter(|(s, _)| s == step)
                .map(|(_, text)| text.as_str())
                .collect();
            let reason = last_lines(&detail.join("\n"), 12);
            match (step, result.as_str()) {
                (Step::Loads, _) => run.take_verify_output(
                    self.verify_json.as_deref().unwrap_or(""),
                    result == "ok",
                    reason,
                ),
                (_, "ok") => *run.outcome_mut(*step) = Outcome::Passed,
                _ => *run.outcome_mut(*step) = Outcome::Failed(reason),
            }
        }
        if !self.done {
            let ended = ended.unwrap_or_else(|| "the VM stopped".to_owned());
            // The step it was in when it stopped failed; the later ones did not run.
            match self
                .started
                .last()
                .filter(|step| !self.results.iter().any(|(s, _)| s == *step))
            {
                Some(step) => {
                    *run.outcome_mut(*step) = Outcome::Failed(format!("{ended} during this step"))
                }
                None if self.started.is_empty() => {
                    *run.outcome_mut(Step::Lab) = Outcome::Failed(format!("{ended} {BEFORE_INIT}"))
                }
                None => run
                    .problems
                    .push(format!("{ended} before init.sh finished")),
            }
        }
        run
    }
}

/// How a row says its VM never got as far as init.sh.
const BEFORE_INIT: &str = "before init.sh started the lab";

/// Boots `kernel` under qemu with `initramfs` and reads its console into a row. A boot that never
/// reached init (a virtual machine's early boot on a loaded host is the
/// likeliest thing to fail for reasons of its own) is tried once more, and said so.
fn run_vm(kernel: &BootableKernel, initramfs: &Path, run_dir: &Path) -> KernelRun {
    let label = format!("{} (qemu)", kernel.release);
    let start = Instant::now();
    let mut run = boot_once(kernel, initramfs, run_dir, &label);
    if run.never_reached_init() {
        println!("kernels: {label}: the VM stopped before init; booting it once more");
        run = boot_once(kernel, initramfs, run_dir, &label);
    }
    run.took = start.elapsed();
    run
}

fn boot_once(kernel: &BootableKernel, initramfs: &Path, run_dir: &Path, label: &str) -> KernelRun {
    match boot_and_read(kernel, initramfs, run_dir, label) {
        Ok(run) => run,
        Err(err) => {
            let mut run = KernelRun::new(label.to_owned());
            *run.outcome_mut(Step::Lab) = Outcome::Failed(format!("{err:#}"));
            run
        }
    }
}

fn boot_and_read(
    kernel: &BootableKernel,
    initramfs: &Path,
    run_dir: &Path,
    label: &str,
) -> anyhow::Result<KernelRun> {
    let console_path = run_dir.join("console.log");
    let mut console_log = fs::File::create(&console_path)?;
    let qemu_stderr = fs::File::create(run_dir.join("qemu.stderr"))?;
    let mut child = Command::new("timeout")
        .args([
            "--kill-after=10",
            &VM_TIME_LIMIT.as_secs().to_string(),
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            VM_MEMORY,
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // Only emergencies from the kernel: its messages would split the markers' lines. panic=-1
        // reboots on a panic (init.sh dying), which -no-reboot turns into qemu exiting.
        // no_timer_check: under TCG on a busy host, 6.1's boot-time check of the IO-APIC timer
        // can miss its ticks and panic ("IO-APIC + timer doesn't work!"; seen once in CI-like
        // load), as on any slow virtual machine.
        .args([
            "-append",
            "console=ttyS0 loglevel=1 panic=-1 mitigations=off no_timer_check",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(qemu_stderr)
        .spawn()
        .context("starting qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let mut parser = ConsoleParser::default();
    let start = Instant::now();
    println!("kernels: {label}: booting");
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        writeln!(console_log, "{line}")?;
        if let Some(progress) = parser.line(&line) {
            println!(
                "kernels: {label}: {progress} ({} s)",
                start.elapsed().as_secs()
            );
        }
    }
    let status = child.wait()?;
    let ended = match status.code() {
        Some(0) => None,
        Some(124 | 137) => Some(format!("the VM was stopped after {VM_TIME_LIMIT:?}")),
        _ => Some(format!(
            "qemu exited ({status}): {}",
            last_lines(
                &fs::read_to_string(run_dir.join("qemu.stderr")).unwrap_or_default(),
                5
            )
        )),
    };
    let label = match &parser.release {
        Some(release) if release != &kernel.release => {
            format!("{label} (reports {release})")
        }
        _ => label.to_owned(),
    };
    let mut run = parser.into_run(label, ended);
    run.console_log = Some(console_path);
    Ok(run)
}

/// The same scenario on this machine's kernel, in a lab of uniquely named namespaces (removed when
/// the lab drops, whatever failed).
/// The native row's NAT64 step: EPSV and EPRT downloads from the client's IPv6 to the server's
/// IPv4 address in the prefix, sha256-checked.
fn native_nat64_downloads(lab: &Lab, server: &FtpServer, file: &TestFile) -> anyhow::Result<()> {
    let address = IpAddr::V6(Nat64Spec::default().address_of(server.addr));
    for mode in [Mode::Epsv, Mode::Eprt] {
        lab.curl_from_client_at(address, server.port, file, mode)
            .with_context(|| format!("NAT64 {mode:?} download"))?;
    }
    Ok(())
}

fn run_native(ftpnat: &Path) -> KernelRun {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let label = format!("{release} (native)");
    let start = Instant::now();
    let mut run = KernelRun::new(label.clone());
    let progress = |step: Step, outcome: &Outcome| {
        let result = if outcome.passed() { "ok" } else { "fail" };
        println!(
            "kernels: {label}: {}: {result} ({} s)",
            step.heading(),
            start.elapsed().as_secs()
        );
    };

    // Dual-stack, as the VMs' lab: the client reaches the IPv4-only server over IPv6 through
    // NAT64 only.
    let lab = Lab::new(LabSpec {
        routing: Routing::Nat,
        capture: false,
        ..LabSpec::dual_stack()
    })
    .and_then(|lab| {
        let served = lab.serve_file(FILE_BYTES, 1)?;
        Ok((lab, served))
    });
    let (lab, (server, file)) = match lab {
        Ok(lab) => lab,
        Err(err) => {
            *run.outcome_mut(Step::Lab) = Outcome::Failed(format!("{err:#}"));
            progress(Step::Lab, &run.outcomes[0]);
            run.took = start.elapsed();
            return run;
        }
    };
    *run.outcome_mut(Step::Lab) = Outcome::Passed;
    progress(Step::Lab, &Outcome::Passed);

    match lab
        .in_router(&ftpnat.to_string_lossy(), &["verify", "--json"])
        .output()
    {
        Ok(out) => run.take_verify_output(
            &String::from_utf8_lossy(&out.stdout),
            out.status.success(),
            format!(
                "ftpnat verify --json exited ({}): {}",
                out.status,
                last_lines(&String::from_utf8_lossy(&out.stderr), 12)
            ),
        ),
        Err(err) => {
            *run.outcome_mut(Step::Loads) = Outcome::Failed(format!("running ftpnat: {err}"))
        }
    }
    progress(Step::Loads, &run.outcomes[1]);
    if !run.outcomes[1].passed() {
        run.took = start.elapsed();
        return run;
    }

    // The NAT64 labs' prefix, as init.sh's (a network-specific one: the lab's server has a
    // documentation address, which the well-known prefix never names).
    let agent = match lab.start_ftpnat(&["--nat64", &Nat64Spec::default().prefix_arg()]) {
        Ok(agent) => agent,
        Err(err) => {
            *run.outcome_mut(Step::Attaches) = Outcome::Failed(last_lines(&format!("{err:#}"), 12));
            progress(Step::Attaches, &run.outcomes[2]);
            run.took = start.elapsed();
            return run;
        }
    };
    *run.outcome_mut(Step::Attaches) = Outcome::Passed;
    progress(Step::Attaches, &Outcome::Passed);

    for (step, mode) in [(Step::Active, Mode::Port), (Step::Passive, Mode::Pasv)] {
        let outcome = match lab.curl_from_client(&server, &file, mode) {
            Ok(()) => Outcome::Passed,
            Err(err) => Outcome::Failed(last_lines(&format!("{err:#}"), 12)),
        };
        progress(step, &outcome);
        let failed = !outcome.passed();
        *run.outcome_mut(step) = outcome;
        if failed {
            break;
        }
    }
    if run
        .outcomes
        .iter()
        .take(STEPS.len() - 1)
        .all(Outcome::passed)
    {
        let outcome = match native_nat64_downloads(&lab, &server, &file) {
            Ok(()) => Outcome::Passed,
            Err(err) => Outcome::Failed(last_lines(&format!("{err:#}"), 12)),
        };
        progress(Step::Nat64, &outcome);
        *run.outcome_mut(Step::Nat64) = outcome;
    }
    drop(agent);
    drop(server);
    drop(lab);
    run.took = start.elapsed();
    run
}

/// `cargo xtask kernels`: setup (which downloads the kernels), builds ftpnat, prepares every
/// kernel, runs the VMs and the native row at once (each VM is one single-threaded TCG process;
/// the native row is short), prints the tables and how long it all took.
/// `cargo xtask kernels`, once setup has downloaded the kernels: the matrix, failing if any kernel
/// failed a step.
pub fn run() -> anyhow::Result<()> {
    let failed: Vec<String> = matrix()?
        .into_iter()
        .filter(|(_, passed)| !passed)
        .map(|(kernel, _)| kernel)
        .collect();
    if !failed.is_empty() {
        bail!("the matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Runs the matrix (setup done) and prints it; each kernel with whether it passed every step.
pub fn matrix() -> anyhow::Result<Vec<(String, bool)>> {
    let ftpnat = build(true)?;
    // The native lab finds the agent through this variable, as the integration tests do.
    // SAFETY: set before this process starts any other thread.
    unsafe { std::env::set_var("FTPNAT_BIN", &ftpnat) };
    let debs = downloaded_kernel_packages()?;
    let kernels = debs
        .iter()
        .map(extract)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let common = common_initramfs(&ftpnat)?;
    let mut prepared = Vec::new();
    for kernel in &kernels {
        let run_dir = kernels_dir().join("runs").join(&kernel.release);
        fs::create_dir_all(&run_dir)?;
        let initramfs = kernel_initramfs(kernel, &common, &run_dir)?;
        prepared.push((kernel, initramfs, run_dir));
    }

    let runs: Vec<KernelRun> = thread::scope(|scope| {
        let vms: Vec<_> = prepared
            .iter()
            .map(|(kernel, initramfs, run_dir)| {
                scope.spawn(move || run_vm(kernel, initramfs, run_dir))
            })
            .collect();
        let native = run_native(&ftpnat);
        let mut runs: Vec<KernelRun> = vms
            .into_iter()
            .map(|vm| {
                vm.join().unwrap_or_else(|_| {
                    let mut run = KernelRun::new("?".to_owned());
                    *run.outcome_mut(Step::Lab) = Outcome::Failed("its thread panicked".into());
                    run
                })
            })
            .collect();
        runs.push(native);
        runs
    });

    print!("{}", render_table(&runs));
    Ok(runs
        .iter()
        .map(|run| (run.kernel.clone(), run.all_passed()))
        .collect())
}

/// `1,234,567`
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The matrix as two Markdown tables: the steps (a row per kernel, failures numbered with their
/// reasons below) and the processed instructions (a row per program, a column per kernel; wide
/// enough for a stage-split datapath's many programs).
fn render_table(runs: &[KernelRun]) -> String {
    let mut header = vec!["kernel".to_owned()];
    header.extend(STEPS.iter().map(|step| step.heading().to_owned()));
    header.push("took".to_owned());
    let mut rows = Vec::new();
    let mut reasons = Vec::new();
    for run in runs {
        let mut row = vec![run.kernel.clone()];
        for (step, outcome) in STEPS.iter().zip(&run.outcomes) {
            row.push(match outcome {
                Outcome::Passed => "ok".to_owned(),
                Outcome::NotRun => "not run".to_owned(),
                Outcome::Failed(reason) => {
                    let reason = if reason.is_empty() {
                        "(no output)"
                    } else {
                        reason
                    };
                    reasons.push(format!("{} — {}: {reason}", run.kernel, step.heading()));
                    format!("FAILED [{}]", reasons.len())
                }
            });
        }
        row.push(format!("{} s", run.took.as_secs()));
        rows.push(row);
        for problem in &run.problems {
            reasons.push(format!("{} — {problem}", run.kernel));
        }
        if let Some(log) = run.console_log.as_ref().filter(|_| !run.all_passed()) {
            reasons.push(format!("{} — console: {}", run.kernel, log.display()));
        }
    }
    let mut out = String::from("\n");
    out.push_str(&markdown(&header, &rows));
    for (i, reason) in reasons.iter().enumerate() {
        let _ = write!(out, "\n[{}] ", i + 1);
        let mut lines = reason.lines();
        out.push_str(lines.next().unwrap_or_default());
        for more in lines {
            let _ = write!(out, "\n    {more}");
        }
        out.push('\n');
    }

    let mut programs: Vec<&str> = Vec::new();
    for figures in runs.iter().flat_map(|run| &run.programs) {
        if !programs.contains(&figures.program.as_str()) {
            programs.push(&figures.program);
        }
    }
    if programs.is_empty() {
        return out;
    }
    let mut header = vec!["processed instructions (share of the limit)".to_owned()];
    header.extend(runs.iter().map(|run| run.kernel.clone()));
    let rows: Vec<Vec<String>> = programs
        .iter()
        .map(|program| {
            let mut row = vec![(*program).to_owned()];
            row.extend(runs.iter().map(|run| {
                run.programs
                    .iter()
                    .find(|f| f.program == *program)
                    .map_or_else(|| "—".to_owned(), instructions_cell)
            }));
            row
        })
        .collect();
    out.push('\n');
    out.push_str(&markdown(&header, &rows));
    out
}

/// `542,178 (54%)`; `refused` for a refused program, with its figures if the kernel gave them.
fn instructions_cell(figures: &ProgramFigures) -> String {
    let refused = if figures.loaded { "" } else { "refused" };
    let Some(insns) = figures.processed_insns else {
        return if figures.loaded { "—" } else { refused }.to_owned();
    };
    // Informative here: `cargo xtask verify` holds the budget on this machine's kernel; another
    // kernel's verifier may work harder on the same object, which is what this table shows.
    let over = if insns > figures.insn_budget {
        ", over budget"
    } else {
        ""
    };
    let share = insns * 100 / figures.insn_limit.max(1);
    format!("{} ({share}%{over}) {refused}", thousands(insns))
        .trim_end()
        .to_owned()
}

/// A Markdown table, columns padded to their widest cell.
fn markdown(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .chain([&header[i]])
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_of_a_series_is_chosen_by_number() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-100-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.12.118+deb12-cloud-amd64",
        ];
        assert_eq!(
            newest_in(&SERIES[0], names),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            newest_in(&SERIES[1], names),
            Some("linux-image-6.12.118+deb12-cloud-amd64")
        );
        assert_eq!(
            newest_in(&SERIES[1], ["linux-image-6.12.x+deb12-cloud-amd64"]),
            None
        );
    }

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    fn parse(console: &str, ended: Option<&str>) -> KernelRun {
        let mut parser = ConsoleParser::default();
        for line in console.lines() {
            parser.line(line);
        }
        parser.into_run("k".to_owned(), ended.map(str::to_owned))
    }

    const VERIFY_OK: &str = "@@ftpnat-kernels verify-json-begin\r\n\
        [{\"program\": \"ftpnat_ingress\", \"loaded\": true, \"processed_insns\": 542178, \
        \"insn_limit\": 1000000, \"insn_budget\": 250000, \"error\": null}]\r\n\
        @@ftpnat-kernels verify-json-end\r\n";

    #[test]
    fn a_failed_step_gives_its_reason_and_leaves_the_rest_not_run() {
        let console = format!(
            "@@ftpnat-kernels start lab\r\n@@ftpnat-kernels result lab ok\r\n\
             @@ftpnat-kernels start loads\r\n{VERIFY_OK}@@ftpnat-kernels result loads ok\r\n\
             @@ftpnat-kernels start attaches\r\n\
             @@ftpnat-kernels detail attaches ftpnat: error: no TCX\r\n\
             @@ftpnat-kernels result attaches fail\r\n@@ftpnat-kernels done\r\n"
        );
        let run = parse(&console, None);
        assert_eq!(run.outcomes[0], Outcome::Passed);
        assert_eq!(run.outcomes[1], Outcome::Passed);
        assert_eq!(
            run.outcomes[2],
            Outcome::Failed("ftpnat: error: no TCX".into())
        );
        assert_eq!(run.outcomes[3], Outcome::NotRun);
        assert_eq!(run.programs[0].processed_insns, Some(542_178));
        assert!(!run.all_passed());
        let table = render_table(&[run]);
        assert!(table.contains("FAILED [1]"), "{table}");
        assert!(table.contains("542,178 (54%, over budget)"), "{table}");
        assert!(
            table.contains("[1] k — attaches: ftpnat: error: no TCX"),
            "{table}"
        );
    }

    #[test]
    fn a_refused_program_fails_the_loads_step_with_the_verifier_tail() {
        let console = "@@ftpnat-kernels start loads\n\
            @@ftpnat-kernels verify-json-begin\n\
            [{\"program\": \"ftpnat_ingress\", \"loaded\": false, \"processed_insns\": null,\n\
            \"insn_limit\": 1000000, \"insn_budget\": 250000, \"error\": \"BPF program is too large. Processed 1000001 insn\"}]\n\
            @@ftpnat-kernels verify-json-end\n\
            @@ftpnat-kernels result loads fail\n@@ftpnat-kernels done\n";
        let run = parse(console, None);
        assert_eq!(
            run.outcomes[1],
            Outcome::Failed(
                "ftpnat_ingress refused: BPF program is too large. Processed 1000001 insn".into()
            )
        );
        assert!(
            render_table(&[run])
                .contains("| ftpnat_ingress                              | refused |")
        );
    }

    #[test]
    fn a_vm_that_stops_mid_step_fails_that_step() {
        let run = parse(
            "@@ftpnat-kernels start lab\n@@ftpnat-kernels result lab ok\n\
             @@ftpnat-kernels start loads\n",
            Some("the VM was stopped after 75 min"),
        );
        assert_eq!(
            run.outcomes[1],
            Outcome::Failed("the VM was stopped after 75 min during this step".into())
        );
        let silent = parse("", Some("qemu exited"));
        assert!(matches!(&silent.outcomes[0], Outcome::Failed(r) if r.contains("before init.sh")));
        assert!(
            silent.never_reached_init(),
            "a boot that never reached init is retried"
        );
        assert!(
            !run.never_reached_init(),
            "a VM that stopped in a step is not"
        );
    }

    #[test]
    fn verify_without_a_report_fails_the_loads_step() {
        let console = "@@ftpnat-kernels start loads\n\
            @@ftpnat-kernels verify-json-begin\n\n@@ftpnat-kernels verify-json-end\n\
            @@ftpnat-kernels detail loads error: unrecognized subcommand 'verify'\n\
            @@ftpnat-kernels result loads fail\n@@ftpnat-kernels done\n";
        let run = parse(console, None);
        assert!(
            matches!(&run.outcomes[1], Outcome::Failed(r)
                if r.contains("printed no report") && r.contains("unrecognized")),
            "{:?}",
            run.outcomes[1]
        );
        assert_eq!(run.outcomes[2], Outcome::NotRun);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(542_178), "542,178");
        assert_eq!(thousands(1_000_001), "1,000,001");
    }
}
