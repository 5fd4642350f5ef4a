"""Checks the Helm chart without a cluster (run by scripts/check-chart, inside target/chart-venv).

Lints and renders the chart with helm-python-sdk (Helm v4's Go SDK, no helm binary), validates
every rendered manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict) and
the custom resources against validators generated from their CRD schemas (node), asserts what the
defaults must contain, and checks that values.schema.json and the chart's own guards reject bad
values. Prints one line per check and `N passed, M failed[, K skipped]` last; exits 1 on failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mcp-fanout"
CI = CHART / "ci"
NODE_DIR = Path(os.environ.get("CHART_NODE_DIR", ROOT / "target" / "chart-node"))
RELEASE, NAMESPACE = "demo", "fanout"
# The oldest Kubernetes the defaults support (lifecycle.preStop.sleep) and the newest the
# validator ships schemas for.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}

passed = failed = skipped = 0


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def check(name: str, fn: Callable[[], str | None]) -> None:
    global passed, failed, skipped
    try:
        detail = fn()
    except Skip as e:
        skipped += 1
        print(f"SKIP {name}: {e}")
        return
    except CheckFailed as e:
        failed += 1
        print(f"FAIL {name}: {e}")
        return
    except Exception as e:  # a crash in a check is a failure of that check
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        traceback.print_exc(limit=3)
        return
    passed += 1
    print(f"ok   {name}" + (f" ({detail})" if detail else ""))


def expect(cond: Any, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CI / name).read_text()) or {}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


chart = helm.Chart.load(CHART)


def render(values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def docs_of(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for source, text in sorted(rendered.items()):
        if source.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((source.split("/templates/", 1)[-1], doc))
    return out


def find(docs: list[tuple[str, dict[str, Any]]], kind: str, pred: Callable[[dict], bool] = lambda d: True) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == kind and pred(d)]


def one(docs, kind, pred=lambda d: True) -> dict:
    found = find(docs, kind, pred)
    expect(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    e = env_of(container).get(name)
    expect(e is not None and "value" in e, f"{container['name']}: env {name} missing or not a literal")
    return e["value"]


def lint(values: dict[str, Any], kube_version: str = KUBE_VERSIONS[0]) -> tuple[dict[str, Any], list[str]]:
    """helm lint --strict; returns the report and the chart's `fail` messages.

    Helm 4's linter does not turn a template's `fail` into a lint error: it logs
    `funcMap fail message="…"` (to the process's stderr, from Go) and passes. Those messages are
    captured here so that a lint that hit one of the chart's guards counts as failed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            report = helm.lint(str(CHART), values, strict=True, kube_version="v" + kube_version.lstrip("v"))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    fails = re.findall(r'funcMap fail message="((?:[^"\\]|\\.)*)"', text)
    other = [line for line in text.splitlines() if line.strip() and "funcMap fail" not in line]
    if other:
        print("\n".join("     helm: " + line for line in other))
    return report, fails


def lint_problems(values: dict[str, Any], kube_version: str = KUBE_VERSIONS[0]) -> list[str]:
    report, fails = lint(values, kube_version)
    problems = [str(m["error"]).strip() for m in report["messages"] if m["severity"] >= 2]
    problems += [str(e).strip() for e in report["errors"]] + fails
    return problems


def must_fail(values: dict[str, Any], pattern: str) -> str:
    """`helm template` and `helm lint --strict` must both fail, with an error matching `pattern`."""
    try:
        render(values)
    except helm.HelmError as e:
        msg = str(e)
        expect(re.search(pattern, msg, re.S), f"render failed, but not with /{pattern}/: {msg.strip()[:300]}")
    else:
        raise CheckFailed("render succeeded but must fail")
    problems = lint_problems(values)
    expect(any(re.search(pattern, p, re.S) for p in problems), f"helm lint did not fail with /{pattern}/: {problems}")
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    last = re.sub(r"^.*?\): (?=mcp-fanout:)", "", lines[-1] if lines else msg)
    return "rejected: " + (last if len(last) <= 140 else last[:137] + "...")


# ---------------------------------------------------------------------------------------------
# 1. Lint and render: the defaults (plus the required database URL) and every option on.

SCENARIOS = {
    "defaults": load_values("default-values.yaml"),
    "all-on": load_values("all-on-values.yaml"),
    "in-memory": {"database": {"inMemory": True}, "replicaCount": 1, "migration": {"enabled": False}},
    "existing-secret": {
        "existingSecret": "fanout-credentials",
        "existingSecretKeys": {"migrationDatabaseUrl": "MIGRATION_DATABASE_URL"},
        "database": {"caConfigMap": "pg-ca"},
        "proxy": {"upstream": "https://mcp-server.tools.svc/mcp", "caConfigMap": "mesh-ca", "caConfigMapKey": "bundle.pem"},
        "subscriberAuth": {"mode": "header"},
        "preStop": {"enabled": False},
        "config": {"trustedProxies": []},
        "networkPolicy": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    },
    # Settings all-on cannot hold at once (it sets the audience).
    "jwt-any-audience": {
        **load_values("default-values.yaml"),
        "subscriberAuth": {"mode": "jwt", "jwt": {"jwks": "https://auth.example.com/jwks.json", "anyAudience": True}},
    },
}
RENDERED: dict[str, list[tuple[str, dict]]] = {}


def lint_ok(values: dict[str, Any]) -> Callable[[], str]:
    def run() -> str:
        problems = lint_problems(values)
        expect(not problems, "; ".join(problems))
        return "no warnings, no errors"
    return run


def render_ok(name: str, values: dict[str, Any]) -> Callable[[], str]:
    def run() -> str:
        docs = docs_of(render(values))
        RENDERED[name] = docs
        return f"{len(docs)} manifests: " + ", ".join(sorted({d['kind'] for _, d in docs}))
    return run


for name, values in SCENARIOS.items():
    check(f"helm lint --strict ({name}, Kubernetes {KUBE_VERSIONS[0]})", lint_ok(values))
    check(f"helm template ({name})", render_ok(name, values))


# ---------------------------------------------------------------------------------------------
# 2. Every manifest against the Kubernetes schemas; CRD kinds against their CRD validators.

def kube_validate(name: str, version: str) -> Callable[[], str]:
    def run() -> str:
        docs = RENDERED.get(name)
        expect(docs, f"{name} did not render")
        errors, done = [], 0
        for source, doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                done += 1
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{source} {doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{source}: {e.message}")
        expect(not errors, "\n    " + "\n    ".join(errors))
        return f"{done} manifests valid"
    return run


for name in SCENARIOS:
    for version in KUBE_VERSIONS:
        check(f"kubernetes-validate --strict {version} ({name})", kube_validate(name, version))


def crd_validate() -> str:
    items = [{"source": f"{name}:{src}", "doc": doc}
             for name, docs in RENDERED.items() for src, doc in docs
             if (doc["apiVersion"], doc["kind"]) in CRD_KINDS]
    kinds = sorted({i["doc"]["kind"] for i in items})
    expect({"ServiceMonitor", "PrometheusRule", "HTTPRoute"} <= set(kinds), f"all-on should render every CRD kind, got {kinds}")
    node = shutil.which("node")
    if not node or not (NODE_DIR / "node_modules" / "@kubernetes-models").is_dir():
        raise Skip(f"{', '.join(kinds)} are NOT schema-validated: node or {NODE_DIR}/node_modules is missing")
    script = NODE_DIR / "validate-crds.mjs"
    shutil.copyfile(ROOT / "scripts" / "chart" / "validate-crds.mjs", script)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(items, f)
    try:
        out = subprocess.run([node, str(script), f.name], capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    finally:
        os.unlink(f.name)
    expect(out.returncode == 0, f"node failed: {out.stderr.strip()[:500]}")
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    expect(len(results) == len(items), f"node validated {len(results)} of {len(items)} documents")
    bad = [f"{r['source']} {r['kind']}: {r['error']}" for r in results if not r["ok"]]
    expect(not bad, "\n    " + "\n    ".join(bad))
    return f"{len(results)} custom resources valid ({', '.join(kinds)}); unknown fields are not caught by these validators"


check("CRD kinds against their CRD schemas (ServiceMonitor, PrometheusRule, HTTPRoute)", crd_validate)


def crd_validator_rejects() -> str:
    """The CRD validators do reject a wrong value (so a pass above means something)."""
    node = shutil.which("node")
    if not node or not (NODE_DIR / "node_modules" / "@kubernetes-models").is_dir():
        raise Skip("node or its packages are missing")
    bad = [
        {"source": "bad-port", "doc": {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "x"},
                                       "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "s", "port": 80800}]}]}}},
        {"source": "bad-duration", "doc": {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
                                           "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "five minutes"}]}]}}},
        {"source": "bad-interval", "doc": {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
                                           "spec": {"selector": {}, "endpoints": [{"port": "admin", "interval": "often"}]}}},
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bad, f)
    try:
        out = subprocess.run([node, str(NODE_DIR / "validate-crds.mjs"), f.name], capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    finally:
        os.unlink(f.name)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    expect(len(results) == 3 and not any(r["ok"] for r in results), f"expected 3 rejections, got {results}")
    return "3 bad custom resources rejected"


check("CRD validators reject bad custom resources", crd_validator_rejects)


# ---------------------------------------------------------------------------------------------
# 3. What the defaults must contain.

def d() -> list[tuple[str, dict]]:
    docs = RENDERED.get("defaults")
    expect(docs, "defaults did not render")
    return docs


def server(docs) -> tuple[dict, dict, dict]:
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    return dep, pod, pod["containers"][0]


def assert_probes() -> str:
    _, _, c = server(d())
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        p = c.get(probe)
        expect(p and p["httpGet"]["path"] == path and p["httpGet"]["port"] == "admin", f"{probe}: {p}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(ports == {"http": 8080, "admin": 9090}, f"container ports {ports}")
    expect(env_value(c, "FANOUT_ADMIN_ADDR") == "0.0.0.0:9090", "FANOUT_ADMIN_ADDR")
    expect(env_value(c, "FANOUT_ADDR") == "0.0.0.0:8080", "FANOUT_ADDR")
    return "startup+liveness /healthz, readiness /readyz, on the admin port (FANOUT_ADMIN_ADDR=0.0.0.0:9090)"


def assert_security() -> str:
    _, pod, c = server(d())
    psc, csc = pod["securityContext"], c["securityContext"]
    expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, f"pod securityContext {psc}")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile")
    expect(csc.get("runAsNonRoot") is True and csc.get("runAsUser") == 65532, f"container securityContext {csc}")
    expect(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities.drop ALL")
    expect(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccompProfile")
    expect(pod.get("automountServiceAccountToken") is False, "pod automountServiceAccountToken")
    sa = one(d(), "ServiceAccount")
    expect(sa.get("automountServiceAccountToken") is False, "ServiceAccount automountServiceAccountToken")
    for kind in ("Job", "Pod"):
        for obj in find(d(), kind):
            spec = obj["spec"]["template"]["spec"] if kind == "Job" else obj["spec"]
            expect(spec["securityContext"].get("runAsNonRoot") is True, f"{kind} pod securityContext")
            for cc in spec["containers"]:
                expect(cc["securityContext"].get("readOnlyRootFilesystem") is True, f"{kind}/{cc['name']} securityContext")
    return "non-root 65532, read-only root, no privilege escalation, ALL dropped, RuntimeDefault (server, migration, test)"


def assert_rollout() -> str:
    dep, pod, _ = server(d())
    expect(dep["spec"]["replicas"] == 3, f"replicas {dep['spec'].get('replicas')}")
    ru = dep["spec"]["strategy"]["rollingUpdate"]
    expect(dep["spec"]["strategy"]["type"] == "RollingUpdate" and ru == {"maxUnavailable": 0, "maxSurge": 1}, f"strategy {ru}")
    tsc = pod.get("topologySpreadConstraints", [])
    keys = {(t["topologyKey"], t["whenUnsatisfiable"]) for t in tsc}
    expect(keys == {("kubernetes.io/hostname", "ScheduleAnyway"), ("topology.kubernetes.io/zone", "ScheduleAnyway")}, f"spread {keys}")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for t in tsc:
        expect(t["labelSelector"]["matchLabels"].items() <= labels.items(), "spread selector does not match the pods")
    return "3 replicas, maxUnavailable 0 / maxSurge 1, spread by hostname + zone (ScheduleAnyway)"


def assert_grace() -> str:
    _, pod, c = server(d())
    grace = pod["terminationGracePeriodSeconds"]
    drain = int(env_value(c, "FANOUT_DRAIN_SECS"))
    shutdown = int(env_value(c, "FANOUT_SHUTDOWN_GRACE_SECS"))
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    expect(grace >= drain, f"grace {grace} < drain {drain}")
    expect(grace >= sleep + drain, f"grace {grace} < preStop {sleep} + drain {drain}")
    expect(grace >= sleep + shutdown, f"grace {grace} < preStop {sleep} + shutdown grace {shutdown}")
    expect("exec" not in c["lifecycle"]["preStop"], "preStop must not need a shell")
    return f"terminationGracePeriodSeconds {grace} >= preStop sleep {sleep} + FANOUT_SHUTDOWN_GRACE_SECS {shutdown} >= drain {drain}"


def assert_pdb() -> str:
    dep, _, _ = server(d())
    pdb = one(d(), "PodDisruptionBudget")
    expect(pdb["spec"].get("maxUnavailable") == 1, f"PDB {pdb['spec']}")
    expect(pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(), "PDB selector")
    return "policy/v1 maxUnavailable 1, selects the server pods"


def assert_services() -> str:
    dep, _, _ = server(d())
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svcs = {s["metadata"]["name"]: s for s in find(d(), "Service")}
    public, admin = svcs.get(f"{RELEASE}-mcp-fanout"), svcs.get(f"{RELEASE}-mcp-fanout-admin")
    expect(public and admin and len(svcs) == 2, f"services {list(svcs)}")
    expect([(p["name"], p["port"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", 8080, "http")], "public port")
    expect([(p["name"], p["port"], p["targetPort"]) for p in admin["spec"]["ports"]] == [("admin", 9090, "admin")], "admin port")
    for s in (public, admin):
        expect(s["spec"]["selector"].items() <= labels.items(), f"{s['metadata']['name']} selector")
    return "public http 8080 and internal admin 9090, both select the server pods"


def assert_migration_hook() -> str:
    docs = d()
    job = one(docs, "Job")
    ann = job["metadata"]["annotations"]
    expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"Job hook {ann}")
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    expect(c["args"] == ["migrate"], f"Job args {c['args']}")
    ref = env_of(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secret = one(docs, "Secret", lambda s: s["metadata"]["name"] == ref["name"])
    sann = secret["metadata"].get("annotations", {})
    expect(sann.get("helm.sh/hook") == "pre-install,pre-upgrade", "the Job's Secret must be a pre-install,pre-upgrade hook too")
    expect(int(sann["helm.sh/hook-weight"]) < int(ann.get("helm.sh/hook-weight", "0")), "the Secret's hook weight must be lower")
    expect(ref["key"] in secret["data"], "the Job's key is not in its Secret")
    expect("serviceAccountName" not in spec, "a pre-install hook cannot use the chart's ServiceAccount (not created yet)")
    _, _, server_c = server(docs)
    expect(env_value(server_c, "FANOUT_MIGRATE") == "skip", "with the hook, replicas should not migrate (FANOUT_MIGRATE=skip)")
    return f"Job `mcp-fanout migrate` ({ann['helm.sh/hook']}), URL from hook Secret weight {sann['helm.sh/hook-weight']}"


def assert_test_hook() -> str:
    docs = d()
    pod = one(docs, "Pod")
    expect(pod["metadata"]["annotations"].get("helm.sh/hook") == "test", "helm test hook")
    expect(pod["spec"]["restartPolicy"] == "Never" and pod["spec"].get("activeDeadlineSeconds"), "restartPolicy / deadline")
    cs = {c["name"]: c for c in pod["spec"]["containers"]}
    sub, pub = cs.get("subscribe"), cs.get("publish")
    expect(sub and pub, f"containers {list(cs)}")
    expect(sub["args"][0] == "subscribe" and "--count" in sub["args"] and "http://demo-mcp-fanout:8080" in sub["args"], f"subscriber {sub['args']}")
    expect(pub["args"][0] == "publish" and "http://demo-mcp-fanout-admin:9090" in pub["args"], f"publisher {pub['args']}")
    sess = lambda a: a[a.index("--session") + 1]  # noqa: E731
    expect(sess(sub["args"]) == sess(pub["args"]), "subscriber and publisher must share the session id")
    tok = env_of(pub)["FANOUT_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = one(docs, "Secret", lambda s: s["metadata"]["name"] == tok["name"] and "helm.sh/hook" not in s["metadata"].get("annotations", {}))
    expect(tok["key"] in secret["data"], "the test's token key is not in the Secret")
    return "Pod hook `test`: subscribe (public Service) + publish (admin Service, token from the Secret), session-targeted"


def assert_secret_refs() -> str:
    """Every secretKeyRef / configMap volume points at an object and key the chart renders."""
    n = 0
    for name, docs in RENDERED.items():
        # Secrets the operator provides (not rendered by the chart).
        external = {SCENARIOS[name].get("existingSecret"),
                    SCENARIOS[name].get("tests", {}).get("subscriberToken", {}).get("secretName")} - {None, ""}
        secrets = {s["metadata"]["name"]: s for s in find(docs, "Secret")}
        cms = {c["metadata"]["name"]: c for c in find(docs, "ConfigMap")}
        pods = [("Deployment", o["spec"]["template"]["spec"]) for o in find(docs, "Deployment")]
        pods += [("Job", o["spec"]["template"]["spec"]) for o in find(docs, "Job")]
        pods += [("Pod", o["spec"]) for o in find(docs, "Pod")]
        for kind, spec in pods:
            for c in spec["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if not ref:
                        continue
                    n += 1
                    if ref["name"] in external:
                        continue
                    s = secrets.get(ref["name"])
                    expect(s is not None, f"{name}: {kind}/{c['name']} env {e['name']} -> missing Secret {ref['name']}")
                    expect(ref["key"] in s.get("data", {}) or ref.get("optional"), f"{name}: {kind}/{c['name']} env {e['name']} -> {ref['name']} has no key {ref['key']}")
            for v in spec.get("volumes", []):
                if "configMap" in v and v["configMap"]["name"] in cms:
                    n += 1
                    for item in v["configMap"].get("items", []):
                        expect(item["key"] in cms[v["configMap"]["name"]]["data"], f"{name}: volume {v['name']} key {item['key']}")
                if "secret" in v and v["secret"]["secretName"] in secrets:
                    n += 1
                    for item in v["secret"].get("items", []):
                        expect(item["key"] in secrets[v["secret"]["secretName"]]["data"], f"{name}: volume {v['name']} key {item['key']}")
    return f"{n} references resolved across {len(RENDERED)} scenarios"


def assert_generated_token() -> str:
    docs = d()
    s = one(docs, "Secret", lambda s: s["metadata"]["name"] == f"{RELEASE}-mcp-fanout")
    import base64
    tok = base64.b64decode(s["data"]["admin-token"]).decode()
    toks = base64.b64decode(s["data"]["FANOUT_ADMIN_TOKENS"]).decode()
    expect(len(tok) == 48 and tok.isalnum(), "generated token")
    expect(toks == tok, "FANOUT_ADMIN_TOKENS should hold the generated token")
    tmpl = (CHART / "templates" / "secret.yaml").read_text()
    expect('lookup "v1" "Secret"' in tmpl, "the Secret must read back the live token with lookup")
    return "48-char token generated; kept across upgrades via lookup (not exercisable offline)"


def assert_all_settings_have_env() -> str:
    """Every setting `mcp-fanout serve` reads from the environment is set by the all-on values, or
    (for one that excludes another all-on sets) by another scenario."""
    src = (ROOT / "src" / "config.rs").read_text()
    serve = src.split("pub struct MigrateArgs")[0]
    wanted = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', serve)) | {"RUST_LOG"}
    expect(len(wanted) > 20, f"found only {len(wanted)} env settings in src/config.rs")
    have: set[str] = set()
    for docs in RENDERED.values():
        _, _, c = server(docs)
        have |= set(env_of(c))
    missing = sorted(wanted - have)
    expect(not missing, f"settings the chart cannot set: {missing}")
    binary = next((p for p in (ROOT / "target" / "debug" / "mcp-fanout", ROOT / "target" / "release" / "mcp-fanout") if p.exists()), None)
    note = ""
    if binary:
        out = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
        from_help = set(re.findall(r"\[env:\s*([A-Z0-9_]+)", out))
        missing = sorted(from_help - have)
        expect(not missing, f"settings in `{binary.name} serve --help` the chart cannot set: {missing}")
        note = f", and the {len(from_help)} in `serve --help` of {binary.relative_to(ROOT)}"
    return f"{len(wanted)} env settings of src/config.rs{note}"


def assert_cli_flags_exist() -> str:
    """Every subcommand and flag the chart passes to the binary exists in this build."""
    binary = next((p for p in (ROOT / "target" / "debug" / "mcp-fanout", ROOT / "target" / "release" / "mcp-fanout") if p.exists()), None)
    if binary is None:
        raise Skip("no target/{debug,release}/mcp-fanout built: the container args are not checked against the CLI")
    helps: dict[str, set[str]] = {}
    problems, n = [], 0
    for name, docs in RENDERED.items():
        specs = [o["spec"]["template"]["spec"] for o in find(docs, "Deployment") + find(docs, "Job")]
        specs += [o["spec"] for o in find(docs, "Pod")]
        for spec in specs:
            for c in spec["containers"]:
                args = c.get("args", [])
                if not args:
                    continue
                sub = args[0]
                if sub not in helps:
                    out = subprocess.run([str(binary), sub, "--help"], capture_output=True, text=True, timeout=30)
                    helps[sub] = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout)) if out.returncode == 0 else set()
                    if out.returncode != 0:
                        problems.append(f"`mcp-fanout {sub}` is not a subcommand")
                for a in args[1:]:
                    if a.startswith("--"):
                        n += 1
                        if a.split("=")[0] not in helps[sub]:
                            problems.append(f"container {c['name']}: `mcp-fanout {sub} {a}` is not a flag of {binary.relative_to(ROOT)}")
    expect(not problems, "\n    " + "\n    ".join(sorted(set(problems))))
    return f"{n} flags of {', '.join(sorted(helps))} exist in {binary.relative_to(ROOT)}"


def schema_covers(schema: dict, values: Any, path: str, missing: list[str]) -> None:
    if not isinstance(values, dict):
        return
    defs = schema_root.get("definitions", {})
    while "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    props = schema.get("properties")
    if props is None:
        return  # a free-form map (labels, resources, Kubernetes objects)
    for k, v in values.items():
        if k not in props:
            missing.append(f"{path}.{k}".lstrip("."))
        else:
            schema_covers(props[k], v, f"{path}.{k}", missing)


schema_root = json.loads((CHART / "values.schema.json").read_text())


def assert_schema_covers_values() -> str:
    expect(schema_root.get("$schema", "").startswith("http://json-schema.org/draft-07/schema"), "draft-07")
    expect(schema_root.get("additionalProperties") is False, "top-level additionalProperties: false")
    missing: list[str] = []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for values in (defaults, SCENARIOS["all-on"]):
        schema_covers(schema_root, values, "", missing)
    expect(not missing, f"values without a schema: {sorted(set(missing))}")
    n = sum(1 for _ in re.finditer(r'"type"', (CHART / "values.schema.json").read_text()))
    return f"every key of values.yaml and ci/all-on-values.yaml is typed ({n} type constraints)"


def assert_crds_default_off() -> str:
    kinds = {d["kind"] for _, d in d()}
    expect(not kinds & {"ServiceMonitor", "PrometheusRule", "HTTPRoute", "Ingress", "HorizontalPodAutoscaler", "NetworkPolicy"}, f"optional kinds on by default: {kinds}")
    return "Ingress, HTTPRoute, HPA, ServiceMonitor, PrometheusRule, NetworkPolicy are opt-in"


def assert_alerts() -> str:
    rule = one(RENDERED["all-on"], "PrometheusRule")
    rules = {r.get("alert"): r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for alert, needle in [
        ("McpFanoutListenDown", "mcp_fanout_listen_connected"),
        ("McpFanoutSlowSubscriberDrops", 'mcp_fanout_subscribers_dropped_total'),
        ("McpFanoutDeliveryLagHigh", "mcp_fanout_publish_deliver_lag_seconds_bucket"),
        ("McpFanoutNotifyQueueFilling", "mcp_fanout_notify_queue_usage"),
        ("McpFanoutDbPoolExhausted", "mcp_fanout_db_pool_waiting"),
        ("McpFanoutTaskRestarts", "mcp_fanout_task_restarts_total"),
        ("McpFanoutUpstreamBusy", 'mcp_fanout_http_errors_total'),
        ("McpFanoutUpstreamFailing", 'mcp_fanout_http_errors_total'),
        ("McpFanoutProxyRelaysCut", 'mcp_fanout_proxy_relays_cut_total'),
        ("McpFanoutAdminAttemptsRefused", 'mcp_fanout_http_errors_total'),
        ("McpFanoutAdminConnectionsAtCap", 'mcp_fanout_connections_closed_total'),
    ]:
        expect(needle in rules.get(alert, ""), f"{alert}: {rules.get(alert)}")
    expect('reason=~"lagging|write_stall"' in rules["McpFanoutSlowSubscriberDrops"], "drop reasons")
    expect('code="upstream_busy"' in rules["McpFanoutUpstreamBusy"], "upstream_busy code")
    expect('code="too_many_failed_attempts"' in rules["McpFanoutAdminAttemptsRefused"], "too_many_failed_attempts code")
    expect('listener="admin", reason="at_cap"' in rules["McpFanoutAdminConnectionsAtCap"], "admin at_cap labels")
    expect('code=~"upstream_unreachable|upstream_invalid|upstream_timeout|upstream_cut"' in rules["McpFanoutUpstreamFailing"], "upstream failure codes")
    for alert, expr in rules.items():
        expect(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{alert}: unbalanced {expr}")
    return f"{len(rules)} alerts, each on its metric"


def assert_sse_routes() -> str:
    ing = one(RENDERED["all-on"], "Ingress")
    ann = ing["metadata"]["annotations"]
    expect(ann.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "proxy-buffering off")
    expect(int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", 0)) >= 3600, "read timeout")
    expect(int(ann.get("nginx.ingress.kubernetes.io/proxy-send-timeout", 0)) >= 3600, "send timeout")
    route = one(RENDERED["all-on"], "HTTPRoute")
    expect(all(r.get("timeouts", {}).get("request") == "0s" for r in route["spec"]["rules"]), "HTTPRoute request timeout disabled")
    for obj in (ing, route):
        text = json.dumps(obj)
        expect("-admin" not in text, f"{obj['kind']} must not route to the admin Service")
    return "nginx: buffering off, 3600 s timeouts; HTTPRoute: timeouts 0s; neither routes to admin"


def assert_existing_secret() -> str:
    docs = RENDERED["existing-secret"]
    expect(not find(docs, "Secret"), "no chart Secret with existingSecret")
    _, _, c = server(docs)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    expect({r["name"] for r in refs.values()} == {"fanout-credentials"}, f"refs {refs}")
    job = one(docs, "Job")
    jref = env_of(job["spec"]["template"]["spec"]["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    expect(jref == {"name": "fanout-credentials", "key": "MIGRATION_DATABASE_URL"}, f"job ref {jref}")
    expect("lifecycle" not in c, "preStop disabled")
    return "pods and the migration hook read the existing Secret; no chart Secret"


def assert_upstream_ca() -> str:
    """proxy.caCert (all-on) and proxy.caConfigMap (existing-secret): the PEM is mounted read-only
    and FANOUT_UPSTREAM_CA_FILE names the mounted file."""
    seen = []
    for name, cm, key in [("all-on", f"{RELEASE}-mcp-fanout", "upstream-ca.crt"), ("existing-secret", "mesh-ca", "bundle.pem")]:
        dep = one(RENDERED[name], "Deployment")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        path = env_value(c, "FANOUT_UPSTREAM_CA_FILE")
        expect(path == f"/etc/mcp-fanout/upstream-ca/{key}", f"{name}: FANOUT_UPSTREAM_CA_FILE={path}")
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "upstream-ca"]
        expect(len(mounts) == 1 and mounts[0]["mountPath"] == "/etc/mcp-fanout/upstream-ca" and mounts[0].get("readOnly"), f"{name}: mount {mounts}")
        vols = [v for v in pod.get("volumes", []) if v["name"] == "upstream-ca"]
        expect(len(vols) == 1 and vols[0]["configMap"]["name"] == cm, f"{name}: volume {vols}")
        expect([i["key"] for i in vols[0]["configMap"]["items"]] == [key], f"{name}: items {vols[0]['configMap']['items']}")
        seen.append(f"{name}: {cm}/{key}")
    _, _, c = server(d())
    expect("FANOUT_UPSTREAM_CA_FILE" not in env_of(c), "defaults: no upstream CA")
    return "mounted and named: " + ", ".join(seen)


def assert_trusted_proxies() -> str:
    _, _, c = server(RENDERED["all-on"])
    listed = env_value(c, "FANOUT_TRUSTED_PROXIES")
    expect(listed == "10.0.0.0/8,fd00::/8,192.0.2.7", f"all-on: {listed}")
    _, _, c = server(RENDERED["existing-secret"])
    none = env_value(c, "FANOUT_TRUSTED_PROXIES")
    expect(none == "none", f"[]: {none}")
    _, _, c = server(d())
    expect("FANOUT_TRUSTED_PROXIES" not in env_of(c), "defaults: unset")
    expect("FANOUT_CLIENT_ADDRESS_HEADER" not in env_of(c), "defaults: the binary's x-forwarded-for")
    _, _, c = server(RENDERED["all-on"])
    header = env_value(c, "FANOUT_CLIENT_ADDRESS_HEADER")
    expect(header == "forwarded", f"all-on: client address header {header}")
    return "a list joined, [] = none, null = unset; clientAddressHeader passed when not the default"


def assert_session_claims() -> str:
    _, _, c = server(d())
    default = env_value(c, "FANOUT_SESSION_CLAIMS_PER_MIN")
    expect(default == "60", f"defaults: {default}")
    _, _, c = server(RENDERED["all-on"])
    set_ = env_value(c, "FANOUT_SESSION_CLAIMS_PER_MIN")
    expect(set_ == "120", f"all-on: {set_}")
    return f"passed as set (default {default}, all-on {set_})"


def assert_session_writes_per_client() -> str:
    _, _, c = server(d())
    expect(
        "FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN" not in env_of(c),
        "defaults: unset (no bound per client)",
    )
    _, _, c = server(RENDERED["all-on"])
    set_ = env_value(c, "FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN")
    expect(set_ == "600", f"all-on: {set_}")
    return f"unset by default, passed as set (all-on {set_})"


def assert_trusted_proxies_note() -> str:
    def notes(values: dict[str, Any]) -> str:
        return next(t for src, t in render(values).items() if src.endswith("NOTES.txt"))
    behind = merge(SCENARIOS["defaults"], {"ingress": {"enabled": True}})
    expect("config.trustedProxies is not set" in notes(behind), "ingress without trustedProxies: no note")
    listed = merge(behind, {"config": {"trustedProxies": ["10.0.0.0/8"]}})
    expect("config.trustedProxies is not set" not in notes(listed), "note despite trustedProxies")
    expect("config.trustedProxies is not set" not in notes(SCENARIOS["defaults"]), "note without ingress")
    header = merge(SCENARIOS["defaults"], {"subscriberAuth": {"mode": "header"}})
    expect("can name any tenant" in notes(header), "header mode without trustedProxies: no note")
    return "NOTES.txt says so behind an ingress or in header mode, and not once it is set"


def assert_in_memory() -> str:
    docs = RENDERED["in-memory"]
    _, _, c = server(docs)
    expect("DATABASE_URL" not in env_of(c), "no DATABASE_URL in memory mode")
    expect(not find(docs, "Job"), "no migration hook in memory mode")
    expect(one(docs, "Deployment")["spec"]["replicas"] == 1, "one replica")
    return "one replica, no DATABASE_URL, no migration hook"


for name, fn in [
    ("defaults: probes on /healthz and /readyz (admin port)", assert_probes),
    ("defaults: non-root securityContext", assert_security),
    ("defaults: rollout and topology spread", assert_rollout),
    ("defaults: terminationGracePeriodSeconds >= preStop + shutdown grace >= drain", assert_grace),
    ("defaults: PodDisruptionBudget", assert_pdb),
    ("defaults: public and admin Services", assert_services),
    ("defaults: migration hook", assert_migration_hook),
    ("defaults: helm test hook", assert_test_hook),
    ("defaults: admin token generated, stable via lookup", assert_generated_token),
    ("defaults: optional objects are off", assert_crds_default_off),
    ("every Secret/ConfigMap reference resolves", assert_secret_refs),
    ("every `mcp-fanout serve` setting has its env var", assert_all_settings_have_env),
    ("every flag the chart passes exists in the binary", assert_cli_flags_exist),
    ("values.schema.json covers every value", assert_schema_covers_values),
    ("all-on: PrometheusRule alerts", assert_alerts),
    ("all-on: Ingress / HTTPRoute are SSE-friendly", assert_sse_routes),
    ("existingSecret: everything reads it", assert_existing_secret),
    ("in-memory: single replica", assert_in_memory),
    ("config.trustedProxies: list, none, unset; config.clientAddressHeader", assert_trusted_proxies),
    ("NOTES.txt: trustedProxies unset behind an ingress", assert_trusted_proxies_note),
    ("config.sessionClaimsPerMin", assert_session_claims),
    ("config.sessionWritesPerClientPerMin", assert_session_writes_per_client),
    ("proxy.caCert / caConfigMap: mounted, FANOUT_UPSTREAM_CA_FILE names it", assert_upstream_ca),
]:
    check(name, fn)


# ---------------------------------------------------------------------------------------------
# 3b. The container image (it cannot be built here: no container engine).

def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        raise Skip("hadolint is not installed in the venv")
    out = subprocess.run([str(exe), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    expect(out.returncode == 0, (out.stdout + out.stderr).strip())
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needle in ("cargo build --release --locked", "./scripts/build-pgo", "gcr.io/distroless/cc-debian12:nonroot", "USER 65532", "EXPOSE 8080 9090", "ENTRYPOINT [\"/usr/local/bin/mcp-fanout\"]"):
        expect(needle in dockerfile, f"Dockerfile lacks {needle!r}")
    return "hadolint clean; multi-stage, --locked, PGO build, distroless nonroot, 65532, EXPOSE 8080 9090, binary as ENTRYPOINT"


def dockerignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """.dockerignore semantics for the simple patterns used here (last match wins, `!` re-includes)."""
    import fnmatch
    parts = rel.split("/")
    excluded = False
    for negate, pat in patterns:
        pat = pat.rstrip("/")
        hit = False
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                hit = True
                break
        if hit:
            excluded = not negate
    return excluded


def docker_context() -> str:
    """A copy of the build context (after .dockerignore) is a loadable, locked Cargo workspace."""
    cargo = shutil.which("cargo")
    if not cargo:
        raise Skip("cargo not found")
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), line.lstrip("!")))
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    kept = [f for f in files if (ROOT / f).is_file() and not dockerignored(f, patterns)]
    needed = ["Cargo.toml", "Cargo.lock", "testkit/Cargo.toml", "scripts/build-pgo"]
    needed += [f for f in files if f.startswith(("src/", "sql/", "testkit/src/")) and (ROOT / f).is_file()]
    # scripts/build-pgo builds the bench and runs it (the PGO training run).
    needed += [f for f in files if f.startswith("bench/") and f != "bench/notes.md" and (ROOT / f).is_file()]
    lost = [f for f in needed if f not in kept]
    expect(not lost, f"excluded from the Docker build context but needed by the build: {lost[:10]}")
    for leak in ("target/", ".git/", "helm/"):
        expect(not any(f.startswith(leak) for f in kept), f"{leak} is in the Docker build context")
    with tempfile.TemporaryDirectory() as tmp:
        for f in kept:
            dst = Path(tmp) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / f, dst)
        # What `cargo build --release --locked --bin mcp-fanout` resolves on linux (offline: from the
        # local cache; a stale Cargo.lock or a missing workspace member fails here).
        out = subprocess.run([cargo, "tree", "--locked", "--offline", "--target", "x86_64-unknown-linux-gnu",
                              "-e", "normal,build", "-p", "mcp-fanout", "-p", "mcp-fanout-bench"], cwd=tmp,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "CARGO_TARGET_DIR": str(Path(tmp) / "target")})
    if out.returncode != 0 and ("offline" in out.stderr or "failed to download" in out.stderr or "no matching package" in out.stderr):
        raise Skip("the crates are not in the local cargo cache (cargo tree --offline)")
    expect(out.returncode == 0, out.stderr.strip()[-800:])
    return f"{len(kept)} files; `cargo tree --locked` resolves the binary's and the bench's dependencies in a copy of it"


check("Dockerfile: hadolint and the required shape", hadolint)
check("Docker build context holds the locked workspace", docker_context)


# ---------------------------------------------------------------------------------------------
# 4. Bad values must be rejected: by values.schema.json, or by the chart's own guards.

base = SCENARIOS["defaults"]
SCHEMA_REJECTS = [
    ("replicaCount: 0", {"replicaCount": 0}, r"/replicaCount.*minimum"),
    ('service.port: "abc"', {"service": {"port": "abc"}}, r"/service/port"),
    ("service.port: 70000", {"service": {"port": 70000}}, r"/service/port.*maximum"),
    ("containerPorts.admin: 0", {"containerPorts": {"admin": 0}}, r"/containerPorts/admin.*minimum"),
    ("unknown top-level key `replicas`", {"replicas": 3}, r"additional propert.*replicas"),
    ("unknown nested key `config.drainSeconds`", {"config": {"drainSeconds": 5}}, r"additional propert.*drainSeconds"),
    ('config.logFormat: "xml"', {"config": {"logFormat": "xml"}}, r"/config/logFormat"),
    ('config.schema: "Bad-Name"', {"config": {"schema": "Bad-Name"}}, r"/config/schema"),
    ('config.drainSecs: "5"', {"config": {"drainSecs": "5"}}, r"/config/drainSecs"),
    ('subscriberAuth.mode: "basic"', {"subscriberAuth": {"mode": "basic"}}, r"/subscriberAuth/mode"),
    ('database.url: "mysql://…"', {"database": {"url": "mysql://u@h/db"}}, r"/database/url"),
    ('adminAuth.extraTokens: ["a,b"]', {"adminAuth": {"extraTokens": ["a,b"]}}, r"/adminAuth/extraTokens"),
    ('metrics.prometheusRule.listenDown.for: "2 minutes"', {"metrics": {"prometheusRule": {"listenDown": {"for": "2 minutes"}}}}, r"/metrics/prometheusRule/listenDown/for"),
    ('httpRoute.timeouts.request: "forever"', {"httpRoute": {"timeouts": {"request": "forever"}}}, r"/httpRoute/timeouts/request"),
    ("preStop.sleepSeconds: 0", {"preStop": {"sleepSeconds": 0}}, r"/preStop/sleepSeconds"),
    ("proxy.maxRequestsPerClient: 0", {"proxy": {"maxRequestsPerClient": 0}}, r"/proxy/maxRequestsPerClient.*minimum"),
    ("config.maxConnectionsPerClient: 0", {"config": {"maxConnectionsPerClient": 0}}, r"/config/maxConnectionsPerClient.*minimum"),
    ("proxy.connectionWorkers: 0", {"proxy": {"connectionWorkers": 0}}, r"/proxy/connectionWorkers.*minimum"),
    ("config.maxSubscribersPerClient: 0", {"config": {"maxSubscribersPerClient": 0}}, r"/config/maxSubscribersPerClient.*minimum"),
    ("config.sessionWritesPerClientPerMin: 0", {"config": {"sessionWritesPerClientPerMin": 0}}, r"/config/sessionWritesPerClientPerMin.*minimum"),
    ('config.trustedProxies: ["ingress.example"]', {"config": {"trustedProxies": ["ingress.example"]}}, r"/config/trustedProxies"),
    ('config.clientAddressHeader: "x-client-ip"', {"config": {"clientAddressHeader": "x-client-ip"}}, r"/config/clientAddressHeader"),
    ("proxy.bridgeMaxSessions: 0", {"proxy": {"bridgeMaxSessions": 0}}, r"/proxy/bridgeMaxSessions.*minimum"),
]
for label, bad, pattern in SCHEMA_REJECTS:
    check(f"schema rejects {label}", lambda bad=bad, pattern=pattern: must_fail(merge(base, bad), pattern))

GUARD_REJECTS = [
    ("no database configured (pure defaults)", {}, r"set database\.url"),
    ("in-memory with 3 replicas", {"database": {"inMemory": True}, "migration": {"enabled": False}}, r"replicaCount=1"),
    ("drainSecs > shutdownGraceSecs", merge(base, {"config": {"drainSecs": 30, "shutdownGraceSecs": 20}}), r"drainSecs must not exceed"),
    ("terminationGracePeriodSeconds below preStop + shutdown grace", merge(base, {"terminationGracePeriodSeconds": 20}), r"at least"),
    ("existingSecret together with database.url", merge(base, {"existingSecret": "x"}), r"with existingSecret"),
    ("httpRoute without parentRefs", merge(base, {"httpRoute": {"enabled": True}}), r"parentRefs"),
    ("same port for public and admin", merge(base, {"containerPorts": {"admin": 8080}}), r"must differ"),
    ("jwt mode without an audience",
     merge(base, {"subscriberAuth": {"mode": "jwt", "jwt": {"secret": "s"}}}), r"needs subscriberAuth\.jwt\.audience"),
    ("jwt audience together with anyAudience",
     merge(base, {"subscriberAuth": {"mode": "jwt", "jwt": {"secret": "s", "audience": "a", "anyAudience": True}}}), r"not both"),
    ("heartbeatSecs not below replicaStaleSecs", merge(base, {"config": {"heartbeatSecs": 10}}), r"heartbeatSecs must be less than"),
    ("proxy.caCert together with proxy.caConfigMap",
     merge(base, {"proxy": {"upstream": "https://u/mcp", "caCert": "x", "caConfigMap": "y"}}), r"not both"),
    ("proxy.upstreamCaFile together with proxy.caCert",
     merge(base, {"proxy": {"upstream": "https://u/mcp", "caCert": "x", "upstreamCaFile": "/x.pem"}}), r"leave it empty"),
]
for label, bad, pattern in GUARD_REJECTS:
    check(f"chart rejects {label}", lambda bad=bad, pattern=pattern: must_fail(bad, pattern))


def prestop_needs_130() -> str:
    old = lint_problems(base, "1.29.0")
    expect(any("Kubernetes >= 1.30" in p for p in old), f"preStop sleep on 1.29 must fail: {old}")
    ok = lint_problems(merge(base, {"preStop": {"enabled": False}}), "1.29.0")
    expect(not ok, f"preStop disabled must lint on 1.29: {ok}")
    return "lifecycle.preStop.sleep refused on 1.29; preStop.enabled=false lints there"


check("chart refuses preStop sleep below Kubernetes 1.30", prestop_needs_130)

print()
if skipped:
    print("NOTE: skipped checks above are NOT validated; see their SKIP lines.")
print("Not checked here (needs a cluster or a container engine): `lookup` keeping the admin token across "
      "upgrades, hook ordering, the helm test pod itself, building and running the image.")
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
