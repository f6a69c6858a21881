#!/bin/sh
# rootfs.sh CACHE ROOT KIND BINARY: the root file system of one of the
# images upstream's e2e specs run, from Debian packages (downloaded once
# into CACHE with apt-get download; no package script runs) plus a Go
# binary:
#   agnhost: /agnhost (k8s.io/kubernetes/test/images/agnhost, built with cgo
#            from test/cluster's go.mod: it shares the build cache with
#            e2e.test, and the image has glibc) and what the specs shell out
#            to in it:
#            sh and the usual commands (busybox), curl, wget, nc, ip,
#            conntrack;
#   busybox: busybox with its applets linked under /bin (BINARY unused).
set -eu
cache=$1 root=$2 kind=$3 bin=${4:-}

case $kind in
agnhost) want="busybox curl wget netcat-openbsd conntrack iproute2" ;;
busybox) want="busybox" ;;
*) echo "rootfs.sh: unknown kind $kind" >&2; exit 2 ;;
esac
# Depends closure, minus what only package scripts use.
PKGS=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
	--no-replaces --no-enhances $want 2>/dev/null | grep -v '^ ' | grep -v '^<' | sort -u |
	grep -vxE 'debconf|cdebconf|dpkg|install-info|libdebian-installer4|libnewt0.52|libslang2|libtextwrap1|tar|gcc-12-base|readline-common|libcap2-bin')

mkdir -p "$cache"
missing=""
for p in $PKGS; do
	ls "$cache/${p}_"*.deb >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo ">> downloading Debian packages:$missing"
	( cd "$cache" && apt-get download -o APT::Sandbox::User=root -qq $missing ) || {
		apt-get update -qq && ( cd "$cache" && apt-get download -o APT::Sandbox::User=root -qq $missing )
	}
fi

rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64" "$root/etc" "$root/run" \
	"$root/tmp" "$root/var" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
for p in $PKGS; do
	deb=$(ls "$cache/${p}_"*.deb | sort | tail -n 1)
	dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root"
done
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale"
# netcat-openbsd's nc link comes from its package script (alternatives).
[ -e "$root/usr/bin/nc.openbsd" ] && ln -s nc.openbsd "$root/usr/bin/nc"
# busybox's applets for every command no package provides (sh, sleep, ...).
for a in $(chroot "$root" /bin/busybox --list); do
	[ -e "$root/usr/bin/$a" ] || [ -e "$root/usr/sbin/$a" ] || ln -s busybox "$root/usr/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
if [ "$kind" = agnhost ]; then
	install -m 0755 "$bin" "$root/agnhost"
	for cmd in "/agnhost --help" "curl --version" "wget --version" "nc -h" "conntrack --version" "ip -V" "sh -c true"; do
		set -- $cmd
		out=$(chroot "$root" "$@" 2>&1) || case "$out" in
			*usage*|*OpenBSD*) ;;
			*) echo "rootfs.sh: $1 does not run in the image: $out" >&2; exit 1 ;;
		esac
	done
fi
du -sh "$root" | cut -f1 | sed "s/^/>> $kind root file system: /"
