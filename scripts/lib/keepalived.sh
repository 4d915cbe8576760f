# Shared by scripts/cluster.sh and scripts/interop-kernel.sh: keepalived (VRRPv3) on a member's
# namespace, moving the cluster address VIP on the member's eth0, telling the member through its
# notify FIFO. Source it after strongswan-peer.sh; it uses DIR, VIP and PIDS.

keepalived_config() { # member priority advert
    cat > "$DIR/keepalived$1.conf" <<CONF
global_defs {
    router_id member$1
    script_user root
    enable_script_security
    vrrp_version 3
    vrrp_higher_prio_send_advert true
    notify_fifo $DIR/keepalived$1.fifo
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 98
    priority $2
    advert_int $3
    virtual_ipaddress {
        $VIP/24 dev eth0
    }
}
CONF
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

