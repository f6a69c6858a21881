#!/usr/bin/env bash
# make demo: switchyard balancing real traffic on a one-node lab.
#
#   outside client ns            node ns (switchyard + API server)        3 pod ns
#   swy-demo-out                 swy-demo-node                            swy-demo-pod-{a,b,c}
#   eth0 192.0.2.100 ──veth── ext0 192.0.2.1, node IP 10.0.0.10     p0..p2 ──veth── eth0 10.244.0.1x
#
# It builds switchyard, the echo server, swy-demo (test/demo/cmd) and the
# throwaway control plane (test/cluster/cmd/swy-testcluster: etcd +
# kube-apiserver compiled from source), starts the control plane inside the
# node namespace on 127.0.0.1, creates a Node, a NodePort Service and its
# EndpointSlice with client-go, runs switchyard --kubeconfig in the node
# namespace, and sends requests through the cluster IP and the node port.
# Then it marks one endpoint not ready and shows the traffic move. Every
# process (by PID), namespace and temp folder is removed on exit, also on
# failure or Ctrl-C.
#
# Environment (or make variables: make demo MODE=ipvs):
#   MODE=iptables|ipvs|nftables  switchyard's --proxy-mode (default iptables)
#   DEMO_SOURCE=api|manifests
#                          api (default): the real API server; manifests:
#                          switchyard --manifests on a folder this script
#                          writes (no kube-apiserver build)
#   COUNT=30               requests per measurement
#   KEEP_GOING=1           keep the lab up at the end until Enter is pressed
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${MODE:-iptables}
DEMO_SOURCE=${DEMO_SOURCE:-api}
COUNT=${COUNT:-30}
GO=${GO:-go}

P=swy-demo
NODE_NS=$P-node
OUT_NS=$P-out
PODS=(pod-a pod-b pod-c)
POD_IPS=(10.244.0.11 10.244.0.12 10.244.0.13)
NODE_NAME=node-a
NODE_IP=10.0.0.10
OUTSIDE_GW=192.0.2.1
OUTSIDE_IP=192.0.2.100
CLUSTER_IP=10.96.0.80
PORT=80
TARGET_PORT=8080
NODE_PORT=30080
SVC=demo/web:http

BIN=$ROOT/bin
CACHE_BIN=$ROOT/.cache/bin
LOCK=/run/$P.lock

START=$(date +%s)
PIDS=()        # processes this run started (each leads its own process group)
NAMESPACES=()  # namespaces this run created
TMP=""

say()  { printf '[%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
step() { echo; say "==> $*"; }
die()  { echo; say "FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- clean-up
stop_pid() { # stop_pid PID: SIGTERM its process group, SIGKILL after 30 s
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "    pid $pid ignored SIGTERM for 30s; killing it"
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i left
	trap - EXIT INT TERM
	set +e
	if ((rc != 0 && rc != 130)) && [[ -n $TMP ]]; then
		for f in switchyard.log cluster.log; do
			[[ -s $TMP/$f ]] || continue
			echo
			echo "---- last lines of $f ----"
			tail -n 25 "$TMP/$f"
		done
	fi
	echo
	say "==> tearing down"
	local running=()
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -0 "${PIDS[i]}" 2>/dev/null && running+=("${PIDS[i]}")
		stop_pid "${PIDS[i]}"
	done
	((${#running[@]})) && say "    stopped ${#running[@]} processes by pid: ${running[*]}"
	for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
		ip netns del "${NAMESPACES[i]}" 2>/dev/null
	done
	((${#NAMESPACES[@]})) && say "    deleted namespaces ${NAMESPACES[*]}"
	[[ -n $TMP ]] && rm -rf "$TMP" && say "    removed $TMP"
	left=$(ip netns list 2>/dev/null | grep -o "^$P-[^ ]*" || true)
	for pid in "${PIDS[@]}"; do
		kill -0 "$pid" 2>/dev/null && left="$left pid:$pid"
	done
	if [[ -n $left ]]; then
		say "    LEFT BEHIND: $left" >&2
		((rc == 0)) && rc=1
	else
		say "    nothing left behind"
	fi
	if ((rc == 0)); then
		say "demo finished in $(($(date +%s) - START))s"
	elif ((rc == 130)); then
		say "demo interrupted after $(($(date +%s) - START))s"
	else
		say "demo failed (exit $rc) after $(($(date +%s) - START))s"
	fi
	exit "$rc"
}

# start NS LOGFILE CMD...: run CMD in namespace NS (or here if NS is "-") in
# its own session, so a Ctrl-C reaches only this script, whose trap stops it.
# Sets STARTED to its PID (ip netns exec and setsid exec, no fork).
start() {
	local ns=$1 log=$2
	shift 2
	if [[ $ns == - ]]; then
		setsid "$@" >"$log" 2>&1 </dev/null &
	else
		setsid ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
	fi
	STARTED=$!
	PIDS+=("$STARTED")
}

# ---------------------------------------------------------------- checks
[[ $(id -u) == 0 ]] || { echo "make demo needs root (network namespaces, iptables)" >&2; exit 1; }
for tool in ip iptables-save setsid flock "$GO"; do
	command -v "$tool" >/dev/null || { echo "make demo needs $tool (make deps installs the Debian packages)" >&2; exit 1; }
done
case $MODE in
iptables) ;;
ipvs)
	command -v ipvsadm >/dev/null || { echo "MODE=ipvs needs ipvsadm (make deps)" >&2; exit 1; }
	if ! out=$(ipvsadm -Ln 2>&1); then
		{
			echo "MODE=ipvs needs a kernel with IPVS (CONFIG_IP_VS, module ip_vs), and this one has none:"
			echo "  ipvsadm -Ln: $(grep -m1 'initialize' <<<"$out" || head -n1 <<<"$out")"
			echo "Run 'make demo' (MODE=iptables) here; the IPVS mode is exercised in the test/vm VM."
		} >&2
		exit 1
	fi
	;;
nftables)
	command -v nft >/dev/null || { echo "MODE=nftables needs nft (make deps)" >&2; exit 1; }
	;;
*) echo "MODE=$MODE: the demo knows iptables, ipvs and nftables" >&2; exit 2 ;;
esac
case $DEMO_SOURCE in
api | manifests) ;;
*) echo "DEMO_SOURCE=$DEMO_SOURCE: want api or manifests" >&2; exit 2 ;;
esac

exec 9>"$LOCK"
flock -n 9 || { echo "another make demo is running (lock $LOCK)" >&2; exit 1; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# A closed output pipe (make demo | head, a killed tee) must not kill the
# script before its clean-up: writes then fail, and set -e ends the run
# through the EXIT trap.
trap '' PIPE

# Only this script creates $P- namespaces, and it holds the lock: any that
# exist were left by a run that was killed (SIGKILL). Stop what still runs
# in them, then delete them.
stale=$(ip netns list | grep -o "^$P-[^ ]*" || true)
if [[ -n $stale ]]; then
	say "removing what a killed earlier demo left: namespaces $(echo $stale)"
	for ns in $stale; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			say "    stopping pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-80)) in $ns"
			kill -TERM "$pid" 2>/dev/null || true
		done
	done
	for ns in $stale; do
		for ((i = 0; i < 100; i++)); do
			[[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
			sleep 0.1
		done
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
		ip netns del "$ns"
	done
fi
for d in /tmp/$P.??????; do
	[[ -d $d ]] && say "removing $d, left by a killed earlier demo" && rm -rf "$d"
done
TMP=$(mktemp -d /tmp/$P.XXXXXX)

say "switchyard demo: MODE=$MODE DEMO_SOURCE=$DEMO_SOURCE, $COUNT requests per measurement"

# ---------------------------------------------------------------- build
# go_build NAME DIR LOCK OUT PKG...: `go build -v -o OUT PKG...` in DIR under
# flock LOCK, printing a progress line every 20 s (a cold build compiles
# hundreds of packages: client-go for switchyard, all of kube-apiserver and
# etcd for swy-testcluster).
go_build() {
	local name=$1 dir=$2 lock=$3 out=$4 total="" t0 last now n pid log
	shift 4
	log=$TMP/build-$name.log
	local probe=${out%/}
	[[ -d $probe ]] && probe=$probe/$name
	if [[ ! -x $probe ]]; then
		total=$(cd "$dir" && "$GO" list -deps "$@" 2>/dev/null | sort -u | wc -l) || total=""
	fi
	start - "$log" flock "$lock" sh -c 'cd "$1" && shift && exec "$@"' sh \
		"$dir" "$GO" build -v -o "$out" "$@"
	pid=$STARTED
	t0=$(date +%s)
	last=$t0
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		now=$(date +%s)
		if ((now - last >= 20)); then
			last=$now
			n=$(wc -l <"$log")
			say "    still compiling $name: $((now - t0))s, $n${total:+ of at most $total} packages built (now $(tail -n 1 "$log"))"
		fi
	done
	wait "$pid" || { cat "$log" >&2; die "building $name"; }
	say "    built in $(($(date +%s) - t0))s"
}

step "building switchyard, swy-echo and swy-demo"
mkdir -p "$BIN/" "$CACHE_BIN"
if [[ ! -x $BIN/switchyard ]]; then
	say "    first build on this machine compiles client-go: a few minutes"
fi
go_build switchyard "$ROOT" "$CACHE_BIN/demo-build.lock" "$BIN/" \
	./cmd/switchyard ./test/echo/cmd/swy-echo ./test/demo/cmd/swy-demo

if [[ $DEMO_SOURCE == api ]]; then
	step "building the control plane (etcd + kube-apiserver, test/cluster/cmd/swy-testcluster)"
	if [[ ! -x $CACHE_BIN/swy-testcluster ]]; then
		say "    first run: kube-apiserver and etcd compile from source; this takes 5 to 15 minutes on 2 cores"
		say "    (later runs reuse Go's build cache and take seconds)"
	fi
	# Same lock as test/cluster's Go helper, so a concurrent test build
	# and this one do not write the binary at the same time.
	go_build swy-testcluster "$ROOT/test/cluster" "$CACHE_BIN/swy-testcluster.lock" \
		"$CACHE_BIN/swy-testcluster" ./cmd/swy-testcluster
fi

# ---------------------------------------------------------------- lab
step "building the lab: $NODE_NS, $OUT_NS and ${#PODS[@]} pod namespaces"
addns() {
	NAMESPACES+=("$1")
	ip netns add "$1"
	ip -n "$1" link set lo up
}
addns "$NODE_NS"
addns "$OUT_NS"
ip netns exec "$NODE_NS" sh -c '
	echo 1 > /proc/sys/net/ipv4/ip_forward
	echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet
	echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter
	echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter'
ip -n "$NODE_NS" link add ext0 type veth peer name eth0 netns "$OUT_NS"
ip -n "$NODE_NS" addr add "$OUTSIDE_GW/24" dev ext0
ip -n "$NODE_NS" addr add "$NODE_IP/32" dev ext0
ip -n "$NODE_NS" link set ext0 up
ip -n "$OUT_NS" addr add "$OUTSIDE_IP/24" dev eth0
ip -n "$OUT_NS" link set eth0 up
ip -n "$OUT_NS" route add default via "$OUTSIDE_GW"
# The node's default route points at the outside namespace, which does not
# forward: nothing the demo sends can leave the lab.
ip -n "$NODE_NS" route add default via "$OUTSIDE_IP" dev ext0
say "    $OUT_NS $OUTSIDE_IP <-> $NODE_NS $OUTSIDE_GW (node IP $NODE_IP)"

POD_ARGS=()
for i in "${!PODS[@]}"; do
	pod=${PODS[i]} ip=${POD_IPS[i]} ns=$P-${PODS[i]}
	addns "$ns"
	ip netns exec "$ns" sh -c 'echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter'
	ip -n "$NODE_NS" link add "p$i" type veth peer name eth0 netns "$ns"
	ip -n "$NODE_NS" link set "p$i" up
	ip netns exec "$NODE_NS" sh -c "echo 0 > /proc/sys/net/ipv4/conf/p$i/rp_filter"
	ip -n "$NODE_NS" route add "$ip/32" dev "p$i" src "$NODE_IP"
	ip -n "$ns" addr add "$ip/32" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$NODE_IP" dev eth0 onlink
	start "$ns" "$TMP/echo-$pod.log" "$BIN/swy-echo" -name "$pod" -tcp "$TARGET_PORT"
	POD_ARGS+=("$pod=$ip")
done
for pod in "${PODS[@]}"; do
	for ((i = 0; i < 100; i++)); do
		grep -qx READY "$TMP/echo-$pod.log" 2>/dev/null && break
		sleep 0.1
	done
	grep -qx READY "$TMP/echo-$pod.log" || die "echo server of $pod did not start: $(cat "$TMP/echo-$pod.log")"
done
for i in "${!PODS[@]}"; do
	say "    $P-${PODS[i]} ${POD_IPS[i]}: echo server on tcp/$TARGET_PORT answering \"${PODS[i]}\""
done

# ---------------------------------------------------------------- objects
POD_LIST=$(IFS=,; echo "${PODS[*]}")
apply() { # apply [--not-ready POD]: create/update Node, Service, EndpointSlice
	ip netns exec "$NODE_NS" "$BIN/swy-demo" apply "${SOURCE_ARGS[@]}" \
		--node "$NODE_NAME" --node-ip "$NODE_IP" --cluster-ip "$CLUSTER_IP" \
		--port "$PORT" --target-port "$TARGET_PORT" --node-port "$NODE_PORT" \
		--pods "$(IFS=,; echo "${POD_ARGS[*]}")" "$@"
}

if [[ $DEMO_SOURCE == api ]]; then
	step "starting etcd + kube-apiserver inside $NODE_NS on 127.0.0.1"
	KUBECONFIG_FILE=$TMP/admin.kubeconfig
	start "$NODE_NS" "$TMP/cluster.log" "$CACHE_BIN/swy-testcluster" \
		--kubeconfig-out "$KUBECONFIG_FILE" --data-dir "$TMP/cluster" \
		--bind-address 127.0.0.1 --service-cluster-ip-range 10.96.0.0/16
	cluster_pid=$STARTED
	for ((i = 0; i < 1200; i++)); do
		[[ -s $KUBECONFIG_FILE ]] && break
		kill -0 "$cluster_pid" 2>/dev/null || die "swy-testcluster exited before it was ready"
		sleep 0.1
	done
	[[ -s $KUBECONFIG_FILE ]] || die "the API server was not ready within 2 minutes"
	server=$(grep -m1 'server:' "$KUBECONFIG_FILE" | awk '{print $2}')
	say "    API server ready at $server (pid $cluster_pid)"
	SOURCE_ARGS=(--kubeconfig "$KUBECONFIG_FILE")
	SWY_SOURCE=(--kubeconfig "$KUBECONFIG_FILE")
	step "creating Node $NODE_NAME, Service $SVC (ClusterIP $CLUSTER_IP:$PORT, NodePort $NODE_PORT) and its EndpointSlice with client-go"
else
	step "writing Node $NODE_NAME, Service $SVC (ClusterIP $CLUSTER_IP:$PORT, NodePort $NODE_PORT) and its EndpointSlice to a manifest folder"
	mkdir -p "$TMP/manifests"
	SOURCE_ARGS=(--manifests "$TMP/manifests")
	SWY_SOURCE=(--manifests "$TMP/manifests")
fi
apply || die "creating the demo objects"
say "    3 endpoints, all ready: $(IFS=' '; echo "${POD_ARGS[*]}")"

# ---------------------------------------------------------------- switchyard
step "starting switchyard --proxy-mode=$MODE ${SWY_SOURCE[0]} in $NODE_NS"
start "$NODE_NS" "$TMP/switchyard.log" "$BIN/switchyard" "${SWY_SOURCE[@]}" \
	--hostname-override "$NODE_NAME" --proxy-mode="$MODE"
SWY_PID=$STARTED
say "    pid $SWY_PID, log in $TMP/switchyard.log"

SAVE=iptables-save
nat_rules() { ip netns exec "$NODE_NS" "$SAVE" -t nat 2>/dev/null; }
pick_save() { # follow switchyard's auto flavour choice: legacy if only it holds our chains
	[[ $MODE == iptables && $SAVE == iptables-save ]] || return 0
	command -v iptables-legacy-save >/dev/null || return 0
	nat_rules | grep -q '^:SWY-SERVICES' && return 0
	if ip netns exec "$NODE_NS" iptables-legacy-save -t nat 2>/dev/null | grep -q '^:SWY-SERVICES'; then
		SAVE=iptables-legacy-save
	fi
}
programmed() { # number of endpoints the service's rules balance over
	case $MODE in
	iptables)
		# The service's endpoint rules, and the hooks that lead to them:
		# switchyard inserts the jump rules after its first restore, so
		# the chains exist a moment before packets reach them.
		local text
		text=$(nat_rules)
		if grep -q -- '^-A PREROUTING .*-j SWY-SERVICES' <<<"$text" &&
			grep -q -- '^-A OUTPUT .*-j SWY-SERVICES' <<<"$text" &&
			grep -q -- '^-A POSTROUTING .*-j SWY-POSTROUTING' <<<"$text"; then
			grep -c -- "^-A SWY-SVC-.*\"$SVC -> " <<<"$text" || true
		else
			echo -1
		fi
		;;
	ipvs)
		ip netns exec "$NODE_NS" ipvsadm -Ln -t "$CLUSTER_IP:$PORT" 2>/dev/null | grep -c -- '->.*Masq\|->.*Route' || true
		;;
	nftables)
		ip netns exec "$NODE_NS" nft list table ip switchyard 2>/dev/null | grep -c -- "dnat to .*\"$SVC -> " || true
		;;
	esac
}
wait_programmed() { # wait_programmed N: poll until the rules hold N endpoints
	local want=$1 i got=0
	for ((i = 0; i < 600; i++)); do
		pick_save
		got=$(programmed)
		((got == want)) && { say "    rules programmed: $SVC balances over $want endpoints"; return 0; }
		if ! kill -0 "$SWY_PID" 2>/dev/null; then
			die "switchyard exited: $(tail -n 3 "$TMP/switchyard.log")"
		fi
		sleep 0.1
	done
	((got < 0)) && die "after 60s switchyard's jump rules (nat PREROUTING/OUTPUT/POSTROUTING) are still missing"
	die "after 60s the rules balance $SVC over $got endpoints, want $want"
}
show_rules() {
	case $MODE in
	iptables)
		local text chains
		text=$(nat_rules)
		chains=$(grep -- "\"$SVC" <<<"$text" | grep -oE 'SWY-(SVC|SVL|EXT|FW|SEP)-[A-Z0-9]+' | sort -u | paste -sd'|')
		say "    $SAVE -t nat (in $NODE_NS), the rules of $SVC:"
		grep -E -- "^-A ($chains) |\"$SVC" <<<"$text" | sed 's/^/      /'
		;;
	ipvs)
		say "    ipvsadm -Ln (in $NODE_NS):"
		ip netns exec "$NODE_NS" ipvsadm -Ln | sed 's/^/      /'
		;;
	nftables)
		say "    nft list table ip switchyard (in $NODE_NS), the rules of $SVC:"
		ip netns exec "$NODE_NS" nft list table ip switchyard | grep -- "\"$SVC" | sed 's/^[[:space:]]*/      /'
		;;
	esac
}
measure() { # measure EXPECTED_PODS: COUNT requests via the cluster IP and the node port
	local expect=$1
	say "    $COUNT requests to the ClusterIP $CLUSTER_IP:$PORT from $NODE_NS:"
	ip netns exec "$NODE_NS" "$BIN/swy-demo" traffic --to "$CLUSTER_IP:$PORT" \
		--count "$COUNT" --pods "$POD_LIST" --expect "$expect" || die "traffic through the ClusterIP"
	say "    $COUNT requests to the NodePort $NODE_IP:$NODE_PORT from $OUT_NS ($OUTSIDE_IP):"
	ip netns exec "$OUT_NS" "$BIN/swy-demo" traffic --to "$NODE_IP:$NODE_PORT" \
		--count "$COUNT" --pods "$POD_LIST" --expect "$expect" --client-ip "$OUTSIDE_IP" || die "traffic through the NodePort"
}

step "waiting for switchyard to program the service"
wait_programmed "${#PODS[@]}"

step "sending traffic"
measure "$POD_LIST"

step "what switchyard programmed"
show_rules

LAST=${PODS[${#PODS[@]} - 1]}
REST=$(IFS=,; echo "${PODS[*]:0:${#PODS[@]}-1}")
if [[ $DEMO_SOURCE == api ]]; then
	step "scaling down: marking $LAST's endpoint not ready in the EndpointSlice (client-go update)"
else
	step "scaling down: marking $LAST's endpoint not ready in the manifest folder"
fi
apply --not-ready "$LAST" || die "updating the EndpointSlice"
wait_programmed $((${#PODS[@]} - 1))
measure "$REST"

if [[ ${KEEP_GOING:-} == 1 && -t 0 ]]; then
	step "the lab is up: try 'ip netns exec $OUT_NS $BIN/swy-demo traffic --to $NODE_IP:$NODE_PORT'; press Enter to tear down"
	read -r _
fi
step "done: switchyard balanced the ClusterIP and the NodePort over ${#PODS[@]} pods, then over $((${#PODS[@]} - 1))"
