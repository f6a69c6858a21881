# Stage two of the test VM's boot, run by busybox sh as PID 1 (see init and
# README.md). test/vm/run copies this file into the per-run control share
# (/ctl) together with vm.env (settings), mounts (extra 9p shares) and cmd.sh
# (the caller's command). It prepares the host root as a chroot, loads the
# netfilter/IPVS modules, runs cmd.sh there and writes its exit status to
# /ctl/status before powering off.

ctl=/ctl
# shellcheck source=/dev/null
. "$ctl/vm.env"

poweroff_now() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 60
}

fail() {
	echo "vm: $*" >&2
	echo 125 >"$ctl/status"
	poweroff_now
}

warn() {
	echo "vm: warning: $*" >&2
}

p9() { # p9 TAG DIR [ro]
	o=trans=virtio,version=9p2000.L,msize=512000
	[ "${3:-}" = ro ] && o="$o,ro"
	mount -t 9p -o "$o" "$1" "$2"
}

# The command's stdout and stderr are two virtio serial ports named by run.
out=/dev/console
err=/dev/console
for p in /sys/class/virtio-ports/*; do
	[ -e "$p/name" ] || continue
	case "$(cat "$p/name")" in
	stdout) out=/dev/${p##*/} ;;
	stderr) err=/dev/${p##*/} ;;
	esac
done
# A virtio port can be open only once: open each once, dup from then on.
exec 3>"$out" 4>"$err" 2>&4
[ -n "${VM_DEBUG:-}" ] && set -x

echo "${VM_HOSTNAME:-swy-vm}" >/proc/sys/kernel/hostname
ip link set lo up || warn "cannot bring lo up"

h=/host
p9 hostroot "$h" ro || fail "cannot mount the host root"
mount -t proc proc "$h/proc" || fail "mount proc"
mount -t sysfs sysfs "$h/sys" || fail "mount sysfs"
mount -t devtmpfs devtmpfs "$h/dev" || fail "mount devtmpfs"
mkdir -p "$h/dev/pts" "$h/dev/shm"
mount -t devpts -o ptmxmode=0666 devpts "$h/dev/pts" || warn "mount devpts"
mount -t tmpfs -o mode=1777 shm "$h/dev/shm" || warn "mount /dev/shm"
[ -e "$h/dev/fd" ] || ln -s /proc/self/fd "$h/dev/fd"
[ -e "$h/dev/stdin" ] || ln -s /proc/self/fd/0 "$h/dev/stdin"
[ -e "$h/dev/stdout" ] || ln -s /proc/self/fd/1 "$h/dev/stdout"
[ -e "$h/dev/stderr" ] || ln -s /proc/self/fd/2 "$h/dev/stderr"
mount -t tmpfs -o "mode=1777,size=${VM_TMP_SIZE:-75%}" tmp "$h/tmp" || fail "mount /tmp"
mount -t tmpfs -o mode=0755 run "$h/run" || fail "mount /run"
[ -d "$h/sys/fs/cgroup" ] && mount -t cgroup2 cgroup2 "$h/sys/fs/cgroup" 2>/dev/null

# Control share, module tree and a modprobe that finds it, inside the chroot.
v=$h/run/swy-vm
mkdir -p "$v/ctl" "$v/modroot/lib/modules" "$v/bin" "$h/tmp/home"
mount -o bind "$ctl" "$v/ctl" || fail "bind the control share"
p9 kmods "$v/modroot/lib/modules" ro || fail "cannot mount the module tree"
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d /run/swy-vm/modroot "$@"\n' >"$v/bin/modprobe"
chmod 755 "$v/bin/modprobe"
# The kernel's own module autoload runs its helper outside the chroot.
printf '#!/bin/sh\nexec chroot /host /run/swy-vm/bin/modprobe "$@"\n' >/sbin/vm-modprobe
chmod 755 /sbin/vm-modprobe
echo /sbin/vm-modprobe >/proc/sys/kernel/modprobe

modprobe_in() { chroot "$h" /run/swy-vm/bin/modprobe "$@"; }
chroot "$h" /usr/bin/test -x /usr/sbin/modprobe || fail "the host has no /usr/sbin/modprobe (apt-get install kmod)"

# crc32c_generic first: libcrc32c (needed by ip_vs, nf_nat, ...) wants a crc32c
# and the accelerated one cannot load on the emulated CPU.
modprobe_in crc32c_generic || warn "crc32c_generic"
# Required: a missing one is reported (modprobe -a goes on with the others).
modprobe_in -a \
	nf_conntrack nf_conntrack_netlink nf_nat nf_defrag_ipv4 nf_defrag_ipv6 \
	nfnetlink nf_tables nft_compat nft_chain_nat nft_ct nft_masq nft_nat \
	nft_reject nft_reject_inet nft_reject_ipv4 nft_reject_ipv6 \
	nft_fib nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_numgen nft_limit nft_objref \
	nfnetlink_acct \
	x_tables ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle iptable_raw \
	ip6table_filter ip6table_nat ip6table_mangle ip6table_raw \
	xt_comment xt_mark xt_MASQUERADE xt_addrtype xt_conntrack xt_statistic xt_recent \
	xt_set xt_sctp xt_multiport xt_tcpudp xt_physdev xt_nat xt_nfacct xt_state xt_ipvs \
	xt_REDIRECT xt_CT xt_connmark xt_NFLOG xt_LOG xt_limit \
	ipt_REJECT ip6t_REJECT \
	ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet \
	ip_set_hash_net ip_set_hash_netport ip_set_hash_ipmark ip_set_bitmap_port ip_set_bitmap_ip \
	ip_set_list_set \
	ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh \
	ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_mh ip_vs_fo ip_vs_ovf \
	veth dummy bridge br_netfilter macvlan ||
	warn "some modules did not load (see above)"
# Optional: only where this kernel has them, silently otherwise.
modprobe_in -q -a ip_vs_twos $VM_MODULES_OPTIONAL 2>/dev/null
[ -n "${VM_MODULES:-}" ] && { modprobe_in -a $VM_MODULES || warn "VM_MODULES: some did not load"; }

# Extra shares (the caller's cwd, the Go build cache): "tag path" per line.
while read -r tag path; do
	[ -n "$tag" ] || continue
	mkdir -p "$h$path" 2>/dev/null
	p9 "$tag" "$h$path" || fail "cannot mount share $tag on $path"
done <"$ctl/mounts"

chroot "$h" /usr/bin/env -i /bin/bash /run/swy-vm/ctl/cmd.sh </dev/null >&3 2>&4
rc=$?
echo "$rc" >"$ctl/status"
poweroff_now
