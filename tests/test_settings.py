"""The settings registry (scoring/settings.py): typed parsing, clear errors, generated docs, no undeclared reads.

No service is needed: these run in `make test-fast`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scoring import settings
from scoring.settings import REGISTRY, SettingsError, Var

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("scoring", "serving", "stack", "plugins", "dags", "bench")
# Read from the environment but not settings of the platform: the child-process PATH.
NOT_SETTINGS = {"PATH"}
PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "port": int, "path": Path, "url": str,
            "bind": str, "choice": str, "list": frozenset}


def test_every_variable_parses_its_default_to_its_type() -> None:
    assert len(REGISTRY) > 50
    for var in REGISTRY.values():
        value = settings.default(var)
        if var.default is None:
            assert value is None and var.default_doc, f"{var.name}: say how the reader computes the default"
        else:
            assert isinstance(value, PY_TYPES[var.kind]), var.name
        assert var.doc.strip() and var.components, var.name


@pytest.mark.parametrize(("name", "raw", "problem"), [
    ("SERVING_WORKERS", "abc", "must be an integer"),
    ("SERVING_WORKERS", "0", "must be an integer >= 1"),
    ("STACK_PG_PORT", "70000", "must be a TCP port number"),
    ("AIRFLOW_PORT", "http", "must be a TCP port number"),
    ("SERVING_DB_POOL_MAX", "-1", "must be an integer >= 1"),
    ("SERVING_DB_POOL_MIN", "-3", "must be an integer >= 0"),
    ("WORKER_LEASE_S", "0", "must be a number > 0"),
    ("SERVING_POLL_INTERVAL_S", "nan", "must be a finite number"),
    ("SERVING_LIMIT_REQUEST_LINE", "9000", "must be an integer in [0, 8190]"),
    ("SERVING_LOG_LEVEL", "loud", "must be one of debug, info"),
    ("STACK_COMPONENTS", "postgres,nginx", "unknown nginx"),
    ("DATABASE_URL", "mysql://db/serving", "must be a postgresql:// or postgres:// URL"),
    ("DATABASE_URL", "serving", "must be a URL"),
    ("SERVING_BIND", "localhost", "must be host:port"),
    ("SERVING_BIND", "0.0.0.0:99999", "must be a TCP port number"),
])
def test_a_bad_value_names_the_variable_and_the_value(name: str, raw: str, problem: str) -> None:
    with pytest.raises(SettingsError) as failure:
        settings.read(name, {name: raw})
    assert str(failure.value).startswith(f"{name}={raw!r}: {problem}")


def test_a_secret_is_not_echoed_in_the_error() -> None:
    var = Var("SOME_PIN", "int", None, "a pin", ("serving",), group="x", secret=True)
    with pytest.raises(SettingsError, match=r"^SOME_PIN=\*\*\*: must be an integer$"):
        settings.parse(var, "hunter2")


def test_unset_and_empty_give_the_default_except_where_empty_means_off() -> None:
    assert settings.read("SERVING_WORKERS", {}) == 2
    assert settings.read("SERVING_WORKERS", {"SERVING_WORKERS": ""}) == 2
    assert settings.read("SERVING_WORKERS", {"SERVING_WORKERS": " 3 "}) == 3
    assert settings.read("SERVING_ACCESS_LOG", {}) == "-"
    assert settings.read("SERVING_ACCESS_LOG", {"SERVING_ACCESS_LOG": ""}) == ""  # off
    assert settings.read("SERVING_LOG_LEVEL", {"SERVING_LOG_LEVEL": "WARNING"}) == "warning"
    with pytest.raises(KeyError, match="NOT_A_SETTING is not declared"):
        settings.read("NOT_A_SETTING", {})


def test_component_settings_are_typed_from_an_env_mapping() -> None:
    from serving.config import ConfigError, GunicornSettings, Settings
    from serving.job_worker import JobWorkerSettings
    from stack.config import StackConfig

    env = {"SERVING_MODEL": "churn", "SERVING_POLL_INTERVAL_S": "0.5", "SERVING_MAX_ROWS": "7",
           "SERVING_API_TOKEN": "s3cret", "SERVING_JOB_MAX_RECORDS": "99", "DATABASE_URL": "postgresql://u@h/db",
           "SERVING_WORKERS": "3", "SERVING_THREADS": "4", "WORKER_LEASE_S": "2", "WORKER_BATCH_SIZE": "8",
           "STACK_PG_PORT": "5555", "STACK_COMPONENTS": "postgres,mlflow", "STACK_HOME": "/tmp/x"}
    s = Settings.from_env(env=env)
    assert (s.model, s.poll_interval_s, s.max_rows, s.api_token, s.job_max_records, s.database_url) == (
        "churn", 0.5, 7, "s3cret", 99, "postgresql://u@h/db")
    assert s.model_ref == "champion" and s.max_body_bytes == 1_048_576 and isinstance(s.db_timeout_s, float)
    assert Settings.from_env("spend", env=env).model == "spend"
    with pytest.raises(ConfigError, match="SERVING_MODEL is not set"):
        Settings.from_env(env={})
    with pytest.raises(ConfigError, match="SERVING_DB_POOL_MIN=5 is above SERVING_DB_POOL_MAX=4"):
        Settings.from_env(env={**env, "SERVING_DB_POOL_MIN": "5"})

    g = GunicornSettings.from_env(env)
    assert (g.workers, g.threads, g.effective_worker_class, g.timeout_s) == (3, 4, "gthread", 60)
    assert GunicornSettings.from_env({}).effective_worker_class == "sync"

    w = JobWorkerSettings.from_env(env)
    assert (w.lease_s, w.batch_size, w.max_batch_records, w.log_level) == (2.0, 8, 50_000, "info")

    c = StackConfig.from_env(env)
    assert (c.pg_port, c.components, c.home, c.external_db_url) == (
        5555, frozenset({"mlflow"}), Path("/tmp/x"), "postgresql://u@h/db")
    assert c.local_postgres is False  # DATABASE_URL set: the server it names, no local cluster
    assert StackConfig.from_env({"STACK_HOME": "/tmp/x"}).local_postgres


def test_readme_table_and_env_example_are_generated_from_the_registry() -> None:
    readme = settings.README.read_text()
    assert settings.readme_with_table(readme) == readme, "README settings table drifted: run `make settings`"
    assert (REPO / ".env.example").read_text() == settings.render_env_example(), \
        ".env.example drifted: run `make settings`"
    table = readme[readme.index(settings.BEGIN):readme.index(settings.END)]
    assert all(f"`{name}`" in table for name in REGISTRY)


def test_env_example_holds_exactly_what_compose_takes_from_env() -> None:
    compose = (REPO / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", compose))
    dotenv = {v.name for v in REGISTRY.values() if v.dotenv}
    assert used <= dotenv, f"declare with dotenv=True in scoring/settings.py: {sorted(used - dotenv)}"
    example = (REPO / ".env.example").read_text()
    active = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert active == dotenv
    for line in example.splitlines():  # a commented-out optional setting is a declared one, shown at its default
        if m := re.fullmatch(r"# ([A-Z][A-Z0-9_]+)=(.*)", line):
            assert REGISTRY[m[1]].default == m[2] and m[1] not in settings.COMPOSE_SETS


def test_what_compose_and_the_stack_set_is_declared() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    set_by_compose = {key for name, svc in services.items() if name != "postgres"
                      for key in (svc.get("environment") or {})}
    assert set_by_compose - set(REGISTRY) == set()
    assert set_by_compose >= settings.COMPOSE_SETS
    literals = set()
    for path in (REPO / "stack").glob("*.py"):
        literals |= set(re.findall(r"[\"'](AIRFLOW_[A-Z0-9_]+|STACK_[A-Z0-9_]+)[\"']", path.read_text()))
    assert literals - set(REGISTRY) == set()


def test_the_makefile_bench_default_is_the_registry_one() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert f"BATCH_BENCH_ROWS ?= {REGISTRY['BATCH_BENCH_ROWS'].default}" in makefile


# os.environ / os.getenv / a mapping named env, read with a literal name or a module constant
_READ = re.compile(r"""(?:os\.environ|\benv\b|os\.getenv)\s*\)?\s*(?:\.get|\.setdefault|\.pop)?\s*[(\[]\s*"""
                   r"""(?:(["'])([A-Z][A-Z0-9_]*)\1|([A-Z][A-Z0-9_]*)\s*[,)\]])""")


def env_reads(text: str) -> set[str]:
    constants = dict(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*[\"']([A-Z][A-Z0-9_]*)[\"']", text, re.MULTILINE))
    names = set()
    for m in _READ.finditer(text):
        names.add(m[2] or constants.get(m[3], f"<constant {m[3]}>"))
    return names


def test_the_env_read_finder_finds_reads() -> None:
    text = ('NAME_ENV = "X_ONE"\na = os.environ.get("X_TWO", "1")\nb = os.environ["X_THREE"]\n'
            'c = os.getenv("X_FOUR")\nd = os.environ.get(NAME_ENV)\ne = (env or os.environ).get("X_FIVE")\n'
            'f = env.get("X_SIX", "")\nos.environ.setdefault("X_SEVEN", "1")\ng = environ.get("HTTP_HOST")\n')
    assert env_reads(text) == {"X_ONE", "X_TWO", "X_THREE", "X_FOUR", "X_FIVE", "X_SIX", "X_SEVEN"}


def test_shipped_code_reads_only_declared_variables() -> None:
    undeclared = {}
    for top in SHIPPED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path.name == "settings.py" and path.parent.name == "scoring":
                continue
            missing = env_reads(path.read_text()) - set(REGISTRY) - NOT_SETTINGS
            if missing:
                undeclared[str(path.relative_to(REPO))] = sorted(missing)
    assert undeclared == {}, "declare these in scoring/settings.py (or read them through it)"


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    return subprocess.run(argv, cwd=REPO, env={**full, **env}, capture_output=True, text=True, timeout=120)


def test_gunicorn_stops_at_a_bad_value_naming_it() -> None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    result = _run([gunicorn, "-c", "serving/gunicorn.conf.py", "serving.app:create_app()"],
                  SERVING_MODEL="churn", SERVING_WORKERS="abc")
    assert result.returncode != 0
    assert "error: SERVING_WORKERS='abc': must be an integer" in result.stderr


def test_the_worker_stops_at_a_bad_value_naming_it() -> None:
    result = _run([sys.executable, "-m", "serving.job_worker"], SERVING_MODEL="churn", WORKER_LEASE_S="-1")
    assert result.returncode == 2
    assert "WORKER_LEASE_S='-1': must be a number > 0" in result.stderr


def test_make_up_stops_at_a_bad_value_naming_it(tmp_path: Path) -> None:
    result = _run([sys.executable, "-m", "stack.up", "up"], STACK_HOME=str(tmp_path), STACK_PG_PORT="70000")
    assert result.returncode != 0
    assert "STACK_PG_PORT='70000': must be a TCP port number (1-65535)" in result.stderr
    assert not (tmp_path / "pgdata").exists(), "nothing was started"


def test_the_batch_cli_stops_at_a_bad_value_naming_it() -> None:
    result = _run([sys.executable, "-m", "scoring.batch", "--model", "churn", "--date", "2026-11-01"],
                  DATABASE_URL="mysql://db/serving")
    assert result.returncode != 0
    assert "DATABASE_URL='mysql://db/serving': must be a postgresql:// or postgres:// URL" in result.stderr
