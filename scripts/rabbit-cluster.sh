#!/usr/bin/env bash
# A throw-away 3-node RabbitMQ cluster beside the system broker, for failover tests and the fleet
# benchmark. Nodes clu1..clu3@localhost, AMQP 5701-5703, distribution 25701-25703, everything
# (data, logs, config, its own HOME with its own Erlang cookie) under $CLUSTER_DIR. It never
# touches the system node rabbit@localhost, its cookie or the shared epmd.
#
#   rabbit-cluster.sh start            start (or complete) the cluster; sweeps nodes left by a killed run
#   rabbit-cluster.sh stop             stop every node and delete $CLUSTER_DIR
#   rabbit-cluster.sh kill N           kill -9 node N (1..3)
#   rabbit-cluster.sh freeze N         SIGSTOP node N        thaw N: SIGCONT
#   rabbit-cluster.sh start-node N     start node N again (rejoins with its data); waits until it runs
#   rabbit-cluster.sh stop-node N      graceful stop of node N
#   rabbit-cluster.sh leader QUEUE     node name of the quorum leader of QUEUE (vhost /)
#   rabbit-cluster.sh pid N            OS pid of node N's Erlang VM
#   rabbit-cluster.sh ctl N ARGS...    rabbitmqctl against node N with the cluster's cookie
#   rabbit-cluster.sh status           one line per node: name, pid, running or not
#
# Idempotent: start on a running cluster only checks it; stop on nothing does nothing.
set -euo pipefail

CLUSTER_DIR="${CLUSTER_DIR:-/tmp/clvm-cluster}"
NODES=(1 2 3)
BIN=/usr/lib/rabbitmq/bin
# Test tuning: a dead or frozen peer is noticed in ~net_ticktime (default 60 s); autoheal so a
# resumed, frozen node rejoins instead of staying partitioned (the default 'ignore' leaves it).
NET_TICKTIME="${CLUSTER_NET_TICKTIME:-8}"

node_name() { echo "clu$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }
dist_port() { echo $((25700 + $1)); }
node_dir() { echo "$CLUSTER_DIR/clu$1"; }

# Environment of the server scripts and the CLI for node N: nothing read from /etc/rabbitmq.
node_env() {
  local n=$1 dir
  dir=$(node_dir "$n")
  export HOME="$CLUSTER_DIR/home"
  export RABBITMQ_CONF_ENV_FILE="$CLUSTER_DIR/empty-env.conf"
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$n")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(amqp_port "$n")
  export RABBITMQ_DIST_PORT
  RABBITMQ_DIST_PORT=$(dist_port "$n")
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_MNESIA_DIR="$dir/mnesia/$RABBITMQ_NODENAME"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/pid"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel net_ticktime $NET_TICKTIME"
  export ERL_EPMD_ADDRESS=127.0.0.1
  unset ERL_FLAGS RABBITMQ_ENABLED_PLUGINS
}

ctl() {
  local n=$1
  shift
  (node_env "$n" && "$BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@")
}

# True when process PID is node N's Erlang VM. 3.10 names the node at run time (not on the command
# line), so look at the environment the server script exported to it.
is_node() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = beam.smp ] || return 1
  { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$(node_name "$2")"
}

# The VM's pid when it is alive and really is node N (a stale pid file can name a reused pid).
node_pid() {
  local n=$1 file pid
  file="$(node_dir "$n")/pid"
  [ -f "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  is_node "$pid" "$n" || return 1
  echo "$pid"
}

# Pids of node N's VM found by its exact node name, for nodes whose pid file is gone (killed run).
stray_pids() {
  local n=$1 pid
  for pid in $(pgrep -x beam.smp || true); do
    is_node "$pid" "$n" && echo "$pid"
  done
  return 0
}

write_config() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
cluster_partition_handling = autoheal
loopback_users = none
log.console = false
log.file.level = info
EOF
  echo '[].' >"$dir/advanced.config"
  echo '[].' >"$dir/enabled_plugins"
}

start_node() {
  local n=$1
  if node_pid "$n" >/dev/null; then
    ctl "$n" await_startup --timeout 60 >/dev/null
    return 0
  fi
  for pid in $(stray_pids "$n"); do kill -9 "$pid" 2>/dev/null || true; done
  write_config "$n"
  rm -f "$(node_dir "$n")/pid"
  (node_env "$n" && cd "$CLUSTER_DIR" && "$BIN/rabbitmq-server" -detached >>"$(node_dir "$n")/log/start.out" 2>&1)
  local i
  for i in $(seq 1 120); do
    node_pid "$n" >/dev/null && break
    sleep 0.25
  done
  node_pid "$n" >/dev/null || {
    echo "rabbit-cluster: $(node_name "$n") did not start; see $(node_dir "$n")/log" >&2
    return 1
  }
  ctl "$n" await_startup --timeout 90 >/dev/null
}

in_cluster() {
  ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$1")\""
}

cmd_start() {
  mkdir -p "$CLUSTER_DIR/home"
  : >"$CLUSTER_DIR/empty-env.conf"
  local cookie="$CLUSTER_DIR/home/.erlang.cookie"
  if [ ! -f "$cookie" ]; then
    # Own cookie, distinct from the system node's: our CLI calls cannot reach rabbit@localhost.
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z' | head -c 20 >"$cookie"
    chmod 400 "$cookie"
  fi
  local n
  for n in "${NODES[@]}"; do start_node "$n" & done
  wait
  for n in "${NODES[@]}"; do node_pid "$n" >/dev/null || { echo "rabbit-cluster: clu$n not running" >&2; exit 1; }; done
  for n in 2 3; do
    if ! in_cluster "$n"; then
      ctl "$n" stop_app >/dev/null
      ctl "$n" reset >/dev/null
      ctl "$n" join_cluster "$(node_name 1)" >/dev/null 2>&1
      ctl "$n" start_app >/dev/null
      ctl "$n" await_startup --timeout 60 >/dev/null
    fi
  done
  for n in "${NODES[@]}"; do in_cluster "$n" || { echo "rabbit-cluster: clu$n did not join" >&2; exit 1; }; done
  echo "rabbit-cluster: running: amqp://guest:guest@127.0.0.1:5701 5702 5703 (data $CLUSTER_DIR)"
}

cmd_stop() {
  local n pid
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n" || true)
    for p in $pid $(stray_pids "$n"); do
      kill -CONT "$p" 2>/dev/null || true
      kill -9 "$p" 2>/dev/null || true
    done
  done
  for n in "${NODES[@]}"; do
    for _ in $(seq 1 40); do
      [ -z "$(stray_pids "$n")" ] && break
      sleep 0.1
    done
  done
  rm -rf "$CLUSTER_DIR"
}

need_n() {
  case "${1:-}" in 1 | 2 | 3) ;; *) echo "rabbit-cluster: node number 1..3 expected, got '${1:-}'" >&2; exit 2 ;; esac
}

signal_node() {
  local n=$1 sig=$2 pid
  pid=$(node_pid "$n") || { echo "rabbit-cluster: clu$n is not running" >&2; exit 1; }
  kill "-$sig" "$pid"
  if [ "$sig" = KILL ]; then
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
}

[ -x "$BIN/rabbitmq-server" ] || {
  echo "rabbit-cluster: $BIN/rabbitmq-server missing: install the Debian package rabbitmq-server" >&2
  exit 1
}

cmd=${1:-}
shift || true
case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) need_n "${1:-}"; signal_node "$1" KILL ;;
  freeze) need_n "${1:-}"; signal_node "$1" STOP ;;
  thaw) need_n "${1:-}"; signal_node "$1" CONT ;;
  start-node) need_n "${1:-}"; start_node "$1" ;;
  stop-node) need_n "${1:-}"; ctl "$1" shutdown >/dev/null ;;
  pid) need_n "${1:-}"; node_pid "$1" ;;
  ctl) need_n "${1:-}"; n=$1; shift; ctl "$n" "$@" ;;
  leader)
    [ -n "${1:-}" ] || { echo "rabbit-cluster: queue name expected" >&2; exit 2; }
    # Ask any running node; the leader column names the node whose Raft member leads the queue.
    for n in "${NODES[@]}"; do
      node_pid "$n" >/dev/null || continue
      out=$(ctl "$n" list_queues name leader --formatter json --timeout 10 2>/dev/null) || continue
      echo "$out" | node -e '
        const rows = JSON.parse(require("fs").readFileSync(0, "utf8"));
        const row = rows.find((r) => r.name === process.argv[1]);
        if (!row || !row.leader) process.exit(1);
        console.log(row.leader);' "$1" && exit 0
    done
    echo "rabbit-cluster: no leader found for $1" >&2
    exit 1
    ;;
  status)
    for n in "${NODES[@]}"; do
      if pid=$(node_pid "$n"); then echo "$(node_name "$n") pid=$pid $(awk '{print $3}' "/proc/$pid/stat")"; else echo "$(node_name "$n") down"; fi
    done
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
