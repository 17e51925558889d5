#!/usr/bin/env bash
# shellcheck disable=SC2016 # expect ... eval '...' expands when the check runs, on purpose
# Tests of scripts/nic-check.sh and scripts/nic-tune.sh:
#   1. shellcheck on every script they are made of (required when CI is set);
#   2. a simulated 8-queue NIC: fake ethtool/ip/systemctl on PATH and fake /proc, /sys, /etc
#      trees (scripts/tests/fixtures/): exact commands, saved state, byte-exact revert;
#   3. a real veth pair in a network namespace of its own (needs root; required when CI is
#      set): what veth supports is done, the rest is reported unsupported;
#   4. scripts/testbed.sh: argument errors, and (root) up/down in namespaces of its own.
# Ends with "nic-scripts: N passed, M failed[, K skipped]"; exits non-zero if any failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scripts=$(cd "$here/.." && pwd)
fixtures=$here/fixtures
check=$scripts/nic-check.sh
tune=$scripts/nic-tune.sh
testbed=$scripts/testbed.sh

pass=0 failed=0 skipped=0
ok() { pass=$((pass + 1)); printf 'ok    %s\n' "$1"; }
not_ok() { # name [details]
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/^/      | /' | head -n 40; fi
}
skip() { skipped=$((skipped + 1)); printf 'skip  %s (%s)\n' "$1" "$2"; }
# expect NAME CONDITION-COMMAND... : passes when the command succeeds.
expect() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name" "${detail:-}"; fi
    detail=''
}
detail=''

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nic-scripts-test.XXXXXX")
netns='' tb_ns=()
cleanup() {
    local n
    if [ -n "$netns" ]; then ip netns del "$netns" 2>/dev/null || true; fi
    for n in ${tb_ns[@]+"${tb_ns[@]}"}; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- 1. shellcheck -------------------------------------------------------------------------
sc_files=("$scripts/nic-check.sh" "$scripts/nic-tune.sh" "$scripts/lib/nic-common.sh" "$here/nic_scripts_test.sh" "$testbed"
    "$fixtures/make-fake-nic.sh" "$fixtures/bin/ethtool" "$fixtures/bin/ip" "$fixtures/bin/systemctl")
if command -v shellcheck >/dev/null 2>&1; then
    if out=$(cd "$scripts/.." && shellcheck -x "${sc_files[@]}" 2>&1); then ok "shellcheck clean (${#sc_files[@]} files)"; else not_ok "shellcheck clean" "$out"; fi
elif [ -n "${CI:-}" ]; then
    not_ok "shellcheck clean" "shellcheck is not installed (apt-get install shellcheck)"
else
    skip "shellcheck clean" "shellcheck not installed"
fi

command -v python3 >/dev/null 2>&1 || { not_ok "python3 present (validates --json)"; }

# --- 2. simulated 8-queue NIC ---------------------------------------------------------------
F=$tmp/fake
fk() { # runs a command against the fake host
    NIC_PROC=$F/proc NIC_SYS=$F/sys NIC_ETC=$F/etc NIC_STATE_DIR=$F/state FAKE_NIC=$F/nic \
        PATH="$fixtures/bin:$PATH" "$@"
}
new_fake() {
    rm -rf "$F" "$tmp/snap"
    bash "$fixtures/make-fake-nic.sh" "$F" && cp -a "$F" "$tmp/snap"
}
# The fake tree equals the snapshot taken when it was made (logs and state dir aside).
same_tree() {
    detail=$(diff -r -x calls.log -x changes.log -x state "$tmp/snap" "$F" 2>&1) || return 1
}
changes() { cat "$F/nic/changes.log" 2>/dev/null; }
plus_lines() { grep '^+ ' "$1" | sed "s#$F#FAKE#g"; }
json_ok() { python3 -m json.tool "$1" >/dev/null 2>&1; }
# ids of the findings of one level in a --json output
json_ids() { # file level
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(f["id"] for f in d["findings"] if f["level"]==sys.argv[2]))' "$1" "$2"
}
json_fix() { # file id
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([f["fix"] for f in d["findings"] if f["id"]==sys.argv[2]][0])' "$1" "$2"
}
eq() { # actual expected: sets detail on mismatch
    [ "$1" = "$2" ] && return 0
    detail=$(printf 'expected:\n%s\nactual:\n%s' "$2" "$1")
    return 1
}

new_fake || { not_ok "build the fake NIC tree"; }

# check before tuning
fk "$check" ens1f0 --json >"$tmp/c1.json" 2>"$tmp/c1.err"
rc=$?
expect "fake: check exits 3 when there are warnings" eq "$rc" 3
expect "fake: check --json is valid JSON" json_ok "$tmp/c1.json"
fk "$check" ens1f0 --queues 08 --json >"$tmp/c08.json" 2>&1
expect "fake: check --queues 08 reads decimal 8, valid JSON" eval \
    'json_ok "$tmp/c08.json" && grep -q "\"queues\":8" "$tmp/c08.json"'
expect "fake: check warns about UDP hashing, IRQs, irqbalance and LRO" \
    eq "$(json_ids "$tmp/c1.json" warn)" "rss-udp4 rss-udp6 irq-q0 irq-q1 irq-q2 irq-q3 irq-q4 irq-q5 irq-q6 irq-q7 irqbalance lro"
expect "fake: check gives the fixing commands" \
    eq "$(json_fix "$tmp/c1.json" rss-udp6) | $(json_fix "$tmp/c1.json" lro) | $(json_fix "$tmp/c1.json" irq-q3)" \
    "ethtool -N ens1f0 rx-flow-hash udp6 sdfn | ethtool -K ens1f0 lro off | echo 3 > $F/proc/irq/124/smp_affinity_list"
expect "fake: check reports driver and queue counts" \
    eq "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=[f for f in d["findings"] if f["id"]=="channels"][0]; print(d["driver"], c["value"])' "$tmp/c1.json")" \
    "ice combined 8 of max 8"
fk "$check" ens1f0 >"$tmp/c1.txt" 2>&1
expect "fake: check text output ends with the warning count" grep -q '^nic-check ens1f0: 12 warnings' "$tmp/c1.txt"
expect "fake: check changed nothing" same_tree

tune_args=(ens1f0 --queues 4 --cpus 2-5 --busy-poll 50 --hugepages 64)
expected_plus="+ echo 64 > FAKE/proc/sys/vm/nr_hugepages
+ ethtool -X ens1f0 equal 4
+ ethtool -L ens1f0 combined 4
+ ethtool -N ens1f0 rx-flow-hash udp4 sdfn
+ ethtool -N ens1f0 rx-flow-hash udp6 sdfn
+ ethtool -K ens1f0 lro off
+ set IRQBALANCE_ARGS=\"--banirq=121 --banirq=122 --banirq=123 --banirq=124\" in FAKE/etc/default/irqbalance
+ systemctl restart irqbalance
+ echo 2 > FAKE/proc/irq/121/smp_affinity_list
+ echo 3 > FAKE/proc/irq/122/smp_affinity_list
+ echo 4 > FAKE/proc/irq/123/smp_affinity_list
+ echo 5 > FAKE/proc/irq/124/smp_affinity_list
+ echo 50 > FAKE/proc/sys/net/core/busy_poll
+ echo 50 > FAKE/proc/sys/net/core/busy_read
+ echo 2 > FAKE/sys/class/net/ens1f0/napi_defer_hard_irqs
+ echo 200000 > FAKE/sys/class/net/ens1f0/gro_flush_timeout"
expected_ethtool="ethtool -X ens1f0 equal 4
ethtool -L ens1f0 combined 4
ethtool -N ens1f0 rx-flow-hash udp4 sdfn
ethtool -N ens1f0 rx-flow-hash udp6 sdfn
ethtool -K ens1f0 lro off
systemctl restart irqbalance"

# dry run
fk "$tune" "${tune_args[@]}" --dry-run >"$tmp/dry.out" 2>&1
rc=$?
expect "fake: tune --dry-run exits 0" eq "$rc" 0
expect "fake: tune --dry-run prints every command" eq "$(plus_lines "$tmp/dry.out")" "$expected_plus"
expect "fake: tune --dry-run changes nothing (tree, no ethtool change, no state)" \
    eval 'same_tree && [ -z "$(changes)" ] && [ ! -e "$F/state" ]'

# real run
fk "$tune" "${tune_args[@]}" >"$tmp/tune.out" 2>&1
rc=$?
detail=$(cat "$tmp/tune.out")
expect "fake: tune exits 0" eq "$rc" 0
expect "fake: tune prints the same commands as its dry run" eq "$(plus_lines "$tmp/tune.out")" "$expected_plus"
expect "fake: tune issues exactly these ethtool/systemctl commands" eq "$(changes)" "$expected_ethtool"
readall() { local f out=''; for f in "$@"; do out+="$(cat "$F/$f") "; done; printf '%s' "${out% }"; }
expect "fake: tune wrote IRQ affinities, sysctls, NAPI settings, huge pages" \
    eq "$(readall proc/irq/121/smp_affinity_list proc/irq/122/smp_affinity_list proc/irq/123/smp_affinity_list proc/irq/124/smp_affinity_list proc/irq/125/smp_affinity_list proc/sys/net/core/busy_poll proc/sys/net/core/busy_read sys/class/net/ens1f0/napi_defer_hard_irqs sys/class/net/ens1f0/gro_flush_timeout proc/sys/vm/nr_hugepages)" \
    "2 3 4 5 0-7 50 50 2 200000 64"
expect "fake: tune left the other port (ens1f1) alone" \
    eq "$(readall proc/irq/141/smp_affinity_list nic/ens1f1/combined nic/ens1f1/hash_udp4 sys/class/net/ens1f1/napi_defer_hard_irqs)" "0-7 8 sd 0"
expect "fake: tune set the fake NIC (4 queues, 4-tuple, table equal 4, LRO off)" \
    eq "$(readall nic/ens1f0/combined nic/ens1f0/hash_udp4 nic/ens1f0/hash_udp6 nic/ens1f0/indir_configured) $(cut -d' ' -f1-6 "$F/nic/ens1f0/indir") $(grep -c 'large-receive-offload: off' "$F/nic/ens1f0/features")" \
    "4 sdfn sdfn 1 0 1 2 3 0 1 1"
expect "fake: irqbalance restarted with the queue IRQs banned" \
    eq "$(tr '\0' ' ' <"$F/proc/4242/cmdline")" "/usr/sbin/irqbalance --foreground --banirq=121 --banirq=122 --banirq=123 --banirq=124 "
state=$F/state/ens1f0.state
expected_state="version=1
iface=ens1f0
boot_id=unknown
channels.kind=combined
channels.combined=8
indir=$(for ((i = 0; i < 128; i++)); do printf '%s ' $((i % 8)); done | sed 's/ $//')
hash.udp4=sd
hash.udp6=sd
feature.lro=on
feature.rx-gro-hw=off-fixed
irq.121=0-7
irq.122=0-7
irq.123=0-7
irq.124=0-7
irq.125=0-7
irq.126=0-7
irq.127=0-7
irq.128=0-7
irqbalance.conf=$F/etc/default/irqbalance
irqbalance.content=$(base64 -w0 <"$tmp/snap/etc/default/irqbalance")
sysctl.net.core.busy_poll=0
sysctl.net.core.busy_read=0
sysctl.vm.nr_hugepages=0
sys.napi_defer_hard_irqs=0
sys.gro_flush_timeout=0
target.queues=4
target.cpus=2 3 4 5
target.busy_poll=50
target.napi_defer_hard_irqs=2
target.gro_flush_timeout=200000
target.hugepages=64"
expect "fake: the saved state holds the state before tuning" eq "$(grep -v '^saved_at=' "$state" 2>&1)" "$expected_state"

fk "$check" ens1f0 --json >"$tmp/c2.json" 2>&1
rc=$?
expect "fake: check after tune: no warning, exit 0" eval '[ "$rc" = 0 ] && [ -z "$(json_ids "$tmp/c2.json" warn)" ]'
expect "fake: check notes worker CPUs off the NIC's NUMA node" \
    grep -q "worker CPUs 4 5 are not on the NIC's NUMA node 0 (local CPUs: 0-3)" "$tmp/c2.json"

# tuning again keeps the original state
cp "$state" "$tmp/state1"
fk "$tune" ens1f0 --queues 2 --cpus 0,1 >"$tmp/tune2.out" 2>&1
rc=$?
expect "fake: tune again exits 0" eq "$rc" 0
expect "fake: tune again keeps the original saved state, updates the target" \
    eq "$(grep -v '^saved_at=\|^target' "$state")|$(grep '^target' "$state" | tr '\n' ' ')" \
    "$(grep -v '^saved_at=\|^target' "$tmp/state1")|target.queues=2 target.cpus=0 1 "
fk "$check" ens1f0 >"$tmp/c3.txt" 2>&1
expect "fake: check after the second tune: no warning" eq "$?" 0

# revert
: >"$F/nic/changes.log"
fk "$tune" ens1f0 --revert --dry-run >"$tmp/rdry.out" 2>&1
expect "fake: revert --dry-run changes nothing and keeps the state" eval '[ -z "$(changes)" ] && [ -e "$state" ]'
# Another NIC tuned later: its saved host-wide settings are ens1f0's tuned ones.
echo "iface=eth9" >"$F/state/eth9.state" && touch -d '+1 minute' "$F/state/eth9.state"
fk "$tune" ens1f0 --revert --dry-run >"$tmp/rdry2.out" 2>&1
detail=$(cat "$tmp/rdry2.out")
expect "fake: revert warns of a NIC tuned after this one (host-wide settings)" \
    grep -q "warning: eth9 tuned after ens1f0: revert eth9 first" "$tmp/rdry2.out"
rm -f "$F/state/eth9.state"
fk "$tune" ens1f0 --revert >"$tmp/revert.out" 2>&1
rc=$?
detail=$(cat "$tmp/revert.out")
expect "fake: revert exits 0" eq "$rc" 0
expect "fake: revert issues exactly these commands, in this order" eq "$(changes)" "ethtool -K ens1f0 lro on
ethtool -N ens1f0 rx-flow-hash udp6 sd
ethtool -N ens1f0 rx-flow-hash udp4 sd
ethtool -X ens1f0 default
ethtool -L ens1f0 combined 8
systemctl restart irqbalance"
expect "fake: revert dry run printed what revert did" eq "$(plus_lines "$tmp/rdry.out" | grep -v '^+ rm ')" "$(plus_lines "$tmp/revert.out")"
expect "fake: revert restores the fake /proc, /sys, /etc and NIC byte for byte" same_tree
expect "fake: revert removes the saved state" test ! -e "$state"
fk "$tune" ens1f0 --revert >"$tmp/r2.out" 2>&1
rc=$?
expect "fake: revert without saved state fails clearly" eval '[ "$rc" = 1 ] && grep -q "no saved state" "$tmp/r2.out"'

# Down to one queue after a tune that set the table by hand: the table goes back to the
# driver's own first (the kernel refuses to remove queues a hand-set table uses).
new_fake
fk "$tune" ens1f0 --queues 4 --cpus 4-7 >"$tmp/q1a.out" 2>&1
fk "$tune" ens1f0 --queues 1 --cpus 0 >"$tmp/q1b.out" 2>&1
rc=$?
detail=$(cat "$tmp/q1b.out")
expect "fake: tune from 4 queues down to 1 exits 0" eq "$rc" 0
fk "$tune" ens1f0 --revert >"$tmp/q1c.out" 2>&1
rc=$?
detail=$(cat "$tmp/q1c.out")
expect "fake: revert after 4 then 1 queue exits 0" eq "$rc" 0
expect "fake: revert after 4 then 1 queue restores the fake host byte for byte" same_tree

# A driver that requests its queue vectors again on a channel change (ice with dynamic
# MSI-X): tune finds the queue IRQs again after `ethtool -L`, and revert restores the
# channels before the saved affinities (of IRQs that exist again only then).
new_fake
echo 1 >"$F/proc/irq/121/smp_affinity_list"
FAKE_RENUMBER_IRQS=100 fk "$tune" ens1f0 --queues 4 --cpus 4-7 >"$tmp/rn.out" 2>&1
rc=$?
detail=$(cat "$tmp/rn.out")
expect "fake: tune with renumbered IRQs exits 0" eq "$rc" 0
expect "fake: tune puts the renumbered queue IRQs on their CPUs" eq \
    "$(for q in 0 1 2 3; do cat "$F/proc/irq/$((221 + q))/smp_affinity_list"; done | tr '\n' ' ')" "4 5 6 7 "
expect "fake: tune bans the renumbered IRQs from irqbalance" \
    grep -q -- '--banirq=221 --banirq=222 --banirq=223 --banirq=224' "$F/etc/default/irqbalance"
FAKE_RENUMBER_IRQS=-100 fk "$tune" ens1f0 --revert >"$tmp/rn2.out" 2>&1
rc=$?
detail=$(cat "$tmp/rn2.out")
expect "fake: revert with renumbered IRQs exits 0" eq "$rc" 0
expect "fake: revert restores the saved affinity of an IRQ back after the channels" eq \
    "$(cat "$F/proc/irq/121/smp_affinity_list")" 1
# The driver renumbers on the revert's channel change too, and the tuned IRQ 121 it gave up
# is another device's by then: its saved affinity is not written over that device's.
new_fake
FAKE_RENUMBER_IRQS=100 fk "$tune" ens1f0 --queues 4 --cpus 4-7 >"$tmp/rn3.out" 2>&1
printf ' 121: %s IR-PCI-MSIX-0000:5e:00.0    1-edge      nvme0q1\n' "$(printf '%10s ' 0 0 0 0 0 0 0 0)" >>"$F/proc/interrupts"
mkdir -p "$F/proc/irq/121" && echo 3 >"$F/proc/irq/121/smp_affinity_list"
FAKE_RENUMBER_IRQS=100 fk "$tune" ens1f0 --revert >"$tmp/rn4.out" 2>&1
rc=$?
detail=$(cat "$tmp/rn4.out")
expect "fake: revert leaves a saved IRQ number that is no longer the NIC's alone, and says so" eval \
    '[ "$rc" = 0 ] && [ "$(cat "$F/proc/irq/121/smp_affinity_list")" = 3 ] &&
     grep -q "skip: IRQ 121 affinity (0-7): IRQ 121 is not one of ens1f0.s queue IRQs now" "$tmp/rn4.out"'

# Across a reboot (another boot id): the IRQ numbers saved before it are left alone by revert,
# and a tune after it bans this boot's queue IRQs only, not those of every earlier tune.
new_fake
mkdir -p "$F/proc/sys/kernel/random"
echo boot-a >"$F/proc/sys/kernel/random/boot_id"
fk "$tune" ens1f0 --queues 4 --cpus 4-7 >"$tmp/b1.out" 2>&1
expect "fake: the state holds the boot it was saved in" grep -qx 'boot_id=boot-a' "$state"
echo boot-b >"$F/proc/sys/kernel/random/boot_id"
for irq in 121 122 123 124; do echo 0-7 >"$F/proc/irq/$irq/smp_affinity_list"; done
fk "$tune" ens1f0 --queues 2 --cpus 0,1 >"$tmp/b2.out" 2>&1
rc=$?
detail=$(cat "$tmp/b2.out")
expect "fake: tune after a reboot exits 0" eq "$rc" 0
expect "fake: tune after a reboot bans this tune's queue IRQs only" eq \
    "$(sed -n 's/^IRQBALANCE_ARGS=//p' "$F/etc/default/irqbalance")" '"--banirq=121 --banirq=122"'
expect "fake: tune after a reboot saves this boot's IRQ affinities" eval \
    'grep -qx "boot_id=boot-b" "$state" && grep -qx "irq.123=0-7" "$state"'
echo boot-c >"$F/proc/sys/kernel/random/boot_id"
echo 5 >"$F/proc/irq/123/smp_affinity_list"
fk "$tune" ens1f0 --revert >"$tmp/b3.out" 2>&1
rc=$?
detail=$(cat "$tmp/b3.out")
expect "fake: revert after a reboot exits 0 and leaves the IRQs alone" eval \
    '[ "$rc" = 0 ] && [ "$(cat "$F/proc/irq/123/smp_affinity_list")" = 5 ] && grep -q "saved before a reboot" "$tmp/b3.out"'
expect "fake: revert after a reboot restores irqbalance's file" \
    cmp -s "$F/etc/default/irqbalance" "$tmp/snap/etc/default/irqbalance"
new_fake

# bad input: clear error, exit 2 (1 for an unknown interface), nothing changed
bad() { # expected-rc message-regex args...
    local want=$1 re=$2 out rc
    shift 2
    out=$(fk "$@" 2>&1)
    rc=$?
    if [ "$rc" = "$want" ] && grep -Eq -- "$re" <<<"$out" && same_tree && [ -z "$(changes)" ] && [ ! -e "$state" ]; then
        ok "fake: bad input rejected, nothing changed: ${*#"$scripts/"}"
    else
        not_ok "fake: bad input rejected, nothing changed: ${*#"$scripts/"}" "rc=$rc (want $want)
$out
${detail:-}"
    fi
}
: >"$F/nic/changes.log"
bad 2 "missing interface" "$tune" --queues 4 --cpus 0-3
bad 2 "missing --cpus" "$tune" ens1f0 --queues 4
bad 2 "positive integer" "$tune" ens1f0 --queues 0 --cpus 0
bad 2 "positive integer" "$tune" ens1f0 --queues four --cpus 0-3
bad 2 "at most 8 queues" "$tune" ens1f0 --queues 9 --cpus 0-8
bad 2 "lists 3 CPUs for 4 queues" "$tune" ens1f0 --queues 4 --cpus 0-2
bad 2 "twice" "$tune" ens1f0 --queues 2 --cpus 1,1
bad 2 "CPU 12 is not online" "$tune" ens1f0 --queues 2 --cpus 0,12
bad 2 "CPU list" "$tune" ens1f0 --queues 2 --cpus 3-1
bad 2 "CPU list" "$tune" ens1f0 --queues 2 --cpus 0-999999999
bad 2 "microseconds" "$tune" ens1f0 --queues 2 --cpus 0,1 --busy-poll fast
bad 2 "unknown option" "$tune" ens1f0 --queues 2 --cpus 0,1 --turbo
bad 2 "takes no tuning options" "$tune" ens1f0 --revert --queues 2
bad 2 "invalid interface name" "$tune" ../etc --queues 1 --cpus 0
bad 1 "no such network interface: nosuch0" "$tune" nosuch0 --queues 1 --cpus 0
bad 1 "no such network interface: nosuch0" "$check" nosuch0
bad 2 "unknown option" "$check" ens1f0 --yaml
# more huge pages than 3/4 of MemAvailable (60000000 kB in the fake): 21972 pages of 2048 kB fit
bad 2 "--hugepages 21973 adds 21973 huge pages of 2048 kB to the 0 reserved: 45000704 kB, more than 3/4 of MemAvailable \(60000000 kB\)" \
    "$tune" ens1f0 --queues 2 --cpus 0,1 --hugepages 21973
fk "$tune" ens1f0 --queues 2 --cpus 0,1 --hugepages 21972 --dry-run >"$tmp/hp.out" 2>&1
rc=$?
detail=$(cat "$tmp/hp.out")
expect "fake: --hugepages up to 3/4 of MemAvailable is accepted" eval \
    '[ "$rc" = 0 ] && grep -q "^+ echo 21972 > .*/proc/sys/vm/nr_hugepages$" "$tmp/hp.out"'
# an irqbalance that systemd does not run (MainPID 0): restarting the unit would not ban anything
FAKE_IRQBALANCE_MAINPID=0 bad 1 "irqbalance \(pid 4242\) is running .* systemd does not run it .*MainPID irqbalance: 0.*: stop irqbalance" \
    "$tune" ens1f0 --queues 2 --cpus 0,1

# a command failing midway: stop, say what changed, keep the state; revert still restores
FAKE_ETHTOOL_FAIL="-N ens1f0 rx-flow-hash udp6 sdfn" fk "$tune" "${tune_args[@]}" >"$tmp/fail.out" 2>&1
rc=$?
detail=$(cat "$tmp/fail.out")
expect "fake: a failing command stops tune with exit 1" eq "$rc" 1
expect "fake: the failure names the command and what was already changed" eval \
    'grep -q "FAILED: udp6 hash sd -> sdfn: .ethtool -N ens1f0 rx-flow-hash udp6 sdfn. failed: Cannot set: Input/output error" "$tmp/fail.out" &&
     grep -q "^    channels 8 -> 4$" "$tmp/fail.out" && grep -q "^    udp4 hash sd -> sdfn$" "$tmp/fail.out" &&
     grep -q -- "--revert" "$tmp/fail.out" && ! grep -q "lro off" "$tmp/fail.out"'
expect "fake: the failure keeps the saved state" test -e "$state"
fk "$tune" ens1f0 --revert >"$tmp/revert2.out" 2>&1
rc=$?
detail=$(cat "$tmp/revert2.out")
expect "fake: revert after a failed tune restores the tree byte for byte" eval '[ "$rc" = 0 ] && same_tree && [ ! -e "$state" ]'

# The kernel reserving fewer huge pages than asked: nr_hugepages is a FIFO here, whose lines
# are what the kernel answers to the reads (2, each time) and which keeps what is written.
hp=$F/proc/sys/vm/nr_hugepages
: >"$F/nic/changes.log"
rm -f "$hp" && mkfifo "$hp" && exec 9<>"$hp"
printf '2\n%.0s' 1 2 3 4 5 6 7 8 9 10 >&9
fk timeout 60 "$tune" ens1f0 --queues 4 --cpus 2-5 --hugepages 64 >"$tmp/hp2.out" 2>&1
rc=$?
echo end >&9
left=()
while IFS= read -r -t 5 line <&9 && [ "$line" != end ]; do left+=("$line"); done
exec 9>&-
rm -f "$hp" && cp "$tmp/snap/proc/sys/vm/nr_hugepages" "$hp"
detail=$(cat "$tmp/hp2.out")
expect "fake: huge pages short of the count asked: exit 1, says asked and got, nothing else changed" eval \
    '[ "$rc" = 1 ] && grep -q "FAILED: asked the kernel for 64 huge pages, it reserved only 2 (the count is back to 2;" "$tmp/hp2.out" &&
     grep -q "nothing was changed by this run" "$tmp/hp2.out" && [ -z "$(changes)" ]'
expect "fake: huge pages short of the count asked: the previous count is written back after the 64" \
    eq "${left[*]: -2}" "64 2"
rm -rf "$F/state"

# A closed stdout (`nic-tune.sh ... | head -1`): the tune does not die of SIGPIPE half-way.
# The pipe's read end is closed before the tune starts, so every line it prints meets it.
: >"$F/nic/changes.log"
fk python3 -c 'import os, subprocess, sys
r, w = os.pipe()
os.close(r)
sys.exit(subprocess.call(sys.argv[1:], stdout=w))' "$tune" "${tune_args[@]}" 2>"$tmp/epipe.err"
rc=$?
detail=$(cat "$tmp/epipe.err")
expect "fake: tune with its stdout closed completes: exit 0, every change made, state saved" eval \
    '[ "$rc" = 0 ] && [ "$(changes)" = "$expected_ethtool" ] && [ ! -s "$tmp/epipe.err" ] && grep -qx "target.hugepages=64" "$state"'
fk "$tune" ens1f0 --revert >"$tmp/epipe2.out" 2>&1
rc=$?
detail=$(cat "$tmp/epipe2.out")
expect "fake: revert after a tune with its stdout closed restores the tree byte for byte" eval '[ "$rc" = 0 ] && same_tree && [ ! -e "$state" ]'

# SIGTERM half-way (systemd stopping the unit): exit 143, and it says what it had changed.
: >"$F/nic/changes.log"
FAKE_ETHTOOL_TERM="-N ens1f0 rx-flow-hash udp6 sdfn" fk setsid -w "$tune" "${tune_args[@]}" >"$tmp/term.out" 2>"$tmp/term.err"
rc=$?
detail=$(cat "$tmp/term.out" "$tmp/term.err")
expect "fake: tune stopped by SIGTERM exits 143 and lists what it had changed, with the revert" eval \
    '[ "$rc" = 143 ] && grep -q "stopped before the end (exit status 143)" "$tmp/term.err" &&
     grep -q "^    channels 8 -> 4$" "$tmp/term.err" && grep -q "^    udp4 hash sd -> sdfn$" "$tmp/term.err" &&
     grep -q -- "ens1f0 --revert" "$tmp/term.err" && ! grep -q "lro off" "$tmp/term.out" && [ -e "$state" ]'
fk "$tune" ens1f0 --revert >"$tmp/term2.out" 2>&1
rc=$?
detail=$(cat "$tmp/term2.out")
expect "fake: revert after a tune stopped by SIGTERM restores the tree byte for byte" eval '[ "$rc" = 0 ] && same_tree && [ ! -e "$state" ]'

# nic-check without awk: exit 1 with the reason, not 127 half-way
noawk=$tmp/noawk
mkdir -p "$noawk"
for f in /usr/local/bin/* /usr/bin/* /bin/* /usr/sbin/* /sbin/*; do
    case ${f##*/} in awk | gawk | mawk | nawk | original-awk | busybox) continue ;; esac
    [ -e "$noawk/${f##*/}" ] || ln -s "$f" "$noawk/${f##*/}"
done
PATH=$noawk fk "$BASH" "$check" ens1f0 >"$tmp/noawk.out" 2>"$tmp/noawk.err"
rc=$?
detail=$(cat "$tmp/noawk.out" "$tmp/noawk.err")
expect "fake: check without awk exits 1 and says awk is missing" eval \
    '[ "$rc" = 1 ] && grep -q "error: awk not found on PATH" "$tmp/noawk.err" && [ ! -s "$tmp/noawk.out" ]'

# a revert step failing: the steps after it are still restored, the state stays, exit 1;
# the next revert finishes the job
new_fake
fk "$tune" "${tune_args[@]}" >"$tmp/be1.out" 2>&1
FAKE_ETHTOOL_FAIL="-K ens1f0 lro on" fk "$tune" ens1f0 --revert >"$tmp/be2.out" 2>&1
rc=$?
detail=$(cat "$tmp/be2.out")
expect "fake: a revert step failing goes on with the rest, keeps the state, exits 1" eval \
    '[ "$rc" = 1 ] && [ -e "$state" ] && grep -q "FAILED (going on with the rest): lro off -> on" "$tmp/be2.out" &&
     grep -q "revert of ens1f0 incomplete: 1 step(s) failed" "$tmp/be2.out" && grep -q "^+ ethtool -L ens1f0 combined 8" "$tmp/be2.out"'
fk "$tune" ens1f0 --revert >"$tmp/be3.out" 2>&1
rc=$?
detail=$(cat "$tmp/be3.out")
expect "fake: the next revert finishes and restores the tree byte for byte" eval '[ "$rc" = 0 ] && same_tree && [ ! -e "$state" ]'
new_fake

# XDP mode and MTU findings
echo generic >"$F/nic/ens1f0/xdp"
echo 9000 >"$F/sys/class/net/ens1f0/mtu"
fk "$check" ens1f0 --json >"$tmp/c4.json" 2>&1
expect "fake: check warns about generic XDP and an MTU too large for native XDP" \
    eval '[[ " $(json_ids "$tmp/c4.json" warn) " == *" mtu xdp "* ]]'
echo native >"$F/nic/ens1f0/xdp"
fk "$check" ens1f0 --json >"$tmp/c5.json" 2>&1
expect "fake: check reports a native XDP program as ok" \
    eval '[[ " $(json_ids "$tmp/c5.json" ok) " == *" xdp "* ]] && grep -q "native (id 42 name xdp_quic)" "$tmp/c5.json"'

# helpers: IRQ names of real drivers, CPU lists
irqnames=$(
    # shellcheck source=scripts/lib/nic-common.sh
    . "$scripts/lib/nic-common.sh"
    for n in mlx5_comp3@pci:0000:3b:00.0 ice-eth0-TxRx-5 i40e-eth0-TxRx-12 virtio2-input.0 virtio2-output.0 \
        eth0-rx-2 eth0-tx-2 ice-0000:3b:00.0:misc eth0-7 bnxt_en-eth0-fp-1 mlx5_async0@pci:0000:3b:00.0; do
        printf '%s=%s ' "$n" "$(nic_irq_queue_of eth0 "$n" || echo -)"
    done
    printf '| %s | ' "$(nic_expand_cpulist 0-3,8,10-11)"
    nic_expand_cpulist 3-1 || echo rejected
)
expect "lib: queue index of real drivers' IRQ names; CPU lists" eq "$irqnames" \
    "mlx5_comp3@pci:0000:3b:00.0=3 ice-eth0-TxRx-5=5 i40e-eth0-TxRx-12=12 virtio2-input.0=0 virtio2-output.0=- eth0-rx-2=2 eth0-tx-2=- ice-0000:3b:00.0:misc=- eth0-7=7 bnxt_en-eth0-fp-1=1 mlx5_async0@pci:0000:3b:00.0=- | 0 1 2 3 8 10 11 | rejected"

# --- 3. veth in a network namespace ---------------------------------------------------------
veth_tests() {
    local ns=$1 vs=$tmp/vstate out rc c0 c1
    local -a cpus
    read -r -a cpus <<<"$(bash -c '. "$1"; nic_online_cpus' _ "$scripts/lib/nic-common.sh")"
    if [ "${#cpus[@]}" -lt 2 ]; then
        if [ -n "${CI:-}" ]; then
            not_ok "veth: tune to 2 queues" "needs 2 online CPUs (CI is set)"
        else
            skip "veth: tune to 2 queues" "needs 2 online CPUs"
        fi
        return
    fi
    c0=${cpus[0]} c1=${cpus[1]}
    nsx() { ip netns exec "$ns" env NIC_STATE_DIR="$vs" "$@"; }
    if ! { ip -n "$ns" link add va numrxqueues 4 numtxqueues 4 type veth peer name vb numrxqueues 4 numtxqueues 4 &&
        ip netns exec "$ns" ethtool -L va rx 1 tx 1; }; then
        not_ok "veth: create a 4-queue veth pair in $ns"
        return
    fi
    local before
    # shellcheck disable=SC2034 # read by the eval'd checks below
    before=$(nsx ethtool -l va; nsx cat /sys/class/net/va/napi_defer_hard_irqs /sys/class/net/va/gro_flush_timeout)

    nsx "$check" va --json >"$tmp/v1.json" 2>&1
    rc=$?
    detail=$(cat "$tmp/v1.json")
    expect "veth: check exits 3, valid JSON, warns about the single queue" \
        eval '[ "$rc" = 3 ] && json_ok "$tmp/v1.json" && [ "$(json_ids "$tmp/v1.json" warn)" = channels ]'
    expect "veth: check reports RSS, indirection, IRQs and busy-poll sysctls unsupported" \
        eq "$(json_ids "$tmp/v1.json" unsupported)" "rss-udp4 rss-udp6 indirection irqs net.core.busy_poll net.core.busy_read"

    nsx "$tune" va --queues 2 --cpus "$c0,$c1" --busy-poll 50 --dry-run >"$tmp/vdry.out" 2>&1
    rc=$?
    detail=$(cat "$tmp/vdry.out")
    expect "veth: tune --dry-run changes nothing" eval '[ "$rc" = 0 ] && [ "$(nsx ethtool -l va; nsx cat /sys/class/net/va/napi_defer_hard_irqs /sys/class/net/va/gro_flush_timeout)" = "$before" ] && [ ! -e "$vs" ]'

    nsx "$tune" va --queues 2 --cpus "$c0,$c1" --busy-poll 50 >"$tmp/vtune.out" 2>&1
    rc=$?
    detail=$(cat "$tmp/vtune.out")
    expect "veth: tune exits 0 and prints what it runs" eval '[ "$rc" = 0 ] && [ "$(plus_lines "$tmp/vtune.out")" = "$(plus_lines "$tmp/vdry.out")" ] && grep -q "^+ ethtool -L va rx 2 tx 2$" "$tmp/vtune.out"'
    expect "veth: tune reports what veth cannot do as unsupported" eval \
        'grep -q "skip: net.core.busy_poll: not visible" "$tmp/vtune.out" && grep -q "skip: udp4 RSS hash fields: not supported" "$tmp/vtune.out" && grep -q "skip: IRQ affinity: va has no per-queue IRQs" "$tmp/vtune.out"'
    out=$(nsx ethtool -l va | sed -n '/Current/,$p' | grep -E '^(RX|TX):' | tr -s '\t ' ' ' | tr '\n' ' ')
    expect "veth: tune set 2 rx and 2 tx channels" eq "$out" "RX: 2 TX: 2 "
    expect "veth: tune set the device's NAPI settings in the namespace" \
        eq "$(nsx cat /sys/class/net/va/napi_defer_hard_irqs /sys/class/net/va/gro_flush_timeout | tr '\n' ' ')" "2 200000 "

    nsx "$check" va --json >"$tmp/v2.json" 2>&1
    rc=$?
    detail=$(cat "$tmp/v2.json")
    expect "veth: check after tune: no warning" eval '[ "$rc" = 0 ] && [ -z "$(json_ids "$tmp/v2.json" warn)" ]'

    nsx "$tune" va --revert >"$tmp/vrev.out" 2>&1
    rc=$?
    detail=$(cat "$tmp/vrev.out")
    expect "veth: revert restores channels and NAPI settings, removes the state" \
        eval '[ "$rc" = 0 ] && [ "$(nsx ethtool -l va; nsx cat /sys/class/net/va/napi_defer_hard_irqs /sys/class/net/va/gro_flush_timeout)" = "$before" ] && [ ! -e "$vs/va.state" ]'
}

# --- 4. scripts/testbed.sh -----------------------------------------------------------------
# Argument errors exit 2 with the usage, as every other one does (before the root check).
for opt in --queues --name; do
    out=$(bash "$testbed" up "$opt" 2>&1)
    rc=$?
    detail=$out
    expect "testbed: $opt without a value exits 2 with the usage" eval \
        '[ "$rc" = 2 ] && grep -q "^testbed.sh: $opt needs a" <<<"$out" && grep -q "scripts/testbed.sh up" <<<"$out"'
done

has_ns() { ip netns list | cut -d' ' -f1 | grep -xF -- "$1" >/dev/null; }
testbed_tests() {
    local p=$1 out rc real_ip
    tb_ns+=("$p-server-old" "$p-server" "$p-client")
    ip netns add "$p-server-old" || { not_ok "testbed: create namespace $p-server-old"; return; }
    out=$(bash "$testbed" up --name "$p" --queues 2 2>&1)
    rc=$?
    detail=$out
    expect "testbed: up is not stopped by $p-server-old (exact namespace names)" eval \
        '[ "$rc" = 0 ] && has_ns "$p-server" && has_ns "$p-client"'
    out=$(bash "$testbed" up --name "$p" 2>&1)
    rc=$?
    detail=$out
    expect "testbed: up refuses when $p-server exists" eval '[ "$rc" = 1 ] && grep -q "namespace $p-server exists" <<<"$out"'
    bash "$testbed" down --name "$p" >/dev/null 2>&1
    expect "testbed: down removes $p-server and $p-client, not $p-server-old" eval \
        '! has_ns "$p-server" && ! has_ns "$p-client" && has_ns "$p-server-old"'

    # SIGTERM while up creates the veth pair (an `ip` that sends it to its parent first):
    # what up made is removed, exit 143.
    real_ip=$(command -v ip)
    mkdir -p "$tmp/tbbin"
    printf '#!/usr/bin/env bash\n[ "${1:-} ${2:-}" != "link add" ] || kill -TERM "$PPID"\nexec %q "$@"\n' "$real_ip" >"$tmp/tbbin/ip"
    chmod +x "$tmp/tbbin/ip"
    out=$(PATH="$tmp/tbbin:$PATH" bash "$testbed" up --name "$p" 2>&1)
    rc=$?
    detail=$out
    expect "testbed: SIGTERM during up exits 143 and removes what up made" eval \
        '[ "$rc" = 143 ] && grep -q "interrupted; removed what was made" <<<"$out" && ! has_ns "$p-server" && ! has_ns "$p-client"'
}

if [ "$(id -u)" != 0 ]; then
    if [ -n "${CI:-}" ]; then not_ok "veth and testbed tests" "need root (CI is set)"; else skip "veth and testbed tests" "need root"; fi
elif ! command -v ethtool >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    if [ -n "${CI:-}" ]; then not_ok "veth and testbed tests" "ethtool and ip (iproute2) are required"; else skip "veth and testbed tests" "ethtool or ip missing"; fi
else
    netns="nicq-test-$$"
    if ip netns add "$netns"; then
        veth_tests "$netns"
    else
        not_ok "veth: create network namespace $netns"
    fi
    testbed_tests "tb$$"
fi

if [ "$skipped" -gt 0 ]; then
    printf 'nic-scripts: %d passed, %d failed, %d skipped\n' "$pass" "$failed" "$skipped"
else
    printf 'nic-scripts: %d passed, %d failed\n' "$pass" "$failed"
fi
[ "$failed" -eq 0 ]
