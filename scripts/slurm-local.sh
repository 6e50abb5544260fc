#!/usr/bin/env bash
# scripts/slurm-local.sh -- a throw-away SLURM cluster (one node, or N nodes on this host) for tests, CI and laptops.
#
#   scripts/slurm-local.sh install   # apt-get install slurmctld slurmd slurm-client munge (if missing)
#   scripts/slurm-local.sh start     # (re)write config, start munged + slurmctld + slurmd, wait for "idle"
#   scripts/slurm-local.sh status    # daemons + sinfo; exit 0 only if the node is usable
#   scripts/slurm-local.sh stop      # kill every daemon this script started (by PID, SIGKILL fallback)
#   scripts/slurm-local.sh env       # print "export SLURM_CONF=..." for your shell: eval "$(... env)"
#
# Everything lives in a private state dir ($TOKENSCALE_SLURM_DIR, default /tmp/tokenscale-slurm):
# slurm.conf, gres.conf, a private munge key/socket, spool dirs, logs, pid files and fake GPU
# device nodes. Nothing under /etc is modified, no systemd/cgroups are needed; the only file
# outside the state dir is the symlink /run/slurm/conf -> <state dir>/etc (see RUN_CONF_LINK),
# created by start and removed by stop. Client commands
# (sbatch, squeue, sinfo, snakemake --executor slurm) find the cluster through SLURM_CONF.
#
# The node is this machine with its real CPU count and memory (from `slurmd -C`) plus a fake GPU
# GRES: gpu:<type>:<n> backed by character devices in the state dir, so that jobs which request
# GPUs get CUDA_VISIBLE_DEVICES set by Slurm (there is no real GPU behind it).
#
# Two (or more) nodes on this host: TOKENSCALE_SLURM_NODES=2 scripts/slurm-local.sh start
#   Slurm 22.05 built without --enable-multiple-slurmd refuses two slurmd sharing a host name, so each node
#   is one network namespace (`ip netns`, names ts-<node>, entered with nsenter) with its own UTS host name (= the node name, via
#   `unshare --uts`) and address <net>.<i> on a veth pair whose host end sits on a bridge (tsbr0) that holds
#   <net>.254, where slurmctld (in the root namespace) listens. Node names (tsn1, tsn2, ...) resolve through
#   lines this script adds to /etc/hosts (marked "# tokenscale-slurm <state dir>", removed by stop), so that a
#   job's rendezvous host (the first of `scontrol show hostnames`) is reachable from every node, and a rank's
#   gethostname() resolves to its node's address (gloo binds there). munge's socket and the spool/log/pid
#   files are paths in the state dir, shared through the filesystem; jobs see the same filesystem as here.
#   The node list is recorded in <state dir>/etc/nodes, so stop/status need no environment. Root only
#   (netns, bridge, /etc/hosts); jobs in a namespace cannot reach the internet. The default (1 node) uses none
#   of this: the node is this machine, named `hostname -s`, at 127.0.0.1.
#
# Tunables (environment):
#   TOKENSCALE_SLURM_NODES      nodes (>1: network namespaces, see above)         [1]
#   TOKENSCALE_SLURM_NET        first three octets of the nodes' /24 (N > 1)     [10.77.0]
#   TOKENSCALE_SLURM_DIR        state dir                       [/tmp/tokenscale-slurm]
#   TOKENSCALE_SLURM_GPUS       number of fake GPUs             [2]
#   TOKENSCALE_SLURM_GPU_TYPE   GRES type (= gpu_model to ask)  [fake]
#   TOKENSCALE_SLURM_CTLD_PORT  slurmctld port                  [6817]
#   TOKENSCALE_SLURM_D_PORT     slurmd port                     [6818]
#   TOKENSCALE_SLURM_MIN_JOB_AGE  MinJobAge (s); keep >= 3x the executor plugin's
#                               init-seconds-before-status-checks, see below   [600]
#   TOKENSCALE_SLURM_WAIT       seconds to wait for each daemon [60]
#   TOKENSCALE_SLURM_MEM_MB     memory (MB) the node advertises [max(real, 65536)]; not enforced
#                               (no cgroups), so the workflow's real mem_mb requests fit
#
# Needs root (slurmd, mknod); re-executes itself through sudo when available.
# Facts this relies on (Slurm 22.05, Debian 12): select/cons_tres + proctrack/linuxproc + task/none +
# accounting_storage/none run without cgroups/systemd; there is no slurmdbd, so `sacct` is useless
# here and snakemake-executor-plugin-slurm must use `--slurm-status-command squeue`, which only sees
# jobs for MinJobAge seconds after they end (the plugin itself falls back to sacct when MinJobAge <
# 3 x init-seconds-before-status-checks); slurmd may ignore SIGTERM, hence the SIGKILL fallback.
set -euo pipefail

STATE_DIR="${TOKENSCALE_SLURM_DIR:-/tmp/tokenscale-slurm}"
STATE_DIR="${STATE_DIR%/}"
NGPUS="${TOKENSCALE_SLURM_GPUS:-2}"
GPU_TYPE="${TOKENSCALE_SLURM_GPU_TYPE:-fake}"
CTLD_PORT="${TOKENSCALE_SLURM_CTLD_PORT:-6817}"
D_PORT="${TOKENSCALE_SLURM_D_PORT:-6818}"
MIN_JOB_AGE="${TOKENSCALE_SLURM_MIN_JOB_AGE:-600}"
WAIT_S="${TOKENSCALE_SLURM_WAIT:-60}"
MEM_MB="${TOKENSCALE_SLURM_MEM_MB:-}"
PARTITION="debug"
NNODES="${TOKENSCALE_SLURM_NODES:-1}"
NET="${TOKENSCALE_SLURM_NET:-10.77.0}"
BRIDGE="tsbr0"
NODE_PREFIX="tsn"
PACKAGES=(slurmctld slurmd slurm-client munge)
BINARIES=(slurmctld slurmd slurmstepd sbatch squeue sinfo scontrol scancel srun munged munge)

CONF="$STATE_DIR/etc/slurm.conf"
GRES_CONF="$STATE_DIR/etc/gres.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
# snakemake-executor-plugin-slurm-jobstep strips SLURM_* (SLURM_CONF included) from the env of
# the `srun` it runs inside each job, so that srun falls back to Slurm's configless location
# /run/slurm/conf/slurm.conf (after /etc/slurm/slurm.conf).  We point that at our config.
RUN_CONF_LINK="/run/slurm/conf"
# Marker put into the environment of every daemon we start; slurmstepd (forked by slurmd)
# inherits it, so `stop` can find exactly our processes by PID without matching on names.
OWNER_MARK="TOKENSCALE_SLURM_OWNER=$STATE_DIR"
NODES_FILE="$STATE_DIR/etc/nodes"   # the node names of the running cluster, one a line (stop/status read it)
HOSTS_MARK="# tokenscale-slurm $STATE_DIR"

log() { printf '[slurm-local] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$NNODES" in ''|*[!0-9]*) die "TOKENSCALE_SLURM_NODES: '$NNODES' is not a node count" ;; esac
[ "$NNODES" -ge 1 ] && [ "$NNODES" -le 200 ] || die "TOKENSCALE_SLURM_NODES: $NNODES is not in 1..200"

multi() { [ "$NNODES" -gt 1 ]; }
# the node names of the cluster to start: this machine (1 node) or tsn1..tsnN (network namespaces)
wanted_nodes() {
    local i
    if multi; then for ((i = 1; i <= NNODES; i++)); do echo "$NODE_PREFIX$i"; done; else hostname -s; fi
}
# the node names of the running (or last started) cluster
cluster_nodes() { if [ -s "$NODES_FILE" ]; then cat "$NODES_FILE"; else hostname -s; fi; }
netns_of() { echo "ts-$1"; }
slurmd_pidfile() { if [ "$(cluster_nodes | wc -l)" -gt 1 ]; then echo "$RUN_DIR/slurmd-$1.pid"; else echo "$RUN_DIR/slurmd.pid"; fi; }
must() { local out; out="$("$@" 2>&1)" || die "'$*' failed: ${out:-no output}"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            log "not root; re-running through sudo"
            exec sudo -E env "PATH=$PATH" "$0" "$@"
        fi
        die "must run as root (slurmd and mknod need it) and sudo is not available"
    fi
}

missing_binaries() {
    local b missing=()
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    echo "${missing[*]:-}"
}

# --------------------------------------------------------------------------------------------- install
cmd_install() {
    local missing
    missing="$(missing_binaries)"
    if [ -z "$missing" ]; then
        log "slurm + munge already installed ($(slurmctld -V 2>/dev/null || echo '?'))"
        return 0
    fi
    need_root install
    command -v apt-get >/dev/null 2>&1 || die "missing $missing and apt-get is not available; install Slurm + munge yourself"
    log "installing ${PACKAGES[*]} (missing: $missing)"
    export DEBIAN_FRONTEND=noninteractive
    local t0=$SECONDS
    # try without `apt-get update` first (fast when package lists are present)
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"/tmp/slurm-local-apt.$$.log" 2>&1; then
        log "apt-get install failed, running apt-get update and retrying"
        apt-get update -q >>"/tmp/slurm-local-apt.$$.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"/tmp/slurm-local-apt.$$.log" 2>&1 \
            || { tail -n 30 "/tmp/slurm-local-apt.$$.log" >&2; die "apt-get install failed"; }
    fi
    rm -f "/tmp/slurm-local-apt.$$.log"
    missing="$(missing_binaries)"
    [ -z "$missing" ] || die "still missing after install: $missing"
    log "installed in $((SECONDS - t0)) s: $(slurmctld -V)"
}

# ----------------------------------------------------------------------------------------- processes
# PIDs of live processes carrying our marker in their environment (munged, slurmctld, slurmd,
# slurmstepd) plus whatever the pid files name.
our_pids() {
    local p f pid
    {
        for f in "$RUN_DIR"/*.pid; do
            [ -f "$f" ] || continue
            pid="$(tr -dc '0-9' <"$f" || true)"
            [ -n "$pid" ] && [ -d "/proc/$pid" ] && is_ours "$pid" && echo "$pid"
        done
        for p in /proc/[0-9]*; do
            pid="${p#/proc/}"
            [ "$pid" = "$$" ] && continue
            if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$OWNER_MARK"; then
                echo "$pid"
            fi
        done
    } | sort -un
}

# A PID from a pid file is only ours if its environment has the marker or its command line
# mentions the state dir (protects against recycled PIDs).
is_ours() {
    local pid="$1"
    { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$OWNER_MARK" && return 0
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$STATE_DIR/" && return 0
    return 1
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

kill_pids() {  # kill_pids PID... : SIGTERM, wait up to 5 s, then SIGKILL
    local pid left deadline
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while :; do
        left=()
        for pid in "$@"; do alive "$pid" && left+=("$pid"); done
        [ "${#left[@]}" -eq 0 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && break
        sleep 0.2
    done
    log "SIGKILL for PIDs that ignored SIGTERM: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    for pid in "${left[@]}"; do
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        alive "$pid" && log "WARNING: PID $pid still alive after SIGKILL"
    done
    return 0
}

cmd_stop() {
    need_root stop
    local pids
    pids="$(our_pids | tr '\n' ' ')"
    if [ -z "${pids// /}" ]; then
        log "no daemons running for $STATE_DIR"
    else
        # cancel leftover jobs first so that their slurmstepd/job processes go away cleanly
        if [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 5 scontrol ping >/dev/null 2>&1; then
            local jobs
            jobs="$(SLURM_CONF="$CONF" timeout 5 squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)"
            if [ -n "${jobs// /}" ]; then
                log "cancelling jobs: $jobs"
                # shellcheck disable=SC2086
                SLURM_CONF="$CONF" timeout 5 scancel $jobs 2>/dev/null || true
                sleep 1
            fi
        fi
        pids="$(our_pids | tr '\n' ' ')"
        log "stopping PIDs: $pids"
        # shellcheck disable=SC2086
        kill_pids $pids
    fi
    rm -f "$RUN_DIR"/*.pid 2>/dev/null || true
    unlink_run_conf
    net_down
    local rest
    rest="$(our_pids | tr '\n' ' ')"
    [ -z "${rest// /}" ] || die "processes still alive: $rest"
    log "stopped"
}

# --------------------------------------------------------------------- N nodes: namespaces + /etc/hosts
# /etc/hosts is rewritten in place (it may be a bind mount that cannot be replaced by a rename).
hosts_remove() {
    [ -f /etc/hosts ] && grep -qF "$HOSTS_MARK" /etc/hosts || return 0
    local keep
    keep="$(awk -v m=" $HOSTS_MARK" 'substr($0, length($0) - length(m) + 1) != m' /etc/hosts)"
    printf '%s\n' "$keep" >/etc/hosts
}

net_down() {  # every namespace/veth of the recorded and the wanted nodes, the bridge, the hosts lines
    local n i=0
    for n in $( { cluster_nodes; wanted_nodes; } | sort -u); do
        case "$n" in "$NODE_PREFIX"[0-9]*) ;; *) continue ;; esac
        ip netns list 2>/dev/null | grep -qw "$(netns_of "$n")" && ip netns del "$(netns_of "$n")" 2>/dev/null
        ip link show "tsv${n#"$NODE_PREFIX"}" >/dev/null 2>&1 && ip link del "tsv${n#"$NODE_PREFIX"}" 2>/dev/null
        i=$((i + 1))
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" 2>/dev/null
    hosts_remove
    return 0
}

net_up() {  # a bridge holding $NET.254 (slurmctld) and, per node, a namespace at $NET.<i> on a veth pair
    command -v ip >/dev/null 2>&1 || die "TOKENSCALE_SLURM_NODES=$NNODES needs iproute2's ip (network namespaces)"
    command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 \
        || die "TOKENSCALE_SLURM_NODES=$NNODES needs unshare and nsenter (util-linux)"
    net_down
    must ip link add "$BRIDGE" type bridge
    must ip addr add "$NET.254/24" dev "$BRIDGE"
    must ip link set "$BRIDGE" up
    local n i=0 ns
    for n in $(wanted_nodes); do
        i=$((i + 1))
        ns="$(netns_of "$n")"
        must ip netns add "$ns"
        must ip link add "tsv$i" type veth peer name eth0 netns "$ns"
        must ip link set "tsv$i" master "$BRIDGE"
        must ip link set "tsv$i" up
        must ip -n "$ns" addr add "$NET.$i/24" dev eth0
        must ip -n "$ns" link set eth0 up
        must ip -n "$ns" link set lo up
    done
    hosts_remove
    i=0
    for n in $(wanted_nodes); do i=$((i + 1)); echo "$NET.$i $n $HOSTS_MARK"; done >>/etc/hosts
    log "network: bridge $BRIDGE ($NET.254), $NNODES namespaces $(netns_of "${NODE_PREFIX}1")..$(netns_of "$NODE_PREFIX$NNODES")"
}

# -------------------------------------------------------------------------------------------- config
write_config() {
    local host node_line mem_cpus ctld_addr=127.0.0.1
    host="$(hostname -s)"
    multi && ctld_addr="$NET.254"
    # real CPU topology + memory of this machine, e.g.
    # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
    node_line="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=' || true)"
    [ -n "$node_line" ] || node_line="NodeName=$host CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 256 ))"
    node_line="$(sed -E "s/^NodeName=[^ ]+//" <<<"$node_line")"
    # Advertise at least 64 GB (memory is not enforced without cgroups) so that rules asking for the
    # memory they would get on a real cluster (mem_mb=16000 ...) are schedulable on small CI machines;
    # SlurmdParameters=config_overrides stops slurmd from draining a node "bigger" than the machine.
    local real_mem
    real_mem="$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$node_line")"
    [ -n "$MEM_MB" ] || MEM_MB=$(( ${real_mem:-0} > 65536 ? ${real_mem:-0} : 65536 ))
    node_line="$(sed -E "s/ RealMemory=[0-9]+//" <<<"$node_line") RealMemory=$MEM_MB"

    mkdir -p "$STATE_DIR"/{etc,spool/ctld,spool/d,dev} "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR"
    wanted_nodes >"$NODES_FILE"
    if multi; then for n in $(wanted_nodes); do mkdir -p "$STATE_DIR/spool/d-$n"; done; fi
    chmod 0755 "$STATE_DIR" "$STATE_DIR"/{etc,spool,spool/ctld,spool/d,dev} "$RUN_DIR" "$LOG_DIR"
    chmod 0700 "$MUNGE_DIR"

    # Fake GPU devices: character devices are all Slurm needs for a File= GRES (without a File=,
    # a GPU GRES that slurmd cannot back makes the node INVAL). They are /dev/null clones (1:3).
    local i files=()
    for ((i = 0; i < NGPUS; i++)); do
        local dev="$STATE_DIR/dev/nvidia$i"
        if [ ! -c "$dev" ]; then
            rm -f "$dev"
            mknod -m 0666 "$dev" c 1 3 2>/dev/null || ln -sf /dev/null "$dev"
        fi
        files+=("$dev")
    done

    local n nodes=() node_defs=""
    mapfile -t nodes < <(wanted_nodes)
    {
        echo "# generated by scripts/slurm-local.sh -- test cluster, do not edit"
        for n in "${nodes[@]}"; do
            for f in "${files[@]}"; do echo "NodeName=$n Name=gpu Type=$GPU_TYPE File=$f"; done
        done
    } >"$GRES_CONF"
    if multi; then  # node i: namespace ts-tsn<i> at $NET.<i>; per-node slurmd pid/log/spool (%n = node name)
        for ((i = 0; i < NNODES; i++)); do
            node_defs+="NodeName=${nodes[$i]} NodeAddr=$NET.$((i + 1)) NodeHostname=${nodes[$i]} $node_line Gres=gpu:$GPU_TYPE:$NGPUS State=UNKNOWN"$'\n'
        done
    else
        node_defs="NodeName=$host NodeAddr=127.0.0.1 $node_line Gres=gpu:$GPU_TYPE:$NGPUS State=UNKNOWN"$'\n'
    fi
    local dsuffix=""
    multi && dsuffix="-%n"

    cat >"$CONF" <<EOF
# generated by scripts/slurm-local.sh -- test cluster ($NNODES node(s)), do not edit
ClusterName=tokenscale-local
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d$dsuffix
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd$dsuffix.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd$dsuffix.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd, no slurmdbd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
LaunchParameters=use_interactive_step
# the node's CPUs/memory/GRES come from this file, not from probing the hardware
SlurmdParameters=config_overrides
# scheduling: cores + memory are consumable, GPUs via GRES
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
GresTypes=gpu
# squeue-based status checks need finished jobs to stay visible for a while
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
SlurmdTimeout=300
SlurmctldTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
${node_defs}PartitionName=$PARTITION Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$CONF" "$GRES_CONF"

    # private munge key (never touches /etc/munge)
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        (umask 077; dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none)
    fi
    chmod 0600 "$MUNGE_DIR/munge.key"
}

link_run_conf() {
    if [ -e /etc/slurm/slurm.conf ]; then
        log "WARNING: /etc/slurm/slurm.conf exists; srun inside jobs (SLURM_CONF is stripped by the"
        log "         snakemake jobstep plugin) will use it instead of $CONF"
    fi
    if [ -L "$RUN_CONF_LINK" ] || [ ! -e "$RUN_CONF_LINK" ]; then
        mkdir -p "$(dirname "$RUN_CONF_LINK")"
        ln -sfn "$STATE_DIR/etc" "$RUN_CONF_LINK"
    else
        log "WARNING: $RUN_CONF_LINK is a real directory (a configless slurmd?); not replacing it --"
        log "         srun inside snakemake jobs may not find $CONF"
    fi
}

unlink_run_conf() {
    if [ -L "$RUN_CONF_LINK" ] && [ "$(readlink "$RUN_CONF_LINK")" = "$STATE_DIR/etc" ]; then
        rm -f "$RUN_CONF_LINK"
        rmdir "$(dirname "$RUN_CONF_LINK")" 2>/dev/null || true
    fi
}

wait_for() {  # wait_for DESCRIPTION LOGFILE COMMAND...
    local what="$1" logf="$2"; shift 2
    local deadline=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${WAIT_S}s waiting for $what; last lines of $logf:"
            tail -n 25 "$logf" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

node_state() { SLURM_CONF="$CONF" sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1; }
node_states() { local n; for n in $(cluster_nodes); do printf '%s=%s ' "$n" "$(node_state "$n")"; done; }
node_idle() { local n; for n in $(cluster_nodes); do [ "$(node_state "$n")" = "idle" ] || return 1; done; }
munge_ok() { munge -n --socket="$MUNGE_SOCKET" | unmunge --socket="$MUNGE_SOCKET"; }
ctld_ok() { SLURM_CONF="$CONF" scontrol ping | grep -q 'is UP'; }

cmd_start() {
    need_root start
    local missing t0=$SECONDS
    missing="$(missing_binaries)"
    [ -z "$missing" ] || die "missing binaries: $missing -- run '$0 install' first"

    # idempotent: stop whatever a previous start left behind, then start from a clean spool
    [ -n "$(our_pids)" ] && { log "stopping stale daemons first"; cmd_stop; }
    rm -rf "$STATE_DIR/spool" "$LOG_DIR"
    net_down  # a namespace cluster's leftovers (its daemons may have died without a stop)
    if multi; then net_up; fi
    write_config
    link_run_conf

    export SLURM_CONF="$CONF"
    # the marker goes only into the daemons' environment (not this shell's, or `stop` would find
    # this script's own subshells)

    log "starting munged"
    env "$OWNER_MARK" munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null
    wait_for munged "$LOG_DIR/munged.log" munge_ok || { cmd_stop || true; die "munged did not come up"; }

    log "starting slurmctld"
    env "$OWNER_MARK" slurmctld -f "$CONF" -i </dev/null
    wait_for slurmctld "$LOG_DIR/slurmctld.log" ctld_ok || { cmd_stop || true; die "slurmctld did not come up"; }

    local n dlog="$LOG_DIR/slurmd.log"
    if multi; then
        # one slurmd per namespace, its host name the node's (a rank's gethostname() resolves to its node)
        for n in $(wanted_nodes); do
            log "starting slurmd $n in network namespace $(netns_of "$n")"
            # nsenter, not `ip netns exec`: the latter mounts a fresh /sys without /sys/fs/cgroup, and slurmd
            # 22.05 will not start without its cgroup plugin's mount
            env "$OWNER_MARK" nsenter --net="/run/netns/$(netns_of "$n")" unshare --uts \
                sh -c 'hostname "$1" && exec slurmd -f "$2" -N "$1"' sh "$n" "$CONF" </dev/null \
                || { cmd_stop || true; die "slurmd $n did not start (nsenter --net=/run/netns/$(netns_of "$n") unshare --uts slurmd -N $n): $(tail -n 3 "$LOG_DIR/slurmd-$n.log" 2>/dev/null | tr '\n' ' ')"; }
        done
        dlog="$LOG_DIR/slurmd-${NODE_PREFIX}1.log"
    else
        log "starting slurmd"
        env "$OWNER_MARK" slurmd -f "$CONF" </dev/null
    fi
    wait_for "nodes idle" "$dlog" node_idle || {
        log "node states: $(node_states); reason: $(SLURM_CONF="$CONF" sinfo -h -R 2>/dev/null)"
        cmd_stop || true
        die "the nodes did not become idle"
    }
    log "cluster up in $((SECONDS - t0)) s ($NNODES node(s) $(cluster_nodes | tr '\n' ' ')each $(nproc) CPUs, gpu:$GPU_TYPE:$NGPUS, partition $PARTITION)"
    echo "export SLURM_CONF=$CONF"
}

cmd_status() {
    local pids rc=0 name f pid n
    for name in munged slurmctld $(cluster_nodes | sed 's/^/slurmd:/'); do
        f="$RUN_DIR/$name.pid"
        case "$name" in slurmd:*) f="$(slurmd_pidfile "${name#slurmd:}")" ;; esac
        pid="$( [ -f "$f" ] && tr -dc '0-9' <"$f" || true)"
        [ "$name" = "slurmd:$(hostname -s)" ] && [ "$(cluster_nodes | wc -l)" -eq 1 ] && name=slurmd
        if [ -n "$pid" ] && alive "$pid"; then
            log "${name/:/ } running (PID $pid)"
        else
            log "${name/:/ } NOT running"; rc=1
        fi
    done
    pids="$(our_pids | tr '\n' ' ')"
    log "all PIDs owned by $STATE_DIR: ${pids:-none}"
    if [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 5 sinfo >/dev/null 2>&1; then
        SLURM_CONF="$CONF" timeout 5 sinfo -N -o '%N %P %T %c %m %G' || true
        for n in $(cluster_nodes); do
            case "$(node_state "$n")" in idle|mixed|allocated|completing) ;; *) rc=1 ;; esac
        done
    else
        log "sinfo cannot reach the controller"; rc=1
    fi
    [ "$rc" -eq 0 ] && echo "export SLURM_CONF=$CONF"
    return "$rc"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 {install|start|stop|status|restart|env}" >&2; exit 2 ;;
esac
