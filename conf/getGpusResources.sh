#!/usr/bin/env bash
# GPU discovery script for Spark executors/workers (same output format as Spark's own
# examples/src/main/scripts/getGpusResources.sh): prints {"name": "gpu", "addresses": ["0", "1", ...]}.
# Use it where the Spark distribution's copy is not on the image: ship it with `--files conf/getGpusResources.sh`
# and set spark.executor.resource.gpu.discoveryScript=./getGpusResources.sh (see docs/cluster.md).
set -euo pipefail
ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/","/g')
echo "{\"name\": \"gpu\", \"addresses\": [\"$ADDRS\"]}"
