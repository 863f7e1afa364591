# The two commands a new user needs (README): `make demo` and `make test`.
# Both create .venv on first use, install the pinned stack, then run.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
JARS   := .jars
JARS_STAMP := $(JARS)/.fetched
DATA   ?= data
VIDEOS ?= 48
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Apache Airflow for the schedule test (tests/test_schedules.py loads conf/schedules/'s DAG with Airflow's DagBag) lives
# in a venv of its own: Airflow's pins (SQLAlchemy 1.4, Flask 2.2, ...) never touch .venv. The DAG's SparkSubmitOperator
# comes from the Spark provider: 5.3.4 is its last release for Airflow 2.10 (5.4 needs Airflow 2.11, 6.x pyspark-client),
# and constraints-airflow.txt holds its pyspark (and py4j) at the project's own pins of constraints.txt.
AIRFLOW_VENV  ?= .airflow-venv
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_PIN   := apache-airflow==2.10.5
AIRFLOW_SPARK_PIN := apache-airflow-providers-apache-spark==5.3.4

.PHONY: install jars sqlguard airflow-venv browser demo test test-fast dist bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt constraints.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# What the package imports (requirements.txt) and what only tests import (requirements-dev.txt), at the pins.
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	# Stale pins in these packages' metadata would downgrade the stack above, so they go in without dependencies.
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

# Delta Lake's jars (conf/jars.txt) from Maven Central with the machine's Maven client, into an ignored folder.
$(JARS_STAMP): conf/jars.txt
	mkdir -p $(JARS)
	grep -v '^#' conf/jars.txt | grep . | while read -r coord; do \
	  mvn -q -B dependency:copy -Dartifact=$$coord -DoutputDirectory=$(JARS) || exit 1; done
	touch $(JARS_STAMP)

jars: $(JARS_STAMP)

# The SQL guard of `cxatlas sql-server` (sqlguard/: a Spark SQL extension and the endpoint's password check, Java),
# compiled with the machine's JDK and Maven against pip's pyspark jars, into .jars/ (never committed).
SQLGUARD_JAR := $(JARS)/cxatlas-sqlguard.jar
$(SQLGUARD_JAR): sqlguard/pom.xml $(wildcard sqlguard/src/main/java/cxatlas/sqlguard/*.java) $(STAMP)
	mkdir -p $(JARS)
	mvn -q -B -f sqlguard/pom.xml package $$($(PY) sqlguard/maven_args.py)
	cp sqlguard/target/cxatlas-sqlguard.jar $@

sqlguard: $(SQLGUARD_JAR)

# The driver JVM's class-data-sharing archive for this classpath and JDK (cxatlas.warehouse.class_archive: about 5 s
# less JVM start in every process), built once (about a minute) and found again in well under a second.
install: $(STAMP) $(JARS_STAMP) $(SQLGUARD_JAR)
	$(PY) -m cxatlas.warehouse.class_archive_build

$(AIRFLOW_STAMP): constraints-airflow.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q $(AIRFLOW_PIN) $(AIRFLOW_SPARK_PIN) -c constraints-airflow.txt
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

# Headless Chromium for the report's browser test (tests/stages/test_report_browser.py drives it over the DevTools
# protocol): Debian's `chromium` package, installed only when no chromium is on PATH (apt-get as root, else through
# sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	@chromium --version 2>/dev/null

demo: install
	$(VENV)/bin/cxatlas demo --data $(DATA) --videos $(VIDEOS)

test: install $(AIRFLOW_STAMP) browser
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

dist: $(STAMP)
	rm -rf dist build
	$(PIP) wheel --no-deps -q -w dist .
	# The wheel is a zip of the installed layout (cxatlas/ with models, udfs, jobs and conf inside): --py-files takes it.
	cp dist/cxatlas-*.whl dist/cxatlas-pyfiles.zip
	@ls -l dist

# Speed and memory budgets of issues #3 and #4, printed as measured ratios (see bench/README.md). Not part of `test`.
bench: $(STAMP)
	$(PY) -m bench.bench_annotate
	$(PY) -m bench.bench_analyze

clean:
	rm -rf $(DATA) dist build *.egg-info
