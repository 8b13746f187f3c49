#!/usr/bin/env bash
# Load test of `sesame serve` over loopback HTTPS, HTTP/1.1 (wrk) and HTTP/2
# (h2load), for (a) the captured ReplicaSet Pod without Sesame annotations and
# (b) the same Pod with the five references of benches/data/five-references.json
# against the `file` store of benches/data/. Prints req/s, p50 and p99 per case
# and the ratio b/a. Figures and the command line go into docs/performance.md.
#
#   scripts/loadtest.sh                       # 10 s per run
#   DURATION=30 scripts/loadtest.sh
#   BASELINE_BIN=/path/to/admission_controller scripts/loadtest.sh
#   SESAME_BIN=/path/to/older/sesame scripts/loadtest.sh   # no build; compare builds
#
# BASELINE_BIN: an already built kube-rs `examples/admission_controller`
# binary (our stack doing almost nothing). It is run the way that example
# expects (cert files admission-controller-tls.{crt,key} in its working
# directory, ADMISSION_PRIVATE_IP, port 8443) and driven with case (a).
#
# Server and load generator are pinned to different cores (SERVER_CPU,
# CLIENT_CPU) so that runs compare. Measure on a quiet machine.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
H1_CONNECTIONS=${H1_CONNECTIONS:-16}
H2_CONNECTIONS=${H2_CONNECTIONS:-2}
H2_STREAMS=${H2_STREAMS:-8}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TLS_PORT=${TLS_PORT:-18443}
ADMIN_PORT=${ADMIN_PORT:-18080}
BASELINE_PORT=8443 # fixed in the kube-rs example
FIXTURE=real-pod-create-generatename-owned.json

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "installing ${need[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

pin_server=() pin_client=()
if command -v taskset >/dev/null && (($(nproc) > 1)); then
    pin_server=(taskset -c "$SERVER_CPU")
    pin_client=(taskset -c "$CLIENT_CPU")
else
    echo "note: not pinning (one core or no taskset); figures are less stable" >&2
fi

fixture=tests/fixtures/admission/$FIXTURE
if [[ ! -f $fixture ]]; then
    fixture=
    dir=$root
    while [[ $dir != / ]]; do
        dir=$(dirname "$dir")
        if [[ -f $dir/shared/fixtures/admission/$FIXTURE ]]; then
            fixture=$dir/shared/fixtures/admission/$FIXTURE
            break
        fi
    done
    [[ -n $fixture ]] || { echo "cannot find $FIXTURE" >&2; exit 1; }
fi

if [[ -n ${SESAME_BIN:-} ]]; then
    sesame=$SESAME_BIN
else
    cargo build --release --quiet --bin sesame
    sesame=${CARGO_TARGET_DIR:-$root/target}/release/sesame
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

"$sesame" gen-certs --out "$tmp/certs" >/dev/null 2>&1
jq -c 'del(.request.object.metadata.annotations)' "$fixture" >"$tmp/a.json"
jq -c --slurpfile refs benches/data/five-references.json \
    '.request.object.metadata.annotations = $refs[0]' "$fixture" >"$tmp/b.json"

cat >"$tmp/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
function done(summary, latency, requests)
  local non2xx = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), non2xx))
end
EOF

# CPU time (user + system, in clock ticks) the server has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
tick_us=$((1000000 / $(getconf CLK_TCK)))

# Each prints "req/s p50_us p99_us failures" for one run.
run_h1() { # duration url body
    BODY=$3 "${pin_client[@]}" wrk -t1 -c"$H1_CONNECTIONS" -d"${1}s" -s "$tmp/post.lua" "$2" |
        awk '/^RESULT/ { print $2, $3, $4, $5 }'
}

run_h2() { # duration url body
    local log=$tmp/h2.log out
    rm -f "$log"
    out=$("${pin_client[@]}" h2load -t1 -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -D"$1" -d "$3" \
        -H 'content-type: application/json' --log-file="$log" "$2")
    local rps failed non2xx
    rps=$(awk '/^finished in/ { gsub(",", "", $4); printf "%.0f", $4 }' <<<"$out")
    failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' <<<"$out")
    non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' <<<"$out")
    cut -f3 "$log" | sort -n | awk -v rps="$rps" -v bad="$((failed + non2xx))" '
        { v[NR] = $1 }
        END { if (NR == 0) { print rps, 0, 0, bad; exit }
              print rps, v[int(NR * 0.50 + 0.5)], v[int(NR * 0.99 + 0.5)], bad }'
}

wait_for() { # url [curl flags]
    for _ in $(seq 100); do
        curl -ks ${2:-} -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "server did not come up at $1" >&2
    return 1
}

results=()
measure() { # server pid url case body
    local proto line before after
    for proto in h1 h2; do
        "run_$proto" "$WARMUP" "$3" "$5" >/dev/null
        before=$(cpu_ticks "$2")
        line=$("run_$proto" "$DURATION" "$3" "$5")
        after=$(cpu_ticks "$2")
        # Server CPU per request: comparable even when the server is not saturated.
        line="$line $(awk -v t=$((after - before)) -v us="$tick_us" -v rps="${line%% *}" -v d="$DURATION" \
            'BEGIN { printf "%.1f", t * us / (rps * d) }')"
        results+=("$1 $proto $4 $line")
        echo "  $1 $proto $4: $line" >&2
    done
}

echo "sesame: $sesame on 127.0.0.1:$TLS_PORT, ${DURATION}s per run" >&2
"${pin_server[@]}" "$sesame" serve --config benches/data/sesame.yaml --cert-dir "$tmp/certs" \
    --bind-address 127.0.0.1 --tls-port "$TLS_PORT" --admin-port "$ADMIN_PORT" 2>"$tmp/sesame.log" &
sesame_pid=$!
pids+=("$sesame_pid")
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" -f
url=https://127.0.0.1:$TLS_PORT/mutate?timeout=10s

# The cases are what they claim to be, and the cache is warm.
check=$(curl -ks --http2 -H 'content-type: application/json' --data-binary @"$tmp/a.json" "$url")
jq -e '.response.allowed == true and (.response | has("patch") | not)' <<<"$check" >/dev/null ||
    { echo "case (a) is not allowed untouched: $check" >&2; exit 1; }
check=$(curl -ks --http2 -H 'content-type: application/json' --data-binary @"$tmp/b.json" "$url")
jq -e '.response.allowed == true and .response.patchType == "JSONPatch"' <<<"$check" >/dev/null ||
    { echo "case (b) is not mutated: $check" >&2; exit 1; }

measure sesame "$sesame_pid" "$url" a "$tmp/a.json"
measure sesame "$sesame_pid" "$url" b "$tmp/b.json"

if [[ -n ${BASELINE_BIN:-} ]]; then
    mkdir "$tmp/baseline"
    cp "$tmp/certs/tls.crt" "$tmp/baseline/admission-controller-tls.crt"
    cp "$tmp/certs/tls.key" "$tmp/baseline/admission-controller-tls.key"
    echo "baseline: $BASELINE_BIN on 127.0.0.1:$BASELINE_PORT" >&2
    (cd "$tmp/baseline" && ADMISSION_PRIVATE_IP=127.0.0.1 exec "${pin_server[@]}" "$BASELINE_BIN" \
        >"$tmp/baseline.log" 2>&1) &
    baseline_pid=$!
    pids+=("$baseline_pid")
    wait_for "https://127.0.0.1:$BASELINE_PORT/"
    measure baseline "$baseline_pid" "https://127.0.0.1:$BASELINE_PORT/mutate?timeout=10s" a "$tmp/a.json"
fi

echo
printf '%-9s %-5s %-4s %10s %9s %9s %8s %12s\n' server proto case 'req/s' 'p50 µs' 'p99 µs' failed 'CPU µs/req'
for r in "${results[@]}"; do
    read -r server proto case rps p50 p99 bad cpu <<<"$r"
    printf '%-9s %-5s %-4s %10s %9s %9s %8s %12s\n' "$server" "$proto" "$case" "$rps" "$p50" "$p99" "$bad" "$cpu"
done
echo
rps_of() { # server proto case
    for r in "${results[@]}"; do
        read -r s p c rps _ <<<"$r"
        [[ $s == "$1" && $p == "$2" && $c == "$3" ]] && { echo "$rps"; return; }
    done
}
for proto in h1 h2; do
    a=$(rps_of sesame $proto a) b=$(rps_of sesame $proto b)
    awk -v a="$a" -v b="$b" -v p=$proto 'BEGIN { printf "sesame %s: b/a = %.2f (target >= 0.70)\n", p, b / a }'
    if [[ -n ${BASELINE_BIN:-} ]]; then
        base=$(rps_of baseline $proto a)
        awk -v a="$a" -v b="$b" -v base="$base" -v p=$proto 'BEGIN {
            printf "sesame %s vs baseline: a = %.2f, b = %.2f of baseline (targets 1.00, 0.70)\n", p, a / base, b / base }'
    fi
done
# wrk sends the IP address as SNI, which rustls logs once per connection.
if grep -E ' (WARN|ERROR) ' "$tmp/sesame.log" | grep -qv 'Illegal SNI extension'; then
    echo "sesame logged warnings or errors:" >&2
    grep -E ' (WARN|ERROR) ' "$tmp/sesame.log" | grep -v 'Illegal SNI extension' | head -5 >&2
fi
