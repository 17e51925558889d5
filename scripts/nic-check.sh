#!/usr/bin/env bash
# Reports how a NIC is set up for the xdp-quic AF_XDP datapath, and warns, with the command
# that fixes it, about every setting that hurts it. Changes nothing. See docs/TUNING.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/nic-common.sh
. "$here/lib/nic-common.sh"

usage() {
    cat <<EOF
Usage: nic-check.sh IFACE [--json] [--queues N] [--cpus LIST] [--busy-poll USECS] [--hugepages N]

Reports the driver, queue counts, RSS hash fields for UDP over IPv4/IPv6, the indirection
table spread, each queue's IRQ CPU, LRO/GRO, MTU against native XDP, busy-poll sysctls and
per-device NAPI settings, huge pages, irqbalance and the attached XDP program.

Each finding is OK, INFO, UNSUPPORTED (the device cannot do it; not an error) or WARN (hurts
the datapath; the fix command follows). The expected queue count, CPUs, busy-poll and huge
pages are taken from the options, else from the state nic-tune.sh saved for IFACE
($NIC_STATE_DIR/IFACE.state), else generic rules apply.

  --json     print one JSON object instead of text

Exit status: 0 no warning, 3 warnings, 2 bad arguments, 1 other errors (unknown interface,
ethtool, ip or awk missing).
Environment: NIC_PROC, NIC_SYS, NIC_ETC, NIC_STATE_DIR (roots, see scripts/lib/nic-common.sh).
EOF
}

iface='' json=0 want_queues='' want_cpus='' want_busy='' want_huge=''
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help) usage; exit 0 ;;
    --json) json=1 ;;
    --queues | --cpus | --busy-poll | --hugepages)
        [ $# -ge 2 ] || nic_usage_error "$1 needs a value"
        case $1 in
        --queues) want_queues=$2 ;;
        --cpus) want_cpus=$2 ;;
        --busy-poll) want_busy=$2 ;;
        --hugepages) want_huge=$2 ;;
        esac
        shift
        ;;
    -*) nic_usage_error "unknown option: $1" ;;
    *)
        [ -z "$iface" ] || nic_usage_error "only one interface, got '$iface' and '$1'"
        iface=$1
        ;;
    esac
    shift
done
[ -n "$iface" ] || nic_usage_error "missing interface"
[ -z "$want_queues" ] || { nic_is_uint "$want_queues" && [ "$((10#$want_queues))" -ge 1 ]; } ||
    nic_usage_error "--queues needs a positive integer, got '$want_queues'"
[ -z "$want_busy" ] || nic_is_uint "$want_busy" || nic_usage_error "--busy-poll needs microseconds (integer), got '$want_busy'"
[ -z "$want_huge" ] || nic_is_uint "$want_huge" || nic_usage_error "--hugepages needs an integer, got '$want_huge'"
# Decimal from here on: "08" is 8 (arithmetic would read it as octal, and JSON not at all).
[ -z "$want_queues" ] || want_queues=$((10#$want_queues))
[ -z "$want_busy" ] || want_busy=$((10#$want_busy))
[ -z "$want_huge" ] || want_huge=$((10#$want_huge))
if [ -n "$want_cpus" ]; then
    want_cpus=$(nic_expand_cpulist "$want_cpus") || nic_usage_error "--cpus needs a CPU list such as 0-3,6, got '$want_cpus'"
fi
nic_require_iface "$iface"
nic_have ethtool || nic_die "ethtool not found on PATH (install it: apt-get install ethtool)"
nic_have ip || nic_die "ip not found on PATH (install iproute2)"
nic_have awk || nic_die "awk not found on PATH (install gawk or mawk)"

# Expectations not given on the command line come from nic-tune.sh's saved target.
state=$(nic_state_file "$iface")
defer_want='' gro_want=''
if [ -r "$state" ]; then
    [ -n "$want_queues" ] || want_queues=$(nic_state_get "$state" target.queues || true)
    [ -n "$want_cpus" ] || want_cpus=$(nic_state_get "$state" target.cpus || true)
    [ -n "$want_busy" ] || want_busy=$(nic_state_get "$state" target.busy_poll || true)
    [ -n "$want_huge" ] || want_huge=$(nic_state_get "$state" target.hugepages || true)
    defer_want=$(nic_state_get "$state" target.napi_defer_hard_irqs || true)
    gro_want=$(nic_state_get "$state" target.gro_flush_timeout || true)
fi
[ -n "$want_busy" ] && [ "$want_busy" -gt 0 ] && { [ -n "$defer_want" ] || defer_want=2; } && { [ -n "$gro_want" ] || gro_want=200000; }

F_ID=() F_LEVEL=() F_VALUE=() F_MSG=() F_FIX=()
add() { # id level value message [fix]
    F_ID+=("$1") F_LEVEL+=("$2") F_VALUE+=("$3") F_MSG+=("$4") F_FIX+=("${5:-}")
}
tune_hint="scripts/nic-tune.sh $iface --queues N --cpus LIST"

# --- driver --------------------------------------------------------------------------------
if nic_driver_info "$iface"; then
    add driver info "$NIC_DRIVER" "driver $NIC_DRIVER${NIC_BUSINFO:+ at $NIC_BUSINFO}"
else
    add driver unsupported unknown "ethtool -i $iface failed"
fi
cpus_online=$(nic_online_cpus || true)
ncpus=$(wc -w <<<"$cpus_online")

# --- NUMA ----------------------------------------------------------------------------------
node=$(nic_read "$NIC_SYS/class/net/$iface/device/numa_node" || echo -1)
if [ "$node" -ge 0 ] 2>/dev/null; then
    local_cpus=$(nic_read "$NIC_SYS/devices/system/node/node$node/cpulist" || echo "")
    far=''
    if [ -n "$want_cpus" ] && [ -n "$local_cpus" ] && local_list=$(nic_expand_cpulist "$local_cpus"); then
        for c in $want_cpus; do [[ " $local_list " == *" $c "* ]] || far+="$c "; done
    fi
    if [ -n "$far" ]; then
        add numa info "node $node" "worker CPUs ${far% } are not on the NIC's NUMA node $node (local CPUs: $local_cpus): each packet then crosses the interconnect"
    else
        add numa info "node $node" "NIC on NUMA node $node${local_cpus:+ (local CPUs: $local_cpus)}"
    fi
fi

# --- channels ------------------------------------------------------------------------------
nq=1
if nic_channels "$iface"; then
    nq=$(nic_channel_count)
    max=$(nic_channel_max)
    if [ "$CH_KIND" = combined ]; then setcmd="ethtool -L $iface combined"; what="combined"; else setcmd="ethtool -L $iface rx"; what="rx/tx"; fi
    value="$what $nq of max $max"
    [ "$CH_KIND" = rxtx ] && value="rx $CH_CUR_RX tx $CH_CUR_TX of max rx $CH_MAX_RX tx $CH_MAX_TX"
    fixn=${want_queues:-$max}
    fixcmd="$setcmd $fixn"
    [ "$CH_KIND" = rxtx ] && fixcmd="$fixcmd tx $fixn"
    if [ -n "$want_queues" ] && [ "$want_queues" -gt "$max" ]; then
        add channels warn "$value" "$want_queues queues expected but the device has at most $max" "scripts/nic-tune.sh $iface --queues $max --cpus LIST"
    elif [ -n "$want_queues" ] && [ "$nq" -ne "$want_queues" ]; then
        add channels warn "$value" "$nq queues, $want_queues expected: xdp-quic runs one worker per queue" "$fixcmd"
    elif [ -z "$want_queues" ] && [ "$nq" -eq 1 ] && [ "$max" -gt 1 ]; then
        add channels warn "$value" "one queue: every flow lands on one worker" "$setcmd $(( max < ncpus || ncpus == 0 ? max : ncpus ))$([ "$CH_KIND" = rxtx ] && echo " tx $(( max < ncpus || ncpus == 0 ? max : ncpus ))")"
    else
        add channels ok "$value" "$nq queues ($ncpus CPUs online)"
    fi
else
    nq=$(find "$NIC_SYS/class/net/$iface/queues/" -maxdepth 1 -name 'rx-*' 2>/dev/null | wc -l)
    [ "$nq" -ge 1 ] || nq=1
    add channels unsupported "$nq rx queues" "the driver does not report or set channel counts (ethtool -l)"
fi
[ -n "$want_queues" ] && nq_expect=$want_queues || nq_expect=$nq

# --- RSS hash fields -------------------------------------------------------------------------
nqmax=$nq_expect
[ -n "${CH_KIND:-}" ] && [ "$(nic_channel_max)" -gt "$nqmax" ] && nqmax=$(nic_channel_max)
for flow in udp4 udp6; do
    if letters=$(nic_flow_hash "$iface" "$flow"); then
        if [ "$nqmax" -le 1 ]; then
            add "rss-$flow" info "$letters" "UDP/IPv${flow#udp} hashes on $(nic_hash_describe "$letters"); one queue, so RSS does not apply"
        elif nic_hash_is_4tuple "$letters"; then
            add "rss-$flow" ok "$letters" "UDP/IPv${flow#udp} hashes on $(nic_hash_describe "$letters")"
        else
            add "rss-$flow" warn "$letters" "UDP over IPv${flow#udp} hashes on $(nic_hash_describe "$letters") only: flows between the same two hosts all land on one queue" "ethtool -N $iface rx-flow-hash $flow sdfn"
        fi
    else
        add "rss-$flow" unsupported "" "the driver does not report UDP/IPv${flow#udp} RSS hash fields (no RSS: on veth the queue is the sender's TX queue)"
    fi
done

# --- indirection table ---------------------------------------------------------------------
if nic_indir "$iface"; then
    nic_indir_counts "$nq_expect"
    value="${#INDIR[@]} entries over queues 0-$((nq_expect - 1)): $INDIR_COUNTS"
    if [ "$nqmax" -le 1 ]; then
        add indirection info "$value" "one queue, so the table does not matter"
    elif nic_indir_even "$nq_expect"; then
        add indirection ok "$value" "even spread over $nq_expect queues"
    elif [ "$INDIR_OUTSIDE" -gt 0 ]; then
        add indirection warn "$value (+$INDIR_OUTSIDE entries on other queues)" "$INDIR_OUTSIDE entries point at queues outside 0-$((nq_expect - 1))" "ethtool -X $iface equal $nq_expect"
    else
        add indirection warn "$value" "uneven spread: some workers get more flows than others" "ethtool -X $iface equal $nq_expect"
    fi
else
    add indirection unsupported "" "no RSS indirection table (ethtool -x)"
fi

# --- IRQ per queue -----------------------------------------------------------------------------
read -r -a wcpus <<<"${want_cpus:-}"
banned=" " ib_pid='' unbanned=()
if ib_pid=$(nic_irqbalance_pid); then banned=$(nic_irqbalance_banned "$ib_pid"); fi
if nic_queue_irqs "$iface"; then
    seen=" "
    for ((q = 0; q < nq_expect; q++)); do
        irq=${QIRQ[q]:-}
        if [ -z "$irq" ]; then
            add "irq-q$q" warn "" "no IRQ found for queue $q" ""
            continue
        fi
        aff=$(nic_irq_affinity "$irq" || echo "?")
        value="irq $irq (${QIRQ_NAME[q]}) -> cpu $aff"
        want=${wcpus[q]:-}
        if [ -n "$want_cpus" ] && [ -z "$want" ]; then
            add "irq-q$q" warn "$value" "no CPU listed for queue $q (fewer CPUs than queues)" "$tune_hint"
        elif [ -n "$want" ] && [ "$aff" != "$want" ]; then
            add "irq-q$q" warn "$value" "queue $q's IRQ should go to CPU $want, the CPU of worker $q" "echo $want > $NIC_PROC/irq/$irq/smp_affinity_list"
        elif [ -z "$want" ] && ! [[ $aff =~ ^[0-9]+$ ]]; then
            sugg=$(awk -v i="$q" '{ print $(i % NF + 1) }' <<<"${cpus_online:-0}")
            add "irq-q$q" warn "$value" "IRQ not pinned to one CPU: it may fire away from the worker that drains queue $q" "echo $sugg > $NIC_PROC/irq/$irq/smp_affinity_list"
        elif [ -z "$want" ] && [[ $seen == *" $aff "* ]]; then
            add "irq-q$q" warn "$value" "CPU $aff already takes another queue's IRQ" "$tune_hint"
        else
            add "irq-q$q" ok "$value" "queue $q IRQ on CPU $aff"
        fi
        seen+="$aff "
        if [[ $banned != *" $irq "* ]]; then unbanned+=("$irq"); fi
    done
else
    add irqs unsupported "" "no per-queue IRQs found in $NIC_PROC/interrupts (virtual device?)"
fi
if [ -n "$ib_pid" ] && [ "${#unbanned[@]}" -gt 0 ]; then
    bans=$(printf -- '--banirq=%s ' "${unbanned[@]}")
    add irqbalance warn "running (pid $ib_pid)" "irqbalance (pid $ib_pid) may move the queue IRQs ${unbanned[*]} away from their workers' CPUs" \
        "add ${bans% } to IRQBALANCE_ARGS in $(nic_irqbalance_conf), then: systemctl restart irqbalance   (nic-tune.sh does this)"
elif [ -n "$ib_pid" ]; then
    add irqbalance ok "running (pid $ib_pid)" "irqbalance is running and leaves the queue IRQs alone (banned:${banned% })"
else
    add irqbalance ok "not running" "irqbalance is not running"
fi

# --- offloads ------------------------------------------------------------------------------
for feat in large-receive-offload rx-gro-hw; do
    short=lro; [ "$feat" = rx-gro-hw ] && short=rx-gro-hw
    if v=$(nic_feature "$iface" "$feat"); then
        if [ "${v%% *}" = on ] && [ "$v" != "on fixed" ]; then
            add "$short" warn "$v" "$feat is on: the NIC merges packets, which native XDP refuses or the datapath mis-parses" "ethtool -K $iface $short off"
        elif [ "$v" = "on fixed" ]; then
            add "$short" info "$v" "$feat is on and fixed by the driver: the driver turns it off itself when XDP attaches, or native attach fails and xdp-quic falls back to generic XDP"
        else
            add "$short" ok "$v" "$feat $v"
        fi
    else
        add "$short" unsupported "" "$feat not reported by ethtool -k"
    fi
done
if v=$(nic_feature "$iface" generic-receive-offload); then
    add gro info "$v" "software GRO $v (runs after XDP; affects only traffic passed to the kernel)"
fi

# --- MTU -----------------------------------------------------------------------------------
mtu=$(nic_read "$NIC_SYS/class/net/$iface/mtu" || echo 0)
xmax=$(nic_xdp_max_mtu)
if [ "$mtu" -gt "$xmax" ]; then
    add mtu warn "$mtu" "MTU $mtu is above $xmax, the largest frame single-buffer native XDP fits in one $(nic_page_size)-byte page: native attach fails or needs multi-buffer support" "ip link set dev $iface mtu 1500"
else
    add mtu ok "$mtu" "MTU $mtu fits native XDP (at most $xmax on $(nic_page_size)-byte pages)"
fi

# --- busy polling --------------------------------------------------------------------------
for key in net.core.busy_poll net.core.busy_read; do
    p=$(nic_sysctl_path "$key")
    if v=$(nic_read "$p"); then
        if [ -n "$want_busy" ] && [ "$v" != "$want_busy" ]; then
            add "$key" warn "$v" "$key is $v, $want_busy expected" "echo $want_busy > $p"
        elif [ -n "$want_busy" ]; then
            add "$key" ok "$v" "$key = $v, as expected"
        else
            add "$key" info "$v" "$key = $v$([ "$v" = 0 ] && echo " (off: sockets that do not set SO_BUSY_POLL do not busy-poll)")"
        fi
    else
        add "$key" unsupported "" "$key not visible (it exists only in the initial network namespace)"
    fi
done
for key in napi_defer_hard_irqs gro_flush_timeout; do
    p=$NIC_SYS/class/net/$iface/$key
    [ "$key" = napi_defer_hard_irqs ] && want=$defer_want || want=$gro_want
    if v=$(nic_read "$p"); then
        if [ -n "$want" ] && [ "$v" != "$want" ]; then
            add "$key" warn "$v" "$key is $v, $want expected for busy polling" "echo $want > $p"
        elif [ -n "$want" ]; then
            add "$key" ok "$v" "$key = $v, as expected"
        else
            add "$key" info "$v" "$key = $v"
        fi
    else
        add "$key" unsupported "" "$p not present (kernel too old?)"
    fi
done

# --- huge pages ----------------------------------------------------------------------------
hp=$(nic_read "$(nic_sysctl_path vm.nr_hugepages)" || echo "")
if [ -n "$hp" ]; then
    free=$(awk '/^HugePages_Free:/ { print $2 }' "$NIC_PROC/meminfo" 2>/dev/null || true)
    size=$(awk '/^Hugepagesize:/ { print $2 " " $3 }' "$NIC_PROC/meminfo" 2>/dev/null || true)
    value="$hp pages${free:+, $free free}${size:+, $size each}"
    if [ -n "$want_huge" ] && [ "$hp" -lt "$want_huge" ]; then
        add hugepages warn "$value" "$hp huge pages reserved, $want_huge expected for the UMEM" "echo $want_huge > $(nic_sysctl_path vm.nr_hugepages)"
    else
        add hugepages "$([ -n "$want_huge" ] && echo ok || echo info)" "$value" "huge pages reserved: $hp${want_huge:+ (at least $want_huge expected)}"
    fi
else
    add hugepages unsupported "" "vm.nr_hugepages not readable"
fi

# --- XDP program ---------------------------------------------------------------------------
if nic_xdp_state "$iface"; then
    case $XDP_MODE in
    none) add xdp info none "no XDP program attached (xdp-quic serve attaches its own)" ;;
    generic) add xdp warn "generic${XDP_PROG:+ ($XDP_PROG)}" "XDP attached in generic (skb) mode: every packet pays an skb before XDP runs, and AF_XDP is copy mode" "ip link set dev $iface xdpgeneric off   # then restart xdp-quic serve, which tries native mode first" ;;
    *) add xdp ok "$XDP_MODE${XDP_PROG:+ ($XDP_PROG)}" "XDP attached in $XDP_MODE mode" ;;
    esac
else
    add xdp unsupported "" "ip -d link show dev $iface failed"
fi

# --- output --------------------------------------------------------------------------------
nwarn=0 nok=0 ninfo=0 nuns=0
for l in "${F_LEVEL[@]}"; do
    case $l in warn) nwarn=$((nwarn + 1)) ;; ok) nok=$((nok + 1)) ;; info) ninfo=$((ninfo + 1)) ;; *) nuns=$((nuns + 1)) ;; esac
done

if [ "$json" = 1 ]; then
    printf '{"iface":%s,"driver":%s,' "$(nic_json_str "$iface")" "$(nic_json_str "${NIC_DRIVER:-unknown}")"
    printf '"expect":{"queues":%s,"cpus":[%s],"busy_poll":%s,"hugepages":%s},' \
        "${want_queues:-null}" "$(tr ' ' , <<<"${want_cpus:-}")" "${want_busy:-null}" "${want_huge:-null}"
    printf '"findings":['
    for ((i = 0; i < ${#F_ID[@]}; i++)); do
        [ "$i" -gt 0 ] && printf ','
        printf '{"id":%s,"level":%s,"value":%s,"message":%s,"fix":%s}' \
            "$(nic_json_str "${F_ID[i]}")" "$(nic_json_str "${F_LEVEL[i]}")" "$(nic_json_str "${F_VALUE[i]}")" \
            "$(nic_json_str "${F_MSG[i]}")" "$(nic_json_str "${F_FIX[i]}")"
    done
    printf '],"summary":{"ok":%d,"info":%d,"unsupported":%d,"warn":%d}}\n' "$nok" "$ninfo" "$nuns" "$nwarn"
else
    printf 'nic-check %s (driver %s)\n' "$iface" "${NIC_DRIVER:-unknown}"
    for ((i = 0; i < ${#F_ID[@]}; i++)); do
        lvl=${F_LEVEL[i]^^}
        printf '  %-11s %-22s %s\n' "$lvl" "${F_ID[i]}" "${F_MSG[i]}"
        [ -n "${F_VALUE[i]}" ] && [[ ${F_MSG[i]} != *"${F_VALUE[i]}"* ]] && printf '  %-11s %-22s   value: %s\n' "" "" "${F_VALUE[i]}"
        [ -n "${F_FIX[i]}" ] && printf '  %-11s %-22s   fix: %s\n' "" "" "${F_FIX[i]}"
    done
    printf 'nic-check %s: %d warnings, %d ok, %d info, %d unsupported\n' "$iface" "$nwarn" "$nok" "$ninfo" "$nuns"
fi
[ "$nwarn" -eq 0 ] || exit 3
