"""The compose deployment left running on this machine for a person and other checks (`make deploy-local`,
`make deploy-demo`, `make deploy-down`): project `msp-local`, its `.env` (random secrets, made once and kept:
the volumes hold the passwords set at first start) in .local/deploy/, host ports apart from `make up`'s."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from testing.compose import demo, engine
from testing.compose.deployment import Deployment, prepare, read_env
from testing.compose.images import REPO

PROJECT = "msp-local"
ENV_FILE = REPO / ".local" / "deploy" / ".env"
IMAGE = "model-serving-platform:local"


def existing() -> Deployment:
    if not ENV_FILE.exists():
        raise SystemExit(f"no deployment here ({ENV_FILE} missing): run `make deploy-local` first")
    return Deployment(PROJECT, ENV_FILE, read_env(ENV_FILE))


def up(gateway_port: int, airflow_port: int, grpc_port: int) -> None:
    engine.ensure_packages()
    engine.start_dockerd()  # left running with the deployment
    engine.ensure_compose()
    dep, timings = prepare(PROJECT, ENV_FILE, gateway_port=gateway_port, airflow_port=airflow_port,
                           grpc_port=grpc_port, platform_tag=IMAGE, keep_env=True)
    seconds = dep.up()
    print(f"\n{PROJECT} is up (healthy in {seconds:.0f}s; image build {timings['platform image build']:.0f}s)\n"
          f"  gateway:  {dep.gateway}   (every model: /v1/models/<m>/..., /v2/..., /models/<m>/invocations)\n"
          f"  gRPC:     {dep.grpc}   (Open Inference; metadata model=<m> and authorization=Bearer <token>)\n"
          f"  token:    {dep.token}   (curl -H 'Authorization: Bearer <token>')\n"
          f"  Airflow:  {dep.airflow}   (login {dep.env['AIRFLOW_ADMIN_USER']} / {dep.env['AIRFLOW_ADMIN_PASSWORD']})\n"
          f"  compose:  docker compose -p {PROJECT} --env-file {ENV_FILE} ps\n"
          f"  demo data, training, the day's predictions: make deploy-demo; stop: make deploy-down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.compose", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up")
    start.add_argument("--gateway-port", type=int, default=18000)
    start.add_argument("--airflow-port", type=int, default=18080)
    start.add_argument("--grpc-port", type=int, default=18001)
    seed = sub.add_parser("demo")
    seed.add_argument("--days", type=int, default=35)
    seed.add_argument("--customers", type=int, default=20_000)
    stop = sub.add_parser("down")
    stop.add_argument("--volumes", action="store_true", help="also delete the data (compose down -v)")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.gateway_port, args.airflow_port, args.grpc_port)
    elif args.command == "demo":
        done = demo.drive(existing(), dt.datetime.now(dt.UTC).date(), args.days, args.customers)
        print(f"demo: {done['versions']} served; {', '.join(f'{k} {v:.0f}s' for k, v in done['timings'].items())}")
    else:
        dep = existing()
        dep.compose("down", *(["-v"] if args.volumes else []), "--remove-orphans", timeout=300)
        print(f"{PROJECT} stopped" + (" and its volumes deleted" if args.volumes else " (volumes kept)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
