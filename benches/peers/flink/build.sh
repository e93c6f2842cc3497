#!/usr/bin/env bash
# Builds the Flink peer job (Personalization.java) against Flink 2.0 jars taken from PyPI (Maven
# Central is not reachable on the dev machines). Fetches the jars only when they are missing:
#   apache-flink-libraries==2.0.0              deps/lib/flink-dist-2.0.0.jar and the log4j jars
#   shigawire-apache-flink-libraries==2.0.0.post1  pyflink/lib/flink-connector-kafka.jar (4.0.1-2.0)
#                                                 and pyflink/lib/kafka-clients.jar (3.9.1)
# into $FLINK_JARS (default .devenv/flink-jars, git-ignored), then compiles with javac into
# $FLINK_JARS/classes when a source is newer than the classes. Prints the classpath's directory.
#   benches/peers/flink/build.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
JARS=${FLINK_JARS:-$ROOT/.devenv/flink-jars}
log() { printf 'flink build: %s\n' "$*" >&2; }

mkdir -p "$JARS"
if [[ ! -f $JARS/flink-dist-2.0.0.jar || ! -f $JARS/log4j-core-2.24.1.jar ]]; then
    log "fetching apache-flink-libraries==2.0.0 from PyPI (310 MB, once)"
    tmp=$(mktemp -d)
    pip download -q --no-deps -d "$tmp" "apache-flink-libraries==2.0.0"
    tar -xzf "$tmp"/apache-flink-libraries-2.0.0.tar.gz -C "$tmp" \
        --wildcards 'apache-flink-libraries-2.0.0/deps/lib/flink-dist-2.0.0.jar' \
        'apache-flink-libraries-2.0.0/deps/lib/log4j-*.jar'
    mv "$tmp"/apache-flink-libraries-2.0.0/deps/lib/*.jar "$JARS"/
    rm -rf "$tmp"
fi
if [[ ! -f $JARS/flink-connector-kafka.jar || ! -f $JARS/kafka-clients.jar ]]; then
    log "fetching shigawire-apache-flink-libraries==2.0.0.post1 from PyPI (92 MB, once)"
    tmp=$(mktemp -d)
    pip download -q --no-deps -d "$tmp" "shigawire-apache-flink-libraries==2.0.0.post1"
    unzip -q -o -j "$tmp"/shigawire_apache_flink_libraries-2.0.0.post1-py3-none-any.whl \
        pyflink/lib/flink-connector-kafka.jar pyflink/lib/kafka-clients.jar -d "$JARS"
    rm -rf "$tmp"
fi

CP="$JARS/flink-dist-2.0.0.jar:$JARS/flink-connector-kafka.jar:$JARS/kafka-clients.jar"
stamp=$JARS/classes/.built
if [[ ! -f $stamp || -n $(find "$HERE" -name '*.java' -newer "$stamp") ]]; then
    log "compiling $(ls "$HERE"/*.java | xargs -n1 basename | tr '\n' ' ')"
    rm -rf "$JARS/classes"
    mkdir -p "$JARS/classes"
    javac -Xlint:deprecation -Xlint:unchecked -d "$JARS/classes" -cp "$CP" "$HERE"/*.java
    touch "$stamp"
fi
echo "$JARS"
