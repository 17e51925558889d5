# shellcheck shell=bash disable=SC2034
# (SC2034: the globals set here are read by the scripts that source this file)
# Shared helpers of scripts/nic-check.sh and scripts/nic-tune.sh. Sourced, never run.
#
# Every path the scripts read or write is taken from the environment, so that the tests can
# point them at a fake tree:
#   NIC_PROC       procfs root             (default /proc)
#   NIC_SYS        sysfs root              (default /sys)
#   NIC_ETC        configuration root      (default /etc; irqbalance's environment file)
#   NIC_STATE_DIR  where nic-tune.sh saves the state it changed (default /var/lib/xdp-quic/nic-tune)
# Tools (ethtool, ip, systemctl) are found on PATH, so fakes can stand in for them.

NIC_PROC=${NIC_PROC:-/proc}
NIC_SYS=${NIC_SYS:-/sys}
NIC_ETC=${NIC_ETC:-/etc}
NIC_STATE_DIR=${NIC_STATE_DIR:-/var/lib/xdp-quic/nic-tune}

# Native XDP without multi-buffer support needs the whole frame in one page: headroom
# (XDP_PACKET_HEADROOM, 256 bytes) + Ethernet header, one VLAN tag and FCS (22) + MTU + the tail
# the kernel keeps for skb_shared_info (320 bytes on x86-64).
NIC_XDP_HEADROOM=256
NIC_XDP_TAILROOM=320
NIC_XDP_L2=22

nic_prog=${0##*/}

nic_die() { # message [exit code]
    printf '%s: error: %s\n' "$nic_prog" "$1" >&2
    exit "${2:-1}"
}

nic_usage_error() { # message
    printf '%s: %s\n' "$nic_prog" "$1" >&2
    printf 'Try: %s --help\n' "$nic_prog" >&2
    exit 2
}

nic_is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "${#1}" -le 9 ]; }

nic_valid_iface_name() { [[ $1 =~ ^[A-Za-z0-9_.-]{1,15}$ ]] && [ "$1" != . ] && [ "$1" != .. ]; }

# Checks the name and that the interface exists; exits with a clear error otherwise.
nic_require_iface() { # iface
    nic_valid_iface_name "$1" || nic_usage_error "invalid interface name: '$1'"
    [ -e "$NIC_SYS/class/net/$1" ] ||
        nic_die "no such network interface: $1 (not in $NIC_SYS/class/net; wrong name or network namespace?)"
}

# Expands a CPU list such as "0-3,8,10-11" into "0 1 2 3 8 10 11". Fails on bad syntax.
nic_expand_cpulist() { # list
    local list=$1 part a b out=() i
    [[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
    IFS=, read -r -a parts <<<"$list"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            a=${part%-*} b=${part#*-}
            nic_is_uint "$a" && nic_is_uint "$b" && [ "$((10#$a))" -le "$((10#$b))" ] || return 1
            # The kernel's CPU numbers stay below 8192 (NR_CPUS), as the CLI's --cpus do.
            [ "$((10#$b))" -lt 8192 ] || return 1
            for ((i = 10#$a; i <= 10#$b; i++)); do out+=("$i"); done
        else
            nic_is_uint "$part" && [ "$((10#$part))" -lt 8192 ] || return 1
            out+=("$((10#$part))")
        fi
    done
    printf '%s\n' "${out[*]}"
}

# Online CPUs, space separated.
nic_online_cpus() {
    local f=$NIC_SYS/devices/system/cpu/online
    [ -r "$f" ] || return 1
    nic_expand_cpulist "$(tr -d '[:space:]' <"$f")"
}

# First line of a file, or nothing (status 1) when it cannot be read.
# The kernel's id of this boot ("unknown" where it does not tell): IRQ numbers are only
# meaningful within one boot.
nic_boot_id() { nic_read "$NIC_PROC/sys/kernel/random/boot_id" 2>/dev/null || echo unknown; }

nic_read() { # path
    local v
    [ -r "$1" ] || return 1
    IFS= read -r v <"$1" || [ -n "${v:-}" ] || return 1
    printf '%s\n' "$v"
}

# A sysctl as seen through $NIC_PROC ("net.core.busy_poll" -> $NIC_PROC/sys/net/core/busy_poll).
nic_sysctl_path() { printf '%s/sys/%s\n' "$NIC_PROC" "${1//.//}"; }

# Shows a command the way a shell would read it back.
nic_quote_cmd() {
    local out=() a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("$(printf '%q' "$a")"); fi
    done
    printf '%s\n' "${out[*]}"
}

# --- ethtool -------------------------------------------------------------------------------

nic_have() { command -v "$1" >/dev/null 2>&1; }

# ethtool -i: sets NIC_DRIVER and NIC_BUSINFO.
nic_driver_info() { # iface
    local out line
    NIC_DRIVER=unknown NIC_BUSINFO=''
    out=$(ethtool -i "$1" 2>/dev/null) || return 1
    while IFS= read -r line; do
        case $line in
        driver:*) NIC_DRIVER=${line#driver: } ;;
        bus-info:*) NIC_BUSINFO=${line#bus-info: } ;;
        esac
    done <<<"$out"
    [ -n "$NIC_DRIVER" ] || NIC_DRIVER=unknown
}

# ethtool -l: sets CH_{MAX,CUR}_{RX,TX,COMB} ("" when the driver says n/a) and CH_KIND:
# "combined" when the driver has combined channels, "rxtx" when only separate RX/TX ones
# (veth), "" when channels cannot be read or set (status 1).
nic_channels() { # iface
    local out line section='' key val
    CH_MAX_RX='' CH_MAX_TX='' CH_MAX_COMB='' CH_CUR_RX='' CH_CUR_TX='' CH_CUR_COMB='' CH_KIND=''
    out=$(ethtool -l "$1" 2>/dev/null) || return 1
    while IFS= read -r line; do
        case $line in
        Pre-set*) section=MAX ;;
        Current*) section=CUR ;;
        RX:* | TX:* | Combined:*)
            key=${line%%:*} val=${line#*:}
            val=${val//[[:space:]]/}
            [[ $val =~ ^[0-9]+$ ]] || val=
            [ "$val" = 0 ] && [ "$section" = MAX ] && val=
            case $key in RX) key=RX ;; TX) key=TX ;; Combined) key=COMB ;; esac
            [ -n "$section" ] && printf -v "CH_${section}_${key}" '%s' "$val"
            ;;
        esac
    done <<<"$out"
    if [ -n "$CH_MAX_COMB" ]; then
        CH_KIND=combined
    elif [ -n "$CH_MAX_RX" ] && [ -n "$CH_MAX_TX" ]; then
        CH_KIND=rxtx
    else
        return 1
    fi
}

# Current and maximum queue count in the model the driver uses.
nic_channel_count() {
    case $CH_KIND in
    combined) printf '%s\n' "${CH_CUR_COMB:-0}" ;;
    rxtx) printf '%s\n' "${CH_CUR_RX:-0}" ;;
    esac
}
nic_channel_max() {
    case $CH_KIND in
    combined) printf '%s\n' "$CH_MAX_COMB" ;;
    rxtx) if [ "$CH_MAX_RX" -lt "$CH_MAX_TX" ]; then printf '%s\n' "$CH_MAX_RX"; else printf '%s\n' "$CH_MAX_TX"; fi ;;
    esac
}

# ethtool -n IF rx-flow-hash FLOW, as ethtool -N letters (m v t s d f n), "none" when the
# driver hashes nothing, "r" when it discards. Status 1 when unsupported.
nic_flow_hash() { # iface flow
    local out line letters=
    out=$(ethtool -n "$1" rx-flow-hash "$2" 2>/dev/null) || return 1
    [[ $out == *"flows use these fields"* ]] || return 1
    while IFS= read -r line; do
        case $line in
        L2DA*) letters+=m ;;
        "VLAN tag"*) letters+=v ;;
        "L3 proto"*) letters+=t ;;
        "IP SA"*) letters+=s ;;
        "IP DA"*) letters+=d ;;
        "L4 bytes 0 & 1"*) letters+=f ;;
        "L4 bytes 2 & 3"*) letters+=n ;;
        *discard*) letters=r ;;
        esac
    done <<<"$out"
    printf '%s\n' "${letters:-none}"
}

nic_hash_describe() { # letters
    local l=$1 out=()
    [ "$l" = none ] && { echo "nothing (every flow on one queue)"; return; }
    [ "$l" = r ] && { echo "discard"; return; }
    [[ $l == *m* ]] && out+=("L2 dst")
    [[ $l == *v* ]] && out+=("VLAN")
    [[ $l == *t* ]] && out+=("L3 proto")
    [[ $l == *s* ]] && out+=("src IP")
    [[ $l == *d* ]] && out+=("dst IP")
    [[ $l == *f* ]] && out+=("src port")
    [[ $l == *n* ]] && out+=("dst port")
    local joined
    printf -v joined '%s, ' "${out[@]}"
    printf '%s\n' "${joined%, }"
}

nic_hash_is_4tuple() { [[ $1 == *s* && $1 == *d* && $1 == *f* && $1 == *n* ]]; }

# ethtool -x: sets INDIR (array of queue numbers). Status 1 when unsupported.
nic_indir() { # iface
    local out line rest
    INDIR=()
    out=$(ethtool -x "$1" 2>/dev/null) || return 1
    while IFS= read -r line; do
        [[ $line =~ ^[[:space:]]*[0-9]+:[[:space:]] ]] || continue
        rest=${line#*:}
        # shellcheck disable=SC2206 # word splitting of the numbers is intended
        INDIR+=($rest)
    done <<<"$out"
    [ "${#INDIR[@]}" -gt 0 ]
}

# Entries per queue for queues 0..n-1 of INDIR: sets INDIR_COUNTS ("c0 c1 ...") and
# INDIR_OUTSIDE (entries that point at queue n or above).
nic_indir_counts() { # n
    local n=$1 q counts=() i
    INDIR_OUTSIDE=0
    for ((i = 0; i < n; i++)); do counts[i]=0; done
    for q in "${INDIR[@]}"; do
        if [ "$q" -lt "$n" ]; then counts[q]=$((counts[q] + 1)); else INDIR_OUTSIDE=$((INDIR_OUTSIDE + 1)); fi
    done
    INDIR_COUNTS=${counts[*]}
}

# True when INDIR uses exactly queues 0..n-1, each within one entry of the others.
nic_indir_even() { # n
    local min max c
    nic_indir_counts "$1"
    [ "$INDIR_OUTSIDE" -eq 0 ] || return 1
    min=999999 max=0
    for c in $INDIR_COUNTS; do
        [ "$c" -lt "$min" ] && min=$c
        [ "$c" -gt "$max" ] && max=$c
    done
    [ "$min" -gt 0 ] && [ $((max - min)) -le 1 ]
}

# True when INDIR is entry i -> i % n (what ethtool "equal n" and most drivers' default write).
nic_indir_is_modulo() { # n
    local i
    for ((i = 0; i < ${#INDIR[@]}; i++)); do
        [ "${INDIR[i]}" -eq $((i % $1)) ] || return 1
    done
}

# ethtool -k: prints "on" or "off", with " fixed" appended when the driver does not allow
# changing it. Status 1 when the feature is not listed.
nic_feature() { # iface feature-name
    local out line
    out=$(ethtool -k "$1" 2>/dev/null) || return 1
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]*$2:[[:space:]]+(on|off)([[:space:]]+\[(fixed|requested[^]]*)\])? ]]; then
            if [ "${BASH_REMATCH[3]}" = fixed ]; then echo "${BASH_REMATCH[1]} fixed"; else echo "${BASH_REMATCH[1]}"; fi
            return 0
        fi
    done <<<"$out"
    return 1
}

# --- IRQs ----------------------------------------------------------------------------------

# Queue index of an IRQ action name, if it looks like the receive (or combined) IRQ of a queue.
nic_irq_queue_of() { # iface name
    local ifc=$1 name=$2 lower
    lower=${name,,}
    lower=${lower%%@*}
    if [[ $lower =~ (txrx|comp)[-_.]?([0-9]+)$ ]] ||
        [[ $lower =~ (^|[-_.])(rx|input|fp|queue|q)[-_.]?([0-9]+)$ ]] ||
        [[ $lower =~ ^${ifc,,}-([0-9]+)$ ]]; then
        printf '%s\n' "${BASH_REMATCH[${#BASH_REMATCH[@]}-1]}"
        return 0
    fi
    return 1
}

# The NIC's per-queue IRQs: sets QIRQ (array, queue -> IRQ number) and QIRQ_NAME. An IRQ
# belongs to the NIC when its number is among the device's MSI IRQs (the device's or its
# parent's msi_irqs, for virtio) or its name carries the interface name.
nic_queue_irqs() { # iface
    local ifc=$1 dev msi=" " f line irq name q esc
    QIRQ=() QIRQ_NAME=()
    dev=$NIC_SYS/class/net/$ifc/device
    for f in "$dev"/msi_irqs/* "$dev"/../msi_irqs/*; do
        [ -e "$f" ] && msi+="${f##*/} "
    done
    esc=${ifc//./\\.}
    [ -r "$NIC_PROC/interrupts" ] || return 1
    while IFS= read -r line; do
        [[ $line =~ ^[[:space:]]*([0-9]+): ]] || continue
        irq=${BASH_REMATCH[1]}
        name=${line##*[[:space:]]}
        if [[ $msi == *" $irq "* ]] || [[ $name =~ (^|[-_@:])${esc}([-_@:.]|$) ]]; then
            q=$(nic_irq_queue_of "$ifc" "$name") || continue
            [ -n "${QIRQ[q]:-}" ] && continue
            QIRQ[q]=$irq
            QIRQ_NAME[q]=$name
        fi
    done <"$NIC_PROC/interrupts"
    [ "${#QIRQ[@]}" -gt 0 ]
}

nic_irq_affinity() { nic_read "$NIC_PROC/irq/$1/smp_affinity_list"; }

# --- irqbalance ----------------------------------------------------------------------------

# PID of a running irqbalance, found through $NIC_PROC/*/comm.
nic_irqbalance_pid() {
    local f comm
    for f in "$NIC_PROC"/[0-9]*/comm; do
        [ -r "$f" ] || continue
        comm=$(nic_read "$f" 2>/dev/null) || continue
        if [ "$comm" = irqbalance ]; then
            f=${f%/comm}
            printf '%s\n' "${f##*/}"
            return 0
        fi
    done
    return 1
}

# IRQs the running irqbalance was told to leave alone (--banirq=N, --banirq N, -i N).
nic_irqbalance_banned() { # pid
    local args=() a next='' out=' '
    mapfile -d '' -t args <"$NIC_PROC/$1/cmdline" 2>/dev/null || true
    for a in "${args[@]}"; do
        if [ -n "$next" ]; then out+="$a " next=; continue; fi
        case $a in
        --banirq=*) out+="${a#--banirq=} " ;;
        --banirq | -i) next=1 ;;
        -i[0-9]*) out+="${a#-i} " ;;
        esac
    done
    printf '%s\n' "$out"
}

# The environment file irqbalance's service reads IRQBALANCE_ARGS from.
nic_irqbalance_conf() {
    if [ -f "$NIC_ETC/sysconfig/irqbalance" ]; then
        echo "$NIC_ETC/sysconfig/irqbalance"
    elif [ -f "$NIC_ETC/default/irqbalance" ] || [ ! -d "$NIC_ETC/sysconfig" ]; then
        echo "$NIC_ETC/default/irqbalance"
    else
        echo "$NIC_ETC/sysconfig/irqbalance"
    fi
}

# --- XDP -----------------------------------------------------------------------------------

# Sets XDP_MODE (none|native|generic|offload|multi) and XDP_PROG ("id N name X" or "").
nic_xdp_state() { # iface
    local out first
    XDP_MODE=none XDP_PROG=''
    out=$(ip -d link show dev "$1" 2>/dev/null) || return 1
    first=${out%%$'\n'*}
    case " $first " in
    *" xdpgeneric "*) XDP_MODE=generic ;;
    *" xdpoffload "*) XDP_MODE=offload ;;
    *" xdpmulti "*) XDP_MODE=multi ;;
    *" xdp "*) XDP_MODE=native ;;
    esac
    if [[ $out =~ prog/xdp[a-z]*\ (id\ [0-9]+(\ name\ [^ ]+)?) ]]; then XDP_PROG=${BASH_REMATCH[1]}; fi
}

nic_page_size() { getconf PAGESIZE 2>/dev/null || echo 4096; }

nic_xdp_max_mtu() { echo $(($(nic_page_size) - NIC_XDP_HEADROOM - NIC_XDP_TAILROOM - NIC_XDP_L2)); }

# --- saved state ---------------------------------------------------------------------------
# One "key=value" per line; values never hold a newline. Read without eval.

nic_state_file() { printf '%s/%s.state\n' "$NIC_STATE_DIR" "$1"; }

# Value of key in a state file (status 1 when absent).
nic_state_get() { # file key
    local line
    [ -r "$1" ] || return 1
    while IFS= read -r line; do
        if [ "${line%%=*}" = "$2" ]; then
            printf '%s\n' "${line#*=}"
            return 0
        fi
    done <"$1"
    return 1
}

# --- JSON ----------------------------------------------------------------------------------

nic_json_str() { # string
    local s=$1 out='' c i code
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
        '"') out+='\"' ;;
        "\\") out+="\\\\" ;;
        $'\n') out+='\n' ;;
        $'\t') out+='\t' ;;
        $'\r') out+='\r' ;;
        *)
            printf -v code '%d' "'$c"
            if [ "$code" -ge 0 ] && [ "$code" -lt 32 ]; then
                printf -v c '\\u%04x' "$code"
            fi
            out+=$c
            ;;
        esac
    done
    printf '"%s"' "$out"
}
