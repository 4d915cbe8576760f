# Shared by scripts/cluster.sh and scripts/interop-kernel.sh: keepalived (VRRPv3) on a member's
# namespace, moving the cluster address VIP on the member's eth0, telling the member through its
# notify FIFO and listening to its readiness through DIR/readyID (the member's track file).
# Renders Examples/keepalived/keepalived.conf (KEEPALIVED_TEMPLATE elsewhere). Source it after strongswan-peer.sh; it uses
# DIR, VIP and PIDS.

keepalived_config() { # member priority advert [track-file-start-value (default 1)]
    sed -e "s|@ROUTER_ID@|member$1|" -e "s|@FIFO@|$DIR/keepalived$1.fifo|" -e "s|@TRACK_FILE@|$DIR/ready$1|" -e "s|@PRIORITY_FILE@|$DIR/active$1|" \
        -e "s|@TRACK_INIT@|${4:-1}|" -e "s|@INTERFACE@|eth0|g" -e "s|@VRID@|98|" -e "s|@PRIORITY@|$2|" \
        -e "s|@ADVERT@|$3|" -e "s|@VIP@|$VIP/24|" "${KEEPALIVED_TEMPLATE:-$HERE/Examples/keepalived/keepalived.conf}" > "$DIR/keepalived$1.conf"
}

start_keepalived() { # member namespace
    local id=$1 ns=$2
    ip netns exec "$ns" keepalived -n -l -D -G -P -f "$DIR/keepalived$id.conf" \
        -p "$DIR/keepalived$id.pid" -r "$DIR/keepalived$id.vrrp.pid" -c "$DIR/keepalived$id.checkers.pid" \
        -b "$DIR/keepalived$id.bfd.pid" >> "$DIR/keepalived$id.log" 2>&1 < /dev/null &
    PIDS+=($!)
    echo $! > "$DIR/keepalived$id.parent"
    for _ in $(seq 100); do [ -p "$DIR/keepalived$id.fifo" ] && [ -s "$DIR/keepalived$id.vrrp.pid" ] && break; sleep 0.02; done
    PIDS+=("$(cat "$DIR/keepalived$id.vrrp.pid" 2>/dev/null)")
}

holds_vip() { ip -n "$1" addr show dev eth0 | grep -q " $VIP/"; }
