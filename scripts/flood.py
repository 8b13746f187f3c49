#!/usr/bin/env python3
"""Hostile-client drills against `sesame serve` on loopback, for the figures
in docs/performance.md ("Hostile clients"). Not a test: it prints what
happened, with timings, and people judge.

  scripts/flood.py idle --connections 3000            # idle TLS flood
  scripts/flood.py idle --connections 3000 --ulimit 256
  scripts/flood.py heavy --worker-threads 1           # one long review vs the rest

`idle` opens that many TLS connections that never send a request, holds them,
then times /livez, /readyz and one review, counts the server's "accept
failed" and "connection cap reached" log lines, its open descriptors, and how
many of the held connections the server has closed. `heavy` sends one review
of 300 containers x 300 references (--size) and, while it is computed, times /livez
and a small review; it raises the configuration's limits per review so that
the review is computed, not denied (--no-limits for builds without the
`limits` section). SESAME_BIN picks the binary (default target/release/sesame).
"""

import argparse
import http.client
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests/fixtures/admission/real-pod-create-bare.json")


def start(binary, tmp, ulimit, worker_threads, client_timeout, limits=""):
    subprocess.run([binary, "gen-certs", "--out", f"{tmp}/certs"], check=True, capture_output=True)
    with open(f"{tmp}/secrets.yaml", "w") as f:
        f.write("apps/team-a/db:\n  password: pw\n")
    with open(f"{tmp}/sesame.yaml", "w") as f:
        f.write(
            "annotationPrefix: sesame.dev\nstores:\n  - name: dev\n    file: {path: secrets.yaml}\n"
            "policy:\n  rules:\n    - name: own\n      namespaces: ['*']\n      stores: [dev]\n"
            "      paths: ['apps/{namespace}/**']\n" + limits
        )
    args = [binary, "--log-format", "json", "serve", "--config", f"{tmp}/sesame.yaml",
            "--cert-dir", f"{tmp}/certs", "--bind-address", "127.0.0.1", "--tls-port", "0",
            "--admin-port", "0", "--kube", "off", "--client-timeout", client_timeout]
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    if worker_threads:
        env["TOKIO_WORKER_THREADS"] = str(worker_threads)
    if ulimit:
        args = ["sh", "-c", f'ulimit -n {ulimit} && exec "$0" "$@"'] + args
    log = open(f"{tmp}/sesame.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
    for _ in range(300):
        for line in open(f"{tmp}/sesame.log"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "serving":
                webhook = rec["webhook_addr"].rsplit(":", 1)
                admin = rec["admin_addr"].rsplit(":", 1)
                return proc, int(webhook[1]), int(admin[1])
        time.sleep(0.05)
    sys.exit("server did not start")


def tls_context(tmp):
    ctx = ssl.create_default_context(cafile=f"{tmp}/certs/ca.crt")
    ctx.check_hostname = False
    return ctx


def timed(what, fn):
    started = time.monotonic()
    try:
        result = fn()
    except Exception as e:  # the point is to report it
        result = f"failed: {e.__class__.__name__}: {e}"
    print(f"  {what}: {result} after {(time.monotonic() - started) * 1000:.0f} ms")


def admin_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    return c.getresponse().status


def review(tmp, port, body):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=tls_context(tmp), timeout=30)
    c.request("POST", "/mutate", body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return f"{r.status}, {len(data)} bytes"


def small_review():
    with open(FIXTURE) as f:
        return f.read().encode()


def heavy_review(size):
    with open(FIXTURE) as f:
        rev = json.load(f)
    meta = rev["request"]["object"]["metadata"]
    meta["annotations"] = {f"sesame.dev/env.V{i}": "dev:apps/team-a/db#password" for i in range(size)}
    meta["annotations"]["example.com/padding"] = "x" * (80 * 1024)
    rev["request"]["object"]["spec"]["containers"] = [
        {"name": f"c{i}", "image": "busybox"} for i in range(size)]
    return json.dumps(rev).encode()


def server_state(proc, tmp):
    fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    rss = 0
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) // 1024
    lines = [json.loads(l) for l in open(f"{tmp}/sesame.log") if l.startswith("{")]
    accept = sum(1 for l in lines if l.get("message", "").startswith("accept failed"))
    capped = sum(1 for l in lines if l.get("message", "").startswith("connection cap reached"))
    return f"{fds} fds open, {rss} MiB RSS, {accept} 'accept failed' lines, {capped} 'connection cap reached' lines"


def idle(a, tmp):
    proc, webhook, admin = start(a.sesame, tmp, a.ulimit, a.worker_threads, a.client_timeout)
    try:
        idle_drill(a, tmp, proc, webhook, admin)
    finally:
        proc.terminate()
        proc.wait()


def idle_drill(a, tmp, proc, webhook, admin):
    ctx = tls_context(tmp)
    held, failed, in_a_row = [], 0, 0
    started = time.monotonic()
    for _ in range(a.connections):
        s = socket.create_connection(("127.0.0.1", webhook))
        s.settimeout(2)
        try:
            held.append(ctx.wrap_socket(s, server_hostname="localhost"))
            in_a_row = 0
        except (OSError, ssl.SSLError):
            s.close()
            failed += 1
            in_a_row += 1
            if in_a_row == 20:
                break
    print(f"  opened {len(held)} idle TLS connections in {time.monotonic() - started:.1f} s, "
          f"{failed} did not complete (stopped after 20 in a row)")
    timed("/livez", lambda: admin_get(admin, "/livez"))
    timed("/readyz", lambda: admin_get(admin, "/readyz"))
    timed("review", lambda: review(tmp, webhook, small_review()))
    time.sleep(1)
    closed = 0
    for c in held:
        c.setblocking(False)
        poll = select.poll()
        poll.register(c, select.POLLIN)
        if poll.poll(0):
            try:
                if c.recv(1) == b"":
                    closed += 1
            except ssl.SSLWantReadError:
                pass
            except OSError:
                closed += 1
    print(f"  {closed} of {len(held)} held connections closed by the server")
    print(f"  server: {server_state(proc, tmp)}")


def heavy(a, tmp):
    limits = "" if a.no_limits else (
        f"limits: {{maxReferences: {max(a.size, 100)}, maxAddedEntries: {max(a.size * a.size, 2000)},"
        f" maxPatchBytes: {64 * 1024 * 1024}}}\n")
    proc, webhook, admin = start(a.sesame, tmp, a.ulimit, a.worker_threads, a.client_timeout, limits)
    try:
        heavy_drill(a, tmp, proc, webhook, admin)
    finally:
        proc.terminate()
        proc.wait()


def heavy_drill(a, tmp, proc, webhook, admin):
    review(tmp, webhook, small_review())  # warm the cache
    body = heavy_review(a.size)
    done = {}

    def send():
        t = time.monotonic()
        done["answer"] = review(tmp, webhook, body)
        done["took"] = time.monotonic() - t

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.1)
    # Both at once, while the heavy review is computed.
    probes = [threading.Thread(target=timed, args=("/livez during the heavy review", lambda: admin_get(admin, "/livez"))),
              threading.Thread(target=timed, args=("small review during the heavy review",
                                                   lambda: review(tmp, webhook, small_review())))]
    for p in probes:
        p.start()
    for p in probes:
        p.join()
    t.join()
    print(f"  heavy review ({len(body)} bytes): {done.get('answer')} after {done.get('took', 0) * 1000:.0f} ms")
    print(f"  server: {server_state(proc, tmp)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("drill", choices=["idle", "heavy"])
    p.add_argument("--sesame", default=os.environ.get("SESAME_BIN", os.path.join(ROOT, "target/release/sesame")))
    p.add_argument("--connections", type=int, default=3000)
    p.add_argument("--ulimit", type=int)
    p.add_argument("--worker-threads", type=int)
    p.add_argument("--size", type=int, default=300,
                   help="heavy: containers and references (size x size env vars)")
    p.add_argument("--no-limits", action="store_true",
                   help="heavy: write no `limits` section (for builds before it)")
    p.add_argument("--client-timeout", default="120s",
                   help="the server's --client-timeout; long, so that idle connections stay")
    a = p.parse_args()
    print(f"{a.drill}: {a.sesame}" + (f", ulimit -n {a.ulimit}" if a.ulimit else "")
          + (f", {a.worker_threads} worker thread(s)" if a.worker_threads else ""))
    with tempfile.TemporaryDirectory() as tmp:
        {"idle": idle, "heavy": heavy}[a.drill](a, tmp)


if __name__ == "__main__":
    main()
