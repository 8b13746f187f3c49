#!/usr/bin/env python3
"""One rotation pass over many managed Secrets, against a real API server.

Run it after `scripts/cluster_memory.py --keep`, which leaves N namespaces,
each with a Pod and its signed managed Secret. Here every Secret is due
(`refreshInterval: 10s`, `cacheTtl: 0s`, so the store cache cannot save the
reads). Each binary given runs alone, one after another, as the leader. The
script reports:

* the time from start to the end of its first rotation pass, taken from the
  `rotation pass` log line;
* the Secret writes (PATCH) the API server counted
  (`apiserver_request_total`);
* the store reads (`sesame_store_request_duration_seconds_count`).

Three rounds:
1. nothing changed in the store, each binary in turn;
2. the password that every Secret holds changes, for the first binary only;
3. a second pass with nothing left to change, for the first binary only.

    scripts/cluster_memory.py --kubeconfig K --sesame-bin NEW --objects 10000 --keep
    scripts/cluster_rotation.py --kubeconfig K --sesame-bin NEW [--sesame-bin OLD]
    scripts/cluster_memory.py --kubeconfig K --delete-only

Figures and the commands go into docs/performance.md ("Cluster").
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_perf import BUCKET_RE, Api, harness_certs, stop_process  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counter(text, family, match):
    """The sum of a counter family's series whose labels contain `match`."""
    total = 0.0
    for line in text.splitlines():
        m = BUCKET_RE.match(line)
        if not m or m.group(1) != family:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(labels.get(k) == v for k, v in match.items()):
            total += float(m.group(3))
    return total


def secret_patches(api):
    return counter(api.metrics(), "apiserver_request_total", {"resource": "secrets", "verb": "PATCH"})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--sesame-bin", action="append", help="a binary to run (repeat; the first also runs rounds 2 and 3)")
    ap.add_argument("--writes-per-second", type=int, default=100,
                    help="--rotation-writes-per-second, for binaries that have it")
    ap.add_argument("--port", type=int, default=18843)
    ap.add_argument("--timeout", type=int, default=900, help="seconds to wait for a pass")
    args = ap.parse_args()
    if not args.kubeconfig:
        raise SystemExit("give --kubeconfig (the harness's run/admin.kubeconfig) or set KUBECONFIG")
    bins = args.sesame_bin or [os.path.join(ROOT, "target/release/sesame")]
    pki = os.path.join(os.path.dirname(os.path.abspath(args.kubeconfig)), "pki")
    tmp = tempfile.mkdtemp(prefix="sesame-cluster-rotation-")
    api = Api(args.kubeconfig, tmp)
    homes = [n["metadata"]["name"] for n in api.call("GET", "/api/v1/namespaces")["items"]
             if n["metadata"]["name"].startswith("sesame-memory-") and "deletionTimestamp" not in n["metadata"]]
    if len(homes) != 1:
        raise SystemExit(f"expected the one namespace cluster_memory.py --keep left, found {homes}")
    home = homes[0]  # its provenance key signed the Secrets
    objects = len([n for n in api.call("GET", "/api/v1/namespaces")["items"]
                   if n["metadata"]["name"].startswith("sesame-mem-")])
    with open(os.path.join(ROOT, "benches/data/secrets.yaml")) as f:
        secrets = f.read().replace("apps/team-a/", "apps/shared/")
    certs, _ = harness_certs(pki, tmp)
    with open(os.path.join(tmp, "sesame.yaml"), "w") as f:
        f.write("resolveTimeout: 5s\nstores:\n  - {name: dev, file: {path: secrets.yaml}, cacheTtl: 0s, refreshInterval: 10s}\n"
                "policy:\n  rules:\n    - {name: shared, namespaces: ['sesame-mem-*'], stores: [dev], paths: ['apps/shared/**']}\n")
    print(f"{objects} managed Secrets in namespaces sesame-mem-*, provenance key in {home}")

    def write_secrets(text):
        with open(os.path.join(tmp, "secrets.yaml"), "w") as f:
            f.write(text)

    runs = 0

    def one_pass(label, binary):
        nonlocal runs
        runs += 1
        pace = []
        help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
        if "--rotation-writes-per-second" in help_text:
            pace = ["--rotation-writes-per-second", str(args.writes_per_second)]
        log_path = os.path.join(tmp, f"sesame-{runs}.log")
        # The pass's own line is info in builds that have it, debug before.
        env = dict(os.environ, RUST_LOG="warn,sesame::kube::leader=debug")
        admin = args.port + 100
        before = secret_patches(api)
        start = time.time()
        proc = subprocess.Popen(
            [binary, "serve", "--config", os.path.join(tmp, "sesame.yaml"), "--bind-address", "127.0.0.1",
             "--tls-port", str(args.port), "--admin-port", str(admin), "--cert-dir", certs,
             "--kube", "required", "--kubeconfig", args.kubeconfig, "--namespace", home,
             "--lease-name", f"sesame-rotation-{int(start)}-{runs}", "--gc-grace", "24h", *pace],
            cwd=tmp, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        try:
            line = None
            while time.time() < start + args.timeout and line is None:
                time.sleep(0.5)
                with open(log_path) as f:
                    line = next((l for l in f if "rotation pass" in l), None)
            elapsed = time.time() - start
            reads = counter(urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode(),
                            "sesame_store_request_duration_seconds_count", {"store": "dev"})
        finally:
            stop_process(proc)
        patches = secret_patches(api) - before
        print(f"{label}: {binary}: "
              f"pass ended {elapsed:.1f} s after start, {patches:.0f} Secret writes, {reads:.0f} store reads"
              + ("" if line else " (no pass line within the timeout)"), flush=True)
        if line:
            print("    " + line.strip()[:400])
        time.sleep(11)  # every Secret is due again for the next run

    write_secrets(secrets)
    time.sleep(11)
    for binary in bins:
        one_pass("round 1, nothing changed", binary)
    write_secrets(secrets.replace("password: bench-password", "password: rotated-password"))
    one_pass("round 2, every Secret's password changed", bins[0])
    one_pass("round 3, nothing changed since round 2", bins[0])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
