#!/usr/bin/env bash
# test/vm/selftest.sh: prove test/vm/run works. Boots the VM a few times
# (each boot takes about 15-60 s under emulation) and fails on any mismatch.
set -uo pipefail
run=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/run
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

# 1. ipvsadm talks to a real IPVS: the empty table.
out=$("$run" ipvsadm -Ln)
rc=$?
want='IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn'
if [ $rc -eq 0 ] && [ "$out" = "$want" ]; then ok "ipvsadm -Ln: empty table"; else bad "ipvsadm -Ln: rc=$rc, output:
$out"; fi

# 2. The command's exit status comes back.
"$run" sh -c 'exit 3'
rc=$?
if [ $rc -eq 3 ]; then ok "exit status 3"; else bad "exit status: got $rc, want 3"; fi

# 3. A virtual server can be added and listed.
out=$("$run" sh -c 'ipvsadm -A -t 10.96.0.1:80 -s rr && ipvsadm -Ln')
rc=$?
if [ $rc -eq 0 ] && grep -qxE 'TCP +10\.96\.0\.1:80 rr' <<<"$out"; then ok "ipvsadm -A then -Ln lists the service"; else bad "ipvsadm -A: rc=$rc, output:
$out"; fi

# 4. Same cwd, writable; stdout and stderr kept apart; VM_ENV passed; the
#    kernel autoloads a module that was not preloaded (vxlan).
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
(cd "$dir" && SELFTEST_VALUE='a b' VM_ENV=SELFTEST_VALUE "$run" sh -c '
	echo "$SELFTEST_VALUE" >value.txt; pwd; echo to-stderr >&2
	ip link add swy-selftest type vxlan id 7 dstport 4789 dev lo && echo vxlan-ok' >"$dir/out" 2>"$dir/err")
rc=$?
if [ $rc -eq 0 ] && [ "$(cat "$dir/out")" = "$dir
vxlan-ok" ] && [ "$(cat "$dir/err")" = to-stderr ] && [ "$(cat "$dir/value.txt")" = "a b" ]; then
	ok "cwd, writable share, stdout/stderr, VM_ENV, module autoload"
else
	bad "cwd/env/streams: rc=$rc stdout=[$(cat "$dir/out")] stderr=[$(cat "$dir/err")] value=[$(cat "$dir/value.txt" 2>&1)]"
fi

# 5. The timeout kills the VM and fails with 124.
VM_TIMEOUT=5 "$run" sleep 600 2>/dev/null
rc=$?
if [ $rc -eq 124 ]; then ok "VM_TIMEOUT kills the VM (124)"; else bad "timeout: got $rc, want 124"; fi

if [ $fails -ne 0 ]; then echo "selftest: $fails failed"; exit 1; fi
echo "selftest: all passed"
