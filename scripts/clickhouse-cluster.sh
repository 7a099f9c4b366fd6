#!/usr/bin/env bash
# A private ClickHouse cluster on loopback for the cluster tests: a
# ZooKeeper and four clickhouse-server processes, two shards of two
# replicas, all files under DIR. The cluster is named `otstream`; each
# server's macros name its shard (`01`, `02`) and replica (`r1`, `r2`),
# which the replicated tables' ZooKeeper paths use; inserts into the
# Distributed tables go to one replica of a shard (internal_replication),
# whose table replicates to the other.
#
#   scripts/clickhouse-cluster.sh start DIR   # prints the four HTTP URLs,
#                                             # shard by shard
#   scripts/clickhouse-cluster.sh stop DIR
#
# One server or ZooKeeper alone is stopped and started again with
# scripts/clickhouse.sh and scripts/zookeeper.sh on DIR/s1r2 (and so on)
# and DIR/zk: starting a DIR again reuses its ports and data.
set -euo pipefail
here="$(dirname "$0")"
cmd="${1:?start|stop}"
dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"
nodes=(s1r1 s1r2 s2r1 s2r2)

case "$cmd" in
start)
  zk=$("$here/zookeeper.sh" start "$dir/zk")
  if [ ! -f "$dir/s1r1/config.d/cluster.xml" ]; then
    declare -A tcp
    for n in "${nodes[@]}"; do tcp[$n]=$("$here/clickhouse.sh" prepare "$dir/$n"); done
    for n in "${nodes[@]}"; do
      shard=0${n:1:1}
      replica=r${n:3:1}
      mkdir -p "$dir/$n/config.d"
      cat >"$dir/$n/config.d/cluster.xml" <<XML
<yandex>
  <remote_servers>
    <otstream>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>${tcp[s1r1]}</port></replica>
        <replica><host>127.0.0.1</host><port>${tcp[s1r2]}</port></replica>
      </shard>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>${tcp[s2r1]}</port></replica>
        <replica><host>127.0.0.1</host><port>${tcp[s2r2]}</port></replica>
      </shard>
    </otstream>
  </remote_servers>
  <zookeeper>
    <node><host>${zk%:*}</host><port>${zk#*:}</port></node>
    <session_timeout_ms>6000</session_timeout_ms>
  </zookeeper>
  <macros>
    <shard>$shard</shard>
    <replica>$replica</replica>
  </macros>
  <interserver_http_host>127.0.0.1</interserver_http_host>
</yandex>
XML
    done
  fi
  starting=()
  for n in "${nodes[@]}"; do "$here/clickhouse.sh" start "$dir/$n" >/dev/null & starting+=($!); done
  for p in "${starting[@]}"; do wait "$p"; done
  for n in "${nodes[@]}"; do cat "$dir/$n/url"; echo; done
  ;;
stop)
  for n in "${nodes[@]}"; do "$here/clickhouse.sh" stop "$dir/$n" & done
  wait
  "$here/zookeeper.sh" stop "$dir/zk"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
