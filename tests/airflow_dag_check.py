"""Load DAG files with Airflow's own DagBag and print what a test needs to know about them, as JSON.

Runs inside ``.airflow-venv`` (Airflow and its pins never touch the project's ``.venv``), started by
``tests/test_schedules.py``; it imports nothing from cxatlas. Usage::

    .airflow-venv/bin/python tests/airflow_dag_check.py DAG_FILE [--conf JSON]... [--variable K=V]... [--cron EXPR]...

Every ``--conf`` is a run's configuration (``airflow dags trigger -c JSON``): each task is rendered for it as a run
would (a copy of the task, its template fields rendered with the DAG's params, macros, filters and Airflow Variables
from ``--variable``, stored in a throw-away metadata database, or ``AIRFLOW_VAR_*`` in the environment), then its
``pre_execute`` step runs. For a ``SparkSubmitOperator`` the report holds the rendered application, its arguments
and Spark properties, and the spark-submit command line the provider's own ``SparkSubmitHook`` builds from them
and from the Airflow connection (``AIRFLOW_CONN_*`` in the environment; none: the provider's default, yarn), with the
environment it would give spark-submit; for a ``BashOperator`` the rendered command. Every ``--cron`` expression
gets its next fire times, computed by the croniter Airflow schedules with.

Every ``--run`` conf is a whole run of each DAG (``DAG.test``: a DagRun in a full throw-away metadata database, every
task executed by Airflow's own TaskInstance code, so the operator really starts its process, e.g. the
``spark-submit`` found on PATH), with one try per task (retries off, so a failing task fails the run at once);
the report gives the run's state and each task's.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from datetime import datetime, timezone


def render(dag, task, params, accessor) -> dict:
    """What a run of ``task`` with ``params`` executes, as far as it is known before ``execute``: the steps of
    ``TaskInstance._execute_task_with_callbacks`` (a copy of the task, its template fields rendered with the DAG's
    Jinja environment, then ``pre_execute``), and for spark-submit the provider hook's command line."""
    ti_task = task.prepare_for_execution()
    context = {"params": params, "dag": dag, "task": ti_task,
               "var": {"value": accessor(deserialize_json=False), "json": accessor(deserialize_json=True)}}
    ti_task.render_template_fields(context, dag.get_template_env())
    ti_task.pre_execute(context=context)
    if type(ti_task).__name__ == "BashOperator":
        return {"command": ti_task.bash_command}
    if type(ti_task).__name__ == "SparkSubmitOperator":
        hook = ti_task._get_hook()
        argv = hook._build_spark_submit_command(ti_task.application)
        return {"application": ti_task.application, "application_args": ti_task.application_args,
                "conf": ti_task.conf, "conn_id": ti_task._conn_id, "name": ti_task.name,
                "packages": ti_task.packages, "py_files": ti_task.py_files, "properties_file": ti_task.properties_file,
                "env_vars": ti_task.env_vars, "master": hook._connection["master"],
                "deploy_mode": hook._connection["deploy_mode"], "argv": argv, "env": hook._env}
    return {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_file")
    parser.add_argument("--conf", action="append", default=[], help="a run's conf, JSON")
    parser.add_argument("--cron", action="append", default=[], help="a cron expression to evaluate")
    parser.add_argument("--variable", action="append", default=[], help="KEY=VALUE: an Airflow Variable to store")
    parser.add_argument("--run", action="append", default=[], help="a run's conf, JSON: run the DAG with it")
    args = parser.parse_args()
    # Airflow logs to stdout; the JSON alone goes there.
    out_stream, sys.stdout = sys.stdout, sys.stderr
    # A throw-away Airflow home: no airflow.cfg or database of the machine is read or written.
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

    import airflow
    from airflow import settings
    from airflow.models.connection import Connection
    from airflow.models.dagbag import DagBag
    from airflow.models.variable import Variable
    from airflow.utils.context import VariableAccessor
    from croniter import croniter

    # The metadata database (SQLite in the throw-away home) gets only the Variables and Connections tables: templates
    # read Variables and hooks their connection from it as on a real deployment, after AIRFLOW_VAR_* / AIRFLOW_CONN_*
    # environment variables.
    if args.run:  # DagRuns and TaskInstances need the whole schema
        from airflow.utils.db import initdb

        initdb()
    else:
        Variable.__table__.create(settings.engine, checkfirst=True)
        Connection.__table__.create(settings.engine, checkfirst=True)
    for item in args.variable:
        key, _, value = item.partition("=")
        Variable.set(key, value)

    bag = DagBag(dag_folder=args.dag_file, include_examples=False, safe_mode=False)
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    out = {"airflow_version": airflow.__version__,
           "distributions": {d: installed(d) for d in ("apache-airflow-providers-apache-spark", "pyspark", "py4j")},
           "dag_ids": sorted(bag.dag_ids),
           "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}, "cron": {}}
    for dag_id, dag in sorted(bag.dags.items()):
        tasks = {}
        for task in dag.tasks:
            renders = []
            for conf in args.conf:
                params = copy.deepcopy(dag.params)
                try:
                    params.update(json.loads(conf))
                    renders.append(render(dag, task, params.validate(), VariableAccessor))
                except Exception as exc:  # a conf the DAG refuses: report it, the test decides
                    renders.append({"error": f"{type(exc).__name__}: {exc}"})
            tasks[task.task_id] = {
                "operator": type(task).__name__,
                "operator_module": type(task).__module__,
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
    out["runs"] = []
    for conf in args.run:
        for dag_id, dag in sorted(bag.dags.items()):
            for task in dag.tasks:
                task.retries = 0
            run = dag.test(run_conf=json.loads(conf))
            out["runs"].append({"dag_id": dag_id, "state": str(run.state),
                                "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}})
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for expr in args.cron:
        it = croniter(expr, start)
        out["cron"][expr] = [it.get_next(datetime).isoformat() for _ in range(3)]
    json.dump(out, out_stream, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
