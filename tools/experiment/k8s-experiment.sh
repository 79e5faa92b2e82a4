#!/usr/bin/env bash
# The rolling-update experiment against a real Kubernetes cluster: constant
# load through the gracefuld Service while `kubectl rollout restart` rolls the
# Deployment; afterwards the Redis counter must equal the number of 200s and
# no request may have failed. Exit 0 when that holds, 1 when it does not, 2
# when the experiment could not run.
#
#   tools/experiment/k8s-experiment.sh [options]
#
#   -n, --namespace NS   the namespace [kubectl's current one]
#   --via MODE           how hey reaches the Service [nodeport]:
#                          nodeport      http://<first node's InternalIP>:30080
#                          proxy         `kubectl proxy` and the API server's
#                                        service proxy (balances per request
#                                        over the Service's endpoints)
#                          port-forward  `kubectl port-forward service/gracefuld`:
#                                        pins ONE pod for the whole run, so the
#                                        rollout breaks the tunnel itself; a
#                                        last resort, its failures are the
#                                        forwarder's, not the Service's
#   --url URL            the Service's base URL; overrides --via (kind with
#                        extraPortMappings: http://localhost:30080; minikube:
#                        `minikube service gracefuld-nodeport --url`)
#   --requests N         [1000]
#   --rate R             requests per second, all workers together [25]
#   --workers W          hey -c; each sends R/W per second [5]
#   --keep-alive on|off  [off]
#   --rollout-at S       seconds after the load starts [half of it]
#   --no-apply           use what is deployed; skip `kubectl apply -k k8s`
#
# Steps: apply k8s/ (kustomize) and wait for both Deployments; reset the
# counter with redis-cli in the Redis pod; start `kubectl logs -f` on every
# current gracefuld pod (to keep their drain summaries); start hey; halfway,
# `kubectl rollout restart deployment/gracefuld` and wait for the rollout;
# wait for hey, for the old pods to be deleted, and for the new pods to have
# no pending increment (their /metrics through the API server); read the
# counter with redis-cli; print the verdict, and one JSON line.
#
# Needs kubectl (pointed at the cluster), hey, and the image the manifests
# name (k8s/kustomization.yaml: gracefuld:dev) available to the nodes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

namespace=
via=nodeport
url=
requests=1000
rate=25
workers=5
keep_alive=off
rollout_at=
apply=true

deployment=gracefuld
selector=app.kubernetes.io/name=gracefuld
service=gracefuld        # the ClusterIP Service (proxy, port-forward)
node_port=30080          # of the Service gracefuld-nodeport
counter_key=counter

die() {
  echo "k8s-experiment: $*" >&2
  exit 2
}
say() {
  printf '[%s] %s\n' "$(date +%T)" "$*" >&2
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case $1 in
    -n | --namespace) namespace=${2:?}; shift ;;
    --via) via=${2:?}; shift ;;
    --url) url=${2:?}; shift ;;
    --requests) requests=${2:?}; shift ;;
    --rate) rate=${2:?}; shift ;;
    --workers) workers=${2:?}; shift ;;
    --keep-alive) keep_alive=${2:?}; shift ;;
    --rollout-at) rollout_at=${2:?}; shift ;;
    --no-apply) apply=false ;;
    -h | --help) usage 0 ;;
    *) echo "k8s-experiment: unknown option $1" >&2; usage 2 >&2 ;;
  esac
  shift
done

case $via in nodeport | proxy | port-forward) ;; *) die "--via: nodeport, proxy or port-forward" ;; esac
case $keep_alive in on | off) ;; *) die "--keep-alive: on or off" ;; esac
for n in "$requests" "$workers"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "--requests and --workers take positive integers"
done
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate takes a number"
((requests % workers == 0)) || die "--requests must be a multiple of --workers (hey gives each worker requests/workers)"
command -v kubectl >/dev/null || die "kubectl is not installed"
command -v hey >/dev/null || die "hey is not installed (scripts/bootstrap test)"

kubectl version >/dev/null 2>&1 || die "no cluster reachable through kubectl"
kc=(kubectl)
if [ -n "$namespace" ]; then
  kc+=(--namespace "$namespace")
else
  namespace=$(kubectl config view --minify -o 'jsonpath={..namespace}' 2>/dev/null || true)
  namespace=${namespace:-default}
fi

# awk does the arithmetic: the rate may be fractional.
duration=$(awk -v n="$requests" -v r="$rate" 'BEGIN { printf "%.3f", n / r }')
per_worker=$(awk -v r="$rate" -v w="$workers" 'BEGIN { printf "%g", r / w }')
rollout_at=${rollout_at:-$(awk -v d="$duration" 'BEGIN { printf "%.3f", d / 2 }')}

work=$(mktemp -d "${TMPDIR:-/tmp}/k8s-experiment.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "k8s-experiment: interrupted" >&2; exit 130' INT TERM

# Waits up to $2 seconds for the file $1 to contain the extended regex $3.
wait_for_line() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    grep -Eq "$3" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# 1. Deploy, and wait until both Deployments are available.
if $apply; then
  # Redis requires the password of the Secret redis-auth, which k8s/ does
  # not ship: a generated one when there is none yet.
  if ! "${kc[@]}" get secret redis-auth >/dev/null 2>&1; then
    say "creating Secret redis-auth with a generated password"
    "${kc[@]}" create secret generic redis-auth \
      --from-literal=password="$(head -c 24 /dev/urandom | base64)" >&2
  fi
  say "kubectl apply -k k8s (namespace $namespace)"
  "${kc[@]}" apply -k "$repo/k8s" >&2
fi
"${kc[@]}" rollout status deployment/redis --timeout=300s >&2
"${kc[@]}" rollout status "deployment/$deployment" --timeout=300s >&2

# 2. A fresh count.
redis_cli() {
  # The password from the pod's own environment, kept off argv.
  # shellcheck disable=SC2016
  "${kc[@]}" exec deployment/redis -- \
    sh -c 'REDISCLI_AUTH="$REDIS_PASSWORD" exec redis-cli "$@"' redis-cli "$@"
}
redis_cli DEL "$counter_key" >/dev/null
say "counter $counter_key reset"

# 3. The way in.
if [ -z "$url" ]; then
  case $via in
    nodeport)
      node_ip=$(kubectl get nodes -o 'jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}')
      [ -n "$node_ip" ] || die "no node InternalIP; pass --url"
      url="http://$node_ip:$node_port"
      ;;
    proxy)
      kubectl proxy --port=0 >"$work/proxy.log" 2>&1 &
      pids+=($!)
      wait_for_line "$work/proxy.log" 15 'Starting to serve on' || die "kubectl proxy did not start: $(cat "$work/proxy.log")"
      proxy_addr=$(sed -n 's/.*Starting to serve on \([^ ]*\).*/\1/p' "$work/proxy.log" | head -n1)
      url="http://$proxy_addr/api/v1/namespaces/$namespace/services/$service:http/proxy"
      ;;
    port-forward)
      say "warning: port-forward pins one pod; failures when that pod goes are the tunnel's"
      "${kc[@]}" port-forward "service/$service" :8080 >"$work/forward.log" 2>&1 &
      pids+=($!)
      wait_for_line "$work/forward.log" 15 'Forwarding from 127[.]0[.]0[.]1:' || die "kubectl port-forward did not start: $(cat "$work/forward.log")"
      port=$(sed -n 's/.*Forwarding from 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/forward.log" | head -n1)
      url="http://127.0.0.1:$port"
      ;;
  esac
fi
url=${url%/}
status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/readyz" || true)
[ "$status" = 200 ] || die "$url/readyz answered '$status', not 200"
say "Service reached at $url"

# 4. The pods that will be replaced; their logs keep each one's exit summary.
mapfile -t old_pods < <("${kc[@]}" get pods -l "$selector" \
  --field-selector=status.phase=Running -o 'jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}')
[ ${#old_pods[@]} -gt 0 ] || die "no running gracefuld pods"
for pod in "${old_pods[@]}"; do
  "${kc[@]}" logs -f --tail=0 "pod/$pod" >"$work/$pod.log" 2>/dev/null &
  pids+=($!)
done

# 5. The load, and the rollout halfway through it.
hey_args=(-n "$requests" -c "$workers" -q "$per_worker" -t 10)
[ "$keep_alive" = off ] && hey_args+=(-disable-keepalive)
say "hey ${hey_args[*]} $url/incr ($duration s); rollout at $rollout_at s"
start=$(date +%s.%N)
hey "${hey_args[@]}" "$url/incr" >"$work/hey.txt" 2>&1 &
hey_pid=$!
pids+=("$hey_pid")
# In the background and waited for, so that a signal is handled at once.
sleep "$rollout_at" &
wait $!
say "kubectl rollout restart deployment/$deployment"
"${kc[@]}" rollout restart "deployment/$deployment" >&2
"${kc[@]}" rollout status "deployment/$deployment" --timeout=600s >&2
rolled=$(date +%s.%N)
hey_status=0
wait "$hey_pid" || hey_status=$?
[ "$hey_status" -eq 0 ] || die "hey failed: $(cat "$work/hey.txt")"
say "load done"

# 6. Every old pod gone (its grace period bounds this), every new pod flushed.
for pod in "${old_pods[@]}"; do
  "${kc[@]}" wait --for=delete "pod/$pod" --timeout=120s >/dev/null 2>&1 ||
    die "pod $pod still there after 120 s"
done
mapfile -t new_pods < <("${kc[@]}" get pods -l "$selector" \
  --field-selector=status.phase=Running -o 'jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}')
for pod in "${new_pods[@]}"; do
  for o in "${old_pods[@]}"; do
    [ "$pod" != "$o" ] || die "pod $pod survived the rollout"
  done
  pending=
  for ((i = 0; i < 600; i++)); do
    pending=$({ kubectl get --raw "/api/v1/namespaces/$namespace/pods/$pod:8080/proxy/metrics" 2>/dev/null || true; } |
      awk '$1 == "gracefuld_increments_pending" { print $2 }')
    [ "$pending" = 0 ] && break
    sleep 0.1
  done
  [ "$pending" = 0 ] || die "pod $pod still has '$pending' increments pending"
done
counter=$(redis_cli GET "$counter_key")
counter=${counter:-0}
[[ $counter =~ ^[0-9]+$ ]] || die "redis-cli GET $counter_key answered '$counter'"

# 7. The verdict.
read -r ok failed failures < <(awk '
  /^Status code distribution:/ { s = "status"; next }
  /^Error distribution:/ { s = "error"; next }
  /^[^ ]/ { s = "" }
  s == "status" && match($0, /\[[0-9]+\][ \t]+[0-9]+ responses/) {
    split(substr($0, RSTART, RLENGTH), f, /[][ \t]+/)
    if (f[2] == 200) ok += f[3]; else { kind["http_" f[2]] += f[3]; failed += f[3] }
  }
  s == "error" && match($0, /^[ \t]*\[[0-9]+\]/) {
    n = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", n)
    k = "other"
    if ($0 ~ /connection refused/) k = "refused"
    else if ($0 ~ /connection reset/) k = "reset"
    else if ($0 ~ /[Tt]imeout|deadline exceeded/) k = "timeout"
    else if ($0 ~ /EOF|server closed|broken pipe/) k = "closed"
    kind[k] += n; failed += n
  }
  END {
    j = ""
    for (k in kind) j = j (j == "" ? "" : ",") "\"" k "\":" kind[k]
    printf "%d %d {%s}\n", ok, failed, j
  }' "$work/hey.txt")
sent=$((ok + failed))
lost=$((ok > counter ? ok - counter : 0))
extra=$((counter > ok ? counter - ok : 0))

printf '\nrolling update on Kubernetes: deployment/%s in %s via %s\n' "$deployment" "$namespace" "${url}"
shown_failures=
[ "$failures" = "{}" ] || shown_failures="  $failures"
printf '  %-14s %s\n' sent "$sent" "200 OK" "$ok" failed "$failed$shown_failures" \
  counter "$counter" lost "$lost" extra "$extra" \
  "rollout done" "$(awk -v a="$start" -v b="$rolled" 'BEGIN { printf "%.1f s after the load started", b - a }')"
printf '\n  old pod drain summaries (their last log line):\n'
for pod in "${old_pods[@]}"; do
  summary=$(grep '"event":"exit"' "$work/$pod.log" | tail -n1 || true)
  printf '    %s  %s\n' "$pod" "${summary:-(no exit line: killed, or its log was cut)}"
done

verdict=pass
problems=()
[ "$failed" -eq 0 ] || problems+=("$failed requests failed")
[ "$lost" -eq 0 ] || problems+=("$lost increments lost")
[ "$extra" -eq 0 ] || problems+=("$extra increments counted twice")
[ "$sent" -eq "$requests" ] || problems+=("hey sent $sent requests, not $requests")
if [ ${#problems[@]} -gt 0 ]; then
  verdict=fail
  joined=$(printf '%s; ' "${problems[@]}")
  printf '\nFAIL: %s\n' "${joined%; }"
else
  printf '\nPASS: nothing lost, nothing failed\n'
fi
printf '{"verdict":"%s","sent":%d,"ok":%d,"failed":%d,"failures":%s,"counter":%d,"lost":%d,"extra":%d,"namespace":"%s","url":"%s"}\n' \
  "$verdict" "$sent" "$ok" "$failed" "$failures" "$counter" "$lost" "$extra" "$namespace" "$url"
[ "$verdict" = pass ]
