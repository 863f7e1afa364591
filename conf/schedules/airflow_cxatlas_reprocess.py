"""Apache Airflow DAG: run ``cxatlas reprocess`` once a day with the ``SparkSubmitOperator`` and ``conf/cluster.yaml``.

Copy (or symlink) this file into Airflow's ``dags/`` folder of an Airflow environment with
``apache-airflow-providers-apache-spark`` (``make airflow-venv`` builds one: Airflow 2.10.5, the provider 5.3.4,
and pyspark at the project's own 4.0.5). Each run spark-submits ``jobs/reprocess.py``, which ingests the manifests of
the folder it has not processed yet, applies withdrawals, annotates what lacks rows for the configured model versions
and brings the statistics up to date, recording the run in the ``runs`` table.

The task is the command line of README "Run on a cluster" (docs/cluster.md), built by the provider's hook::

    spark-submit --master <connection> [--deploy-mode <connection>] --conf spark.executorEnv.HF_HUB_OFFLINE=1 ...
        [--packages <Delta + hadoop-aws>] [--py-files ...] --name cxatlas-reprocess
        $CXATLAS_HOME/jobs/reprocess.py --conf $CXATLAS_HOME/conf/cluster.yaml --manifest-dir DIR [--max-videos N]

Options before ``jobs/reprocess.py`` are spark-submit's (from the Airflow connection and the Variables below);
those after it are the job's (``--conf`` there is the cxatlas config file).

Why these settings:

* ``catchup=False``: reprocess always catches up with the whole manifest folder by itself, so missed days need no
  back-filled runs; ``max_active_runs=1``: one run at a time (reprocess also holds a lease in a Delta table, so a run
  started elsewhere, by cron or by hand, is skipped or waits instead of double-processing).
* retries with exponential back-off: a run that failed (a lost cluster, a metastore restart) is safe to repeat, since
  reprocess finishes a killed run's work without duplicates.
* ``manifest_dir`` is a DAG parameter (default: ``$CXATLAS_MANIFEST_DIR`` of the process that parses the DAG, else
  ``s3a://my-bucket/cxatlas/manifests``), so a manual trigger can point a run at another folder:
  ``airflow dags trigger cxatlas_reprocess -c '{"manifest_dir": "hdfs:///uploads/manifests"}'``; likewise
  ``max_videos`` bounds one run's work.
* the hubs stay offline on the driver (``env_vars``: the process environment in client mode,
  ``spark.yarn.appMasterEnv.*`` / ``spark.kubernetes.driverEnv.*`` in cluster mode) and on the executors
  (``spark.executorEnv.*``): the model weights travel inside the installed packages (docs/cluster.md).

Where Spark is: the Airflow connection ``cxatlas_spark`` (type ``spark``): host = the master (``yarn``,
``spark://HOST`` with port 7077, ``k8s://https://HOST`` with its port), extra ``deploy-mode`` (``client`` or
``cluster``), ``queue`` (YARN) and ``spark-binary`` (``spark-submit``, the default, must be on the worker's PATH;
the provider allows no other path). Without that connection the provider submits to ``yarn``.

Where things are, resolved when the task runs (Airflow Variable, else the environment of the process that parsed
the DAG, else the default). A relative path is taken relative to ``cxatlas_home``:

==============================  ==========================  =========================================================
Airflow Variable                environment variable        default / meaning
==============================  ==========================  =========================================================
``cxatlas_home``                ``CXATLAS_HOME``            ``/opt/cxatlas``: the checkout or image folder holding
                                                            ``jobs/`` and ``conf/``
``cxatlas_conf``                ``CXATLAS_CLUSTER_CONF``    ``conf/cluster.yaml``: the cxatlas config (job's --conf)
``cxatlas_max_videos``          ``CXATLAS_MAX_VIDEOS``      empty: no bound; else ``--max-videos N`` when the run's
                                                            ``max_videos`` param is empty (a backlog drains over runs)
``cxatlas_spark_packages``      ``CXATLAS_SPARK_PACKAGES``  ``--packages``: Delta Lake (conf/jars.txt) and hadoop-aws,
                                                            as ``spark.jars.packages`` of conf/cluster.yaml; empty:
                                                            none (jars baked into the image)
``cxatlas_py_files``            ``CXATLAS_PY_FILES``        ``--py-files``, e.g. ``dist/cxatlas-pyfiles.zip``; empty:
                                                            none (the environment has the wheel)
``cxatlas_archives``            ``CXATLAS_ARCHIVES``        ``spark.archives`` (= ``--archives``), the packed venv,
                                                            e.g. ``hdfs:///apps/cxatlas-env.tar.gz#environment``
``cxatlas_pyspark_python``      ``CXATLAS_PYSPARK_PYTHON``  ``spark.pyspark.python``, e.g.
                                                            ``./environment/bin/python`` with the archive above
``cxatlas_properties_file``     ``CXATLAS_PROPERTIES_FILE`` ``--properties-file``: any further spark-submit settings
                                                            (sizes, credentials); empty: Spark's spark-defaults.conf
==============================  ==========================  =========================================================

A setting that renders empty is left out of the command line (a ``pre_execute`` step drops it after Airflow has
rendered the templates), so no ``--conf key=`` or empty argument ever reaches spark-submit.

The file imports nothing from cxatlas and reads no Variable at parse time (Airflow parses DAG files every few
seconds); Variables are read through templates when a run starts.
"""
from __future__ import annotations

import os
import posixpath
from datetime import timedelta

import pendulum
from airflow import DAG
from airflow.models.param import Param
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

DAG_ID = "cxatlas_reprocess"
# Daily at 03:00 UTC, so analysts find current statistics in the morning (the same time as cxatlas.cron, the systemd
# timer of the README and k8s-cronjob.yaml).
SCHEDULE = "0 3 * * *"
#: The Airflow connection of type "spark" that says where spark-submit submits to (master, deploy mode, queue).
CONN_ID = "cxatlas_spark"
#: The jobs/ script and the config, relative to cxatlas_home (README "Run on a cluster").
APPLICATION = "jobs/reprocess.py"
#: The Delta Lake jars the driver needs at start (conf/jars.txt) and S3A, as spark.jars.packages of conf/cluster.yaml.
DEFAULT_PACKAGES = "io.delta:delta-spark_2.13:4.0.1,org.apache.hadoop:hadoop-aws:3.4.1"
#: Keep the model hubs offline: the weights travel inside the installed packages (docs/cluster.md, "Model files").
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _setting(variable: str, env: str, default: str) -> str:
    """A Jinja expression for the Airflow Variable ``variable``, falling back to ``$env`` as the parser saw it, else
    ``default``. A template, not ``Variable.get`` at module level: parsing must not hit the metadata database."""
    return f"var.value.get({variable!r}, {os.environ.get(env, default)!r})"


def cxatlas_path(home: str, path: str) -> str:
    """``path`` under ``home`` unless it is empty, absolute or a URI (``s3a://``, ``hdfs://``, ``local://``)."""
    path = str(path or "").strip()
    if not path or path.startswith("/") or "://" in path:
        return path
    return posixpath.join(str(home), path)


def drop_unset(context) -> None:
    """pre_execute: leave out the job arguments and Spark properties whose setting rendered empty (``--max-videos``
    without a bound, ``spark.archives`` without a packed environment, ...)."""
    task = context["task"]
    args = list(task.application_args or [])
    kept = []
    for i, arg in enumerate(args):
        if arg == "" or (isinstance(arg, str) and arg.startswith("--") and i + 1 < len(args) and args[i + 1] == ""):
            continue
        kept.append(arg)
    task.application_args = kept
    task.conf = {k: v for k, v in (task.conf or {}).items() if v not in ("", None)}


HOME = _setting("cxatlas_home", "CXATLAS_HOME", "/opt/cxatlas")
CLUSTER_CONF = _setting("cxatlas_conf", "CXATLAS_CLUSTER_CONF", "conf/cluster.yaml")
MAX_VIDEOS = _setting("cxatlas_max_videos", "CXATLAS_MAX_VIDEOS", "")
PACKAGES = _setting("cxatlas_spark_packages", "CXATLAS_SPARK_PACKAGES", DEFAULT_PACKAGES)
PY_FILES = _setting("cxatlas_py_files", "CXATLAS_PY_FILES", "")
ARCHIVES = _setting("cxatlas_archives", "CXATLAS_ARCHIVES", "")
PYSPARK_PYTHON = _setting("cxatlas_pyspark_python", "CXATLAS_PYSPARK_PYTHON", "")
PROPERTIES_FILE = _setting("cxatlas_properties_file", "CXATLAS_PROPERTIES_FILE", "")
MANIFEST_DIR = os.environ.get("CXATLAS_MANIFEST_DIR", "s3a://my-bucket/cxatlas/manifests")


def _under_home(expression: str) -> str:
    return "{{ cxatlas_path(" + HOME + ", " + expression + ") }}"


with DAG(
    dag_id=DAG_ID,
    description="cxatlas reprocess: new manifests, withdrawals, annotation and statistics, once a day",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=20),
    default_args={
        "owner": "cxatlas",
        "retries": 3,
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=2),
        "execution_timeout": timedelta(hours=12),
    },
    params={
        "manifest_dir": Param(
            MANIFEST_DIR, type="string", minLength=1,
            description="folder (local path or Hadoop/fsspec URI) of the upload manifests to reprocess"),
        "max_videos": Param(None, type=["null", "integer"], minimum=1,
                            description="bound on the videos annotated in this run (empty: no bound)"),
    },
    user_defined_macros={"cxatlas_path": cxatlas_path},
    tags=["cxatlas"],
    doc_md=__doc__,
) as dag:
    # spark-submit's exit code is the task's: non-zero -> retry with back-off.
    SparkSubmitOperator(
        task_id="reprocess",
        conn_id=CONN_ID,
        name="cxatlas-reprocess",
        application=_under_home(repr(APPLICATION)),
        application_args=[
            "--conf", _under_home(CLUSTER_CONF),
            "--manifest-dir", "{{ params.manifest_dir }}",
            "--max-videos", "{% set n = params.max_videos or " + MAX_VIDEOS + " %}{{ n | int if n else '' }}",
        ],
        packages="{{ " + PACKAGES + " }}",
        py_files=_under_home(PY_FILES),
        properties_file=_under_home(PROPERTIES_FILE),
        conf={
            "spark.archives": "{{ " + ARCHIVES + " }}",
            "spark.pyspark.python": "{{ " + PYSPARK_PYTHON + " }}",
            **{f"spark.executorEnv.{k}": v for k, v in OFFLINE.items()},
        },
        env_vars=dict(OFFLINE),
        pre_execute=drop_unset,
    )
