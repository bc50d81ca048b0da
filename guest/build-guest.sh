#!/bin/bash
# Build a tiny bootable Linux guest for virtmesh's libvirt/QEMU tests.
#
#   guest/build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz (the newest installed Debian cloud kernel) and
# OUTDIR/initrd.img (gzip'd newc cpio: busybox-static, the ACPI button and
# evdev modules, QEMU's guest agent with its libraries, and an /init that
# reacts to the ACPI power button, runs a shell on the serial console and on
# the VGA console, and the agent on the channel org.qemu.guest_agent.0).
#
# Needs (Debian): linux-image-cloud-amd64 busybox-static qemu-guest-agent cpio gzip
# (xz-utils / zstd only if the kernel's modules are compressed).
# Idempotent: does nothing when the outputs are newer than every input.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUTDIR=$1
SELF=$(readlink -f "$0")
BUSYBOX=${BUSYBOX:-/bin/busybox}
QEMU_GA=${QEMU_GA:-/usr/sbin/qemu-ga}
# button+evdev: the ACPI power button; virtio: a disk, a NIC and serial ports
# (channels) from the host, a memory balloon, virtio-mem.
MODULES=(button evdev virtio_pci virtio_blk virtio_net virtio_console virtio_balloon virtio_mem)

die() { echo "build-guest: $*" >&2; exit 1; }

KERNEL=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1) ||
    true
[ -n "$KERNEL" ] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"
KVER=${KERNEL#/boot/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep not found"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (install busybox-static)"
"$BUSYBOX" --list | grep -x acpid >/dev/null || die "$BUSYBOX has no acpid applet"

[ -x "$QEMU_GA" ] || die "$QEMU_GA not found (install qemu-guest-agent)"
# The agent's shared libraries and the dynamic loader, as the host resolves them.
mapfile -t GA_LIBS < <(ldd "$QEMU_GA" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ ${#GA_LIBS[@]} -gt 0 ] || die "ldd found no libraries of $QEMU_GA"

# Resolve module paths (relative to $MODDIR), dependencies first.
declare -A SEEN=()
ORDERED=()
modpath() {  # module name -> path from modules.dep
    local name=${1//-/_} p
    p=$(awk -F: -v n="$name" '{
            f = $1; sub(/.*\//, "", f); sub(/\.ko(\.(xz|zst|gz))?$/, "", f);
            gsub(/-/, "_", f);
            if (f == n) { print $1; exit }
        }' "$MODDIR/modules.dep")
    [ -n "$p" ] || die "module $1 not found in $MODDIR/modules.dep"
    echo "$p"
}
add_module() {  # path from modules.dep
    local p=$1 dep
    [ -z "${SEEN[$p]:-}" ] || return 0
    SEEN[$p]=1
    # modules.dep lists the deps of $p; modprobe loads them last-to-first.
    local deps
    deps=$(awk -F: -v m="$p" '$1 == m { print $2; exit }' "$MODDIR/modules.dep")
    local rev=()
    for dep in $deps; do rev=("$dep" "${rev[@]}"); done
    for dep in "${rev[@]}"; do add_module "$dep"; done
    ORDERED+=("$p")
}
for m in "${MODULES[@]}"; do add_module "$(modpath "$m")"; done

# Up to date?
VMLINUZ=$OUTDIR/vmlinuz
INITRD=$OUTDIR/initrd.img
STAMP=$OUTDIR/.kernel-version
if [ -f "$VMLINUZ" ] && [ -f "$INITRD" ] && [ -f "$STAMP" ] &&
   [ "$(cat "$STAMP")" = "$KVER" ]; then
    stale=
    for f in "$SELF" "$BUSYBOX" "$KERNEL" "$MODDIR/modules.dep" \
             "${ORDERED[@]/#/$MODDIR/}" "$QEMU_GA" "${GA_LIBS[@]}"; do
        if [ "$f" -nt "$INITRD" ] || [ "$f" -nt "$VMLINUZ" ]; then
            stale=1
            break
        fi
    done
    if [ -z "$stale" ]; then
        echo "build-guest: $OUTDIR is up to date ($KVER)"
        exit 0
    fi
fi

mkdir -p "$OUTDIR"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/virtmesh-guest.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var/log,etc/acpi,lib/modules}
ln -s ../run "$ROOT/var/run"

# busybox and its applet links (relative, at busybox's preferred paths).
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
    [ "$applet" != bin/busybox ] || continue
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] && continue
    case $applet in
        */*/*) ln -s ../../bin/busybox "$ROOT/$applet" ;;
        */*)   ln -s ../bin/busybox "$ROOT/$applet" ;;
        *)     ln -s bin/busybox "$ROOT/$applet" ;;
    esac
done < <("$BUSYBOX" --list-full)

# QEMU's guest agent and its libraries at the paths the host has them (the
# loader's built-in search path includes Debian's multiarch directories).
install -m 0755 "$QEMU_GA" "$ROOT/usr/sbin/qemu-ga"
for lib in "${GA_LIBS[@]}"; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done

# Kernel modules, decompressed (busybox insmod wants plain .ko).
: > "$ROOT/etc/modules"
for p in "${ORDERED[@]}"; do
    src=$MODDIR/$p
    base=$(basename "$p")
    case $base in
        *.ko.xz)  dst=${base%.xz};  xz -dc "$src" > "$ROOT/lib/modules/$dst" ;;
        *.ko.zst) dst=${base%.zst}; zstd -qdc "$src" > "$ROOT/lib/modules/$dst" ;;
        *.ko.gz)  dst=${base%.gz};  gzip -dc "$src" > "$ROOT/lib/modules/$dst" ;;
        *.ko)     dst=$base;        cp "$src" "$ROOT/lib/modules/$dst" ;;
        *) die "unexpected module file $p" ;;
    esac
    echo "$dst" >> "$ROOT/etc/modules"
done

# busybox acpid: it chdirs to /etc/acpi; an event line whose text contains
# a key of /etc/acpid.conf runs the action (a file is executed, a directory
# goes through run-parts).  The ACPI power button arrives through evdev as
# KEY_POWER, which busybox maps to "button/power PWRF 00000080".
cat > "$ROOT/etc/acpid.conf" <<'EOF'
PWRF power
EOF
cat > "$ROOT/etc/acpi/power" <<'EOF'
#!/bin/sh
echo "virtmesh-guest: power button pressed, powering off" > /dev/console
sync
exec poweroff -f
EOF
chmod 0755 "$ROOT/etc/acpi/power"

# udhcpc runs this with the lease in its environment.
cat > "$ROOT/etc/udhcpc.script" <<'EOF'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
echo "virtmesh-guest: $interface got $ip" > /dev/console
EOF
chmod 0755 "$ROOT/etc/udhcpc.script"

cat > "$ROOT/etc/respawn" <<'EOF'
#!/bin/sh
# /etc/respawn TTY: an interactive shell on /dev/TTY, again whenever it exits.
while :; do
    setsid sh -c "exec sh -i <>/dev/$1 >&0 2>&1"
    sleep 1
done
EOF
chmod 0755 "$ROOT/etc/respawn"

cat > "$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
exec </dev/console >/dev/console 2>&1
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m" || echo "virtmesh-guest: insmod $m failed"
done
hostname virtmesh-guest
# acpid opens /dev/input/event* only when it starts: modules come first.
acpid -f -d -c /etc/acpi -a /etc/acpid.conf &
echo "virtmesh-guest: booted ($(uname -r), uptime $(cut -d' ' -f1 /proc/uptime)s)"
# Report what the host gave us: each disk's first bytes, a DHCP lease per NIC.
(
    for disk in /sys/block/vd*; do
        [ -e "$disk" ] || continue
        disk=${disk##*/}
        echo "virtmesh-guest: disk $disk begins '$(head -c 64 "/dev/$disk" | tr -cd 'A-Za-z0-9 :_.-')'"
    done
    for nic in /sys/class/net/eth*; do
        [ -e "$nic" ] || continue
        nic=${nic##*/}
        ip link set "$nic" up
        udhcpc -i "$nic" -n -q -t 10 -s /etc/udhcpc.script >/dev/null 2>&1 ||
            echo "virtmesh-guest: $nic got no DHCP lease"
    done
) &
# A shell on the serial console and one on the VGA console (tty1), each started
# again when it exits (/etc/respawn). setsid makes it a session leader, so opening
# the tty makes that its controlling terminal (Ctrl-C, job control). Not started
# with `&`: a shell's background jobs ignore SIGINT, and so would every shell and
# command started under them; start-stop-daemon forks without that.
for tty in ttyS0 tty1; do
    start-stop-daemon -S -b -m -p "/run/respawn-$tty.pid" -x /bin/sh -- /etc/respawn "$tty"
done
# Echo what the host writes to a virtio-serial channel named org.virtmesh.echo.*
# (the channel tests' peer). A port opens once, so cat reads and writes one
# descriptor; reading a port the host has not opened ends at once, so cat is
# started again until the host connects. QEMU's guest agent answers on
# org.qemu.guest_agent.0 (there is no udev for /dev/virtio-ports/NAME links).
for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    dev=/dev/${port##*/}
    case $(cat "$port/name") in
        org.virtmesh.echo.*)
            ( while :; do cat 0<>"$dev" 1>&0; usleep 200000; done ) & ;;
        org.qemu.guest_agent.0)
            # -r: open the port again after the guest's suspension closed it
            qemu-ga -m virtio-serial -p "$dev" -t /run -r -d &&
                echo "virtmesh-guest: guest agent started on $dev" ;;
    esac
done
# PID 1 must never exit (the kernel would panic); the shell reaps orphans.
while :; do
    sleep 3600
done
EOF
chmod 0755 "$ROOT/init"

echo "$KVER" > "$ROOT/etc/virtmesh-guest-kernel"

# Write both outputs atomically.
( cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible ) | gzip -9n > "$STAGE/initrd.img"
cp "$KERNEL" "$STAGE/vmlinuz"
chmod 0644 "$STAGE/initrd.img" "$STAGE/vmlinuz"
mv -f "$STAGE/vmlinuz" "$VMLINUZ"
mv -f "$STAGE/initrd.img" "$INITRD"
echo "$KVER" > "$STAMP"
echo "build-guest: built $VMLINUZ and $INITRD ($KVER: ${ORDERED[*]})"
