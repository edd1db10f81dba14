#!/bin/sh
# PID 1 of a `cargo xtask kernels` VM (xtask/src/kernels.rs builds the initramfs around it).
#
# Builds the lab of tests/src/lab.rs inside the VM (client | router | server namespaces joined by
# veth, the server with no route back to the client's network, so only ftpnat's masquerade can
# make FTP work; the client has an IPv6 address too, which reaches the IPv4-only server only
# through ftpnat's NAT64), then runs the matrix's steps in order. Each step reports on the console, which
# the host reads:
#   @@ftpnat-kernels start STEP
#   @@ftpnat-kernels detail STEP TEXT     the last lines of a failed step's output, one per line
#   @@ftpnat-kernels result STEP ok|fail
# and `ftpnat verify --json`'s report between verify-json-begin and verify-json-end markers.
# A failed step ends the run: the host shows the later ones as not run.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox --install -s /bin
# Debian's busybox shell runs its own applet for a bare applet name whatever PATH says, and its
# `ip` cannot make namespaces or veth: iproute2's, by path. (`ip netns exec` then finds the
# command it runs through PATH, as usual.)
ip() { /usr/sbin/ip "$@"; }

CLIENT=10.0.0.2
ROUTER_LAN=10.0.0.1
ROUTER_WAN=203.0.113.254
SERVER=203.0.113.10
CLIENT6=2001:db8:10::2
ROUTER_LAN6=2001:db8:10::1
# The server's address in the NAT64 labs' prefix (tests/src/lab.rs's Nat64Spec: a
# network-specific one, since the well-known 64:ff9b::/96 never names a documentation address).
NAT64_PREFIX=2001:db8:ff64::/96
SERVER_NAT64=2001:db8:ff64::cb00:710a
# Small: TCG emulates every instruction of the transfer (data path, eBPF JIT code, curl, vsftpd).
FILE_BYTES=4194304
# Generous: the verifier runs several times slower under TCG than natively (a program at 54% of
# the 1M-instruction limit took ~10 s here, one at 100% takes 3-7 s natively), and `ftpnat run`
# verifies every program again. Together they stay under the host's limit for the whole VM.
VERIFY_SECONDS=300
ATTACH_SECONDS=300
TRANSFER_SECONDS=120
# bpffs outside /sys: `ip netns exec` mounts a fresh /sys, where pins would be invisible.
PIN_ROOT=/run/ftpnat-bpf

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns "$PIN_ROOT" /run/vsftpd/empty /srv/ftp
mount -t bpf bpf "$PIN_ROOT"
echo "@@ftpnat-kernels release $(uname -r)"

# Runs the function STEP in a subshell with `set -e`, its output in /tmp/STEP.log; reports its
# result and returns non-zero if it failed. Call it as a plain command: under `if`, `while`, `&&`
# or `||` the shell ignores -e, inside the subshell too, and a failed command would not stop it.
run_step() {
    step=$1
    echo "@@ftpnat-kernels start $step"
    (set -e; "$step") >"/tmp/$step.log" 2>&1
    status=$?
    if [ "$status" -eq 0 ]; then
        echo "@@ftpnat-kernels result $step ok"
        return 0
    fi
    echo "(exit status $status)" >>"/tmp/$step.log"
    tail -n 20 "/tmp/$step.log" | while IFS= read -r line; do
        echo "@@ftpnat-kernels detail $step $line"
    done
    echo "@@ftpnat-kernels result $step fail"
    return 1
}

# Polls COMMAND every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
    limit=$(($1 * 5))
    shift
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        [ "$tries" -lt "$limit" ] || return 1
        sleep 0.2
    done
}

ftp_listening() {
    ip netns exec server netstat -ltn | grep -q "$SERVER:21 "
}

lab() {
    # In dependency order (the host asked modprobe --show-depends).
    for module in /modules/*.ko; do
        [ -e "$module" ] || continue
        echo "insmod $module"
        insmod "$module"
    done
    for ns in client router server; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n router link add lan0 type veth peer name eth0 netns client
    ip -n router addr add "$ROUTER_LAN/24" dev lan0
    ip -n router link set lan0 up
    ip -n client addr add "$CLIENT/24" dev eth0
    ip -n client link set eth0 up
    ip -n client route add default via "$ROUTER_LAN"
    ip -n router addr add "$ROUTER_LAN6/64" dev lan0 nodad
    ip -n client addr add "$CLIENT6/64" dev eth0 nodad
    ip -n client -6 route add default via "$ROUTER_LAN6"
    ip -n router link add wan0 type veth peer name eth0 netns server
    ip -n router addr add "$ROUTER_WAN/24" dev wan0
    ip -n router link set wan0 up
    ip -n server addr add "$SERVER/24" dev eth0
    ip -n server link set eth0 up
    ip netns exec router sysctl -qw net.ipv4.ip_forward=1

    cat >/etc/vsftpd.conf <<EOF
listen=YES
listen_ipv6=NO
listen_address=$SERVER
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
anon_root=/srv/ftp
pasv_enable=YES
port_enable=YES
connect_from_port_20=YES
seccomp_sandbox=NO
secure_chroot_dir=/run/vsftpd/empty
log_ftp_protocol=YES
vsftpd_log_file=/tmp/vsftpd.log
dual_log_enable=NO
EOF
    head -c "$FILE_BYTES" /dev/urandom >/srv/ftp/data.bin
    sha256sum /srv/ftp/data.bin | cut -d' ' -f1 >/tmp/data.sha256
    ip netns exec server vsftpd /etc/vsftpd.conf </dev/null >/tmp/vsftpd.out 2>&1 &
    wait_for 30 ftp_listening || {
        echo "vsftpd is not listening on $SERVER:21:"
        cat /tmp/vsftpd.out
        return 1
    }
}

loads() {
    status=0
    timeout "$VERIFY_SECONDS" ftpnat verify --json >/tmp/verify.json 2>/tmp/verify.err || status=$?
    echo "@@ftpnat-kernels verify-json-begin" >/dev/console
    cat /tmp/verify.json >/dev/console
    echo >/dev/console
    echo "@@ftpnat-kernels verify-json-end" >/dev/console
    cat /tmp/verify.err
    return "$status"
}

attached() {
    grep -q "attached to" /tmp/ftpnat-run.log
}

agent_running() {
    kill -0 "$(cat /tmp/ftpnat-run.pid)" 2>/dev/null
}

attaches() {
    RUST_LOG=info ip netns exec router ftpnat run --wan wan0 --lan lan0 \
        --pin-dir "$PIN_ROOT/ftpnat" --nat64 "$NAT64_PREFIX" </dev/null >/tmp/ftpnat-run.log 2>&1 &
    echo $! >/tmp/ftpnat-run.pid
    tries=0
    until attached; do
        if ! agent_running; then
            echo "ftpnat run exited before attaching:"
            cat /tmp/ftpnat-run.log
            return 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge $((ATTACH_SECONDS * 5)) ]; then
            echo "ftpnat run did not attach within $ATTACH_SECONDS s:"
            cat /tmp/ftpnat-run.log
            return 1
        fi
        sleep 0.2
    done
    cat /tmp/ftpnat-run.log
}

# Downloads data.bin from the client at HOST (an address as a URL names it) with curl's
# MODE_ARGS into /tmp/NAME.bin; checks its sha256.
download() {
    name=$1
    host=$2
    shift 2
    ip netns exec client curl -sS --fail --max-time "$TRANSFER_SECONDS" "$@" \
        -o "/tmp/$name.bin" "ftp://$host/data.bin"
    got=$(sha256sum "/tmp/$name.bin" | cut -d' ' -f1)
    if [ "$got" != "$(cat /tmp/data.sha256)" ]; then
        echo "sha256 $got of the download differs from the served file's $(cat /tmp/data.sha256)"
        return 1
    fi
    echo "sha256 $got matches"
}

# PORT only: with -P - and EPRT disabled, curl has no other mode to fall back to.
active() {
    download active "$SERVER" -P - --disable-eprt
}

# PASV only.
passive() {
    download passive "$SERVER" --disable-epsv
}

# NAT64: the client's IPv6 to the server's IPv4, EPSV (the server gets a PASV) and EPRT (a PORT).
nat64() {
    download nat64-epsv "[$SERVER_NAT64]" &&
        download nat64-eprt "[$SERVER_NAT64]" -P -
}

run_all() {
    for step in lab loads attaches active passive nat64; do
        run_step "$step"
        [ "$?" -eq 0 ] || return
    done
}

run_all
echo "@@ftpnat-kernels done"
sync
poweroff -f
