"""The Dockerfile and fly.toml agree with the application: port, health paths, commands."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from app.cli import GRACEFUL_SHUTDOWN_S, build_parser
from app.config import load_settings
from app.server import create_app
from tests.conftest import Gateway, free_port

ROOT = Path(__file__).resolve().parent.parent
STAYS_UP_S = 3.0  # a crash-looping process (a config it refuses, nothing to do) is gone by then


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = ROOT.joinpath("Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instructions(name: str, stage: int = -1) -> list[str]:
    """The arguments of every `name` instruction in one build stage (default: the last)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return [args for inst, args in stages[stage] if inst == name]


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"not the exec form: {args}"
    return [str(a) for a in parsed]


def env_of(stage: int = -1) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV", stage):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def fly() -> dict[str, object]:
    return tomllib.loads(ROOT.joinpath("fly.toml").read_text())


def served_paths() -> set[str]:
    app = create_app(load_settings(None, {}))
    return {getattr(route, "path", "") for route in app.routes}


def cli(command: str) -> object:
    return build_parser().parse_args(shlex.split(command)[1:])


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_user() -> None:
    bases = [args for inst, args in dockerfile() if inst == "FROM"]
    assert len(bases) >= 2
    assert all("-slim" in base for base in bases)
    python = bases[-1].split(":")[1].split("-")[0]
    requires = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    assert requires["requires-python"] == f">={python}"
    (user,) = instructions("USER")
    assert user not in {"root", "0"}
    assert instructions("STOPSIGNAL") == ["SIGTERM"]


def test_dockerfile_command_port_and_healthcheck_agree() -> None:
    (expose,) = instructions("EXPOSE")
    command = exec_form(instructions("CMD")[0])
    assert command[0] == "orderhook"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert int(expose) == args.port
    (health,) = instructions("HEALTHCHECK")
    probe = health.split("CMD", 1)[1].strip()
    assert f"http://127.0.0.1:{args.port}/readyz" in " ".join(exec_form(probe))
    assert "/readyz" in served_paths()


def test_the_image_config_is_the_example_and_loads() -> None:
    env = env_of()
    copied = {
        args.split()[-1]: args.split()[-2] for args in instructions("COPY") if "--from" not in args
    }
    source = copied[env["ORDERHOOK_CONFIG"]]
    settings = load_settings(ROOT / source, {"VTEX_HOOK_TOKEN": "t"})
    assert settings.sources
    assert env["ORDERHOOK_DATA_DIR"].startswith("/var/lib/orderhook")


def test_fly_service_port_health_checks_and_processes_agree() -> None:
    config = fly()
    service = config["http_service"]
    assert isinstance(service, dict)
    (expose,) = instructions("EXPOSE")
    assert service["internal_port"] == int(expose)
    paths = {check["path"] for check in service["checks"]}
    assert paths == {"/healthz", "/readyz"}
    assert paths <= served_paths()
    processes = config["processes"]
    assert isinstance(processes, dict)
    assert set(service["processes"]) <= set(processes)
    app = cli(processes["app"])
    assert app.command == "serve" and app.port == int(expose)
    assert cli(processes["worker"]).command == "worker"
    assert service["auto_stop_machines"] in ("off", False)  # a hook receiver never sleeps
    env = config["env"]
    assert isinstance(env, dict)
    assert env["ORDERHOOK_CONFIG"] == env_of()["ORDERHOOK_CONFIG"]


def test_fly_deploys_safely_and_stops_within_its_kill_timeout() -> None:
    config = fly()
    assert config["kill_signal"] == "SIGTERM"
    kill_timeout = config["kill_timeout"]
    assert isinstance(kill_timeout, int) and kill_timeout > GRACEFUL_SHUTDOWN_S
    deploy = config["deploy"]
    assert isinstance(deploy, dict)
    assert deploy["strategy"] in ("rolling", "canary", "bluegreen")
    assert cli(deploy["release_command"]).command == "check"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_health_paths_answer_200_on_a_running_gateway(live: Gateway, path: str) -> None:
    assert httpx.get(live.url + path).status_code == 200


def image_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The environment of a machine deployed by fly.toml from the Dockerfile's image: its ENV
    and fly.toml's [env], the secrets the README has `fly secrets set`, and the image's paths
    mapped to this checkout (the config the image copies, a data directory of this test's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERHOOK_", "REDIS_"))}
    env.update({k: v for k, v in env_of().items() if k != "PATH"})
    fly_env = fly()["env"]
    assert isinstance(fly_env, dict)
    env.update(fly_env)
    copied = {
        args.split()[-1]: args.split()[-2] for args in instructions("COPY") if "--from" not in args
    }
    env["ORDERHOOK_CONFIG"] = str(ROOT / copied[env["ORDERHOOK_CONFIG"]])
    env["ORDERHOOK_DATA_DIR"] = str(tmp_path / "data")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    secrets = {"VTEX_HOOK_TOKEN": "t" * 48, "ORDERHOOK_ADMIN_TOKEN": "a" * 48}
    return {**env, **secrets, "REDIS_URL": redis_url}


def deployed_commands() -> dict[str, list[str]]:
    """Every long-running command the deploy starts: fly.toml's process groups, the image's."""
    processes = fly()["processes"]
    assert isinstance(processes, dict)
    commands = {f"fly {name}": shlex.split(command) for name, command in processes.items()}
    commands["Dockerfile CMD"] = exec_form(instructions("CMD")[0])
    return commands


@pytest.mark.parametrize("name", sorted(deployed_commands()))
def test_each_deployed_process_starts_stays_up_and_stops_with_0(
    name: str, redis_url: str, tmp_path: Path
) -> None:
    command = deployed_commands()[name]
    if command[1] == "serve":  # loopback and a free port here, instead of 0.0.0.0:8000
        command += ["--host", "127.0.0.1", "--port", str(free_port())]
    log = tmp_path / "process.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=image_env(tmp_path, redis_url), stderr=out)
    try:
        time.sleep(STAYS_UP_S)
        assert proc.poll() is None, f"{name} exited with {proc.returncode}: {log.read_text()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if command[1] == "worker":
        assert "worker waiting for subscriptions" in log.read_text()


def test_the_release_command_passes_with_the_image_config(redis_url: str, tmp_path: Path) -> None:
    release = fly()["deploy"]
    assert isinstance(release, dict)
    done = subprocess.run(
        shlex.split(release["release_command"]),
        env=image_env(tmp_path, redis_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
