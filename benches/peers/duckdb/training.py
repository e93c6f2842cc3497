"""Point-in-time training data: squall training-data and DuckDB on the same archive and labels.

Run benches/src/bin/training.rs with --generate-only first (it writes DIR/archive, labels.parquet,
tracks.parquet, topology.toml and the catalogue into CQL), then:

    benches/peers/duckdb/setup.sh
    benches/peers/duckdb/.venv/bin/python benches/peers/duckdb/training.py --dir DIR \
        --squall target/release/squall --workers 2 --threads 2 [--at EPOCH_MS]

Both run in this one invocation, one after the other: squall as a child process (its peak RSS
from getrusage), then DuckDB in this process (threads = --threads, its peak RSS measured before
anything else is loaded). Two DuckDB queries:

- exact: what squall computes, in SQL: resends dropped (first copy by ts, topic, partition,
  offset), every attribute as of the user's clock (the last event strictly before the label),
  the 7-day window in daily tiles counted back from the clock's tile. ASOF joins over running
  counts (a RANGE frame, so events at the same ts count together).
- naive: the query one writes first: the same ASOF joins over every archived event (resends
  counted) and a sliding 7 days back from the label's time.

Every row of both is compared with squall's output; the exact one must agree on every attribute.
Prints one JSON line with the figures and the differences.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq

DAY = 86_400_000
ATTRS = ["plays", "ms_played", "skips", "ad_impressions", "plays_7d", "genre_plays", "top_genres"]


def events_sql(d, dedup):
    """Decoded archived events with their kind (0 song, 1 ad) and genre."""
    src = f"read_parquet('{d}/archive/*/date=*/partition=*/*.parquet', hive_partitioning = false)"
    keep = (
        'QUALIFY row_number() OVER (PARTITION BY kind, user_id, event_id ORDER BY ts, kind, "partition", "offset") = 1'
        if dedup
        else ""
    )
    return f"""
        SELECT user_id, event_id, ts, kind, ms_played, coalesce(t.genre, 'unknown') AS genre
        FROM (
            SELECT user_id, event_id, ts, CASE WHEN track_id IS NOT NULL THEN 0 ELSE 1 END AS kind,
                   "partition", "offset", track_id, ms_played
            FROM {src} WHERE dlq_reason IS NULL
            {keep}
        ) e LEFT JOIN read_parquet('{d}/tracks.parquet') t USING (track_id)
    """


def query(d, exact):
    ev = events_sql(d, dedup=exact)
    window_start = "(floor(l.clock / {DAY}) - 6) * {DAY}".format(DAY=DAY) if exact else f"l.ts - 7 * {DAY}"
    return f"""
    WITH e AS ({ev}),
    l0 AS (SELECT file_row_number AS row, user_id, ts
           FROM read_parquet('{d}/labels.parquet', file_row_number = true)),
    c AS (
        SELECT user_id, ts,
               count(*) FILTER (WHERE kind = 0) OVER w AS plays,
               coalesce(sum(ms_played) FILTER (WHERE kind = 0) OVER w, 0) AS ms_played,
               count(*) FILTER (WHERE kind = 0 AND ms_played < 30000) OVER w AS skips,
               count(*) FILTER (WHERE kind = 1) OVER w AS ad_impressions
        FROM e
        WINDOW w AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    ),
    l AS (
        SELECT l0.row, l0.user_id, l0.ts, c.ts AS clock, c.plays, c.ms_played, c.skips, c.ad_impressions
        FROM l0 ASOF LEFT JOIN c ON l0.user_id = c.user_id AND l0.ts > c.ts
    ),
    w7 AS (
        SELECT l.row, l.plays - coalesce(c.plays, 0) AS plays_7d
        FROM l ASOF LEFT JOIN c ON l.user_id = c.user_id AND {window_start} > c.ts
        WHERE l.clock IS NOT NULL
    ),
    g AS (
        SELECT user_id, genre, ts,
               count(*) OVER (PARTITION BY user_id, genre ORDER BY ts
                              RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
        FROM e WHERE kind = 0
    ),
    lg AS (
        SELECT l.row, ug.genre, l.ts, l.user_id
        FROM l JOIN (SELECT DISTINCT user_id, genre FROM g) ug ON ug.user_id = l.user_id
        WHERE l.clock IS NOT NULL
    ),
    gm AS (
        SELECT lg.row,
               map(list(lg.genre ORDER BY lg.genre), list(g.n ORDER BY lg.genre)) AS genre_plays,
               list(lg.genre ORDER BY g.n DESC, lg.genre)[1:3] AS top_genres
        FROM lg ASOF JOIN g ON lg.user_id = g.user_id AND lg.genre = g.genre AND lg.ts > g.ts
        GROUP BY lg.row
    )
    SELECT l.row, l.plays, l.ms_played, l.skips, l.ad_impressions, w7.plays_7d,
           CASE WHEN l.clock IS NULL THEN NULL ELSE coalesce(gm.genre_plays, MAP {{}}) END AS genre_plays,
           CASE WHEN l.clock IS NULL THEN NULL ELSE coalesce(gm.top_genres, []) END AS top_genres
    FROM l LEFT JOIN w7 USING (row) LEFT JOIN gm USING (row)
    ORDER BY l.row
    """


def normalise(name, v):
    if v is None:
        return None
    if name == "genre_plays":
        return sorted((k, int(x)) for k, x in (v.items() if isinstance(v, dict) else v))
    if name == "top_genres":
        return list(v)
    return int(v)


def differences(squall, duck):
    """Per attribute, rows that differ, and a first example."""
    out = {}
    n = squall.num_rows
    for a in ATTRS:
        s, d = squall.column(a).to_pylist(), duck.column(a).to_pylist()
        bad = [i for i in range(n) if normalise(a, s[i]) != normalise(a, d[i])]
        out[a] = {"rows": len(bad)}
        if bad:
            i = bad[0]
            x, y = normalise(a, s[i]), normalise(a, d[i])
            if a == "genre_plays" and x is not None and y is not None:
                x, y = sorted(set(x) - set(y)), sorted(set(y) - set(x))
            out[a]["example"] = {"row": i, "squall": x, "duckdb": y}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--squall", default="target/release/squall")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--at", type=int, help="also time squall's --at snapshot of every user at this time (epoch ms)")
    a = p.parse_args()
    d = os.path.abspath(a.dir)

    out = f"{d}/squall.parquet"
    t = time.monotonic()
    subprocess.run(
        [a.squall, "training-data", "--topology", f"{d}/topology.toml", "--archive", f"{d}/archive",
         "--labels", f"{d}/labels.parquet", "--out", out, "--workers", str(a.workers)],
        check=True, stdout=sys.stderr,
    )
    squall_s = time.monotonic() - t
    squall_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    at_s = None
    if a.at is not None:
        t = time.monotonic()
        subprocess.run(
            [a.squall, "training-data", "--topology", f"{d}/topology.toml", "--archive", f"{d}/archive",
             "--at", str(a.at), "--out", f"{d}/snapshot.parquet", "--workers", str(a.workers)],
            check=True, stdout=sys.stderr,
        )
        at_s = time.monotonic() - t

    con = duckdb.connect(config={"threads": a.threads})
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.monotonic()
    con.execute(f"COPY ({query(d, exact=True)}) TO '{d}/duckdb.parquet' (FORMAT parquet)")
    duck_s = time.monotonic() - t
    duck_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.monotonic()
    con.execute(f"COPY ({query(d, exact=False)}) TO '{d}/duckdb-naive.parquet' (FORMAT parquet)")
    naive_s = time.monotonic() - t

    squall = pq.read_table(out)
    exact = pq.read_table(f"{d}/duckdb.parquet")
    naive = pq.read_table(f"{d}/duckdb-naive.parquet")
    assert squall.num_rows == exact.num_rows == naive.num_rows, (squall.num_rows, exact.num_rows, naive.num_rows)
    report = {
        "rows": squall.num_rows,
        "squall_seconds": round(squall_s, 2),
        "squall_peak_rss_mb": round(squall_rss_mb),
        "squall_at_seconds": None if at_s is None else round(at_s, 2),
        "duckdb_seconds": round(duck_s, 2),
        "duckdb_peak_rss_mb": round(duck_rss_mb),
        "duckdb_rss_before_query_mb": round(before_mb),
        "duckdb_naive_seconds": round(naive_s, 2),
        "speedup": round(duck_s / squall_s, 2),
        "duckdb_version": duckdb.__version__,
        "exact_differences": differences(squall, exact),
        "naive_differences": differences(squall, naive),
    }
    print(json.dumps(report))
    if any(v["rows"] for v in report["exact_differences"].values()):
        sys.exit("the exact DuckDB query disagrees with squall")


if __name__ == "__main__":
    main()
