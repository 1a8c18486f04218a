"""Static checks of the KubeRay RayCluster example in deploy/kuberay/."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "raycluster.yaml"


def load() -> dict:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert len(documents) == 1
    return documents[0]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def ray_start_options() -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.scripts.scripts import start
    return {option for parameter in start.params for option in parameter.opts}


def containers(cluster: dict):
    yield cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster["spec"]["workerGroupSpecs"]:
        yield group["template"]["spec"]["containers"][0]


def test_raycluster_kind():
    cluster = load()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"] == "magic-ray"


def test_ray_version_matches_project():
    pins = [item for item in project()["optional-dependencies"]["server"]
            if item.startswith("ray[")]
    assert pins == [f"ray[default]=={load()['spec']['rayVersion']}"]


def test_head_serves_dashboard():
    head = load()["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ports = {port["name"]: port["containerPort"]
             for port in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["dashboard"] == 8265
    assert ports["gcs"] == 6379


def test_gpu_worker_group():
    groups = load()["spec"]["workerGroupSpecs"]
    gpu = [group for group in groups if group["groupName"] == "gpu"]
    assert len(gpu) == 1
    group = gpu[0]
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")


def test_ray_start_params_are_options():
    options = ray_start_options()
    cluster = load()
    params = [cluster["spec"]["headGroupSpec"]["rayStartParams"]]
    params += [group["rayStartParams"] for group in cluster["spec"]["workerGroupSpecs"]]
    for group_params in params:
        for name, value in group_params.items():
            assert f"--{name}" in options, f"ray start has no option --{name}"
            assert isinstance(value, str), f"rayStartParams {name} must be a string"


def test_images_match_project_version():
    version = project()["version"]
    for container in containers(load()):
        image = container["image"]
        assert re.fullmatch(rf"[\w.\-/]+/magic-attribution-ray:{re.escape(version)}-(cpu|cuda)",
                            image), image


def test_settings_and_storage_are_mounted():
    for container in containers(load()):
        sources = [next(iter(source)) for source in container["envFrom"]]
        assert sources == ["configMapRef", "secretRef"]
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["runs"] == "/data"
