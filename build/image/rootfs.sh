#!/bin/sh
# rootfs.sh CACHE ROOT SWITCHYARD WRAPPER: builds switchyard's image root file
# system in ROOT (replaced) from Debian packages (downloaded once into
# CACHE/debs with apt-get download, the host's apt sources) plus the two
# static Go binaries. No package scripts run: the packages are unpacked
# with dpkg-deb into a merged-/usr tree, documentation is pruned, and the
# unflavoured iptables names are linked to iptables-wrapper.
set -eu
cache=$1 root=$2 switchyard=$3 wrapper=$4

# What switchyard runs (iptables nft+legacy, ip6tables, ipset, conntrack,
# ipvsadm, sysctl) and their shared libraries, closed under Depends
# (apt-cache depends --recurse), minus what only package scripts use
# (lsb-base, sysvinit-utils, gcc-12-base holds only docs). sysctl (for
# route_localnet) is busybox's: procps would pull in libsystemd and more.
PKGS="iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0
libnetfilter-conntrack3 libnfnetlink0 ipset libipset13 conntrack ipvsadm
libnl-3-200 libnl-genl-3-200 libpopt0 libc6 libgcc-s1 netbase busybox"

debs=$cache/debs
mkdir -p "$debs"
missing=""
for p in $PKGS; do
	ls "$debs/${p}_"*.deb >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo ">> downloading Debian packages:$missing"
	( cd "$debs" && apt-get download -o APT::Sandbox::User=root -qq $missing ) || {
		apt-get update -qq && ( cd "$debs" && apt-get download -o APT::Sandbox::User=root -qq $missing )
	}
fi

rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64" "$root/usr/local/bin" \
	"$root/etc" "$root/run" "$root/tmp" "$root/var" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
ln -s ../run "$root/var/run"

: > "$cache/packages.txt"
for p in $PKGS; do
	deb=$(ls "$debs/${p}_"*.deb | sort | tail -n 1)
	dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root"
	dpkg-deb -f "$deb" Package Version | sed 's/^[^:]*: //' | paste -sd= >> "$cache/packages.txt"
done

# Not needed at run time.
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
	"$root/usr/share/lintian" "$root/usr/share/locale" "$root/usr/lib/x86_64-linux-gnu/gconv" \
	"$root/etc/init.d" "$root/etc/default" "$root/usr/share/bug" "$root/etc/ld.so.conf.d"

install -m 0755 "$switchyard" "$root/usr/local/bin/switchyard"
# kube-proxy's path in its images, so that only swapping the image of an
# existing kube-proxy DaemonSet (its command is /usr/local/bin/kube-proxy)
# starts switchyard.
ln -s switchyard "$root/usr/local/bin/kube-proxy"
install -m 0755 "$wrapper" "$root/usr/sbin/iptables-wrapper"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf iptables-wrapper "$root/usr/sbin/$n"
done
# busybox serves only sysctl (and is there for debugging: busybox sh).
ln -s ../bin/busybox "$root/usr/sbin/sysctl"
printf 'root:x:0:0:root:/root:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"

# Every tool must start (all its libraries present).
for cmd in "xtables-nft-multi iptables --version" "xtables-legacy-multi ip6tables --version" \
	"ipset version" "conntrack --version" "ipvsadm --help" "sysctl -n kernel.ostype"; do
	set -- $cmd
	bin=$1; shift
	out=$(chroot "$root" /usr/sbin/"$bin" "$@" 2>&1) || case "$out" in
		*"Kernel error"*|*"Protocol not available"*|*"directory to '/proc/sys'"*|*"Can't initialize ipvs"*|*"flag provided but not defined"*) ;;
		*) echo "rootfs.sh: $bin does not run in the image: $out" >&2; exit 1 ;;
	esac
done
chroot "$root" /usr/local/bin/switchyard --version >/dev/null
du -sh "$root" | cut -f1 | sed 's/^/>> root file system: /'
