"""The deployment files work as written: the Dockerfile copies what exists and installs what is
declared; compose.yaml and the Kubernetes example in docs/deployment.md name real settings and
agree with them (ports, probes, health checks, grace periods longer than the drain)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import yaml

from telewire.server import TelewireServer
from telewire.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DEPLOYMENT_MD = (ROOT / "docs" / "deployment.md").read_text()
CONFIG_MD = (ROOT / "docs" / "configuration.md").read_text()
SETTINGS = {f"TELEWIRE_{name.upper()}" for name in ServerSettings.model_fields}
#: what is read from the environment besides ServerSettings (the supervisor, carriers, keys)
OTHER_VARIABLES = {"TELEWIRE_REUSE_PORT", "TELEWIRE_TWILIO_AUTH_TOKEN", "OPENAI_API_KEY"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def default_drain() -> float:
    s = ServerSettings.model_fields
    return float(s["drain_timeout_s"].default) + float(s["drain_goodbye_s"].default)


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)?", str(text))
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_every_file_the_dockerfile_copies_exists_and_is_not_docker_ignored():
    ignored = (ROOT / ".dockerignore").read_text().split()
    copies = [args for word, args in dockerfile_instructions() if word == "COPY"]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert not source.startswith("--"), "COPY --from fetches nothing here"
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
            assert source not in ignored and source.split("/")[0] not in ignored
    assert "core/telewire" in str(list((ROOT / "core").iterdir()))


def test_the_dockerfile_installs_declared_extras_and_plugins_and_runs_telewire():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runs = " ".join(args for word, args in dockerfile_instructions() if word == "RUN")
    assert "curl" not in runs and "wget" not in runs, "nothing but package registries"
    (spec,) = re.findall(r"'\./\[([a-z0-9_,]+)\]'", runs)
    for extra in spec.split(","):
        assert extra in project["optional-dependencies"], extra
    assert "control" in spec.split(",")  # the image can join a Redis control plane
    for plugin in re.findall(r"\./(plugins/[a-z_]+)", runs):
        assert (ROOT / plugin / "pyproject.toml").exists(), plugin
    (base,) = [args for word, args in dockerfile_instructions() if word == "FROM"]
    version = re.search(r"python:(\d+\.\d+)", base)
    assert version and tuple(map(int, version.group(1).split("."))) >= (3, 11)
    (cmd,) = [args for word, args in dockerfile_instructions() if word == "CMD"]
    assert cmd.startswith('["telewire"') and "telewire" in project["scripts"]
    (expose,) = [args for word, args in dockerfile_instructions() if word == "EXPOSE"]
    assert f"TELEWIRE_PORT={expose}" in DOCKERFILE
    assert "TELEWIRE_HOST=0.0.0.0" in DOCKERFILE  # reachable from outside the container
    assert any(word == "USER" for word, _ in dockerfile_instructions())
    (health,) = [args for word, args in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert f"127.0.0.1:{expose}/livez" in health


def test_compose_runs_telewire_on_redis_with_real_settings():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "telewire"}
    redis, tw = services["redis"], services["telewire"]
    assert redis["image"].startswith("redis:")
    assert "--save" in redis["command"] and "--requirepass" in redis["command"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert "ports" not in redis, "Redis stays on the compose network"
    assert tw["build"] == "."
    env = tw["environment"]
    for name in env:
        assert name in SETTINGS or name in OTHER_VARIABLES, f"compose.yaml sets unknown {name}"
        assert f"`{name}`" in CONFIG_MD or name in OTHER_VARIABLES - {"TELEWIRE_REUSE_PORT"}
    url = env["TELEWIRE_CONTROL_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:-[^}]+\}@redis:6379/0", url), url
    assert env["TELEWIRE_HOST"] == "0.0.0.0"
    assert tw["ports"] == [f"{env['TELEWIRE_PORT']}:{env['TELEWIRE_PORT']}"]
    assert tw["depends_on"]["redis"]["condition"] == "service_healthy"
    health = " ".join(tw["healthcheck"]["test"])
    assert f"127.0.0.1:{env['TELEWIRE_PORT']}/livez" in health
    drain = float(env["TELEWIRE_DRAIN_TIMEOUT_S"]) + float(env["TELEWIRE_DRAIN_GOODBYE_S"])
    assert seconds(tw["stop_grace_period"]) > drain + 30  # the supervisor's own margin
    assert tw["command"][:2] == ["telewire", "serve"]
    ServerSettings(**{k.removeprefix("TELEWIRE_").lower(): v for k, v in env.items()
                      if k in SETTINGS and "${" not in str(v)})


def test_the_kubernetes_example_probes_real_routes_and_outlasts_the_drain():
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOYMENT_MD, re.S)
    (deployment,) = [yaml.safe_load(b) for b in blocks if "kind: Deployment" in b]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in env:
        assert name in SETTINGS, f"the Kubernetes example sets unknown {name}"
    drain = float(env["TELEWIRE_DRAIN_TIMEOUT_S"]) + float(env["TELEWIRE_DRAIN_GOODBYE_S"])
    assert pod["terminationGracePeriodSeconds"] > drain + 30
    routes = {r.path for r in TelewireServer._routes_probes(_Stub())}  # type: ignore[arg-type]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez" in routes


class _Stub:
    async def livez(self, request):  # pragma: no cover - only routed, never called
        ...

    async def readyz(self, request):  # pragma: no cover
        ...


def test_the_deployment_page_names_only_settings_that_exist():
    named = set(re.findall(r"`(TELEWIRE_[A-Z0-9_]+)", DEPLOYMENT_MD))
    assert named
    for name in named - OTHER_VARIABLES:
        assert name in SETTINGS, f"docs/deployment.md names {name}, which is not a setting"
    assert default_drain() == 40.0  # the figures the page quotes (30 s + 10 s)
