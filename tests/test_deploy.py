"""The Dockerfile and fly.toml agree with the application: port, health paths, commands."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import httpx
import pytest

from app.cli import GRACEFUL_SHUTDOWN_S, build_parser
from app.config import load_settings
from app.server import create_app
from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parent.parent


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
