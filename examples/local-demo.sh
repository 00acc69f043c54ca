#!/usr/bin/env bash
# A three-node clusterd cluster on loopback: start it, show `clusterctl status`, stop the
# leader, show the new leader and how long the election took, then tear everything down.
# Everything lives in a temporary directory and every process started here is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cargo build --quiet -p clusterd --bins
bin="${CARGO_TARGET_DIR:-$here/target}/debug"

run=$(mktemp -d /tmp/clusterd-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_DEMO:-}" ]; then echo "logs kept in $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT

"$bin/clusterctl" keygen "$run/cluster.key" >/dev/null
names=(n1 n2 n3)
ports=(17401 17402 17403)
for i in 0 1 2; do
  name=${names[$i]}
  {
    printf '[node]\nname = "%s"\nlisten = "127.0.0.1:%s"\n' "$name" "${ports[$i]}"
    printf 'data_dir = "%s/%s"\nkey_file = "%s/cluster.key"\n' "$run" "$name" "$run"
    printf 'dry_run = true   # loopback demo: touch no addresses or firewall on this machine\n'
    for j in 0 1 2; do
      [ "$j" = "$i" ] && continue
      printf '\n[[peers]]\nname = "%s"\naddress = "127.0.0.1:%s"\n' "${names[$j]}" "${ports[$j]}"
    done
  } > "$run/$name.toml"
  "$bin/clusterd" --config "$run/$name.toml" 2>"$run/$name.log" &
  pids+=($!)
done

ctl() { "$bin/clusterctl" --config "$run/$1.toml" "${@:2}"; }
leader_of() { ctl "$1" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")' 2>/dev/null || true; }

echo "== waiting for a leader"
leader=""
for _ in $(seq 1 100); do
  leader=$(leader_of n1)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader after 10 s; logs in $run"; tail -n 20 "$run"/*.log; exit 1; }
sleep 0.5
ctl n1 status

idx=0; for i in 0 1 2; do [ "${names[$i]}" = "$leader" ] && idx=$i; done
survivor=${names[$(( (idx + 1) % 3 ))]}
echo
echo "== stopping the leader $leader (SIGKILL)"
start=$(date +%s%N)
kill -9 "${pids[$idx]}"
wait "${pids[$idx]}" 2>/dev/null || true
new=""
for _ in $(seq 1 200); do
  new=$(leader_of "$survivor")
  [ -n "$new" ] && [ "$new" != "$leader" ] && break
  sleep 0.02
done
end=$(date +%s%N)
[ -n "$new" ] && [ "$new" != "$leader" ] || { echo "no new leader after 4 s"; exit 1; }
echo "new leader: $new, elected $(( (end - start) / 1000000 )) ms after $leader was killed"
echo
ctl "$survivor" status
