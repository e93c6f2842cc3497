"""The v1 keyed aggregation in Bytewax 0.21, for the side-by-side figure in benches/RESULTS.md.

Reads the song and ad topics from the beginning (tail off, so the dataflow ends at the end of the
topics), enriches each event through `enrich_cached` (the getter reads the generated catalogue
from a JSON file written by the `pipeline` harness: a lookup cheaper than squall's CQL one),
keys by user and keeps per user exactly squall's v1 state with `stateful_map`: seen event ids
(dedup), plays, skips, genre counts, top three genres, ad impressions, categories, last_seen_ts.
Run by `benches/bytewax/run.sh`, which prints `bytewax events=.. seconds=.. events_per_sec=..`.
Prints `bytewax_first epoch_ms=..` when the first record is decoded and `bytewax_done events=N
epoch_ms=..` when N records (counted or resent) have reached the per-user state, for the harnesses.

Environment: BROKERS, SONG_TOPIC, AD_TOPIC, CATALOGUE (JSON {"tracks": {id: genre}, "ads": {id: category}}),
EVENTS (N), FETCH_WAIT_MAX_MS (librdkafka's fetch.wait.max.ms, default 10, as squall's consumers).
"""

import json
import os
import threading
import time

import bytewax.operators as op
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

BROKERS = os.environ.get("BROKERS", "127.0.0.1:9092").split(",")
TOPICS = [os.environ["SONG_TOPIC"], os.environ["AD_TOPIC"]]
with open(os.environ["CATALOGUE"]) as f:
    CATALOGUE = json.load(f)
EVENTS = int(os.environ.get("EVENTS", "0"))
# The same librdkafka fetch settings as squall's source (operators/src/source.rs).
CONSUMER = {
    "fetch.wait.max.ms": os.environ.get("FETCH_WAIT_MAX_MS", "10"),
    "fetch.queue.backoff.ms": "1",
    "queued.max.messages.kbytes": "65536",
}
# Progress shared by the worker threads of this process.
_lock = threading.Lock()
_first = [False]
_processed = [0]


def lookup(key):
    kind, ident = key
    table = CATALOGUE["tracks"] if kind == "t" else CATALOGUE["ads"]
    return table.get(ident, "unknown")


def decode(msg):
    if not _first[0]:
        with _lock:
            if not _first[0]:
                _first[0] = True
                print(f"bytewax_first epoch_ms={int(time.time() * 1000)}", flush=True)
    e = json.loads(msg.value)
    if "track_id" in e:
        return ("t", e["track_id"], e)
    return ("a", e["ad_id"], e)


def enrich(cache, item):
    kind, ident, e = item
    return (e, kind, cache.get((kind, ident)))


def apply(state, item):
    e, kind, value = item
    if state is None:
        state = {"seen": set(), "plays": 0, "skips": 0, "genres": {}, "ads": 0, "cats": {}, "last": e["ts"], "top": []}
    key = (kind, e["event_id"])
    if key in state["seen"]:
        return state, None
    state["seen"].add(key)
    state["last"] = max(state["last"], e["ts"])
    if kind == "t":
        state["plays"] += 1
        state["skips"] += e["ms_played"] < 30000
        state["genres"][value] = state["genres"].get(value, 0) + 1
        state["top"] = sorted(state["genres"], key=lambda g: (-state["genres"][g], g))[:3]
    else:
        state["ads"] += 1
        state["cats"][value] = state["cats"].get(value, 0) + 1
    return state, 1


class _Count(StatelessSinkPartition):
    def __init__(self, worker):
        self.worker = worker
        self.n = 0
        self.started = time.time()

    def write_batch(self, items):
        self.n += sum(1 for _, applied in items if applied is not None)
        with _lock:
            before = _processed[0]
            _processed[0] += len(items)
            if before < EVENTS <= _processed[0]:
                print(f"bytewax_done events={EVENTS} epoch_ms={int(time.time() * 1000)}", flush=True)

    def close(self):
        print(f"bytewax_worker worker={self.worker} applied={self.n}", flush=True)


class CountSink(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return _Count(worker_index)


flow = Dataflow("personalization")
inp = kop.input("kafka", flow, brokers=BROKERS, topics=TOPICS, tail=False, batch_size=4096, add_config=CONSUMER)
events = op.map("decode", inp.oks, decode)
enriched = op.enrich_cached("enrich", events, lookup, enrich)
keyed = op.key_on("user", enriched, lambda item: item[0]["user_id"])
applied = op.stateful_map("attributes", keyed, apply)
op.output("out", applied, CountSink())
