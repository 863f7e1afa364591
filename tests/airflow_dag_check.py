"""Load DAG files with Airflow's own DagBag and print what a test needs to know about them, as JSON.

Runs inside ``.airflow-venv`` (Airflow and its pins never touch the project's ``.venv``), started by
``tests/test_schedules.py``; it imports nothing from cxatlas. Usage::

    .airflow-venv/bin/python tests/airflow_dag_check.py DAG_FILE [--conf JSON]... [--variable K=V]... [--cron EXPR]...

Every ``--conf`` is a run's configuration (``airflow dags trigger -c JSON``): the task commands are rendered for it
with the DAG's params, user filters and Airflow Variables (``--variable``, stored in a throw-away metadata database,
or ``AIRFLOW_VAR_*`` in the environment), as a run would. Every
``--cron`` expression gets its next fire times, computed by the croniter Airflow schedules with.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from datetime import datetime, timezone


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_file")
    parser.add_argument("--conf", action="append", default=[], help="a run's conf, JSON")
    parser.add_argument("--cron", action="append", default=[], help="a cron expression to evaluate")
    parser.add_argument("--variable", action="append", default=[], help="KEY=VALUE: an Airflow Variable to store")
    args = parser.parse_args()
    # Airflow logs to stdout; the JSON alone goes there.
    out_stream, sys.stdout = sys.stdout, sys.stderr
    # A throw-away Airflow home: no airflow.cfg or database of the machine is read or written.
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

    import airflow
    from airflow import settings
    from airflow.models.dagbag import DagBag
    from airflow.models.variable import Variable
    from airflow.utils.context import VariableAccessor
    from croniter import croniter

    # The metadata database (SQLite in the throw-away home) gets only the Variables table: templates read Variables
    # from it as on a real deployment, after AIRFLOW_VAR_* environment variables.
    Variable.__table__.create(settings.engine, checkfirst=True)
    for item in args.variable:
        key, _, value = item.partition("=")
        Variable.set(key, value)

    bag = DagBag(dag_folder=args.dag_file, include_examples=False, safe_mode=False)
    out = {"airflow_version": airflow.__version__, "dag_ids": sorted(bag.dag_ids),
           "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}, "cron": {}}
    for dag_id, dag in sorted(bag.dags.items()):
        tasks = {}
        for task in dag.tasks:
            renders = []
            for conf in args.conf:
                params = copy.deepcopy(dag.params)
                try:
                    params.update(json.loads(conf))
                    context = {"params": params.validate(), "dag": dag, "task": task,
                               "var": {"value": VariableAccessor(deserialize_json=False),
                                       "json": VariableAccessor(deserialize_json=True)}}
                    renders.append({"command": task.render_template(task.bash_command, context)})
                except Exception as exc:  # a conf the DAG refuses: report it, the test decides
                    renders.append({"error": f"{type(exc).__name__}: {exc}"})
            tasks[task.task_id] = {
                "operator": type(task).__name__,
                "retries": task.retries,
                "retry_exponential_backoff": task.retry_exponential_backoff,
                "retry_delay_s": task.retry_delay.total_seconds(),
                "max_retry_delay_s": task.max_retry_delay.total_seconds() if task.max_retry_delay else None,
                "execution_timeout_s": task.execution_timeout.total_seconds() if task.execution_timeout else None,
                "renders": renders,
            }
        out["dags"][dag_id] = {
            "schedule": dag.timetable.summary,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": dag.params.dump(),
            "param_schemas": {k: dag.params.get_param(k).schema for k in dag.params},
            "tasks": tasks,
        }
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for expr in args.cron:
        it = croniter(expr, start)
        out["cron"][expr] = [it.get_next(datetime).isoformat() for _ in range(3)]
    json.dump(out, out_stream, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
