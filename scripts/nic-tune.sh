#!/usr/bin/env bash
# Tunes a NIC for the xdp-quic AF_XDP datapath (queues, RSS, IRQs, offloads, busy polling,
# huge pages), saving what it changes first so that --revert puts it back. See docs/TUNING.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/nic-common.sh
. "$here/lib/nic-common.sh"

usage() {
    cat <<EOF
Usage: nic-tune.sh IFACE --queues N --cpus LIST [--busy-poll USECS] [--hugepages N]
                   [--defer-hard-irqs N] [--gro-flush-timeout NS] [--dry-run]
       nic-tune.sh IFACE --revert [--dry-run]

  --queues N              channel count: one queue per xdp-quic worker
  --cpus LIST             CPUs of workers 0..N-1, e.g. 2-5 or 2,4,6,8 (exactly N CPUs);
                          queue i's IRQ goes to the i-th CPU listed
  --busy-poll USECS       net.core.busy_poll and net.core.busy_read, and the device's
                          napi_defer_hard_irqs / gro_flush_timeout (0 turns them off)
  --defer-hard-irqs N     napi_defer_hard_irqs with --busy-poll (default 2)
  --gro-flush-timeout NS  gro_flush_timeout with --busy-poll (default 200000 ns)
  --hugepages N           reserve at least N huge pages (vm.nr_hugepages) for the UMEM;
                          refused when the pages to add exceed 3/4 of MemAvailable
  --dry-run               print every command it would run, change nothing
  --revert                restore the state saved by the first tune, then forget it

It also sets UDP RSS hashing on the 4-tuple for IPv4 and IPv6, an even RSS indirection
table over the N queues, turns LRO and hardware GRO off, and bans the queue IRQs from
irqbalance (IRQBALANCE_ARGS in its environment file, then systemctl restart irqbalance).
What the device cannot do is reported as unsupported and skipped.

The state before the first change is saved to \$NIC_STATE_DIR/IFACE.state (default
/var/lib/xdp-quic/nic-tune); tuning again keeps that original state. Busy polling
(net.core.busy_poll, busy_read), huge pages and irqbalance's file are host-wide, yet saved
per interface: when tuning a second NIC, its saved state holds the first one's changes, so
revert in the reverse order of tuning (both runs warn when another NIC's state is saved). The first failing
command stops the run (as does Ctrl-C or SIGTERM); it then says what it had changed.
Exit status: 0 done, 1 failed or error, 2 bad arguments.
Environment: NIC_PROC, NIC_SYS, NIC_ETC, NIC_STATE_DIR (roots, see scripts/lib/nic-common.sh).
EOF
}

iface='' queues='' cpus_arg='' busy='' huge='' defer='' groft='' dry=0 revert=0
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry=1 ;;
    --revert) revert=1 ;;
    --queues | --cpus | --busy-poll | --hugepages | --defer-hard-irqs | --gro-flush-timeout)
        [ $# -ge 2 ] || nic_usage_error "$1 needs a value"
        case $1 in
        --queues) queues=$2 ;;
        --cpus) cpus_arg=$2 ;;
        --busy-poll) busy=$2 ;;
        --hugepages) huge=$2 ;;
        --defer-hard-irqs) defer=$2 ;;
        --gro-flush-timeout) groft=$2 ;;
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
nic_valid_iface_name "$iface" || nic_usage_error "invalid interface name: '$iface'"
if [ "$revert" = 1 ]; then
    [ -z "$queues$cpus_arg$busy$huge$defer$groft" ] || nic_usage_error "--revert takes no tuning options"
else
    [ -n "$queues" ] || nic_usage_error "missing --queues N"
    [ -n "$cpus_arg" ] || nic_usage_error "missing --cpus LIST"
    { nic_is_uint "$queues" && [ "$queues" -ge 1 ]; } || nic_usage_error "--queues needs a positive integer, got '$queues'"
    queues=$((10#$queues))
    cpus=$(nic_expand_cpulist "$cpus_arg") || nic_usage_error "--cpus needs a CPU list such as 0-3 or 0,2,4, got '$cpus_arg'"
    read -r -a cpu <<<"$cpus"
    [ "${#cpu[@]}" -eq "$queues" ] ||
        nic_usage_error "--cpus lists ${#cpu[@]} CPUs for $queues queues: give exactly one CPU per queue"
    [ "$(printf '%s\n' "${cpu[@]}" | sort -u | wc -l)" -eq "$queues" ] || nic_usage_error "--cpus lists a CPU twice: $cpus_arg"
    [ -z "$busy" ] || nic_is_uint "$busy" || nic_usage_error "--busy-poll needs microseconds (integer), got '$busy'"
    [ -z "$huge" ] || nic_is_uint "$huge" || nic_usage_error "--hugepages needs an integer, got '$huge'"
    [ -z "$defer" ] || nic_is_uint "$defer" || nic_usage_error "--defer-hard-irqs needs an integer, got '$defer'"
    [ -z "$groft" ] || nic_is_uint "$groft" || nic_usage_error "--gro-flush-timeout needs nanoseconds (integer), got '$groft'"
    [ -n "$busy" ] || [ -z "$defer$groft" ] || nic_usage_error "--defer-hard-irqs and --gro-flush-timeout go with --busy-poll"
    if [ -n "$busy" ]; then
        busy=$((10#$busy))
        if [ "$busy" -gt 0 ]; then def_defer=2 def_gro=200000; else def_defer=0 def_gro=0; fi
        defer=$((10#${defer:-$def_defer})) groft=$((10#${groft:-$def_gro}))
    fi
    [ -z "$huge" ] || huge=$((10#$huge))
fi
nic_require_iface "$iface"
nic_have ethtool || nic_die "ethtool not found on PATH (install it: apt-get install ethtool)"

state=$(nic_state_file "$iface")
CHANGED=() SKIPPED=()

# A closed stdout (`| head -1`) must not kill the tune half-way: SIGPIPE is ignored and
# what cannot be printed is dropped.
trap '' PIPE
say() { printf '%s\n' "$*" 2>/dev/null || true; }
note_skip() { SKIPPED+=("$1"); say "  skip: $1"; }

# A revert goes on past a failed step (BEST_EFFORT=1): the failure is kept in FAILED and the
# steps after it are still restored; the revert then keeps the state and exits 1.
BEST_EFFORT=0
FAILED=()

fail() { # message
    if [ "$BEST_EFFORT" = 1 ]; then
        printf '%s: FAILED (going on with the rest): %s\n' "$nic_prog" "$1" >&2
        FAILED+=("$1")
        return 0
    fi
    REPORTED=1
    printf '%s: FAILED: %s\n' "$nic_prog" "$1" >&2
    report_changes
    exit 1
}

# What this run changed, and how to undo it (on stderr).
report_changes() {
    if [ "${#CHANGED[@]}" -eq 0 ]; then
        printf '%s: nothing was changed by this run.\n' "$nic_prog" >&2
    else
        printf '%s: this run had already changed:\n' "$nic_prog" >&2
        printf '    %s\n' "${CHANGED[@]}" >&2
    fi
    if [ -e "$state" ]; then
        printf '%s: the state before tuning is saved in %s; undo with: %s %s --revert\n' \
            "$nic_prog" "$state" "$0" "$iface" >&2
    fi
}

# A tune stopped by anything but fail (Ctrl-C, SIGTERM, an unexpected error) says the same.
REPORTED=0
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$REPORTED" = 0 ] && [ "$dry" = 0 ]; then
        printf '%s: stopped before the end (exit status %d)\n' "$nic_prog" "$rc" >&2
        report_changes
    fi
    return "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command (or only prints it with --dry-run). Status 3 when the driver answered
# "not supported" and unsupported_ok was given; any other failure stops the run.
run() { # description unsupported_ok cmd...
    local desc=$1 unsup_ok=$2 out
    shift 2
    say "+ $(nic_quote_cmd "$@")"
    [ "$dry" = 1 ] && return 0
    if out=$("$@" 2>&1); then
        CHANGED+=("$desc")
        return 0
    fi
    if [ "$unsup_ok" = 1 ] && [[ $out == *"not supported"* || $out == *"Operation not supported"* ]]; then
        note_skip "$desc: not supported by the driver (${out//$'\n'/ })"
        return 3
    fi
    fail "$desc: '$(nic_quote_cmd "$@")' failed: ${out//$'\n'/ }"
}

# Writes a value to a procfs/sysfs file (or only prints it with --dry-run).
write_val() { # description path value [hint]
    local desc=$1 path=$2 val=$3 hint=${4:-}
    say "+ echo $val > $path"
    [ "$dry" = 1 ] && return 0
    if ! { printf '%s\n' "$val" >"$path"; } 2>/dev/null; then
        fail "$desc: cannot write '$val' to $path${hint:+ ($hint)}"
        return 0
    fi
    CHANGED+=("$desc")
}

channel_cmd() { # n: ethtool -L arguments for the driver's channel model
    if [ "$CH_KIND" = combined ]; then echo "combined $1"; else echo "rx $1 tx $1"; fi
}

# --- saved state ---------------------------------------------------------------------------

# Everything tune may change, as state lines.
snapshot() {
    local f v q irq key p
    echo "version=1"
    echo "iface=$iface"
    echo "saved_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "boot_id=$(nic_boot_id)"
    if nic_channels "$iface"; then
        echo "channels.kind=$CH_KIND"
        if [ "$CH_KIND" = combined ]; then echo "channels.combined=$CH_CUR_COMB"; else
            echo "channels.rx=$CH_CUR_RX"
            echo "channels.tx=$CH_CUR_TX"
        fi
    else
        echo "channels.kind=unsupported"
    fi
    if nic_indir "$iface"; then echo "indir=${INDIR[*]}"; else echo "indir=unsupported"; fi
    for f in udp4 udp6; do
        if v=$(nic_flow_hash "$iface" "$f"); then echo "hash.$f=$v"; else echo "hash.$f=unsupported"; fi
    done
    for f in lro rx-gro-hw; do
        key=$f; [ "$f" = lro ] && key=large-receive-offload
        if v=$(nic_feature "$iface" "$key"); then echo "feature.$f=${v// /-}"; else echo "feature.$f=unsupported"; fi
    done
    if nic_queue_irqs "$iface"; then
        for q in "${!QIRQ[@]}"; do
            irq=${QIRQ[q]}
            if v=$(nic_irq_affinity "$irq"); then echo "irq.$irq=$v"; fi
        done
    fi
    if nic_irqbalance_pid >/dev/null; then
        p=$(nic_irqbalance_conf)
        echo "irqbalance.conf=$p"
        if [ -f "$p" ]; then echo "irqbalance.content=$(base64 -w0 <"$p")"; else echo "irqbalance.content=absent"; fi
    fi
    for key in net.core.busy_poll net.core.busy_read vm.nr_hugepages; do
        if v=$(nic_read "$(nic_sysctl_path "$key")"); then echo "sysctl.$key=$v"; else echo "sysctl.$key=unsupported"; fi
    done
    for key in napi_defer_hard_irqs gro_flush_timeout; do
        if v=$(nic_read "$NIC_SYS/class/net/$iface/$key"); then echo "sys.$key=$v"; else echo "sys.$key=unsupported"; fi
    done
}

# Writes the state file: keeps every key an earlier tune saved (the original state), adds
# keys it did not have, and replaces the target.
save_state() {
    local tmp line key have=" " rebooted=0
    mkdir -p "$NIC_STATE_DIR" || fail "cannot create state directory $NIC_STATE_DIR"
    tmp=$(mktemp "$NIC_STATE_DIR/.$iface.state.XXXXXX") || fail "cannot write in $NIC_STATE_DIR"
    # Saved before a reboot: the IRQ numbers it holds may be other devices' now. The rest
    # (channels, hashes, features, irqbalance's file before the first tune) is still what
    # this NIC and host had before any tune.
    if [ -r "$state" ] && ! same_boot "$state"; then rebooted=1; fi
    {
        if [ -r "$state" ]; then
            while IFS= read -r line; do
                key=${line%%=*}
                [[ $key == target.* ]] && continue
                if [ "$rebooted" = 1 ] && [[ $key == irq.* || $key == boot_id ]]; then continue; fi
                have+="$key "
                printf '%s\n' "$line"
            done <"$state"
        fi
        snapshot | while IFS= read -r line; do
            [[ $have == *" ${line%%=*} "* ]] || printf '%s\n' "$line"
        done
        echo "target.queues=$queues"
        echo "target.cpus=${cpu[*]}"
        [ -z "$busy" ] || {
            echo "target.busy_poll=$busy"
            echo "target.napi_defer_hard_irqs=$defer"
            echo "target.gro_flush_timeout=$groft"
        }
        [ -z "$huge" ] || echo "target.hugepages=$huge"
    } >"$tmp" || { rm -f "$tmp"; fail "cannot write $tmp"; }
    mv -f "$tmp" "$state" || { rm -f "$tmp"; fail "cannot write $state"; }
}

# Whether state file $1 was saved since the last boot (a file without a boot id, or a host
# that does not tell its boot id, counts as the same boot).
same_boot() {
    local saved
    saved=$(nic_state_get "$1" boot_id || echo unknown)
    [ "$saved" = unknown ] || [ "$(nic_boot_id)" = unknown ] || [ "$saved" = "$(nic_boot_id)" ]
}

# --- revert --------------------------------------------------------------------------------

do_revert() {
    local v cur key f p irq saved want letters n m i counts
    [ -r "$state" ] || nic_die "no saved state for $iface ($state): nothing to revert"
    [ "$(nic_state_get "$state" iface || true)" = "$iface" ] || nic_die "$state is not a state file for $iface"
    if [ "$dry" = 1 ]; then say "# dry run: nothing will be changed"; fi
    say "# reverting $iface to the state saved in $state"
    BEST_EFFORT=1

    for key in gro_flush_timeout napi_defer_hard_irqs; do
        saved=$(nic_state_get "$state" "sys.$key" || echo unsupported)
        p=$NIC_SYS/class/net/$iface/$key
        [ "$saved" = unsupported ] && continue
        cur=$(nic_read "$p" || echo "")
        [ "$cur" = "$saved" ] || write_val "$key $cur -> $saved" "$p" "$saved"
    done
    for key in net.core.busy_read net.core.busy_poll; do
        saved=$(nic_state_get "$state" "sysctl.$key" || echo unsupported)
        p=$(nic_sysctl_path "$key")
        [ "$saved" = unsupported ] && continue
        cur=$(nic_read "$p" || echo "")
        [ "$cur" = "$saved" ] || write_val "$key $cur -> $saved" "$p" "$saved"
    done
    for f in rx-gro-hw lro; do
        saved=$(nic_state_get "$state" "feature.$f" || echo unsupported)
        key=$f; [ "$f" = lro ] && key=large-receive-offload
        cur=$(nic_feature "$iface" "$key" || echo unsupported)
        if [ "$saved" = on ] && [ "$cur" = off ]; then run "$f off -> on" 0 ethtool -K "$iface" "$f" on; fi
    done
    for f in udp6 udp4; do
        saved=$(nic_state_get "$state" "hash.$f" || echo unsupported)
        case $saved in unsupported | none | r) continue ;; esac
        cur=$(nic_flow_hash "$iface" "$f" || echo unsupported)
        [ "$cur" = "$saved" ] || run "$f hash $cur -> $saved" 0 ethtool -N "$iface" rx-flow-hash "$f" "$saved"
    done

    # Indirection table and channels: back to the driver's default table first (a table set
    # by hand keeps the kernel from removing the queues it points at), then the channel
    # count, then the saved table if the driver's default is not it.
    saved=$(nic_state_get "$state" indir || echo unsupported)
    local saved_kind chan_differs=0 saved_n=0
    saved_kind=$(nic_state_get "$state" channels.kind || echo unsupported)
    if [ "$saved_kind" != unsupported ] && nic_channels "$iface"; then
        if [ "$saved_kind" = combined ]; then
            saved_n=$(nic_state_get "$state" channels.combined)
            [ "$CH_CUR_COMB" = "$saved_n" ] || chan_differs=1
        else
            saved_n=$(nic_state_get "$state" channels.rx)
            want=$(nic_state_get "$state" channels.tx)
            [ "$CH_CUR_RX" = "$saved_n" ] && [ "$CH_CUR_TX" = "$want" ] || chan_differs=1
        fi
    fi
    local indir_differs=0
    if [ "$saved" != unsupported ] && nic_indir "$iface" && [ "${INDIR[*]}" != "$saved" ]; then
        indir_differs=1
        run "RSS indirection table -> driver default" 0 ethtool -X "$iface" default
    fi
    if [ "$chan_differs" = 1 ]; then
        if [ "$saved_kind" = combined ]; then
            run "channels combined $CH_CUR_COMB -> $saved_n" 0 ethtool -L "$iface" combined "$saved_n"
        else
            run "channels rx $CH_CUR_RX tx $CH_CUR_TX -> rx $saved_n tx $want" 0 ethtool -L "$iface" rx "$saved_n" tx "$want"
        fi
    fi
    if [ "$indir_differs" = 1 ]; then
        read -r -a INDIR <<<"$saved"
        n=$saved_n
        [ "$n" -gt 0 ] || n=$(nic_channel_count)
        if [ "$dry" = 1 ] && nic_indir_is_modulo "$n"; then
            say "# the driver's default table for $n queues is the saved one"
        elif [ "$dry" = 0 ] && nic_indir "$iface" && [ "${INDIR[*]}" = "$saved" ]; then
            :
        else
            read -r -a INDIR <<<"$saved"
            m=0
            for i in "${INDIR[@]}"; do [ "$i" -lt "$m" ] || m=$((i + 1)); done
            if nic_indir_is_modulo "$m"; then
                run "RSS indirection table -> equal $m" 0 ethtool -X "$iface" equal "$m"
            else
                nic_indir_counts "$m"
                counts=$INDIR_COUNTS
                # shellcheck disable=SC2086 # one argument per weight
                run "RSS indirection table -> weights $counts" 0 ethtool -X "$iface" weight $counts
                note_skip "the saved indirection table was restored as per-queue weights ($counts); the order of its entries may differ"
            fi
        fi
    fi

    # IRQ affinities and irqbalance after the channels: the queues that come back with the
    # saved channel count have their IRQs again (a driver may also renumber them on -L).
    # Only the IRQ numbers that are still this NIC's queue IRQs: a driver that renumbered
    # them may have left a saved number to another device.
    local rebooted=0 qirqs=' '
    same_boot "$state" || rebooted=1
    if nic_queue_irqs "$iface"; then qirqs+="${QIRQ[*]} "; fi
    while IFS= read -r line; do
        [[ $line =~ ^irq\.([0-9]+)=(.*)$ ]] || continue
        irq=${BASH_REMATCH[1]} saved=${BASH_REMATCH[2]}
        if [ "$rebooted" = 1 ]; then
            note_skip "IRQ $irq affinity ($saved): saved before a reboot, the number may be another device's now"
            continue
        fi
        if [[ $qirqs != *" $irq "* ]]; then
            note_skip "IRQ $irq affinity ($saved): IRQ $irq is not one of $iface's queue IRQs now (renumbered by the driver?), not restored"
            continue
        fi
        if ! cur=$(nic_irq_affinity "$irq"); then
            note_skip "IRQ $irq no longer exists; its affinity ($saved) is not restored"
            continue
        fi
        [ "$cur" = "$saved" ] || write_val "IRQ $irq affinity $cur -> $saved" "$NIC_PROC/irq/$irq/smp_affinity_list" "$saved"
    done <"$state"
    if p=$(nic_state_get "$state" irqbalance.conf); then
        saved=$(nic_state_get "$state" irqbalance.content || echo absent)
        if [ "$saved" = absent ]; then
            if [ -e "$p" ]; then
                say "+ rm $p"
                if [ "$dry" = 0 ]; then rm -f "$p" || fail "cannot remove $p"; CHANGED+=("removed $p"); fi
                restart_irqbalance
            fi
        elif [ ! -f "$p" ] || [ "$(base64 -w0 <"$p")" != "$saved" ]; then
            say "+ restore $p (saved copy)"
            if [ "$dry" = 0 ]; then
                base64 -d <<<"$saved" >"$p" || fail "cannot restore $p"
                CHANGED+=("restored $p")
            fi
            restart_irqbalance
        fi
    fi

    saved=$(nic_state_get "$state" sysctl.vm.nr_hugepages || echo unsupported)
    if [ "$saved" != unsupported ]; then
        p=$(nic_sysctl_path vm.nr_hugepages)
        cur=$(nic_read "$p" || echo "")
        [ "$cur" = "$saved" ] || write_val "vm.nr_hugepages $cur -> $saved" "$p" "$saved"
    fi

    if [ "$dry" = 1 ]; then
        say "+ rm $state"
        say "nic-tune $iface: dry run of --revert; nothing changed"
        return 0
    fi
    if [ "${#FAILED[@]}" -gt 0 ]; then
        printf '%s: revert of %s incomplete: %d step(s) failed, the rest restored (%d changes):\n' \
            "$nic_prog" "$iface" "${#FAILED[@]}" "${#CHANGED[@]}" >&2
        printf '    %s\n' "${FAILED[@]}" >&2
        printf '%s: the state stays in %s; fix the cause (an XDP program attached: xdp-quic detach %s) and run --revert again\n' \
            "$nic_prog" "$state" "$iface" >&2
        exit 1
    fi
    BEST_EFFORT=0
    rm -f "$state" || fail "restored everything but cannot remove $state"
    say "nic-tune $iface: reverted (${#CHANGED[@]} changes), removed $state"
    [ "${#SKIPPED[@]}" -eq 0 ] || { say "not restored:"; printf '    %s\n' "${SKIPPED[@]}" 2>/dev/null || true; }
}

restart_irqbalance() {
    if nic_irqbalance_pid >/dev/null; then
        run "irqbalance restarted" 0 systemctl restart irqbalance
    fi
}

# Warns about the other interfaces' saved states: the host-wide settings each holds.
warn_other_states() {
    local f others=() later=()
    for f in "$NIC_STATE_DIR"/*.state; do
        if [ ! -e "$f" ] || [ "$f" = "$state" ]; then continue; fi
        others+=("$(basename "$f" .state)")
        if [ -e "$state" ] && [ "$f" -nt "$state" ]; then later+=("$(basename "$f" .state)"); fi
    done
    [ "${#others[@]}" -gt 0 ] || return 0
    if [ "$revert" = 1 ] && [ "${#later[@]}" -gt 0 ]; then
        printf '%s: warning: %s tuned after %s: revert %s first, or the host-wide settings (busy polling, huge pages, irqbalance) go back to what tuning %s had set\n' \
            "$nic_prog" "${later[*]}" "$iface" "${later[*]}" "$iface" >&2
    elif [ "$revert" = 0 ]; then
        printf '%s: warning: %s also tuned: the host-wide settings saved for %s are those after it; revert in the reverse order of tuning\n' \
            "$nic_prog" "${others[*]}" "$iface" >&2
    fi
}

if [ "$revert" = 1 ]; then
    warn_other_states
    do_revert
    exit 0
fi

# --- preflight: everything that can be checked before changing anything ---------------------
have_channels=0
if nic_channels "$iface"; then
    have_channels=1
    maxq=$(nic_channel_max)
    curq=$(nic_channel_count)
    [ "$queues" -le "$maxq" ] || nic_usage_error "$iface has at most $maxq queues (ethtool -l $iface), --queues $queues asked"
fi
online=$(nic_online_cpus || true)
for c in "${cpu[@]}"; do
    [[ " $online " == *" $c "* ]] || nic_usage_error "CPU $c is not online (online: ${online:-unknown})"
done
have_irqs=0
nic_queue_irqs "$iface" && have_irqs=1
ib_pid=''
if [ "$have_irqs" = 1 ] && ib_pid=$(nic_irqbalance_pid); then
    # Only the irqbalance systemd runs is restarted with the bans: another would go on.
    ib_main=''
    # (Not --value: systemd before 230 has no such option.)
    if nic_have systemctl; then ib_main=$(systemctl show -p MainPID irqbalance 2>/dev/null | sed -n 's/^MainPID=//p' || true); fi
    [ "$ib_main" = "$ib_pid" ] || nic_die "irqbalance (pid $ib_pid) is running and would move the queue IRQs, but systemd does not run it (systemctl show -p MainPID irqbalance: ${ib_main:-no answer}), so it cannot be restarted with them banned: stop irqbalance, or run it with --banirq for this NIC's IRQs, then tune again"
fi
# Huge pages the kernel would take from the free memory: at most 3/4 of MemAvailable.
if [ -n "$huge" ] && hp_cur=$(nic_read "$(nic_sysctl_path vm.nr_hugepages)") && [ "$hp_cur" -lt "$huge" ]; then
    hp_kb='' avail_kb=''
    if [ -r "$NIC_PROC/meminfo" ]; then
        while read -r k v _; do
            case $k in Hugepagesize:) hp_kb=$v ;; MemAvailable:) avail_kb=$v ;; esac
        done <"$NIC_PROC/meminfo"
    fi
    if nic_is_uint "$hp_kb" && nic_is_uint "$avail_kb" && [ $(((huge - hp_cur) * hp_kb * 4)) -gt $((avail_kb * 3)) ]; then
        nic_usage_error "--hugepages $huge adds $((huge - hp_cur)) huge pages of $hp_kb kB to the $hp_cur reserved: $(((huge - hp_cur) * hp_kb)) kB, more than 3/4 of MemAvailable ($avail_kb kB) in $NIC_PROC/meminfo"
    fi
fi

# From here on the host changes: a run stopped before the end says what it had changed.
[ "$dry" = 1 ] || trap on_exit EXIT

if [ "$dry" = 1 ]; then
    say "# dry run: nothing will be changed"
    say "# would save the current state to $state$([ -e "$state" ] && echo " (keeping the original state it already holds)")"
else
    [ -e "$state" ] || warn_other_states
    save_state
    say "# saved the state before tuning to $state"
fi

# --- 1. huge pages -------------------------------------------------------------------------
if [ -n "$huge" ]; then
    p=$(nic_sysctl_path vm.nr_hugepages)
    if cur=$(nic_read "$p"); then
        if [ "$cur" -lt "$huge" ]; then
            write_val "vm.nr_hugepages $cur -> $huge" "$p" "$huge"
            if [ "$dry" = 0 ]; then
                got=$(nic_read "$p" || echo 0)
                if [ "$got" -lt "$huge" ]; then
                    # A partial reservation is not left behind: the count goes back.
                    say "+ echo $cur > $p"
                    if { printf '%s\n' "$cur" >"$p"; } 2>/dev/null; then
                        unset 'CHANGED[${#CHANGED[@]}-1]'
                        back="the count is back to $cur"
                    else
                        back="writing $cur back to $p failed too"
                    fi
                    fail "asked the kernel for $huge huge pages, it reserved only $got ($back; memory too fragmented: reserve them at boot with hugepages=$huge on the kernel command line)"
                fi
            fi
        else
            say "  ok: $cur huge pages reserved"
        fi
    else
        note_skip "huge pages: $p not present"
    fi
fi

# --- 2. channels and the indirection table -------------------------------------------------
have_indir=0
nic_indir "$iface" && have_indir=1
if [ "$have_channels" = 1 ]; then
    if [ "$curq" -ne "$queues" ]; then
        # shellcheck disable=SC2046 # channel_cmd gives separate arguments
        {
            # The kernel refuses to remove queues a hand-set table uses: the table goes
            # to the new count first (to the driver's own for a single queue).
            if [ "$queues" -lt "$curq" ] && [ "$have_indir" = 1 ]; then
                if [ "$queues" -gt 1 ]; then
                    run "RSS indirection table -> equal $queues" 0 ethtool -X "$iface" equal "$queues"
                else
                    run "RSS indirection table -> default" 0 ethtool -X "$iface" default
                fi
            fi
            run "channels $curq -> $queues" 0 ethtool -L "$iface" $(channel_cmd "$queues")
            if [ "$queues" -gt "$curq" ] && [ "$have_indir" = 1 ] && [ "$queues" -gt 1 ]; then
                run "RSS indirection table -> equal $queues" 0 ethtool -X "$iface" equal "$queues"
            fi
        }
    else
        say "  ok: $queues queues"
        if [ "$have_indir" = 1 ] && [ "$queues" -gt 1 ] && ! nic_indir_even "$queues"; then
            run "RSS indirection table -> equal $queues" 0 ethtool -X "$iface" equal "$queues"
        fi
    fi
else
    note_skip "channels: $iface does not report channel counts (ethtool -l)"
fi
[ "$have_indir" = 1 ] || note_skip "RSS indirection table: not supported by $iface (ethtool -x)"

# --- 3. RSS hash fields --------------------------------------------------------------------
for f in udp4 udp6; do
    if v=$(nic_flow_hash "$iface" "$f"); then
        if nic_hash_is_4tuple "$v"; then
            say "  ok: $f hashes on the 4-tuple"
        elif [ "$queues" -le 1 ]; then
            say "  ok: one queue, $f hashing does not matter"
        else
            run "$f hash $v -> sdfn" 1 ethtool -N "$iface" rx-flow-hash "$f" sdfn || true
        fi
    else
        note_skip "$f RSS hash fields: not supported by $iface"
    fi
done

# --- 4. LRO and hardware GRO ---------------------------------------------------------------
for f in lro rx-gro-hw; do
    key=$f; [ "$f" = lro ] && key=large-receive-offload
    if v=$(nic_feature "$iface" "$key"); then
        case $v in
        on) run "$f on -> off" 1 ethtool -K "$iface" "$f" off || true ;;
        "on fixed") note_skip "$f: on and fixed by the driver" ;;
        *) say "  ok: $f $v" ;;
        esac
    else
        note_skip "$f: not reported by $iface"
    fi
done

# --- 5. irqbalance and 6. IRQ affinity ------------------------------------------------------
# The channel change above may have added queues (with IRQs of their own) or made the driver
# request its vectors again (renumbered): find the queue IRQs again.
if [ "$dry" = 0 ] && [ "$have_channels" = 1 ] && [ "$curq" -ne "$queues" ]; then
    have_irqs=0
    nic_queue_irqs "$iface" && have_irqs=1
elif [ "$dry" = 1 ] && [ "$have_channels" = 1 ] && [ "$queues" -gt "$curq" ]; then
    say "# dry run: the IRQs of queues $curq to $((queues - 1)) exist only after the channel change"
fi
if [ "$have_irqs" = 1 ]; then
    if [ -n "$ib_pid" ]; then
        conf=$(nic_irqbalance_conf)
        # The arguments the file had before any tune (its copy in the state), plus a ban of
        # each queue IRQ of this tune: the bans an earlier tune added (of queues no longer
        # tuned, or of IRQ numbers a reboot may have given to other devices) are not kept.
        old_args=''
        orig=$(nic_state_get "$state" irqbalance.content || echo none)
        case $orig in
        none)
            if [ -f "$conf" ]; then
                old_args=$(sed -n 's/^[[:space:]]*IRQBALANCE_ARGS=//p' "$conf" | tail -n 1)
            fi
            ;;
        absent) ;;
        *) old_args=$(base64 -d <<<"$orig" 2>/dev/null | sed -n 's/^[[:space:]]*IRQBALANCE_ARGS=//p' | tail -n 1) ;;
        esac
        old_args=${old_args#[\"\']} old_args=${old_args%[\"\']}
        read -r -a words <<<"$old_args"
        orig_banned=' '
        for a in "${words[@]}"; do
            case $a in --banirq=*) orig_banned+="${a#--banirq=} " ;; esac
        done
        add=()
        for ((q = 0; q < queues; q++)); do
            irq=${QIRQ[q]:-}
            if [ -n "$irq" ] && [[ $orig_banned != *" $irq "* ]]; then add+=("--banirq=$irq"); fi
        done
        new_args="${old_args:+$old_args }${add[*]}"
        cur_args=''
        if [ -f "$conf" ]; then
            cur_args=$(sed -n 's/^[[:space:]]*IRQBALANCE_ARGS=//p' "$conf" | tail -n 1)
            cur_args=${cur_args#[\"\']} cur_args=${cur_args%[\"\']}
        fi
        banned=$(nic_irqbalance_banned "$ib_pid")
        running_ok=1
        for ((q = 0; q < queues; q++)); do
            irq=${QIRQ[q]:-}
            if [ -n "$irq" ] && [[ $banned != *" $irq "* ]]; then running_ok=0; fi
        done
        if [ "$cur_args" = "$new_args" ] && [ "$running_ok" = 1 ]; then
            say "  ok: irqbalance already leaves the queue IRQs alone"
        else
            if [ "$cur_args" != "$new_args" ]; then
                say "+ set IRQBALANCE_ARGS=\"$new_args\" in $conf"
                if [ "$dry" = 0 ]; then
                    tmp=$(mktemp) || fail "cannot create a temporary file"
                    {
                        if [ -f "$conf" ]; then
                            grep -v -e '^[[:space:]]*IRQBALANCE_ARGS=' -e '^# xdp-quic nic-tune.sh ' "$conf" || true
                        fi
                        echo "# xdp-quic nic-tune.sh $iface: keep irqbalance off its queue IRQs (undo: nic-tune.sh $iface --revert)"
                        echo "IRQBALANCE_ARGS=\"$new_args\""
                    } >"$tmp"
                    if ! { mkdir -p "$(dirname "$conf")" && cat "$tmp" >"$conf"; }; then
                        rm -f "$tmp"
                        fail "cannot write $conf"
                    fi
                    rm -f "$tmp"
                    CHANGED+=("IRQBALANCE_ARGS in $conf")
                fi
            fi
            run "irqbalance restarted with ${add[*]}" 0 systemctl restart irqbalance
        fi
    fi
    for ((q = 0; q < queues; q++)); do
        irq=${QIRQ[q]:-}
        if [ -z "$irq" ]; then
            note_skip "queue $q: no IRQ found in $NIC_PROC/interrupts"
            continue
        fi
        cur=$(nic_irq_affinity "$irq" || echo "?")
        if [ "$cur" = "${cpu[q]}" ]; then
            say "  ok: queue $q IRQ $irq on CPU $cur"
        else
            write_val "queue $q IRQ $irq affinity $cur -> ${cpu[q]}" "$NIC_PROC/irq/$irq/smp_affinity_list" "${cpu[q]}" \
                "a kernel-managed IRQ keeps the affinity its driver gave it"
        fi
    done
else
    note_skip "IRQ affinity: $iface has no per-queue IRQs in $NIC_PROC/interrupts"
fi

# --- 7. busy polling -----------------------------------------------------------------------
if [ -n "$busy" ]; then
    for key in net.core.busy_poll net.core.busy_read; do
        p=$(nic_sysctl_path "$key")
        if cur=$(nic_read "$p"); then
            if [ "$cur" = "$busy" ]; then say "  ok: $key = $busy"; else write_val "$key $cur -> $busy" "$p" "$busy"; fi
        else
            note_skip "$key: not visible here (it exists only in the initial network namespace)"
        fi
    done
    for key in napi_defer_hard_irqs gro_flush_timeout; do
        p=$NIC_SYS/class/net/$iface/$key
        [ "$key" = napi_defer_hard_irqs ] && want=$defer || want=$groft
        if cur=$(nic_read "$p"); then
            if [ "$cur" = "$want" ]; then say "  ok: $key = $want"; else write_val "$key $cur -> $want" "$p" "$want"; fi
        else
            note_skip "$key: $p not present"
        fi
    done
fi

if [ "$dry" = 1 ]; then
    say "nic-tune $iface: dry run; nothing changed"
else
    say "nic-tune $iface: done, ${#CHANGED[@]} changes; undo with: $0 $iface --revert"
fi
[ "${#SKIPPED[@]}" -eq 0 ] || { say "unsupported or skipped:"; printf '    %s\n' "${SKIPPED[@]}" 2>/dev/null || true; }
