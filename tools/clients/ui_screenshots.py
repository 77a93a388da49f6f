"""The web UI of `kairos serve` in headless Chromium, driven through chromedriver's WebDriver
protocol (stdlib only): load the page, start a job and see its progress and preview, see the
image and the gallery, reuse parameters, build a schedule-comparison grid. Screenshots go to
OUT (default crates/kairos-server/tests/artifacts/).

    python tools/clients/ui_screenshots.py --url http://127.0.0.1:7860/ [--out DIR]

Needs Debian's `chromium` and `chromium-driver`. Prints `N passed, N failed`; exits 1 on failure.
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, width, height):
        self.port = free_port()
        self.proc = subprocess.Popen(["chromedriver", f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self.call("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"] if path != "/session" else json.loads(r.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body if body is not None else ({} if method == "POST" else None))

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def shot(self, path):
        png = base64.b64decode(self.s("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        print(f"     screenshot {path}")

    def wait(self, what, script, timeout=90):
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def quit(self):
        try:
            self.s("DELETE", "")
        finally:
            self.proc.terminate()


results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}")
    except Exception as e:
        results.append((name, e))
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--out", default="crates/kairos-server/tests/artifacts")
    parser.add_argument("--size", type=int, default=128, help="image side for the tiny test model")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    d = Driver(1400, 900)
    out = lambda name: os.path.join(args.out, name)
    status = "return document.getElementById('status').textContent"

    def load():
        d.go(args.url)
        d.wait("the lists", f"return {status.split('return ')[1]} === 'ready'")
        n = d.js("return document.getElementById('sampler').options.length")
        assert n > 5, f"{n} samplers"
        d.js("""const s = (id, v) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('input')); };
                s('prompt', 'a lighthouse on a cliff at dusk, oil painting'); s('negative', 'blurry, low quality');
                s('steps', '60'); s('width', arguments[0]); s('height', arguments[0]); s('seed', '1234');""", str(args.size))
        d.shot(out("01-loaded.png"))

    def generate():
        # Ctrl+Enter starts the job, as a user would.
        d.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true}))")
        d.wait("a live preview", "const i = document.getElementById('current'); return !i.hidden && i.className === 'preview' && parseFloat(document.getElementById('bar').style.width) > 5")
        d.shot(out("02-progress.png"))
        d.wait("the image", f"return {status.split('return ')[1]}.startsWith('done')")
        assert d.js("return document.querySelectorAll('#gallery figure').length") == 1
        assert "Seed: 1234" in d.js("return document.getElementById('params').textContent")
        time.sleep(0.5)  # the progress bar's reset transition
        d.shot(out("03-done.png"))

    def gallery_reuse():
        d.js("document.getElementById('seed').value = 5; document.getElementById('steps').value = 8; document.getElementById('batch').value = 2")
        d.js("document.getElementById('go').click()")
        d.wait("the batch", "return document.querySelectorAll('#gallery figure').length === 3")
        d.js("document.querySelectorAll('#gallery figure')[2].click()")
        assert d.js("return document.getElementById('seed').value") == "1234"
        assert d.js("return document.getElementById('steps').value") == "60"
        d.shot(out("04-gallery-reuse.png"))

    def compare():
        d.js("document.querySelector('[data-tab=compare]').click()")
        d.js("document.getElementById('step-list').value = '4, 8, 16'; document.getElementById('steps').value = 16")
        d.js("document.getElementById('go').click()")
        d.wait("the grid", "return document.querySelectorAll('.grid-table img').length === 12", timeout=180)
        assert d.js("return document.querySelectorAll('#curves polyline').length") == 4
        assert not d.js("return document.getElementById('download').hidden")
        time.sleep(0.5)
        d.shot(out("05-compare.png"))
        grid = d.js("return document.getElementById('download').href")
        with open(out("05-compare-download.png"), "wb") as f:
            f.write(base64.b64decode(grid.split(",", 1)[1]))

    try:
        check("load the page", load)
        check("generate with live progress (Ctrl+Enter)", generate)
        check("gallery click reuses parameters", gallery_reuse)
        check("schedule comparison grid", compare)
    finally:
        d.quit()
    failed = sum(1 for _, e in results if e)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
