"""The container deployment examples, deploy/compose.yaml and deploy/kubernetes/, checked
against their schemas and against what the daemon and the image need. Neither Compose nor
Kubernetes runs on these machines (docs/deployment.md says what was run).

- deploy/compose.yaml: parsed and validated against the Compose specification's schema
  (check-jsonschema, whose copy of the schema ships in the package);
- deploy/kubernetes/distasks.yaml: every object validated against the Kubernetes API's
  schemas, strictly (kubernetes-validate, whose schemas ship in the package).

Both validators come from PyPI, pinned, into .local/validators (about 10 s, once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose.yaml"
KUBERNETES = REPO / "deploy" / "kubernetes" / "distasks.yaml"
VALIDATORS = REPO / ".local" / "validators"
VALIDATOR_REQUIREMENTS = ["check-jsonschema==0.39.0", "kubernetes-validate==1.37.0"]
CONFIG = tomllib.loads((REPO / "config" / "distasks.toml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The image's user (deploy/image/Containerfile).
IMAGE_UID = 10001
# After the grace period the daemon takes up to this long to hand back what still runs
# and exit (docs/deployment.md: "above worker.grace_period_s + 5 s").
STOP_MARGIN_S = 5


def run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=300, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def validators() -> Path:
    """A venv with the pinned validators, made once per checkout."""
    stamp = VALIDATORS / (" ".join(VALIDATOR_REQUIREMENTS).replace(" ", "_") + ".installed")
    if not stamp.exists():
        run([sys.executable, "-m", "venv", "--clear", VALIDATORS])
        run([VALIDATORS / "bin" / "python", "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", *VALIDATOR_REQUIREMENTS])
        stamp.touch()
    return VALIDATORS / "bin"


def load_yaml(validators: Path, path: Path) -> list[dict]:
    """Every document of a YAML file, read by PyYAML (which the validators bring)."""
    code = ("import json, sys, yaml\n"
            "json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)\n")
    return json.loads(run([validators / "python", "-c", code, path]).stdout)


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_compose_file_matches_the_compose_specification(validators: Path):
    result = run([validators / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                  COMPOSE])

    assert "ok" in result.stdout


def test_compose_runs_the_image_beside_healthy_servers(validators: Path):
    [compose] = load_yaml(validators, COMPOSE)
    services = compose["services"]
    daemon = services["distasks"]

    assert daemon["image"] == f"localhost/distasks:{VERSION}"
    assert set(services) == {"distasks", "postgres", "redis"}
    assert all("test" in s["healthcheck"] for s in services.values())
    assert daemon["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"}}
    assert "/readyz" in daemon["healthcheck"]["test"][-1]
    # The config file, mounted read-only where the image's command reads it.
    source, target, mode = daemon["volumes"][0].split(":")
    assert (COMPOSE.parent / source).resolve() == REPO / "config" / "distasks.toml"
    assert (target, mode) == ("/etc/distasks/distasks.toml", "ro")
    # The servers by their service names, PostgreSQL's data in a named volume.
    assert "@postgres:5432/" in daemon["environment"]["DATABASE_URL"]
    assert daemon["environment"]["REDIS_URL"].startswith("redis://redis:6379/")
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pgdata" in compose["volumes"]
    assert (seconds(daemon["stop_grace_period"])
            > CONFIG["worker"]["grace_period_s"] + STOP_MARGIN_S)


def test_kubernetes_objects_match_the_api_schemas(validators: Path):
    result = run([validators / "kubernetes-validate", "--strict", KUBERNETES])

    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == 3, result.stdout + result.stderr


def test_kubernetes_deployment_probes_drains_and_keeps_the_secret_apart(validators: Path):
    objects = {o["kind"]: o for o in load_yaml(validators, KUBERNETES)}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The daemon answers only to loopback names and http.allowed_hosts.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["httpHeaders"] == [{"name": "Host", "value": "localhost"}]
    assert (pod["terminationGracePeriodSeconds"]
            > CONFIG["worker"]["grace_period_s"] + STOP_MARGIN_S)
    # The database URL (with its password) only from the Secret.
    assert container["envFrom"] == [{"secretRef": {"name": objects["Secret"]["metadata"]["name"]}}]
    assert "DATABASE_URL" in objects["Secret"]["stringData"]
    assert all(e["name"] != "DATABASE_URL" for e in container.get("env", []))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["image"].endswith(f"/distasks:{VERSION}")
    assert container["ports"][0]["containerPort"] == CONFIG["http"]["port"]
