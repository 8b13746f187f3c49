#!/usr/bin/env python3
"""Admission cost as the cluster sees it, against a real API server.

Runs `sesame serve` (and optionally another webhook binary for comparison)
on 127.0.0.1, registers it by URL for one fresh namespace only, and reports:

* the API server's own `apiserver_admission_webhook_admission_duration_seconds`
  for the webhook (mean, p50, p90, p99 from the buckets), per case;
* Sesame's own `sesame_admission_review_duration_seconds` for the same reviews;
* the wall time for a Deployment to have N Pods (created, not Ready: the
  loopback harness has no kubelet), with annotations, without annotations
  (webhook registered but not called: its matchConditions skip the Pod), and
  with no webhook at all.

    # the harness (../shared/tools/kube), with the controllers' client limit raised
    # so that the ReplicaSet controller does not hide the admission chain:
    KUBE_CM_API_QPS=1000 KUBE_CM_API_BURST=1000 ../shared/tools/kube/up.sh
    cargo build --release
    scripts/cluster_perf.py --kubeconfig /tmp/kube-harness/run/admin.kubeconfig
    scripts/cluster_perf.py ... --replicas 500 --pods 200
    scripts/cluster_perf.py ... --baseline-bin PATH   # e.g. kube-rs's admission_controller example

The baseline binary is run the way kube-rs's example expects (cert files
admission-controller-tls.{crt,key} in its working directory, port 8443) and
is registered with the same rules, selector and timeout, but without
matchConditions (it is called for every Pod of its namespace).

Figures and the command that produced them go into docs/performance.md
("Cluster"). Nothing here asserts a timing: this is a measuring tool.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFS = json.load(open(os.path.join(ROOT, "benches/data/five-references.json")))
BUCKET_RE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.e+-]+|\+Inf|NaN)$')


class Api:
    """A tiny client for the API server, with the kubeconfig's credentials."""

    def __init__(self, kubeconfig, tmp):
        raw = json.loads(subprocess.check_output(
            ["kubectl", "--kubeconfig", kubeconfig, "config", "view", "--raw", "--minify", "-o", "json"]))
        cluster = raw["clusters"][0]["cluster"]
        user = raw["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        base = os.path.dirname(os.path.abspath(kubeconfig))

        def material(key, name):
            if key + "-data" in user or key + "-data" in cluster:
                data = user.get(key + "-data") or cluster.get(key + "-data")
                path = os.path.join(tmp, name)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(data))
                return path
            path = user.get(key) or cluster.get(key)
            return path if os.path.isabs(path) else os.path.join(base, path)

        ctx = ssl.create_default_context(cafile=material("certificate-authority", "ca.crt"))
        ctx.load_cert_chain(material("client-certificate", "admin.crt"), material("client-key", "admin.key"))
        self.ctx = ctx
        self.kubeconfig = kubeconfig

    def call(self, method, path, body=None, content_type="application/json"):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                text = resp.read()
        except urllib.error.HTTPError as e:
            if method == "DELETE" and e.code == 404:
                return None
            raise SystemExit(f"{method} {path}: {e.code} {e.read()[:300]!r}")
        return json.loads(text) if text and text[:1] in b"{[" else text.decode()

    def try_call(self, method, path, body):
        """None when the call succeeds, else the error's status and text."""
        req = urllib.request.Request(self.server + path, data=json.dumps(body).encode(), method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                resp.read()
            return None
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read()[:300]!r}"

    def metrics(self):
        return self.call("GET", "/metrics")


def histogram(text, family, match):
    """Buckets (le -> count), sum and count of one histogram, summed over
    the series whose labels contain every `match` pair."""
    buckets, total, count = {}, 0.0, 0.0
    for line in text.splitlines():
        m = BUCKET_RE.match(line)
        if not m or not m.group(1).startswith(family):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if any(labels.get(k) != v for k, v in match.items()):
            continue
        value = float(m.group(3))
        suffix = m.group(1)[len(family):]
        if suffix == "_bucket":
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        elif suffix == "_sum":
            total += value
        elif suffix == "_count":
            count += value
    return buckets, total, count


def delta(after, before):
    b = {le: n - before[0].get(le, 0.0) for le, n in after[0].items()}
    return b, after[1] - before[1], after[2] - before[2]


def summary(h):
    buckets, total, count = h
    if count <= 0:
        return "no samples"
    edges = sorted(buckets)

    def quantile(q):
        rank, prev_le, prev_n = q * count, 0.0, 0.0
        for le in edges:
            n = buckets[le]
            if n >= rank:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * ((rank - prev_n) / max(n - prev_n, 1e-9))
            prev_le, prev_n = le, n
        return prev_le

    ms = lambda s: f"{s * 1000:.2f}"
    return (f"n={int(count)} mean={ms(total / count)} ms p50={ms(quantile(0.5))} "
            f"p90={ms(quantile(0.9))} p99={ms(quantile(0.99))} (bucket interpolation)")


def stop_process(p):
    """SIGTERM, then SIGKILL after 10 s."""
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def stop(api, configs, procs):
    """Deletes the webhook configurations `configs` names, then stops `procs`."""
    for name in configs:
        api.call("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")
    for p in procs:
        stop_process(p)


def harness_certs(pki, tmp):
    """The harness's webhook serving pair, copied where `--cert-dir` wants it,
    and its CA as a caBundle."""
    certs = os.path.join(tmp, "certs")
    os.makedirs(certs)
    shutil.copy(os.path.join(pki, "webhook.crt"), os.path.join(certs, "tls.crt"))
    shutil.copy(os.path.join(pki, "webhook.key"), os.path.join(certs, "tls.key"))
    with open(os.path.join(pki, "ca.crt"), "rb") as f:
        return certs, base64.b64encode(f.read()).decode()


def wait_http(url, ctx=None, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, context=ctx, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def webhook_config(kubeconfig, name, webhook, url, ca_b64, ns, match_conditions):
    """Sesame's shipped webhook (deploy/base), pointed at `url` and limited to `ns`."""
    shipped = json.loads(subprocess.check_output(
        ["kubectl", "--kubeconfig", kubeconfig, "create", "--dry-run=client", "--validate=false", "-o", "json", "-f",
         os.path.join(ROOT, "deploy/base/mutatingwebhookconfiguration.yaml")]))
    hook = shipped["webhooks"][0]
    hook["name"] = webhook
    hook["clientConfig"] = {"url": url, "caBundle": ca_b64}
    hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    hook.pop("objectSelector", None)
    if not match_conditions:
        hook.pop("matchConditions", None)
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [hook]}


def deployment(name, replicas, annotations, spec=None):
    template = {"metadata": {"labels": {"app": name}},
                "spec": spec or {"containers": [{"name": "app", "image": "busybox"}],
                                 "terminationGracePeriodSeconds": 0}}
    if annotations:
        template["metadata"]["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": template}}


def pod(name, annotations):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}


def scale_up(api, ns, name, replicas, annotations, spec=None, sample=None):
    """Seconds from creating the Deployment to `replicas` Pods existing,
    counted from a watch (no polling load on the API server). `sample`, a
    dict, receives one of the Pods as created (after admission)."""
    listed = api.call("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{name}")
    rv = listed["metadata"]["resourceVersion"]
    req = urllib.request.Request(
        api.server + f"/api/v1/namespaces/{ns}/pods?watch=1&labelSelector=app%3D{name}&resourceVersion={rv}")
    stream = urllib.request.urlopen(req, context=api.ctx, timeout=300)
    start = time.monotonic()
    api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(name, replicas, annotations, spec))
    seen = set()
    for line in stream:
        event = json.loads(line)
        if event["type"] == "ADDED":
            seen.add(event["object"]["metadata"]["name"])
            if sample is not None and not sample:
                sample.update(event["object"])
            if len(seen) >= replicas:
                break
    elapsed = time.monotonic() - start
    stream.close()
    api.call("DELETE", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}?propagationPolicy=Background")
    # Let the garbage collector clear the Pods before the next case.
    end = time.time() + 120
    while time.time() < end:
        pods = api.call("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{name}&limit=1")
        if not pods["items"]:
            break
        time.sleep(0.5)
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--sesame-bin", default=os.path.join(ROOT, "target/release/sesame"))
    ap.add_argument("--baseline-bin")
    ap.add_argument("--replicas", type=int, default=500)
    ap.add_argument("--pods", type=int, default=100, help="Pods per single-Pod case")
    ap.add_argument("--port", type=int, default=18643)
    ap.add_argument("--admin-port", type=int, default=18680)
    args = ap.parse_args()
    if not args.kubeconfig:
        raise SystemExit("give --kubeconfig (the harness's run/admin.kubeconfig) or set KUBECONFIG")
    pki = os.path.join(os.path.dirname(os.path.abspath(args.kubeconfig)), "pki")
    tmp = tempfile.mkdtemp(prefix="sesame-cluster-perf-")
    api = Api(args.kubeconfig, tmp)
    ns = f"sesame-perf-{int(time.time())}"
    procs, configs = [], []

    def cleanup(*_):
        stop(api, configs, procs)
        api.call("DELETE", f"/api/v1/namespaces/{ns}")
        shutil.rmtree(tmp, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        run(args, api, ns, pki, tmp, procs, configs)
    finally:
        cleanup()


def run(args, api, ns, pki, tmp, procs, configs):
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    while not api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts?fieldSelector=metadata.name%3Ddefault")["items"]:
        time.sleep(0.1)

    # The five references of benches/data, for this namespace.
    refs = {k: v.replace("apps/team-a/", f"apps/{ns}/") for k, v in REFS.items()}
    with open(os.path.join(ROOT, "benches/data/secrets.yaml")) as f:
        secrets = f.read().replace("apps/team-a/", f"apps/{ns}/")
    # One path per Pod of the first-of-set case: a new reference set each, so a new managed Secret each.
    secrets += "".join(f"apps/{ns}/cold-{i}:\n  v: cold-value-{i}\n" for i in range(args.pods))
    with open(os.path.join(tmp, "secrets.yaml"), "w") as f:
        f.write(secrets)
    with open(os.path.join(tmp, "sesame.yaml"), "w") as f:
        f.write("resolveTimeout: 3s\nstores:\n  - {name: dev, file: {path: secrets.yaml}, cacheTtl: 60s}\n"
                "policy:\n  rules:\n    - {name: own-subtree, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n")
    certs, ca_b64 = harness_certs(pki, tmp)

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    procs.append(subprocess.Popen(
        [args.sesame_bin, "serve", "--config", os.path.join(tmp, "sesame.yaml"), "--bind-address", "127.0.0.1",
         "--tls-port", str(args.port), "--admin-port", str(args.admin_port), "--cert-dir", certs,
         "--kube", "required", "--kubeconfig", args.kubeconfig, "--namespace", ns],
        cwd=tmp, env=env, stdout=open(os.path.join(tmp, "sesame.log"), "w"), stderr=subprocess.STDOUT))
    admin = f"http://127.0.0.1:{args.admin_port}"
    wait_http(admin + "/readyz", timeout=60)

    def sesame_hist():
        text = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()
        return histogram(text, "sesame_admission_review_duration_seconds", {})

    def sesame_text():
        return urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()

    def secret_write_hist(outcome, text):
        # Absent from binaries older than the metric: "no samples".
        return histogram(text, "sesame_secret_write_duration_seconds", {"outcome": outcome})

    def sesame_connections():
        text = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()
        keep = ("sesame_connections", "sesame_requests_in_flight", "sesame_accept_errors", "sesame_secret_writes",
                "sesame_plan_memo")
        return "; ".join(line for line in text.splitlines()
                         if line.startswith(keep) and 'port="admin"' not in line) or "none"

    def apiserver_hist(webhook):
        return histogram(api.metrics(), "apiserver_admission_webhook_admission_duration_seconds",
                         {"name": webhook, "operation": "CREATE"})

    def register(name, webhook, url, match_conditions):
        api.call("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                 webhook_config(api.kubeconfig, name, webhook, url, ca_b64, ns, match_conditions))
        configs.append(name)
        time.sleep(2)  # the API server picks up webhook configurations asynchronously

    def unregister(name):
        api.call("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")
        configs.remove(name)
        time.sleep(2)

    def pods_case(label, webhook, annotations_for):
        before_a, before_s, before_text = apiserver_hist(webhook), sesame_hist(), sesame_text()
        for i in range(args.pods):
            api.call("POST", f"/api/v1/namespaces/{ns}/pods", pod(f"{label}-{i}", annotations_for(i)))
        after_a, after_s, after_text = apiserver_hist(webhook), sesame_hist(), sesame_text()
        print(f"  {label}: API server sees {summary(delta(after_a, before_a))}")
        if webhook == SESAME:
            print(f"  {label}: Sesame's own   {summary(delta(after_s, before_s))}")
            for outcome in ("applied", "unchanged"):
                h = delta(secret_write_hist(outcome, after_text), secret_write_hist(outcome, before_text))
                print(f"  {label}: of which the managed Secret step ({outcome}) {summary(h)}")
            print(f"  {label}: Sesame's connection metrics: {sesame_connections()}")
        api.call("DELETE", f"/api/v1/namespaces/{ns}/pods?labelSelector=")

    SESAME = "inject-perf.sesame.dev"
    SESAME_ALL = "inject-perf-all.sesame.dev"
    print(f"namespace {ns}; {args.pods} Pods per single-Pod case, {args.replicas} replicas per Deployment")
    print("Deployment to N Pods, no webhook registered:")
    print(f"  none: {scale_up(api, ns, 'plain-none', args.replicas, None):.2f} s")

    register("sesame-perf", SESAME, f"https://127.0.0.1:{args.port}/mutate", True)
    print("Deployment to N Pods, Sesame registered:")
    print(f"  not called (no annotations, matchConditions skip): "
          f"{scale_up(api, ns, 'plain-skipped', args.replicas, None):.2f} s")
    before, before_s = apiserver_hist(SESAME), sesame_hist()
    mutated = {}
    print(f"  annotated (5 references, one managed Secret): "
          f"{scale_up(api, ns, 'annotated', args.replicas, refs, sample=mutated):.2f} s")
    print(f"    API server sees {summary(delta(apiserver_hist(SESAME), before))}")
    print(f"    Sesame's own    {summary(delta(sesame_hist(), before_s))}")
    print(f"    Sesame's connection metrics: {sesame_connections()}")

    # Called for every Pod, but the Pods carry no annotations: Sesame allows
    # them at once. What the API server sees here beyond Sesame's own time is
    # the cost of a webhook call as such (transport, the API server's own
    # encoding and scheduling), whatever the webhook does.
    register("sesame-perf-all", SESAME_ALL, f"https://127.0.0.1:{args.port}/mutate", False)
    before, before_s = apiserver_hist(SESAME_ALL), sesame_hist()
    print(f"  called, nothing to do (no matchConditions, no annotations): "
          f"{scale_up(api, ns, 'plain-called', args.replicas, None):.2f} s")
    print(f"    API server sees {summary(delta(apiserver_hist(SESAME_ALL), before))}")
    print(f"    Sesame's own    {summary(delta(sesame_hist(), before_s))}")
    unregister("sesame-perf-all")

    print("Single Pods (one POST after another):")
    # Warm: the Secret for this reference set exists and is up to date.
    api.call("POST", f"/api/v1/namespaces/{ns}/pods", pod("warm-0", refs))
    pods_case("up-to-date", SESAME, lambda i: refs)
    # Cold: every Pod has a new reference set, so a new managed Secret.
    pods_case("first-of-set", SESAME,
              lambda i: dict(refs, **{"sesame.dev/env.COLD": f"dev:apps/{ns}/cold-{i}#v"}))
    unregister("sesame-perf")

    # The Pods as Sesame left them (its annotations, env, volumes and mounts
    # already in the template), with no webhook registered: what the bigger
    # Pod costs the API server and the controllers without any admission call.
    if mutated:
        spec = {k: v for k, v in mutated["spec"].items() if k not in ("nodeName",)}
        print(f"  no webhook, the Pod as mutated already in the template: "
              f"{scale_up(api, ns, 'premutated', args.replicas, mutated['metadata'].get('annotations'), spec):.2f} s")

    if args.baseline_bin:
        bdir = os.path.join(tmp, "baseline")
        os.makedirs(bdir)
        shutil.copy(os.path.join(pki, "webhook.crt"), os.path.join(bdir, "admission-controller-tls.crt"))
        shutil.copy(os.path.join(pki, "webhook.key"), os.path.join(bdir, "admission-controller-tls.key"))
        procs.append(subprocess.Popen([args.baseline_bin], cwd=bdir, env=dict(env, ADMISSION_PRIVATE_IP="127.0.0.1"),
                                      stdout=open(os.path.join(tmp, "baseline.log"), "w"), stderr=subprocess.STDOUT))
        time.sleep(2)
        baseline = "baseline-perf.sesame.dev"
        register("baseline-perf", baseline, "https://127.0.0.1:8443/mutate", False)
        print("Baseline webhook, same registration without matchConditions:")
        pods_case("baseline", baseline, lambda i: refs)
        print(f"  Deployment to N Pods: {scale_up(api, ns, 'baseline', args.replicas, refs):.2f} s")
        unregister("baseline-perf")

    rss = 0
    for line in open(f"/proc/{procs[0].pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    print(f"Sesame RSS at the end: {rss:.1f} MiB")


if __name__ == "__main__":
    main()
