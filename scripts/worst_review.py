#!/usr/bin/env python3
"""The most expensive reviews, measured: those the default `limits` let
through, and the two that made the limits necessary (350 containers × 350
env annotations, 600 × 600).

Each scenario starts its own `sesame serve` (release build) under
`/usr/bin/time -v` on loopback with a generated file store, sends its review
REPEAT times (CONCURRENCY at once) over TLS, and prints per scenario and
binary: the answer (allowed with its patch size, or the denial's code and
limit), the request and answer size, the server's CPU time per review (from
/proc/<pid>/stat), the wall time per review as the client sees it, the
server's resident memory when idle and after one (warm-up) review, and its
peak (VmHWM, and `time -v`'s "Maximum resident set size" at exit). Figures
go to docs/performance.md.

    scripts/worst_review.py                      # every scenario
    scripts/worst_review.py max-pod inline-patch # some
    REPEAT=50 CONCURRENCY=4 scripts/worst_review.py
    SESAME_BIN=/path/to/sesame scripts/worst_review.py
    # two builds side by side, one row each per scenario:
    scripts/worst_review.py --bin main=/tmp/sesame-main --bin branch=target/release/sesame \
        issue-350x350 issue-600x600

Needs only Python 3, /usr/bin/time and built binaries (`cargo build --release`).
"""

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("SESAME_BIN", str(ROOT / "target/release/sesame"))
REPEAT = int(os.environ.get("REPEAT", "20"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "1"))
FIXTURE = ROOT / "tests/fixtures/admission/real-pod-create-bare.json"
BODY_LIMIT = 3 * 1024 * 1024  # --max-body-bytes default

CONFIG = """\
annotationPrefix: sesame.dev
resolveTimeout: 3s
stores:
  - name: dev
    file: {path: secrets.yaml}
    cacheTtl: 60s
policy:
  rules:
    - name: own-subtree
      namespaces: ["*"]
      stores: [dev]
      paths: ["apps/{namespace}/**"]
  inline:
    namespaces: ["dev-*"]
"""


def review(annotations, containers=None, namespace="team-a"):
    r = json.loads(FIXTURE.read_text())
    r["request"]["namespace"] = namespace
    r["request"]["object"]["metadata"]["namespace"] = namespace
    r["request"]["object"]["metadata"]["annotations"] = annotations
    if containers is not None:
        r["request"]["object"]["spec"]["containers"] = containers
    return r


def names(n, width=8):
    return [f"c{i:0{width - 1}d}" for i in range(n)]


def largest_pod(annotations, room=BODY_LIMIT - 4096):
    """The review with as many minimal containers as fit in `room` bytes."""
    base = len(json.dumps(review(annotations, [])))
    one = [{"name": "c0000000"}]
    per = len(json.dumps(one * 2)) - len(json.dumps(one))  # with its ", "
    n = (room - base) // per
    return review(annotations, [{"name": c} for c in names(n)]), n


def scenario_max_pod():
    """A 3 MiB review: ~95,000 containers, 100 references (50 secrets), each
    into 20 named containers: 2,000 env vars, every limit at its edge."""
    secrets = "".join(f"apps/team-a/s{i}:\n  password: value-{i}\n" for i in range(50))
    ann = {}
    for i in range(100):
        targets = ",".join(names(20 * (i % 5 + 1))[20 * (i % 5) :])
        ann[f"sesame.dev/env.V{i}"] = f"dev:apps/team-a/s{i % 50}#password containers={targets}"
    r, n = largest_pod(ann)
    return secrets, r, f"{n} containers"


def scenario_entries():
    """50 env-from references of 40 properties each into one container:
    2,000 env vars in the patch."""
    secrets = "".join(
        f"apps/team-a/s{i}:\n" + "".join(f"  key_{k}: value-{i}-{k}\n" for k in range(40))
        for i in range(50)
    )
    ann = {f"sesame.dev/env-from.s{i}": f"dev:apps/team-a/s{i} prefix=S{i}_" for i in range(50)}
    return secrets, review(ann), "1 container"


def scenario_inline_patch():
    """Inline mode: 100 env vars of 10,000 bytes each, a patch just under
    1 MiB."""
    secrets = "".join(f"apps/dev-team/s{i}: {'v' * 10_000}\n" for i in range(50))
    ann = {"sesame.dev/mode": "inline"}
    for i in range(100):
        ann[f"sesame.dev/env.V{i}"] = f"dev:apps/dev-team/s{i % 50}"
    # 50 distinct secrets, 100 env vars: each value twice, in two names.
    return secrets, review(ann, namespace="dev-team"), "1 container"


def scenario_structured_3mib():
    """A structured annotation of almost 3 MiB (25,000 entries): read in
    full, then denied at maxReferences."""
    entry = "- {env: A, ref: 'dev:apps/team-a/s0#password'}\n"
    n = (BODY_LIMIT - 16_384) // (len(entry) + 1)
    ann = {"sesame.dev/secrets": entry * n}
    return "apps/team-a/s0: {password: x}\n", review(ann), f"{n} entries"


def scenario_issue_350():
    """350 containers × 350 env annotations (24 KiB in a lean encoding): it
    built a 15.6 MiB patch and 335 MiB of RSS before the limits."""
    secrets = "apps/team-a/db: {password: x}\n"
    ann = {f"sesame.dev/env.V{i}": "dev:apps/team-a/db#password" for i in range(350)}
    return secrets, review(ann, [{"name": c} for c in names(350)]), "350 containers"


def scenario_issue_600():
    """600 containers × 600 env annotations (43 KiB in a lean encoding): 3.8 s
    of CPU and 880 MiB before the limits."""
    secrets = "apps/team-a/db: {password: x}\n"
    ann = {f"sesame.dev/env.V{i}": "dev:apps/team-a/db#password" for i in range(600)}
    return secrets, review(ann, [{"name": c} for c in names(600)]), "600 containers"


SCENARIOS = {
    "max-pod": scenario_max_pod,
    "entries": scenario_entries,
    "inline-patch": scenario_inline_patch,
    "structured-3mib": scenario_structured_3mib,
    "issue-350x350": scenario_issue_350,
    "issue-600x600": scenario_issue_600,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def child_of(pid):
    for _ in range(100):
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError("sesame did not start under /usr/bin/time")


def post(port, ca, body):
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    conn.request("POST", "/mutate?timeout=10s", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def run(name, make, label, binary):
    secrets, rev, shape = make()
    body = json.dumps(rev).encode()
    if len(body) > BODY_LIMIT:
        raise SystemExit(f"{name}: the review is {len(body)} bytes, over the body limit")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "sesame.yaml").write_text(CONFIG)
        (tmp / "secrets.yaml").write_text(secrets)
        subprocess.run([binary, "gen-certs", "--out", str(tmp / "certs")], check=True, capture_output=True)
        port, admin = free_port(), free_port()
        log = open(tmp / "serve.log", "w")
        timing = tmp / "time.txt"
        server = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(timing), binary, "--log-format", "json", "serve",
             "--config", str(tmp / "sesame.yaml"), "--cert-dir", str(tmp / "certs"),
             "--bind-address", "127.0.0.1", "--tls-port", str(port), "--admin-port", str(admin),
             "--kube", "off"],
            stdout=log, stderr=log,
        )
        pid = child_of(server.pid)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                    s.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
                    if b"200" in s.recv(64):
                        break
            except OSError:
                pass
            time.sleep(0.05)
        ca = str(tmp / "certs/ca.crt")
        rss_idle = proc_status_kib(pid, "VmRSS")
        # One warm-up (TLS, the store's first read), then the measured runs.
        status, data = post(port, ca, body)
        rss_before = proc_status_kib(pid, "VmRSS")
        cpu_before = proc_cpu_seconds(pid)
        answers = []
        lock = threading.Lock()

        def worker(n):
            for _ in range(n):
                a = post(port, ca, body)
                with lock:
                    answers.append(a)

        per = [REPEAT // CONCURRENCY + (1 if i < REPEAT % CONCURRENCY else 0) for i in range(CONCURRENCY)]
        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(n,)) for n in per]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        cpu = proc_cpu_seconds(pid) - cpu_before
        hwm = proc_status_kib(pid, "VmHWM")
        os.kill(pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        max_rss = next(
            (int(l.split(":")[1]) for l in timing.read_text().splitlines() if "Maximum resident set size" in l),
            0,
        )
    response = json.loads(answers[-1][1] if answers else data)["response"]
    if response["allowed"]:
        patch = len(base64.b64decode(response.get("patch", ""))) if response.get("patch") else 0
        outcome = f"allowed, patch {patch / 1024:.0f} KiB"
    else:
        message = response["status"]["message"]
        limit = message.split("(limits.")[1].split(" ")[0] if "(limits." in message else message[:24] + "…"
        outcome = f"denied {response['status']['code']} {limit}"
    statuses = sorted({s for s, _ in answers})
    reply = len(answers[-1][1]) if answers else len(data)
    print(
        f"{name:16} {label:8} {shape:>18} | review {len(body) / 1024:6.0f} KiB | {outcome:34} | "
        f"answer {reply / 1024:7.1f} KiB | CPU {1000 * cpu / max(len(answers), 1):7.1f} ms/review | "
        f"wall {1000 * wall / max(len(answers), 1):7.1f} ms/review | RSS idle {rss_idle / 1024:5.1f} MiB, after one {rss_before / 1024:6.1f} MiB, "
        f"peak {hwm / 1024:6.1f} MiB (time -v: {max_rss / 1024:6.1f} MiB) | HTTP {statuses}",
        flush=True,
    )


def main():
    args = sys.argv[1:]
    binaries, wanted = [], []
    while args:
        arg = args.pop(0)
        if arg == "--bin" and args:
            label, _, path = args.pop(0).partition("=")
            binaries.append((label, path))
        else:
            wanted.append(arg)
    binaries = binaries or [("sesame", BIN)]
    for label, path in binaries:
        if not Path(path).exists():
            raise SystemExit(f"{label}: {path} not found: cargo build --release (or --bin LABEL=PATH)")
    unknown = [w for w in wanted if w not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    for label, path in binaries:
        print(f"{label} = {path}")
    print(f"REPEAT={REPEAT} CONCURRENCY={CONCURRENCY}", flush=True)
    for name in wanted or list(SCENARIOS):
        for label, path in binaries:
            run(name, SCENARIOS[name], label, path)


if __name__ == "__main__":
    main()
