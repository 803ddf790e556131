# shellcheck shell=bash
# What scripts/dev-up, dev-restart, dev-down and demo share: starting one service the way
# dev-up does and stopping it. Sourced (not run) from the repository root, with STATE set
# to the state directory (default .local/dev):
#   $STATE/env          the services' environment, written by dev-up
#   $STATE/NAME.pid     the pid of each running service (what dev-down stops)
#   $STATE/logs/NAME.log  each service's log (appended to on every start)

STATE=${STATE:-${DEV_STATE:-.local/dev}}

# dev_setting NAME: prints the variable NAME of $STATE/env.
dev_setting() {
  (
    # shellcheck disable=SC1091
    . "$STATE/env"
    printf '%s\n' "${!1:-}"
  )
}

# dev_port SERVICE: the port SERVICE listens on, from its *_LISTEN_ADDR in $STATE/env.
dev_port() {
  local addr
  addr=$(dev_setting "${1^^}_LISTEN_ADDR")
  printf '%s\n' "${addr##*:}"
}

# dev_alive PID: whether PID runs (an exited process not yet reaped does not).
dev_alive() {
  kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]
}

# dev_running SERVICE: whether the pid recorded for SERVICE is alive.
dev_running() {
  local pidfile=$STATE/$1.pid
  [ -f "$pidfile" ] && dev_alive "$(cat "$pidfile")"
}

# dev_stop SERVICE: SIGTERM to its recorded pid, SIGKILL after 15 s; forgets the pid.
# Nothing to do (and success) when it does not run.
dev_stop() {
  local name=$1 pidfile=$STATE/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if dev_alive "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do dev_alive "$pid" || break; sleep 0.1; done
    dev_alive "$pid" && kill -KILL "$pid"
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

# dev_startup_error LOG OFFSET: from what LOG holds past byte OFFSET (one start-up's
# output), the error a service exited with and its causes, one line each: the
# `Error: …` / `Caused by:` report main prints, or a panic's message, or (neither
# found) the last ERROR lines of its JSON log, or else its last lines.
dev_startup_error() {
  python3 - "$1" "$2" <<'PY'
import json, re, sys

path, offset = sys.argv[1], int(sys.argv[2])
with open(path, "rb") as f:
    f.seek(offset)
    lines = f.read().decode("utf-8", "replace").splitlines()

def report(start):
    """The anyhow report from lines[start] ("Error: ...") up to its backtrace."""
    out = ["error: " + lines[start][len("Error: "):]]
    for line in lines[start + 1:]:
        if line.startswith("Stack backtrace:") or line.startswith("{"):
            break
        cause = re.sub(r"^\s*(\d+:\s*)?", "", line)
        if line.strip() and line.strip() != "Caused by:":
            out.append("  caused by: " + cause)
    return out

found = []
for i, line in enumerate(lines):
    if line.startswith("Error: "):
        found = report(i)
    elif "panicked at" in line and line.startswith("thread "):
        message = [l for l in lines[i + 1:i + 4] if l.strip() and not l.startswith("note:")]
        found = ["panic: " + line.split("panicked at", 1)[1].strip().rstrip(":")]
        found += ["  " + m for m in message[:2]]
if not found:
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") == "ERROR":
            extra = entry.get("error")
            found.append("logged: " + entry.get("message", "") + (f": {extra}" if extra else ""))
    found = found[-3:]
if not found:
    found = [l for l in lines if l.strip() and not re.match(r"^\s+(\d+:|at )", l)][-5:]
for line in found:
    print("  " + line)
PY
}

# dev_start SERVICE [VAR=VALUE...]: starts SERVICE's binary with the environment of
# $STATE/env (plus the overrides), appending to its log, records its pid and waits until
# /health/ready answers. When it exits during start-up, prints its error and causes and
# returns 1; also 1 when its port is taken or it is not ready within 60 s.
dev_start() {
  local name=$1 port target log from pid status
  shift
  port=$(dev_port "$name")
  target=$(dev_setting DEV_TARGET)
  target=${target:-target}
  log=$STATE/logs/$name.log
  mkdir -p "$STATE/logs"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port (for $name) is taken by another process, e.g. a $name started by hand" >&2
    echo "or a stack not stopped with scripts/dev-down; free it or set ${name^^}_PORT" >&2
    return 1
  fi
  from=$(stat -c %s "$log" 2>/dev/null || echo 0)
  (
    # shellcheck disable=SC1091
    . "$STATE/env" && exec env "$@" nohup "$target/debug/$name"
  ) >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$STATE/$name.pid"
  for _ in $(seq 1 300); do
    if curl -fsS -m 2 "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; then
      echo "  $name ready on http://127.0.0.1:$port (pid $pid, log $log)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      rm -f "$STATE/$name.pid"
      echo "$name exited during start-up (exit status $status):" >&2
      dev_startup_error "$log" "$from" >&2
      echo "  (its whole log: $log)" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "$name did not become ready within 60 s (pid $pid); see $log" >&2
  return 1
}
