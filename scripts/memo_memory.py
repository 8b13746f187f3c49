#!/usr/bin/env python3
"""How much memory the plan memo holds when it is full.

Starts `sesame serve` with benches/data/sesame.yaml on 127.0.0.1 and sends it
reviews of the captured ReplicaSet Pod with the five references of
benches/data, each Pod with one more env var numbered apart, so that every
one is a memo miss that is kept. Prints VmRSS after the first review and
after the last. Give several binaries to compare them in one run:

    cargo build --release
    scripts/memo_memory.py --sesame-bin target/release/sesame --sesame-bin OLD --pods 3000
"""

import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "real-pod-create-generatename-owned.json"


def fixture():
    here = os.path.join(ROOT, "tests", "fixtures", "admission", FIXTURE)
    if os.path.exists(here):
        return here
    d = ROOT
    while d != "/":
        d = os.path.dirname(d)
        p = os.path.join(d, "shared", "fixtures", "admission", FIXTURE)
        if os.path.exists(p):
            return p
    sys.exit(f"cannot find {FIXTURE}")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(binary, pods, port, admin_port):
    with open(fixture()) as f:
        review = json.load(f)
    with open(os.path.join(ROOT, "benches", "data", "five-references.json")) as f:
        review["request"]["object"]["metadata"]["annotations"] = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        certs = os.path.join(tmp, "certs")
        subprocess.run([binary, "gen-certs", "--out", certs], check=True, capture_output=True)
        server = subprocess.Popen(
            [binary, "serve", "--config", "benches/data/sesame.yaml", "--cert-dir", certs,
             "--bind-address", "127.0.0.1", "--tls-port", str(port), "--admin-port", str(admin_port)],
            cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
            ctx.check_hostname = False
            conn = None
            for _ in range(100):
                try:
                    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                    conn.connect()
                    break
                except OSError:
                    conn = None
                    time.sleep(0.1)
            if conn is None:
                sys.exit(f"{binary} did not come up on port {port}")

            def send(i):
                r = json.loads(json.dumps(review))
                r["request"]["object"]["spec"]["containers"][0]["env"].append(
                    {"name": "MEMO_VARIANT", "value": str(i)})
                conn.request("POST", "/mutate", json.dumps(r), {"content-type": "application/json"})
                answer = json.loads(conn.getresponse().read())["response"]
                if not answer.get("allowed") or answer.get("patchType") != "JSONPatch":
                    sys.exit(f"review {i} was not mutated: {answer}")

            send(0)
            time.sleep(1)
            before = rss_mib(server.pid)
            for i in range(1, pods):
                send(i)
            time.sleep(2)
            after = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait()
    print(f"{binary}: VmRSS after 1 review {before:.1f} MiB, after {pods} distinct Pods "
          f"{after:.1f} MiB ({after - before:+.1f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sesame-bin", action="append", required=True)
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--port", type=int, default=18543)
    parser.add_argument("--admin-port", type=int, default=18580)
    args = parser.parse_args()
    for binary in args.sesame_bin:
        measure(os.path.abspath(binary), args.pods, args.port, args.admin_port)


if __name__ == "__main__":
    main()
