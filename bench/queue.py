#!/usr/bin/env python3
"""The PostgreSQL job queue's own cost: many tiny jobs through 1, then 2
daemons of one fleet; wall time, jobs/s and the claim overhead per job.

    python3 bench/queue.py [--jobs 1000] [--daemons 1,2] [--mode recreate|move]
                           [--parallel N] [--data DIR] [--db NAME] [--keep]

See bench/README.md ("The job queue"). Needs PostgreSQL on 127.0.0.1:5432
(trust auth for user postgres) and its psql client; uses psycopg2 when it is
installed, psql otherwise. Standard library only besides that (Python 3.11).
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True  # keep bench/ free of __pycache__

BIN = os.path.join(REPO, "target", "release", "maildir-migrate")
SCHEMA = "maildir_migrate"
FINISHED = ("done", "failed", "cancelled")

try:
    import psycopg2  # type: ignore
except ImportError:  # psql is enough
    psycopg2 = None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def sql(db, query):
    """Rows of `query` on database `db` as lists of strings (autocommit)."""
    if psycopg2 is not None:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                if cur.description is None:
                    return []
                return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]
        finally:
            conn.close()
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-At", "-F", "\t",
         "-v", "ON_ERROR_STOP=1", "-d", db, "-c", query],
        check=True, capture_output=True, text=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def fresh_db(name):
    sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    sql("postgres", f"CREATE DATABASE {name}")


def domain(i):
    return f"d{i:05}.bench"


def write_fixture(data, jobs, mode):
    """A host with one mailbox per domain (`u@dNNNNN.bench`), one tiny message
    each for a move, nothing for a recreate; empty target. Rewritten before
    every run (a finished job has changed both userdbs)."""
    for sub in ("oldmail", "newmail"):
        shutil.rmtree(os.path.join(data, sub), ignore_errors=True)
        os.makedirs(os.path.join(data, sub))
    lines = ["# bench/queue.py\n"]
    for i in range(jobs):
        home = os.path.join(data, "oldmail", domain(i), "u")
        md = os.path.join(home, "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub))
        if mode == "move":
            with open(os.path.join(md, "cur", f"1600000000.M{i}P1.bench,S=60:2,S"), "w") as f:
                f.write(f"Subject: bench {i}\nFrom: a@example.net\n\nhello {i}\n")
        lines.append(f"u@{domain(i)}:{{PLAIN}}bench-{i}:1000:1000::{home}::\n")
    with open(os.path.join(data, "users.old"), "w") as f:
        f.writelines(lines)
    with open(os.path.join(data, "users.new"), "w") as f:
        f.write("# new users\n")
    for name in os.listdir(data):
        if name.startswith("spool-"):
            shutil.rmtree(os.path.join(data, name))


def write_config(data, db, host, parallel):
    path = os.path.join(data, f"config-{host}.toml")
    with open(path, "w") as f:
        f.write(
            f'spool_dir = "{data}/spool-{host}"\n'
            "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n"
            "[target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n"
            f"[daemon]\nrescan_interval = 1\nmax_parallel_jobs = {parallel}\n"
            "[cutover]\nsweep_delay = 0\n"
            f"[queue]\nurl = \"postgresql://postgres@127.0.0.1:5432/{db}\"\nhost = \"{host}\"\n"
            "lease_secs = 30\n")
    return path


def start_daemons(configs, data):
    procs = []
    for cfg in configs:
        logf = open(cfg[:-len(".toml")] + ".log", "w")
        env = dict(os.environ, MAILDIR_MIGRATE_LOG="warn")
        env.pop("NOTIFY_SOCKET", None)
        procs.append(subprocess.Popen([BIN, "--config", cfg, "daemon"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=logf, env=env, cwd=data))
    return procs


def stop_daemons(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def claim_gaps(db):
    """Per daemon, in the order it started jobs: the time between the end of
    its previous job and the 'started' of the next one (seconds), and each
    job's run time (started .. done/failed)."""
    rows = sql(db, f"""
        SELECT s.host, extract(epoch FROM s.at), extract(epoch FROM f.at)
          FROM {SCHEMA}.events s
          JOIN LATERAL (SELECT min(at) AS at FROM {SCHEMA}.events
                         WHERE job_id = s.job_id AND kind IN ('done', 'failed', 'cancelled')) f ON true
         WHERE s.kind = 'started'
         ORDER BY s.host, s.at""")
    gaps, runs, prev = [], [], {}
    for host, started, finished in rows:
        started = float(started)
        finished = float(finished) if finished else None
        if finished is not None:
            runs.append(finished - started)
        if host in prev and prev[host] is not None and started >= prev[host]:
            gaps.append(started - prev[host])
        prev[host] = finished
    return gaps, runs


def run_once(args, ndaemons):
    write_fixture(args.data, args.jobs, args.mode)
    fresh_db(args.db)
    configs = [write_config(args.data, args.db, f"bench-{k + 1}", args.parallel)
               for k in range(ndaemons)]
    sh([BIN, "--config", configs[0], "queue", "init"], stdout=subprocess.DEVNULL)
    procs = start_daemons(configs, args.data)
    try:
        time.sleep(2)  # connected and listening; not part of the measurement
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"a daemon exited ({p.returncode}); see {args.data}/config-*.log")
        t0 = time.monotonic()
        sql(args.db, f"""
            INSERT INTO {SCHEMA}.jobs (domain, mode, cutover)
            SELECT 'd' || lpad(i::text, 5, '0') || '.bench', '{args.mode}', true
              FROM generate_series(0, {args.jobs - 1}) AS i""")
        states = {}
        while True:
            states = dict(sql(args.db, f"SELECT state, count(*) FROM {SCHEMA}.jobs GROUP BY state"))
            if sum(int(states.get(s, 0)) for s in FINISHED) >= args.jobs:
                break
            if time.monotonic() - t0 > args.timeout:
                sys.exit(f"not finished after {args.timeout} s: {states}")
            for p in procs:
                if p.poll() is not None:
                    sys.exit(f"a daemon exited ({p.returncode}); see {args.data}/config-*.log")
            time.sleep(0.1)
        wall = time.monotonic() - t0
    finally:
        stop_daemons(procs)
    db_wall = float(sql(args.db, f"""
        SELECT extract(epoch FROM max(finished_at) - min(submitted_at)) FROM {SCHEMA}.jobs""")[0][0])
    gaps, runs = claim_gaps(args.db)
    per_host = sql(args.db, f"SELECT owner, count(*) FROM {SCHEMA}.jobs GROUP BY owner ORDER BY owner")
    if not args.keep:
        sql("postgres", f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
    return {
        "daemons": ndaemons,
        "done": int(states.get("done", 0)),
        "failed": int(states.get("failed", 0)),
        "wall": wall,
        "db_wall": db_wall,
        "gap_med": statistics.median(gaps) if gaps else float("nan"),
        "gap_p90": pct(gaps, 0.9),
        "run_med": statistics.median(runs) if runs else float("nan"),
        "per_host": ", ".join(f"{h}: {n}" for h, n in per_host),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--daemons", default="1,2", help="daemon counts to run, in order")
    ap.add_argument("--mode", choices=["recreate", "move"], default="recreate")
    ap.add_argument("--parallel", type=int, default=1, help="[daemon] max_parallel_jobs of each daemon")
    ap.add_argument("--data", default="/work/bench-queue", help="fixture directory (rewritten)")
    ap.add_argument("--db", default="mm_bench_queue", help="database (dropped and created)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true", help="keep the last run's database")
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    args = ap.parse_args()
    args.data = os.path.abspath(args.data)
    os.makedirs(args.data, exist_ok=True)
    if not args.no_build:
        log("cargo build --release")
        sh(["cargo", "build", "--release", "-q"], cwd=REPO)
    log(f"client: {'psycopg2' if psycopg2 else 'psql'}; {args.jobs} {args.mode} jobs of one mailbox each")
    results = []
    for n in (int(x) for x in args.daemons.split(",")):
        log(f"{n} daemon(s) ...")
        r = run_once(args, n)
        log(f"  {r['done']} done, {r['failed']} failed in {r['wall']:.1f} s ({r['per_host']})")
        results.append(r)
    print()
    print(f"{args.jobs} `{args.mode}` jobs (one mailbox each), max_parallel_jobs = {args.parallel}")
    print()
    print("| daemons | done | failed | wall s | jobs/s | claim gap median ms | claim gap p90 ms | job run median ms | jobs per daemon |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['daemons']} | {r['done']} | {r['failed']} | {r['wall']:.1f} | "
              f"{args.jobs / r['wall']:.1f} | {r['gap_med'] * 1000:.1f} | {r['gap_p90'] * 1000:.1f} | "
              f"{r['run_med'] * 1000:.1f} | {r['per_host']} |")
    print()
    print("wall: first INSERT to the last job finished, as seen by polling (0.1 s);"
          " claim gap: on one daemon, its previous job's end event to the next 'started' event"
          " (the database's clock); with max_parallel_jobs > 1 the gap is per daemon, not per slot.")


if __name__ == "__main__":
    main()
