# shellcheck shell=bash
# What the ci/ scripts share: logging, dying with a message, one run at a time (a lock), waiting
# with a deadline, stopping a process of their own, and a Go module's files. Sourced, never run:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Messages go to stderr, so that a script's stdout holds only its answers (a kubeconfig's path,
# `ci/images env`'s variables). Each one names the script (log_name, by default the script's file
# name), the time and the seconds since the script started.

log_name=${log_name:-$(basename "$0")}

log() { printf '[%s %(%H:%M:%S)T +%ss] %s\n' "$log_name" -1 "$SECONDS" "$*" >&2; }

die() {
  log "ERROR: $*"
  exit 1
}

# hold_lock PATH WHO: an exclusive lock on PATH (a folder, or a file made if missing), held on
# file descriptor 9 until the script exits; while WHO ("another ci/tools run") holds it, says so
# and waits. A process started to outlive the script must not inherit the lock: give it 9<&-.
hold_lock() {
  local path=$1 who=$2
  if [ -d "$path" ]; then exec 9<"$path"; else exec 9>>"$path"; fi
  flock -n 9 || {
    log "$who holds $path; waiting for it"
    flock 9
  }
}

# wait_until SECONDS EVERY COMMAND...: runs COMMAND every EVERY seconds until it succeeds (0) or
# SECONDS have passed (1). COMMAND may give up sooner by itself (die: the process it waits for
# has exited).
wait_until() {
  local deadline=$((SECONDS + $1)) every=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep "$every"
  done
}

# gone PID: no such process, or only its exit status is left (a zombie: a child of this script
# that it has not waited for).
gone() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  [[ $stat == *") Z "* ]]
}

# our_pid PIDFILE PATTERN: prints the pid in PIDFILE if that process still runs and its command
# line matches PATTERN (grep's), so that a recycled pid is never taken for ours.
our_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
  echo "$pid"
}

# stop_pid PID SECONDS [NAME]: TERM, then KILL if it is still there after SECONDS; returns once it
# is gone (1 if even KILL did not end it within 10 seconds).
stop_pid() {
  local pid=$1 name=${3:-pid $1}
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_until "$2" 0.2 gone "$pid" && return 0
  log "$name: still running ${2}s after SIGTERM, killing pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  wait_until 10 0.1 gone "$pid"
}

# go_module_dir MODULE@VERSION: the module's folder in the Go module cache ($GOMODCACHE), which Go
# downloads from its proxy and checks against its checksum database if it is not there yet. Run in
# a Go module's folder, Go also checks it against that module's go.sum.
go_module_dir() {
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
