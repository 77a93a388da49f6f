#!/usr/bin/env bash
# The `kairos serve` checks that need more than cargo: PyPI's webuiapi (an unchanged A1111
# client), the web UI in headless Chromium (screenshots in crates/kairos-server/tests/artifacts/),
# the bounded load test, and the nginx example. Installs what it needs (Debian packages, a venv).
# Run after `cargo test --workspace` (which builds target/debug/kairos).
set -euo pipefail
cd "$(dirname "$0")/../.."
KAIROS=${KAIROS:-target/debug/kairos}
[ -x "$KAIROS" ] || cargo build -p kairos-cli
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v nginx >/dev/null || need+=(nginx-light)
python3 -c 'import venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
venv=target/clients-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q webuiapi==0.9.17 pillow

work=$(mktemp -d)
cp crates/kairos-pipeline/tests/fixtures/sd1_tiny.safetensors "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KAIROS" serve --models-dir "$work" --norm-num-groups 4 --clip-head-dim 8 --listen "127.0.0.1:$port" \
    --queue-size 8 >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.1
done
echo "== webuiapi against kairos serve"
"$venv/bin/python" tools/clients/webuiapi_test.py --port "$port"
echo "== web UI in headless Chromium"
python3 tools/clients/ui_screenshots.py --url "http://127.0.0.1:$port/"
echo "== load test (direct)"
python3 tools/clients/load_test.py --url "http://127.0.0.1:$port" --pids "$server" --label direct
echo "== load test through nginx (examples/nginx)"
KAIROS="$KAIROS" bash examples/nginx/test.sh
