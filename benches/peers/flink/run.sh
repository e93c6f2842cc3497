#!/usr/bin/env bash
# Runs the Flink peer job (Personalization.java) in a local MiniCluster; the JVM replaces this
# shell (exec), so the caller's child pid is the JVM's. Build it first with build.sh (this script
# builds when the classes are missing, but then the build is inside the caller's timing).
#   benches/peers/flink/run.sh --brokers 127.0.0.1:9092 --song-topic S --ad-topic A \
#       --catalogue catalogue.json --events 1000000 --parallelism 2 [--checkpoint-dir DIR] [--out DIR]
# JVM options: FLINK_JAVA_OPTS (default -Xmx2g).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
JARS=${FLINK_JARS:-$ROOT/.devenv/flink-jars}
[[ -f $JARS/classes/.built ]] || "$HERE/build.sh" >/dev/null
CP="$JARS/classes:$JARS/flink-dist-2.0.0.jar:$JARS/flink-connector-kafka.jar:$JARS/kafka-clients.jar"
for j in "$JARS"/log4j-*.jar; do CP="$CP:$j"; done
# shellcheck disable=SC2086
exec java ${FLINK_JAVA_OPTS:--Xmx2g} \
    --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED \
    -Dlog4j.configurationFile="$HERE/log4j2.properties" \
    -cp "$CP" Personalization "$@"
