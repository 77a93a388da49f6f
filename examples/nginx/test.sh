#!/usr/bin/env bash
# Tests examples/nginx/kairos.conf as shipped: two `kairos serve` on loopback ports behind
# Debian's nginx (least_conn), the bounded load test through nginx, then both servers must have
# served jobs. Needs `nginx` (apt-get install nginx-light) and a built kairos (KAIROS=path).
set -euo pipefail
cd "$(dirname "$0")/../.."
KAIROS=${KAIROS:-target/debug/kairos}
work=$(mktemp -d)
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port); p2=$(free_port); pn=$(free_port)
cp crates/kairos-pipeline/tests/fixtures/sd1_tiny.safetensors "$work/"
pids=()
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for port in "$p1" "$p2"; do
    "$KAIROS" serve --models-dir "$work" --norm-num-groups 4 --clip-head-dim 8 --listen "127.0.0.1:$port" \
        --queue-size 8 >"$work/serve-$port.log" 2>&1 &
    pids+=($!)
done
# The shipped config with this run's ports.
sed -e "s/127.0.0.1:7861/127.0.0.1:$p1/" -e "s/127.0.0.1:7862/127.0.0.1:$p2/" -e "s/listen 8080;/listen 127.0.0.1:$pn;/" \
    examples/nginx/kairos.conf >"$work/kairos.conf"
cat >"$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
    access_log $work/access.log;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    include $work/kairos.conf;
}
CONF
mkdir -p "$work/tmp" && chmod 777 "$work/tmp"
nginx -t -q -p "$work" -c "$work/nginx.conf" -e "$work/error.log"
nginx -p "$work" -c "$work/nginx.conf" -e "$work/error.log"
for port in "$p1" "$p2" "$pn"; do
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
        sleep 0.1
    done
done
python3 tools/clients/load_test.py --url "http://127.0.0.1:$pn" --pids "${pids[0]},${pids[1]}" --label nginx --burst 60
for port in "$p1" "$p2"; do
    done_jobs=$(python3 -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$port/v1/queue'))['done'])")
    echo "[nginx] backend 127.0.0.1:$port ran $done_jobs jobs"
    [ "$done_jobs" -gt 10 ] || { echo "FAIL backend $port got too few jobs"; exit 1; }
done
echo "nginx example: both backends served"
