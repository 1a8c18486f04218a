"""Static checks of docker/: the compose file, its env file and the Dockerfiles.

No container engine runs here, so nothing is built or started. The compose
file is validated against the Compose Specification's JSON schema (vendored in
schema/), and every command, module, file and environment variable that the
files name is checked against the project.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_FILE = DOCKER / "service.env"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SCHEMA = Path(__file__).parent / "schema" / "compose-spec.json"

# Instructions of the Dockerfile reference (Docker 28).
INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL",
                "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
# Variables that the images set for pip and the Python interpreter, not the project.
TOOL_VARIABLES = {"PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "PYTHONUNBUFFERED"}
TORCH_PIN = "torch==2.13.0"


# ------------------------------------------------------------------ parsing
def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def parse_env_file(path: Path) -> dict[str, str]:
    """Return the NAME=value lines of a compose env file, comments and blanks skipped."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"{path.name}:{number} is not NAME=value: {line!r}"
        name, value = line.split("=", 1)
        values[name.strip()] = value.strip()
    return values


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """Return the argument list of an exec-form CMD or HEALTHCHECK CMD (a JSON array)."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value)
    return value


def arg_defaults(instructions) -> dict[str, str]:
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name] = value
    return defaults


def env_names(instructions) -> set[str]:
    names = set()
    for keyword, arguments in instructions:
        if keyword == "ENV":
            names.update(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", arguments))
    return names


def services_commands(compose: dict):
    """Yield (service name, argv) for each service's command and exec-form health check."""
    for name, service in compose["services"].items():
        if "command" in service:
            yield name, service["command"]
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD":
            yield name, test[1:]


# ------------------------------------------------------------ project facts
def settings_env_names() -> set[str]:
    """Return every environment variable that service.settings.Settings reads."""
    from pydantic import AliasChoices

    from service.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(prefix + field_name.upper())
    return names


def project_source_text() -> str:
    parts = []
    for package in ("attribution", "service", "workers", "client"):
        parts.extend(path.read_text() for path in (ROOT / package).rglob("*.py"))
    return "\n".join(parts)


def ray_source_contains(name: str) -> bool:
    """Return True if the installed ray package mentions the variable ``name``."""
    import ray

    package = Path(ray.__file__).parent
    for path in (package / "_private").rglob("*.py"):
        if name in path.read_text(errors="ignore"):
            return True
    return False


def check_magic_attr(argv: list[str]) -> None:
    from service.cli import build_parser

    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as error:
        pytest.fail(f"`{shlex.join(argv)}` is rejected by magic-attr's parser (exit {error.code})")


def check_ray_start(argv: list[str]) -> None:
    with warnings.catch_warnings():
        # Importing Ray's command line imports Ray Serve, whose models warn under pydantic 2.
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.scripts.scripts import start

    assert argv[:2] == ["ray", "start"], f"unexpected ray command {argv}"
    options = {option for parameter in start.params for option in parameter.opts}
    for argument in argv[2:]:
        option = argument.split("=", 1)[0]
        assert option in options, f"`ray start` has no option {option}"


def check_python_c(argv: list[str]) -> None:
    assert argv[1] == "-c", f"expected python -c, got {argv}"
    compile(argv[2], "<healthcheck>", "exec")
    modules = re.findall(r"import ([\w.]+)", argv[2])
    assert modules == ["urllib.request"], f"health check imports {modules}; keep it stdlib"


def check_command(argv: list[str]) -> None:
    program = argv[0]
    if program == "magic-attr":
        check_magic_attr(argv)
    elif program == "ray":
        check_ray_start(argv)
    elif program == "python":
        check_python_c(argv)
    elif program in ("redis-server", "redis-cli"):
        pass  # programs of the redis image
    else:
        pytest.fail(f"unknown program {program!r} in {argv}")


# ------------------------------------------------------------------- compose
def test_compose_matches_schema():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda error: error.path)
    assert not errors, "\n".join(f"{list(error.path)}: {error.message}" for error in errors)


def test_schema_rejects_invalid_compose():
    schema = json.loads(SCHEMA.read_text())
    broken = load_compose()
    broken["services"]["api"]["ports"] = "8000"
    broken["services"]["redis"]["healthcheck"]["interval"] = 10
    broken["services"]["unknown"] = {"image": "x", "not_a_field": 1}
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert len(errors) >= 3


def test_compose_has_every_component():
    services = load_compose()["services"]
    assert set(services) >= {"redis", "ray-head", "ray-worker", "ray-worker-cuda", "api"}


def test_every_service_has_healthcheck():
    for name, service in load_compose()["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no health check"
        assert test[0] == "CMD", f"service {name}: use the exec form of the health check"


def test_every_service_reads_env_file():
    for name, service in load_compose()["services"].items():
        if name == "redis":
            continue
        assert service.get("env_file") == ["service.env"], f"service {name} env_file"
    assert ENV_FILE.is_file()


def test_published_ports_bind_loopback():
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"service {name} publishes {port} publicly"
    services = load_compose()["services"]
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]


def test_api_is_not_unauthenticated():
    command = load_compose()["services"]["api"]["command"]
    assert "--allow-remote" not in command
    assert "MAGIC_API_KEYS" in parse_env_file(ENV_FILE)
    assert re.search(r"^#.*MAGIC_API_KEYS|^#.*SHA-256", ENV_FILE.read_text(), re.MULTILINE)
    assert parse_env_file(ENV_FILE)["RAY_AUTH_MODE"] == "token"


def test_runs_volume_is_shared():
    compose = load_compose()
    assert "runs" in compose["volumes"]
    storage_dir = parse_env_file(ENV_FILE)["MAGIC_STORAGE_DIR"]
    for name in ("ray-head", "ray-worker", "ray-worker-cuda", "api"):
        assert f"runs:{storage_dir}" in compose["services"][name]["volumes"], name


def test_named_volumes_are_declared():
    compose = load_compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"service {name} mounts undeclared {source}"


def test_gpu_worker_reserves_gpu_in_cuda_profile():
    services = load_compose()["services"]
    worker = services["ray-worker-cuda"]
    assert worker["profiles"] == ["cuda"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--num-gpus=1" in worker["command"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert worker["image"].endswith("-cuda")
    for name, service in services.items():
        if name != "ray-worker-cuda":
            assert "deploy" not in service, f"service {name} reserves devices"
            assert "profiles" not in service, f"service {name} is hidden in a profile"


def test_ray_head_serves_dashboard():
    head = load_compose()["services"]["ray-head"]
    assert "--head" in head["command"]
    assert "--dashboard-port=8265" in head["command"]
    assert "--dashboard-host=0.0.0.0" in head["command"]
    assert "8265/api/gcs_healthz" in head["healthcheck"]["test"][-1]


def test_compose_commands_exist():
    checked = 0
    for name, argv in services_commands(load_compose()):
        check_command(argv)
        checked += 1
    assert checked >= 9


def test_compose_builds_exist():
    compose = load_compose()
    built = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"service {name} builds from {context}"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"service {name}: {dockerfile} is missing"
        declared = {name for name in arg_defaults(parse_dockerfile(dockerfile))} | {
            arguments for keyword, arguments in parse_dockerfile(dockerfile)
            if keyword == "ARG" and "=" not in arguments}
        for arg in build.get("args", {}):
            assert arg in declared, f"service {name} passes unknown build arg {arg}"
        built[service["image"]] = build
    for name, service in compose["services"].items():
        image = service["image"]
        if image.startswith("magic-attribution"):
            assert image in built, f"service {name} uses {image}, which no service builds"
            variant = built[image]["args"]["TORCH_VARIANT"]
            assert image.endswith(f"-{variant}"), f"{image} is built with TORCH_VARIANT={variant}"


def test_third_party_images_are_pinned():
    for name, service in load_compose()["services"].items():
        image = service["image"]
        assert ":" in image, f"service {name}: image {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"service {name} uses a latest tag"
        if not image.startswith("magic-attribution"):
            assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", tag), f"{image}: pin a full version"


def test_env_names_exist():
    source = project_source_text()
    known = settings_env_names()
    names = set(parse_env_file(ENV_FILE))
    for path in DOCKERFILES:
        names |= env_names(parse_dockerfile(path))
    for service in load_compose()["services"].values():
        names |= set(service.get("environment", {}))
    commented = set(re.findall(r"^#\s*([A-Z][A-Z0-9_]+)=", ENV_FILE.read_text(), re.MULTILINE))
    for name in sorted(names | commented):
        if name in TOOL_VARIABLES:
            continue
        if name.startswith("MAGIC_"):
            assert name in known or f'"{name}"' in source, f"{name} is no setting"
        elif name.startswith("RAY_"):
            assert name in known or ray_source_contains(name), f"Ray reads no {name}"
        else:
            assert name in known, f"{name} is neither a setting nor a Ray variable"


def test_env_values_are_valid_settings(monkeypatch):
    from service.settings import Settings

    values = parse_env_file(ENV_FILE)
    # The env file leaves the secrets empty, so the test sets a well-formed key hash.
    values["MAGIC_API_KEYS"] = "0" * 64
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.ray_address == "ray-head:6379"
    assert str(settings.storage_dir) == "/data"


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin: "
                    f"{(probe.stderr or probe.stdout).strip()[:120]}")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "cuda",
                             "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------- Dockerfiles
def test_dockerfiles_exist():
    assert [path.name for path in DOCKERFILES] == ["api.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_lint(path):
    instructions = parse_dockerfile(path)
    keywords = [keyword for keyword, _ in instructions]
    unknown = set(keywords) - INSTRUCTIONS
    assert not unknown, f"unknown instructions {unknown}"
    first_other = next(keyword for keyword in keywords if keyword != "ARG")
    assert first_other == "FROM", "only ARG may come before the first FROM"

    defaults = arg_defaults(instructions)
    for keyword, arguments in instructions:
        if keyword != "FROM":
            continue
        image = arguments.split()[0]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)],
                       image)
        assert ":" in image, f"base image {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert "latest" not in tag
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"pin a full version of {image}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copy_sources_exist(path):
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = 0
    for keyword, arguments in parse_dockerfile(path):
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", "use COPY for local files"
        *sources, _target = shlex.split(arguments)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
            assert source in included, f"COPY source {source} is excluded by .dockerignore"
            copied += 1
    assert copied >= 7


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_commands_exist(path):
    instructions = parse_dockerfile(path)
    for keyword, arguments in instructions:
        if keyword == "CMD":
            check_command(exec_form(arguments))
        elif keyword == "HEALTHCHECK":
            _options, _, command = arguments.partition("CMD ")
            check_command(exec_form(command))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_pins_torch(path):
    text = " ".join(arguments for keyword, arguments in parse_dockerfile(path)
                    if keyword == "RUN")
    assert f'"{TORCH_PIN}"' in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "-c scripts/constraints.txt" in text
    assert TORCH_PIN in (ROOT / "scripts" / "constraints.txt").read_text().split()
    assert f'"{TORCH_PIN}"' in (ROOT / "pyproject.toml").read_text()
    assert re.search(r'pip install -c scripts/constraints.txt "\.\[server\]"', text)
    defaults = arg_defaults(parse_dockerfile(path))
    assert defaults["TORCH_VARIANT"] == "cpu"


def test_dockerfile_extras_exist():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "server" in extras
    assert scripts["magic-attr"] == "service.cli:main"
    for path in DOCKERFILES:
        for extra in re.findall(r'"\.\[(\w+)\]"', path.read_text()):
            assert extra in extras, f"{path.name} installs unknown extra {extra}"
