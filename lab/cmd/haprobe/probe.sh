#!/bin/bash
# Issue 18 spike: two gateway charons (active hagw, standby hagw2) and one
# peer charon in network namespaces. The active's ha plugin talks to haprobe
# (standing in for Handoff) on 127.0.0.2:4510; the recording is replayed to
# the standby's charon, the address 192.0.2.1 moves, the standby activates
# segment 1 through its FIFO, and the peer's DPD and rekeys run against it.
# Every process started here is killed by PID; every wait is bounded.
# Usage: probe.sh WORKDIR HAPROBE_BINARY [MODE]
# MODE "lag" withholds the last IKE_MID_RESPONDER from the replay (an
# uncommitted tail); "lagfix" does the same, then acts as the proposed
# message-ID reconciler: it reads the standby's "received message ID X,
# expected Y, ignored" and sends it IKE_MID_RESPONDER X for that IKE_SA.
# "udp" activates segment 1 on both gateways with a SEGMENT_DROP datagram
# from 127.0.0.2:4510 instead of the FIFO, and sends one more recorded
# IKE_ADD after the standby's activation.
set -u
W=${1:?workdir}; HP=${2:?haprobe binary}; MODE=${3:-}
mkdir -p "$W"; cd "$W" || exit 1
PIDS=()
log() { echo "== $(date +%T.%N | cut -c1-12) $*"; }
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	sleep 0.3
	for n in hagw hagw2 hapeer; do ip netns del $n 2>/dev/null; done
}
trap cleanup EXIT

PLUGINS="random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey kdf kernel-libipsec kernel-netlink socket-default vici"

conf() { # name extra-settings
	mkdir -p "$W/$1"
	cat > "$W/$1/strongswan.conf" <<EOC
charon-systemd {
	load_modular = no
	install_routes = no
	load = $PLUGINS $3
	filelog {
		lab {
			path = $W/$1/charon.log
			time_format = %H:%M:%S
			default = 1
			ike = 2
			cfg = 2
			flush_line = yes
		}
	}
	journal { default = -1 }
	plugins {
		vici { socket = unix://$W/$1/charon.vici }
		$2
	}
}
EOC
}
HA='ha {
			local = 127.0.0.1
			remote = 127.0.0.2
			segment_count = 1
			monitor = no
			resync = RESYNC
		}'
conf gw "${HA/RESYNC/yes}" ha
conf gw2 "${HA/RESYNC/no}" ha
conf peer "" ""

GWCONF='connections {
	gw {
		version = 2
		local_addrs = 192.0.2.1
		remote_addrs = 192.0.2.2
		proposals = aes128-sha256-x25519
		mobike = no
		local { auth = psk
			id = gw.example }
		remote { auth = psk
			id = peer.example }
		children { net {
			local_ts = 198.51.100.0/24
			remote_ts = 203.0.113.0/24
			esp_proposals = aes128gcm16-x25519
		} }
	}
}
secrets { ike-1 { id-1 = gw.example
	id-2 = peer.example
	secret = spike-not-a-secret } }'
echo "$GWCONF" > gw/swanctl.conf; echo "$GWCONF" > gw2/swanctl.conf
cat > peer/swanctl.conf <<'EOC'
connections {
	gw {
		version = 2
		local_addrs = 192.0.2.2
		remote_addrs = 192.0.2.1
		proposals = aes128-sha256-x25519
		mobike = no
		dpd_delay = 4s
		rekey_time = 0
		local { auth = psk
			id = peer.example }
		remote { auth = psk
			id = gw.example }
		children { net {
			local_ts = 203.0.113.0/24
			remote_ts = 198.51.100.0/24
			esp_proposals = aes128gcm16-x25519
			rekey_time = 0
			start_action = none
		} }
	}
}
secrets { ike-1 { id-1 = gw.example
	id-2 = peer.example
	secret = spike-not-a-secret } }
EOC

log "namespaces"
for n in hagw hagw2 hapeer; do ip netns add $n; ip -n $n link set lo up; done
ip -n hapeer link add br0 type bridge; ip -n hapeer link set br0 up
ip -n hapeer addr add 192.0.2.2/24 dev br0
ip link add ga netns hagw type veth peer name pa netns hapeer
ip link add gb netns hagw2 type veth peer name pb netns hapeer
for p in pa pb; do ip -n hapeer link set $p master br0; ip -n hapeer link set $p up; done
ip -n hagw addr add 192.0.2.1/24 dev ga; ip -n hagw link set ga up
ip -n hagw2 addr add 192.0.2.3/24 dev gb; ip -n hagw2 link set gb up
# kernel-libipsec routes each CHILD_SA through its TUN device from an address
# inside the local traffic selector: give every node one
for n in hagw hagw2; do ip -n $n addr add 198.51.100.1/32 dev lo; done
ip -n hapeer addr add 203.0.113.1/32 dev lo

start() { # ns name -> prints PID; private /run so /run/charon.ha is per charon
	ip netns exec "$1" unshare -m sh -c "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF=$W/$2/strongswan.conf exec charon-systemd" >"$W/$2/stderr.log" 2>&1 &
	echo $!
}
vici_up() { for i in $(seq 1 100); do [ -S "$W/$1/charon.vici" ] && return 0; sleep 0.1; done; return 1; }
sw() { # charon command args...; swanctl takes --uri after the command
	local n=$1 c=$2; shift 2
	ip netns exec "$(cat $W/$n/ns)" swanctl $c --uri "unix://$W/$n/charon.vici" "$@" 2>&1 | grep -v "failed to load"
}
fifo() { nsenter -t "$1" -m sh -c "echo '$2' > /run/charon.ha"; }

echo hagw > gw/ns; echo hagw2 > gw2/ns; echo hapeer > peer/ns
log "recorder on 127.0.0.2:4510 in hagw"
ip netns exec hagw "$HP" -listen 127.0.0.2:4510 -out "$W/gw-ha.hex" -for 150s -max 2000 2>"$W/recorder.log" &
PIDS+=($!); sleep 0.3
GW=$(start hagw gw); PIDS+=($GW)
GW2=$(start hagw2 gw2); PIDS+=($GW2)
PEER=$(start hapeer peer); PIDS+=($PEER)
vici_up gw && vici_up gw2 && vici_up peer || { log "a charon did not start"; tail gw/stderr.log gw2/stderr.log peer/stderr.log; exit 1; }
for n in gw gw2 peer; do sw $n --load-all --noprompt --file "$W/$n/swanctl.conf" >/dev/null; done
activate() { # pid ns
	if [ "$MODE" = udp ]; then
		ip netns exec "$2" "$HP" -from 127.0.0.2:4510 -to 127.0.0.1:4510 -send 0308220001 2>>"$W/replay.log"
	else
		fifo "$1" +1
	fi
}
log "active: activate segment 1 ($MODE)"; activate $GW hagw; sleep 0.5

log "peer initiates"; sw peer --initiate --child net --timeout 10 | tail -2
sleep 1
log "peer SAs"; sw peer --list-sas | tee peer-sas-before.txt
log "peer rekeys the CHILD_SA (PFS)"; sw peer --rekey --child net >/dev/null; sleep 1.5
log "peer rekeys the IKE_SA"; sw peer --rekey --ike gw >/dev/null; sleep 1.5
log "waiting for two DPDs from the peer (4 s)"; sleep 9
log "peer SAs before takeover"; sw peer --list-sas | tee peer-sas-pretakeover.txt
log "active SAs"; sw gw --list-sas
cp gw-ha.hex replay.hex
if [ "$MODE" = lag ] || [ "$MODE" = lagfix ]; then
	# drop the last responder message-ID update (second byte 04)
	last=$(grep -n ' 0304' replay.hex | tail -1 | cut -d: -f1)
	sed -i "${last}d" replay.hex
	log "MODE $MODE: withheld line $last of the recording"
fi
log "replaying $(wc -l < replay.hex) datagrams to the standby from 127.0.0.2:4510"
ip netns exec hagw2 "$HP" -from 127.0.0.2:4510 -to 127.0.0.1:4510 -in replay.hex -gap 20ms 2>replay.log
sleep 1
log "standby SAs (should be PASSIVE)"; sw gw2 --list-sas | tee gw2-sas-passive.txt

log "TAKEOVER: kill active charon $GW, move 192.0.2.1, +1 on standby FIFO"
kill -9 $GW
ip -n hagw addr del 192.0.2.1/24 dev ga
ip -n hagw2 addr add 192.0.2.1/24 dev gb
ip -n hapeer neigh flush dev br0
activate $GW2 hagw2
sleep 0.5
if [ "$MODE" = udp ]; then
	log "udp: an IKE_ADD+IKE_UPDATE arriving after activation (the first IKE_SA's, replayed again)"
	grep -m1 ' 0301' replay.hex > late.hex; grep -m1 ' 0302' replay.hex >> late.hex
	ip netns exec hagw2 "$HP" -from 127.0.0.2:4510 -to 127.0.0.1:4510 -in late.hex 2>>replay.log
	sleep 0.3
fi
log "standby SAs after activation"; sw gw2 --list-sas | tee gw2-sas-active.txt
if [ "$MODE" = lagfix ]; then
	log "reconciler: waiting (up to 12 s) for an ignored request on the standby"
	for i in $(seq 1 120); do
		m=$(grep -o 'received message ID [0-9]*, expected [0-9]*, ignored' gw2/charon.log | head -1)
		[ -n "$m" ] && break; sleep 0.1
	done
	if [ -n "$m" ]; then
		x=$(echo "$m" | awk '{print $4}' | tr -d ,)
		# IKE_MID_RESPONDER = 03 04, IKE_ID attribute (01 + 18 bytes), MID (21 + u32)
		base=$(grep ' 0304' gw-ha.hex | tail -1 | awk '{print substr($2,1,44)}')
		log "reconciler: '$m' -> IKE_MID_RESPONDER MID=$x"
		ip netns exec hagw2 "$HP" -from 127.0.0.2:4510 -to 127.0.0.1:4510 -send "${base}$(printf %08x "$x")" 2>>replay.log
	else
		log "reconciler: nothing ignored"
	fi
fi
log "waiting for the peer's DPD (up to 10 s)"; sleep 10
log "peer rekeys the CHILD_SA against the new active"; sw peer --rekey --child net >/dev/null; sleep 2
log "peer rekeys the IKE_SA against the new active"; sw peer --rekey --ike gw >/dev/null; sleep 2
log "waiting for DPD after the rekeys (6 s)"; sleep 6
log "peer SAs after"; sw peer --list-sas | tee peer-sas-after.txt
log "new active SAs after"; sw gw2 --list-sas | tee gw2-sas-after.txt
log "done"
