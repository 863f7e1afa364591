"""Apache Airflow DAG: run ``cxatlas reprocess`` once a day with spark-submit and ``conf/cluster.yaml``.

Copy (or symlink) this file into Airflow's ``dags/`` folder. Each run spark-submits ``jobs/reprocess.py``, which
ingests the manifests of the folder it has not processed yet, applies withdrawals, annotates what lacks rows for the
configured model versions and brings the statistics up to date, recording the run in the ``runs`` table.

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

Where things are, resolved when the task runs (Airflow Variable, else the environment of the process that parsed
the DAG, else the default):

=============================  =======================  ============================================================
Airflow Variable               environment variable     default / meaning
=============================  =======================  ============================================================
``cxatlas_home``               ``CXATLAS_HOME``         ``/opt/cxatlas``: the checkout or image folder holding
                                                        ``jobs/`` and ``conf/``
``cxatlas_spark_submit``       ``SPARK_SUBMIT``         ``spark-submit`` (on PATH), or ``$SPARK_HOME/bin/spark-submit``
``cxatlas_spark_submit_args``  ``SPARK_SUBMIT_ARGS``    spark-submit's own options, e.g. ``--master yarn``
``cxatlas_conf``               ``CXATLAS_CLUSTER_CONF`` ``conf/cluster.yaml`` (relative to ``cxatlas_home``)
``cxatlas_max_videos``         ``CXATLAS_MAX_VIDEOS``   empty: no bound; else ``--max-videos N`` when the run's
                                                        ``max_videos`` param is empty (a backlog drains over runs)
=============================  =======================  ============================================================

The file imports nothing from cxatlas and reads no Variable at parse time (Airflow parses DAG files every few
seconds); Variables are read through templates when a run starts.
"""
from __future__ import annotations

import os
import shlex
from datetime import timedelta

import pendulum
from airflow import DAG
from airflow.models.param import Param
from airflow.operators.bash import BashOperator

DAG_ID = "cxatlas_reprocess"
# Daily at 03:00 UTC, so analysts find current statistics in the morning (the same time as cxatlas.cron and
# k8s-cronjob.yaml).
SCHEDULE = "0 3 * * *"


def _setting(variable: str, env: str, default: str) -> str:
    """A Jinja expression for the Airflow Variable ``variable``, falling back to ``$env`` as the parser saw it, else
    ``default``. A template, not ``Variable.get`` at module level: parsing must not hit the metadata database."""
    return f"var.value.get({variable!r}, {os.environ.get(env, default)!r})"


CXATLAS_HOME = _setting("cxatlas_home", "CXATLAS_HOME", "/opt/cxatlas")
SPARK_SUBMIT = _setting("cxatlas_spark_submit", "SPARK_SUBMIT", "spark-submit")
SPARK_SUBMIT_ARGS = _setting("cxatlas_spark_submit_args", "SPARK_SUBMIT_ARGS", "")
CLUSTER_CONF = _setting("cxatlas_conf", "CXATLAS_CLUSTER_CONF", "conf/cluster.yaml")
MAX_VIDEOS = _setting("cxatlas_max_videos", "CXATLAS_MAX_VIDEOS", "")
MANIFEST_DIR = os.environ.get("CXATLAS_MANIFEST_DIR", "s3a://my-bucket/cxatlas/manifests")

# One shell line: cd into the cxatlas folder (jobs/ and conf/ are relative to it), then spark-submit the job with
# the run's manifest folder, every value shell-quoted except spark-submit's own options (several words on purpose).
# spark-submit's exit code is the task's: non-zero -> retry with back-off.
BASH_COMMAND = (
    "{% set submit_args = " + SPARK_SUBMIT_ARGS + " %}{% set max_videos = params.max_videos or " + MAX_VIDEOS + " %}"
    "set -euo pipefail; cd {{ " + CXATLAS_HOME + " | shquote }} && "
    "exec {{ " + SPARK_SUBMIT + " | shquote }} {% if submit_args %}{{ submit_args }} {% endif %}jobs/reprocess.py "
    "--conf {{ " + CLUSTER_CONF + " | shquote }} --manifest-dir {{ params.manifest_dir | shquote }}"
    "{% if max_videos %} --max-videos {{ max_videos | int }}{% endif %}"
)

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
    user_defined_filters={"shquote": shlex.quote},
    tags=["cxatlas"],
    doc_md=__doc__,
) as dag:
    BashOperator(task_id="reprocess", bash_command=BASH_COMMAND)
