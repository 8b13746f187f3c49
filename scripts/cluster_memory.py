#!/usr/bin/env python3
"""Sesame's memory with many namespaces and managed Secrets, against a real API server.

Runs `sesame serve` binaries side by side on 127.0.0.1, all watching the
same cluster: one registered as the webhook (for the namespaces this script
labels only), which admits the Pods and writes the Secrets, and each
`--sesame-bin` watching only (e.g. the release binary of main before a
change and after it), so that their caches compare with nothing else in
their heaps. Then, in steps up to `--objects`, it creates namespaces
with one Pod each. The Pod has the five references of benches/data, so
Sesame writes one real, signed managed Secret per namespace, as in
production. After each step, once every process's RSS has settled, it
prints each process's VmRSS and RssAnon. At the end it deletes what it made.

The cost per object is the slope of RSS over objects (one object = one
Namespace plus its managed Secret in the caches; Pods are not cached).

    # the harness (../shared/tools/kube), its controllers fast enough to keep up:
    KUBE_CM_API_QPS=1000 KUBE_CM_API_BURST=1000 ../shared/tools/kube/up.sh
    cargo build --release
    scripts/cluster_memory.py --kubeconfig /tmp/kube-harness/run/admin.kubeconfig \\
        --sesame-bin target/release/sesame [--sesame-bin OLD_BINARY] --objects 10000 --steps 4

Figures and the command go into docs/performance.md ("Cluster"). Nothing
here asserts anything: this is a measuring tool.
"""

import argparse
import base64
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_perf import REFS, Api, harness_certs, stop, wait_http, webhook_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL = "sesame-memory"


def memory(pid):
    """VmRSS and RssAnon of a process, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) / 1024
    return out["VmRSS"], out["RssAnon"]


def settle(procs, quiet=3, every=2.0, limit=180):
    """Waits until no process's RSS has moved by more than 0.1 MiB for
    `quiet` polls in a row; returns the last reading of each."""
    last, still, end = None, 0, time.time() + limit
    while time.time() < end:
        now = [memory(p.pid) for p in procs]
        if last and all(abs(a[0] - b[0]) <= 0.1 for a, b in zip(now, last)):
            still += 1
            if still >= quiet:
                return now
        else:
            still = 0
        last = now
        time.sleep(every)
    return last


def managed_secrets(api, prefix):
    """How many Secrets carry Sesame's label in the namespaces made here."""
    n, token = 0, ""
    while True:
        page = api.call("GET", "/api/v1/secrets?limit=500&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsesame"
                        + (f"&continue={token}" if token else ""))
        n += sum(1 for s in page["items"] if s["metadata"]["namespace"].startswith(prefix))
        token = page["metadata"].get("continue")
        if not token:
            return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--sesame-bin", action="append",
                    help="a binary to measure, watching only (repeat to compare)")
    ap.add_argument("--webhook-bin", help="the binary that serves the webhook and writes the Secrets, "
                    "measured too (default: the first --sesame-bin)")
    ap.add_argument("--objects", type=int, default=10000, help="namespaces, each with one managed Secret")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=8, help="parallel creations")
    ap.add_argument("--port", type=int, default=18743, help="first TLS port; admin ports from port+100")
    ap.add_argument("--lookalikes", type=int, default=0,
                    help="then, Secrets a tenant labels as Sesame's, with one large value each")
    ap.add_argument("--lookalike-bytes", type=int, default=65536)
    ap.add_argument("--keep", action="store_true", help="leave the namespaces (delete them later with --delete-only)")
    ap.add_argument("--delete-only", action="store_true", help="delete what an earlier run left and exit")
    args = ap.parse_args()
    if not args.kubeconfig:
        raise SystemExit("give --kubeconfig (the harness's run/admin.kubeconfig) or set KUBECONFIG")
    bins = args.sesame_bin or [os.path.join(ROOT, "target/release/sesame")]
    pki = os.path.join(os.path.dirname(os.path.abspath(args.kubeconfig)), "pki")
    tmp = tempfile.mkdtemp(prefix="sesame-cluster-memory-")
    api = Api(args.kubeconfig, tmp)
    if args.delete_only:
        delete_all(api, args.workers)
        return
    procs, configs = [], []

    def cleanup(*_):
        stop(api, configs, procs)
        if not args.keep:
            delete_all(api, args.workers)
        shutil.rmtree(tmp, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        run(args, bins, api, pki, tmp, procs, configs)
    finally:
        cleanup()


def run(args, bins, api, pki, tmp, procs, configs):
    home = f"sesame-memory-{int(time.time())}"
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": home}})
    with open(os.path.join(ROOT, "benches/data/secrets.yaml")) as f:
        secrets = f.read().replace("apps/team-a/", "apps/shared/")
    with open(os.path.join(tmp, "secrets.yaml"), "w") as f:
        f.write(secrets)
    # Nothing is due for rotation and nothing is collected while measuring.
    with open(os.path.join(tmp, "sesame.yaml"), "w") as f:
        f.write("resolveTimeout: 5s\nstores:\n  - {name: dev, file: {path: secrets.yaml}, cacheTtl: 1h, refreshInterval: 1h}\n"
                "policy:\n  rules:\n    - {name: shared, namespaces: ['sesame-mem-*'], stores: [dev], paths: ['apps/shared/**']}\n")
    certs, ca_b64 = harness_certs(pki, tmp)

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    bins[:0] = [args.webhook_bin or bins[0]]
    for i, binary in enumerate(bins):
        port, admin_port = args.port + i, args.port + 100 + i
        procs.append(subprocess.Popen(
            [binary, "serve", "--config", os.path.join(tmp, "sesame.yaml"), "--bind-address", "127.0.0.1",
             "--tls-port", str(port), "--admin-port", str(admin_port), "--cert-dir", certs,
             "--kube", "required", "--kubeconfig", args.kubeconfig, "--namespace", home,
             # Each leads its own lease, so each runs rotation and GC as a lone replica would.
             "--lease-name", f"sesame-memory-{i}", "--gc-grace", "24h"],
            cwd=tmp, env=env, stdout=open(os.path.join(tmp, f"sesame-{i}.log"), "w"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", timeout=60)

    hook = webhook_config(api.kubeconfig, "sesame-memory", "sesame.memory.dev",
                          f"https://127.0.0.1:{args.port}/mutate", ca_b64, home, True)
    hook["webhooks"][0]["namespaceSelector"] = {"matchLabels": {LABEL: home}}
    api.call("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", hook)
    configs.append("sesame-memory")
    time.sleep(2)  # the API server picks up webhook configurations asynchronously

    def report(objects, readings):
        cells = "  ".join(f"[{i}] RSS {rss:6.1f} MiB (anon {anon:6.1f})" for i, (rss, anon) in enumerate(readings))
        print(f"{objects:6d} objects: {cells}", flush=True)

    for i, binary in enumerate(bins):
        print(f"[{i}] {binary}" + (" (webhook: admits the Pods, writes the Secrets)" if i == 0 else " (watches only)"))
    base = settle(procs)
    report(0, base)

    refs = {k: v.replace("apps/team-a/", "apps/shared/") for k, v in REFS.items()}

    prefix = f"sesame-mem-{home[len('sesame-memory-'):]}-"

    def one(i):
        ns = f"{prefix}{i}"
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": {LABEL: home}}})
        # The ServiceAccount admission plugin needs the controller's `default`.
        while not api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts?fieldSelector=metadata.name%3Ddefault")["items"]:
            time.sleep(0.2)
        pod = {"metadata": {"name": "app", "annotations": refs},
               "spec": {"containers": [{"name": "app", "image": "busybox"}], "terminationGracePeriodSeconds": 0}}
        for _ in range(40):
            # A binary older than the Namespace read-through denies a namespace its
            # watch has not delivered yet: try again, as a ReplicaSet would.
            status = api.try_call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
            if status is None:
                return
            if "does not exist" not in status:
                raise SystemExit(f"{ns}: {status}")
            time.sleep(0.5)
        raise SystemExit(f"{ns}: {status}")

    made, rows = 0, [(0, base)]
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        for step in range(1, args.steps + 1):
            target = args.objects * step // args.steps
            t0 = time.time()
            list(pool.map(one, range(made, target)))
            made = target
            while managed_secrets(api, prefix) < made:
                time.sleep(1)
            created = time.time() - t0
            readings = settle(procs)
            print(f"       created {made} in {created:.0f} s", flush=True)
            report(made, readings)
            rows.append((made, readings))

    if made:
        print("\nper object (slope from 0 to the last step), MiB -> bytes:")
        for i in range(len(bins)):
            (n0, r0), (n1, r1) = rows[0], rows[-1]
            rss = (r1[i][0] - r0[i][0]) * 1024 * 1024 / (n1 - n0)
            anon = (r1[i][1] - r0[i][1]) * 1024 * 1024 / (n1 - n0)
            print(f"[{i}] {rss:7.0f} B RSS, {anon:7.0f} B anonymous per namespace + managed Secret")

    if args.lookalikes:
        # What a tenant can do without Sesame: Secrets of its own, carrying
        # Sesame's label, with large values. Every cache of managed Secrets
        # receives them.
        ns = f"{prefix}lookalikes"
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        value = base64.b64encode(os.urandom(args.lookalike_bytes)).decode()

        def lookalike(i):
            api.call("POST", f"/api/v1/namespaces/{ns}/secrets", {
                "metadata": {"name": f"sesame-lookalike-{i}", "labels": {"app.kubernetes.io/managed-by": "sesame"}},
                "data": {"big": value}})

        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lookalike, range(args.lookalikes)))
        readings = settle(procs)
        mib = args.lookalikes * args.lookalike_bytes / 1024 / 1024
        print(f"after {args.lookalikes} look-alike Secrets of {args.lookalike_bytes} B each ({mib:.0f} MiB of values):")
        report(made, readings)


def delete_all(api, workers):
    """Deletes every namespace this script made (the namespace controller
    removes their Pods and Secrets), and its webhook configuration."""
    api.call("DELETE", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/sesame-memory")
    names = [n["metadata"]["name"] for n in api.call("GET", "/api/v1/namespaces")["items"]
             if n["metadata"]["name"].startswith(("sesame-mem-", "sesame-memory-"))]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda n: api.call("DELETE", f"/api/v1/namespaces/{n}"), names))
    print(f"deleting {len(names)} namespaces (the namespace controller finishes in the background)")


if __name__ == "__main__":
    main()
