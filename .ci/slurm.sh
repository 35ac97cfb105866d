#!/usr/bin/env bash
# Install and start a one-node Slurm cluster (munged + slurmctld + slurmd) on this machine,
# for the tests and CI (the submitit launcher). Debian 12 packages, no systemd: the daemons
# are started directly. Needs root. Safe to rerun: it does nothing when the cluster is
# already up with this config, and recovers from dead daemons / stale pid files.
#
#   sudo .ci/slurm.sh           # install, configure, start, verify
#   SLURM_VERIFY=0 .ci/slurm.sh # skip the srun/sbatch/scancel checks at the end
#   SLURM_SACCT_SHIM=0 ...      # do not install /usr/local/bin/sacct (see below; it is
#                               # what lets submitit see cancelled/killed jobs end)
#
# One line on stdout at the end; errors go to stderr, with the tail of the daemons' logs.
set -euo pipefail

t0=$SECONDS
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
PARTITION=debug
# The daemons get a clean environment, not the caller's (venv, OMP_NUM_THREADS, ...).
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

log() { echo "slurm.sh: $*" >&2; }

show_logs() {
    local f
    for f in /var/log/munge/munged.log "$LOG_DIR"/slurmctld.out "$LOG_DIR"/slurmctld.log \
        "$LOG_DIR"/slurmd.out "$LOG_DIR"/slurmd.log; do
        [[ -s $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 15 "$f" >&2
    done
}

die() {
    log "error: $*"
    show_logs
    exit 1
}

# Bounded wait: wait_for SECONDS DESCRIPTION CMD... (polls CMD every 0.5 s)
wait_for() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < end)) || { log "timed out after ${limit} s waiting for $what"; return 1; }
        sleep 0.5
    done
}

# pid_alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME.
pid_alive() {
    local pid stat
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$2" ]] || return 1
    stat=$(</proc/"$pid"/stat) || return 1
    stat=${stat##*) } # "pid (comm) S ...": the state letter follows the comm
    [[ ${stat:0:1} != Z ]]
}

pid_gone() { ! pid_alive "$@"; }

# stop_daemon PIDFILE NAME: SIGTERM the pid from PIDFILE, wait for it to exit (SIGKILL after 15 s).
stop_daemon() {
    pid_alive "$1" "$2" || return 0
    local pid
    pid=$(<"$1")
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 15 "$2 (pid $pid) to exit" pid_gone "$1" "$2"; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
}

[[ $EUID -eq 0 ]] || die "must run as root (it installs packages and starts system daemons)"

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    # Keep the packages' maintainer scripts from trying to start the daemons (no init system here).
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$apt_log" 2>&1 || rc=$?
    ((policy_created)) && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (exit $rc)"
    fi
    rm -f "$apt_log"
fi

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s $MUNGE_KEY ]]; then
    if command -v mungekey >/dev/null; then
        rm -f "$MUNGE_KEY"
        mungekey --create --keyfile="$MUNGE_KEY" >/dev/null
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    # A munged left over from before (e.g. wedged) would keep the socket: stop it first.
    stop_daemon /run/munge/munged.pid munged
    "${DAEMON_ENV[@]}" runuser -u munge -- /usr/sbin/munged \
        >>/var/log/munge/munged.out 2>&1 </dev/null \
        || die "munged failed to start (see /var/log/munge/munged.out)"
    wait_for 10 "munge -n | unmunge to succeed" munge_ok || die "munge does not work"
fi

# ---------------------------------------------------------------- slurm.conf
NODE=$(hostname -s)
# nproc honours OMP_NUM_THREADS / OMP_THREAD_LIMIT, which CI often sets: ignore them here.
NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
HW=$(slurmd -C 2>/dev/null | head -n 1) || true
[[ $HW == NodeName=* ]] || die "slurmd -C printed no node line: '$HW'"
hw() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<" $HW"; }
HW_CPUS=$(hw CPUs)
HW_MEM=$(hw RealMemory)
[[ -n $HW_MEM && $HW_MEM -gt 0 ]] || die "no RealMemory in slurmd -C output: '$HW'"
# A bit below what the node reports, so the node never drains for "Low RealMemory".
MEM=$((HW_MEM * 95 / 100))
if [[ $HW_CPUS == "$NCPU" ]]; then
    TOPO="Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
else
    TOPO="" # affinity-restricted: just the CPU count (the node may have more than configured)
fi

IFS= read -r -d '' conf_new <<EOF || true
# Written by .ci/slurm.sh: a one-node test cluster (no cgroups, no accounting).
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Schedule batch jobs at submit time (default: up to 3 s later).
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Reject at submission what can never run here (e.g. more CPUs than the node has)
# instead of leaving it pending forever.
EnforcePartLimits=ALL
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Short timeouts for tests.
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
KillWait=5
InactiveLimit=0
# Ended jobs stay visible to squeue (and the sacct stand-in) for an hour.
MinJobAge=3600
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU $TOPO RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
conf_new=${conf_new%$'\n'}

install -d -m 0755 /etc/slurm "$LOG_DIR" "$RUN_DIR"
install -d -m 0755 "$CTLD_SPOOL" "$SLURMD_SPOOL"
chown root:root "$CTLD_SPOOL" "$SLURMD_SPOOL"

conf_changed=0
if [[ ! -f $CONF ]] || [[ $(<"$CONF") != "$conf_new" ]]; then
    printf '%s\n' "$conf_new" >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    conf_changed=1
fi

# ---------------------------------------------------------------- sacct stand-in
SHIM=/usr/local/bin/sacct
SHIM_MARK="sacct stand-in, written by .ci/slurm.sh"
if [[ ${SLURM_SACCT_SHIM:-1} != 0 ]]; then
    # (read, not $(cat <<...): older bashes misparse the ")" of case patterns in a $(...) heredoc)
    IFS= read -r -d '' shim_new <<'SHIM_EOF' || true
#!/usr/bin/env bash
# sacct stand-in, written by .ci/slurm.sh: this test cluster has no accounting
# (AccountingStorageType=accounting_storage/none), so the real sacct only says
# "Slurm accounting storage is disabled", and submitit, which polls
# "sacct -o JobID,State,NodeList --parsable2 -j ID...", never sees a job end unless it
# wrote its result (a cancelled, timed-out or killed job then blocks job.result()).
# This answers such queries from squeue, which keeps ended jobs for MinJobAge seconds.
# Options: -j/--jobs, -o/--format, -p/--parsable2/--parsable, -n/--noheader; others ignored.
set -uo pipefail
if out=$(/usr/bin/sacct "$@" 2>&1); then
    printf '%s\n' "$out"
    exit 0
fi
[[ $out == *"accounting storage is disabled"* ]] || { printf '%s\n' "$out" >&2; exit 1; }

fields=JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode
jobs=() header=1 sep='|' trail=''
while (($#)); do
    case $1 in
    -j | --jobs) jobs+=("$2"); shift ;;
    --jobs=*) jobs+=("${1#*=}") ;;
    -o | --format) fields=$2; shift ;;
    --format=*) fields=${1#*=} ;;
    -P | --parsable2) trail='' ;;
    -p | --parsable) trail='|' ;;
    -n | --noheader) header=0 ;;
    esac
    shift
done
fmt=''
IFS=, read -ra names <<<"$fields"
for f in "${names[@]}"; do
    f=${f%%%*} # "State%20" -> "State"
    case ${f,,} in
    jobid | jobidraw) c=%i ;; jobname) c=%j ;; state) c=%T ;; nodelist) c=%N ;;
    partition) c=%P ;; user) c=%u ;; alloccpus | ncpus) c=%C ;; start) c=%S ;; end) c=%e ;;
    *) c='' ;;
    esac
    fmt+="${fmt:+$sep}$c"
done
((header)) && (IFS=$sep; printf '%s%s\n' "${names[*]%%%*}" "$trail")
if ((${#jobs[@]})); then
    ids=$(IFS=,; echo "${jobs[*]}")
    # One query per id: squeue fails on the whole list if one id is unknown (purged).
    IFS=, read -ra idlist <<<"$ids"
    for id in "${idlist[@]}"; do
        squeue -h -t all -j "$id" -o "$fmt$trail" 2>/dev/null
    done
else
    squeue -h -t all -o "$fmt$trail" 2>/dev/null
fi
exit 0
SHIM_EOF
    shim_new=${shim_new%$'\n'}
    if [[ ! -f $SHIM ]] || [[ $(<"$SHIM") != "$shim_new" ]]; then
        if [[ -e $SHIM ]] && ! grep -q "$SHIM_MARK" "$SHIM"; then
            die "$SHIM exists and is not ours: not replacing it (SLURM_SACCT_SHIM=0 skips the stand-in)"
        fi
        install -d /usr/local/bin
        printf '%s\n' "$shim_new" >"$SHIM.tmp"
        chmod 0755 "$SHIM.tmp"
        mv -f "$SHIM.tmp" "$SHIM"
    fi
elif [[ -f $SHIM ]] && grep -q "$SHIM_MARK" "$SHIM"; then
    rm -f "$SHIM"
fi

# ---------------------------------------------------------------- daemons
if ((conf_changed)); then
    # Daemons running with another config: restart them on this one.
    stop_daemon "$RUN_DIR/slurmd.pid" slurmd
    stop_daemon "$RUN_DIR/slurmctld.pid" slurmctld
fi

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
    rm -f "$RUN_DIR/slurmctld.pid"
    if pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
        # Only slurmctld died: keep its saved jobs (-i: even if the state files are damaged).
        ctld_args=(-i)
    else
        # Cold start (first start, new config, reboot/container restart): the jobs saved from
        # before cannot be running any more; -c drops them instead of counting them as running.
        ctld_args=(-c)
    fi
    "${DAEMON_ENV[@]}" slurmctld "${ctld_args[@]}" >>"$LOG_DIR/slurmctld.out" 2>&1 </dev/null \
        || die "slurmctld failed to start"
fi
wait_for 30 "slurmctld to answer scontrol ping" ctld_up || die "slurmctld is not up"

# No live slurmstepd: no job step can be running on this machine.
# shellcheck disable=SC2009 # pgrep cannot skip zombies
no_stepd() { ! ps -C slurmstepd -o stat= 2>/dev/null | grep -qv '^Z'; }

slurmd_started=""
if ! pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
    rm -f "$RUN_DIR/slurmd.pid"
    # Sockets of steps killed with slurmd (crash, container restart) make it slow to kill jobs.
    if no_stepd; then
        find "$SLURMD_SPOOL" -maxdepth 1 \( -type s -name "${NODE}_*" -o -name 'hwloc_topo_[0-9]*' \) -delete
    fi
    slurmd_started=$(date +%Y-%m-%dT%H:%M:%S)
    "${DAEMON_ENV[@]}" slurmd >>"$LOG_DIR/slurmd.out" 2>&1 </dev/null \
        || die "slurmd failed to start"
fi

# Wait for the node to register and be usable; resume it if it is DOWN/DRAINED.
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle ]]; }
end=$((SECONDS + 60))
last_resume=-100
while :; do
    state=$(node_state)
    case $state in
    idle | mixed | allocated | completing) break ;;
    *down* | *drain* | *fail*)
        # Only useful once slurmd answers ("*" = not responding); ReturnToService=2 does the rest.
        if [[ $state != *'*' ]] && ((SECONDS - last_resume >= 5)); then
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
            last_resume=$SECONDS
        fi
        ;;
    esac
    if ((SECONDS >= end)); then
        sinfo -N -l >&2 || true
        scontrol show node "$NODE" >&2 || true
        die "node $NODE is '${state:-unknown}', not idle, 60 s after starting slurmd"
    fi
    pid_alive "$RUN_DIR/slurmd.pid" slurmd || die "slurmd died (node state '${state:-unknown}')"
    sleep 0.5
done

# After slurmd died (crash, container restart) slurmctld may still count jobs as running on the
# node, holding its CPUs forever. With no live slurmstepd none of them can be: cancel those that
# started before this slurmd.
if [[ -n $slurmd_started ]] && no_stepd; then
    stale=$(squeue -h -w "$NODE" -t RUNNING,SUSPENDED -o '%i %S' 2>/dev/null \
        | awk -v t="$slurmd_started" '$2 < t { print $1 }')
    if [[ -n $stale ]]; then
        log "note: cancelling jobs left from before slurmd restarted: ${stale//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $stale || true
        # Right after slurmd's start these can stay "completing" for 20-30 s.
        wait_for 60 "node $NODE to be idle after cancelling stale jobs" node_idle || true
    fi
fi

# ---------------------------------------------------------------- verify
if [[ ${SLURM_VERIFY:-1} != 0 ]]; then
    jobs_submitted=()
    cleanup_jobs() { if ((${#jobs_submitted[@]})); then scancel "${jobs_submitted[@]}" 2>/dev/null || true; fi; }
    trap cleanup_jobs EXIT
    job_state() { squeue -h -j "$1" -o %T 2>/dev/null || true; }
    is_running() { [[ $(job_state "$1") == RUNNING ]]; }
    is_gone() { [[ -z $(job_state "$1") ]]; }
    submit() { # prints the job id
        sbatch --parsable -p "$PARTITION" -t 2 -o /dev/null -e /dev/null -D /tmp -J slurm-sh-check "$@" \
            | cut -d';' -f1
    }

    # Retried: after an unclean slurmctld stop the first new job id can be one whose
    # credential slurmd has just revoked (an orphaned step it was told to kill).
    for try in 1 2 3; do
        out=$(timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 -D /tmp hostname 2>&1) && break
        ((try < 3)) || die "srun -N1 -n1 hostname failed: $out"
        sleep 1
    done

    j=$(submit --wrap 'sleep 30') || die "sbatch --wrap 'sleep 30' failed"
    jobs_submitted+=("$j")
    wait_for 20 "job $j (sleep 30) to run" is_running "$j" || die "job $j did not start: $(job_state "$j")"
    scancel "$j" || die "scancel $j failed"
    wait_for 15 "job $j to leave squeue after scancel" is_gone "$j" \
        || die "job $j still in squeue after scancel: $(job_state "$j")"

    # Needs the whole node: skipped (with a note) while other jobs hold CPUs.
    wait_for 3 "node $NODE to be idle again" node_idle 2>/dev/null || true
    if node_idle && ((NCPU >= 2)); then
        j1=$(submit -c 1 --wrap 'sleep 5') || die "sbatch -c 1 failed"
        jobs_submitted+=("$j1")
        j2=$(submit -c 1 --wrap 'sleep 5') || die "sbatch -c 1 failed"
        jobs_submitted+=("$j2")
        both_running() { is_running "$j1" && is_running "$j2"; }
        wait_for 15 "jobs $j1 and $j2 to run at the same time" both_running \
            || die "two 1-CPU jobs did not run concurrently: $j1 $(job_state "$j1"), $j2 $(job_state "$j2")"
        scancel "$j1" "$j2" || true
    else
        log "note: skipped the two-concurrent-jobs check (node $(node_state), $NCPU CPUs)"
    fi
    cleanup_jobs
    jobs_submitted=()
fi

echo "slurm: one node ($NODE, $NCPU CPUs) up in $((SECONDS - t0)) s"
