#!/usr/bin/env python3
"""One-command benchmark: maildir-migrate against rsync, cp, doveadm backup and
the time merely reading the source takes.

    python3 bench/run.py [--users N] [--messages-per-user N] [--threads N]
                         [--data DIR] [--only NAME[,NAME...]] [--regen]
                         [--limit-mb MB] [--big-share F]

See bench/README.md. Standard library only (Python 3.11).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, HERE)
import gen  # noqa: E402

BIN = os.path.join(REPO, "target", "release", "maildir-migrate")
TIME = "/usr/bin/time"

CONTENDERS = [
    "read-floor",
    "copy-floor",
    "maildir-migrate",
    "maildir-migrate-limited",
    "rsync",
    "cp",
    "rsync-fsync",
    "doveadm-backup",
    "rsync-noop",
    "maildir-migrate-noop",
]
LABELS = {
    "read-floor": "read floor (16 parallel readers)",
    "copy-floor": "copy floor (16 parallel cp, one sync)",
    "maildir-migrate": "maildir-migrate run (move)",
    "maildir-migrate-limited": "maildir-migrate run, max_bytes_per_sec",  # + the limit
    "rsync": "rsync -a",
    "cp": "cp -a",
    "rsync-fsync": "rsync -a --fsync",
    "doveadm-backup": "doveadm backup (per user)",
    "rsync-noop": "rsync -a, no-op re-run",
    "maildir-migrate-noop": "maildir-migrate presync, no-op re-run",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def is_root():
    return os.geteuid() == 0


def ensure_time():
    if os.path.exists(TIME):
        return
    if not is_root():
        sys.exit(f"{TIME} is missing; install the 'time' package")
    log("installing the 'time' package")
    sh(["apt-get", "install", "-y", "-q", "time"], stdout=subprocess.DEVNULL)


def drop_caches(notes):
    os.sync()
    if is_root():
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError as e:
            notes.add(f"could not drop caches ({e}); runs are warm-cache")
            return False
    notes.add("not root: page cache not dropped, runs are warm-cache")
    return False


# ext4 without a journal (as on the machine the README's table comes from)
# passes over inodes deleted in the last 30 s + 5 commit intervals when it
# allocates new ones; right after removing a 100,000-file target that made
# file creation about twice as slow. Timed runs wait until deletions are
# this old, so no contender pays for the previous one's cleanup.
SETTLE_S = 60
last_delete = 0.0


def rmtree(path):
    global last_delete
    if os.path.lexists(path):
        shutil.rmtree(path)
        last_delete = time.monotonic()


def settle(notes):
    wait = last_delete + SETTLE_S - time.monotonic()
    if wait > 0:
        log(f"  waiting {wait:.0f} s after the last removal (see SETTLE_S)")
        notes.add(f"each timed run starts at least {SETTLE_S} s after the last tree removal "
                  "(ext4 skips recently deleted inodes)")
        time.sleep(wait)


def count_messages(root):
    """Message files in cur/ and new/ directories below ROOT."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.basename(dirpath)
        if base in ("cur", "new"):
            n += len(filenames)
            dirnames[:] = []
    return n


def parse_time_v(path):
    out = {}
    with open(path) as f:
        text = f.read()
    m = re.search(r"User time \(seconds\): ([\d.]+)", text)
    u = float(m.group(1)) if m else 0.0
    m = re.search(r"System time \(seconds\): ([\d.]+)", text)
    s = float(m.group(1)) if m else 0.0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    out["cpu_s"] = u + s
    out["user_s"] = u
    out["sys_s"] = s
    out["max_rss_mib"] = int(m.group(1)) / 1024 if m else None
    m = re.search(r"Exit status: (\d+)", text)
    out["exit_status"] = int(m.group(1)) if m else None
    return out


def timed(name, argv, corpus, notes, env=None):
    """Run ARGV under /usr/bin/time -v after dropping caches."""
    logs = os.path.join(corpus, "logs")
    os.makedirs(logs, exist_ok=True)
    tfile = os.path.join(logs, f"{name}.time")
    lfile = os.path.join(logs, f"{name}.log")
    settle(notes)
    cold = drop_caches(notes)
    with open(lfile, "wb") as lf:
        t0 = time.monotonic()
        p = subprocess.run([TIME, "-v", "-o", tfile] + argv, stdout=lf, stderr=subprocess.STDOUT,
                           cwd=corpus, env=env)
        wall = time.monotonic() - t0
    r = parse_time_v(tfile)
    r["wall_s"] = wall
    r["cold_cache"] = cold
    r["returncode"] = p.returncode
    r["log"] = lfile
    if p.returncode != 0:
        raise RuntimeError(f"{name}: exit {p.returncode}, see {lfile}")
    return r


# --- contenders --------------------------------------------------------------


def restore_userdb(corpus):
    shutil.copy2(os.path.join(corpus, "users.old.pristine"), os.path.join(corpus, "users.old"))
    for f in ("users.new", ".users.new.lock", ".users.old.lock"):
        p = os.path.join(corpus, f)
        if os.path.lexists(p):
            os.unlink(p)


def fresh_dir(corpus, name):
    """A target directory never used before. Removing a used one and
    writing it again would put the new files next to just-deleted inodes
    (see SETTLE_S); all targets are removed when the benchmark ends."""
    d = os.path.join(corpus, "targets", f"{name}-{time.time_ns()}")
    os.makedirs(d)
    return d


def fresh_newmail(corpus):
    """Points newmail (config.toml's target mail_root) at a fresh directory."""
    link = os.path.join(corpus, "newmail")
    if os.path.islink(link):
        os.unlink(link)
    else:
        rmtree(link)
    d = fresh_dir(corpus, "maildir-migrate")
    os.symlink(d, link)
    return d


# Reading every source file once, cold, is a floor for any copy of it: cat
# reads a whole file through a 128 KiB buffer with the kernel's readahead,
# writes nothing, and 16 readers keep the disk's queue full (see README).
READERS = 16


def run_read_floor(c, notes):
    reader = f"find oldmail -type f -print0 | xargs -0 -P{READERS} -n 256 cat > /dev/null"
    return timed("read-floor", ["sh", "-c", reader], c, notes) | {"target": None}


def run_copy_floor(c, notes):
    """What any durable copy must at least do on this disk: every file read
    and written by 16 parallel cp (no per-file fsync, no owner, no
    verification), then one sync. The directories are made first, untimed
    (parallel `cp --parents` races on them)."""
    d = fresh_dir(c, "copy-floor")
    sh(["sh", "-c", f"cd oldmail && find . -type d -print0 | (cd '{d}' && xargs -0 mkdir -p)"], cwd=c)
    copier = (f"cd oldmail && find . -type f -print0 | xargs -0 -P{READERS} -n 256 "
              f"cp --parents -t '{d}/' && sync")
    r = timed("copy-floor", ["sh", "-c", copier], c, notes)
    r["target"] = d
    return r


def run_mm(c, notes, name="maildir-migrate", config="config.toml"):
    restore_userdb(c)
    d = fresh_newmail(c)
    r = timed(name, [BIN, "--config", f"{c}/{config}", "run", "--no-progress",
                     f"{c}/job.json"], c, notes)
    r["target"] = d
    return r


# --limit-mb: the limited row's [migration] max_bytes_per_sec, in MB/s.
LIMIT_MB = None


def run_mm_limited(c, notes):
    """The same run under [migration] max_bytes_per_sec = --limit-mb."""
    with open(os.path.join(c, "config.toml")) as f:
        text = f.read()  # [migration] is its last table
    with open(os.path.join(c, "config-limited.toml"), "w") as f:
        f.write(text + f"max_bytes_per_sec = {round(LIMIT_MB * 1e6)}\n")
    r = run_mm(c, notes, "maildir-migrate-limited", "config-limited.toml")
    r["limit_mb_per_s"] = LIMIT_MB
    return r


def run_mm_noop(c, notes):
    restore_userdb(c)
    d = fresh_newmail(c)
    argv = [BIN, "--config", f"{c}/config.toml", "run", "--no-progress", f"{c}/presync.json"]
    log("  (untimed) first pre-sync")
    with open(os.path.join(c, "logs", "maildir-migrate-noop.first.log"), "wb") as lf:
        sh(argv, stdout=lf, stderr=subprocess.STDOUT, cwd=c)
    r = timed("maildir-migrate-noop", argv, c, notes)
    r["target"] = d
    return r


def copy_into_fresh_target(name, c, notes, argv):
    """Times `argv(target)` into an empty target directory."""
    d = fresh_dir(c, name)
    r = timed(name, argv(d), c, notes)
    r["target"] = d
    return r


def run_rsync(c, notes):
    r = copy_into_fresh_target("rsync", c, notes, lambda d: ["rsync", "-a", f"{c}/oldmail/", f"{d}/"])
    with open(os.path.join(c, "targets", ".rsync.complete"), "w") as f:
        f.write(r["target"])
    return r


def run_rsync_noop(c, notes):
    marker = os.path.join(c, "targets", ".rsync.complete")
    d = open(marker).read() if os.path.exists(marker) else ""
    if not os.path.isdir(d):
        log("  (untimed) first rsync -a")
        d = fresh_dir(c, "rsync")
        sh(["rsync", "-a", f"{c}/oldmail/", f"{d}/"])
    r = timed("rsync-noop", ["rsync", "-a", f"{c}/oldmail/", f"{d}/"], c, notes)
    r["target"] = d
    return r


def run_cp(c, notes):
    return copy_into_fresh_target("cp", c, notes, lambda d: ["cp", "-a", f"{c}/oldmail", d])


def run_rsync_fsync(c, notes):
    return copy_into_fresh_target(
        "rsync-fsync", c, notes, lambda d: ["rsync", "-a", "--fsync", f"{c}/oldmail/", f"{d}/"]
    )


DOVEADM_CONF = """\
# private doveadm configuration for the benchmark (no Dovecot server needed)
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {corpus}/users.old
}}
userdb {{
  driver = passwd-file
  args = {corpus}/users.old
}}
ssl = no
log_path = {corpus}/logs/doveadm.log
"""


def run_doveadm(c, notes):
    """doveadm backup, one user after the other.

    `doveadm -u USER` needs a running auth service (auth-userdb socket), so
    instead each user is run as a mail process without a userdb lookup:
    USER and HOME in the environment, mail_uid/mail_gid from the config.
    dsync writes index files, moves new/ to cur/ and rewrites dovecot-uidlist
    in the *source*, so it reads a hard-linked copy of the source tree (with
    real copies of the uidlists), made before the timed run.
    """
    if not shutil.which("doveadm"):
        raise NotRun("doveadm not installed")
    m = json.load(open(os.path.join(c, "manifest.json")))
    conf = os.path.join(c, "doveadm.conf")
    os.makedirs(os.path.join(c, "logs"), exist_ok=True)
    with open(conf, "w") as f:
        f.write(DOVEADM_CONF.format(uid=gen.UID, gid=gen.GID, corpus=c))
    src = os.path.join(c, "dsync-src")
    rmtree(src)
    sh(["cp", "-al", f"{c}/oldmail", src])
    for dirpath, _, filenames in os.walk(src):
        if "dovecot-uidlist" in filenames:
            p = os.path.join(dirpath, "dovecot-uidlist")
            data = open(p, "rb").read()
            os.unlink(p)
            with open(p, "wb") as f:
                f.write(data)
            os.chown(p, gen.UID, gen.GID)
    d = fresh_dir(c, "doveadm-backup")
    os.chown(d, gen.UID, gen.GID)
    script = os.path.join(c, "doveadm-backup.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nset -e\n")
        for u in m["users"]:
            home = f"{src}/{gen.DOMAIN}/{u}"
            f.write(
                f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME='{home}' USER='{u}@{gen.DOMAIN}' "
                f"doveadm -c '{conf}' backup maildir:'{d}/{u}/Maildir'\n"
            )
    try:
        r = timed("doveadm-backup", ["sh", script], c, notes)
    finally:
        rmtree(src)
    r["target"] = d
    return r


class NotRun(Exception):
    pass


RUNNERS = {
    "read-floor": run_read_floor,
    "copy-floor": run_copy_floor,
    "maildir-migrate": run_mm,
    "maildir-migrate-limited": run_mm_limited,
    "rsync": run_rsync,
    "cp": run_cp,
    "rsync-fsync": run_rsync_fsync,
    "doveadm-backup": run_doveadm,
    "rsync-noop": run_rsync_noop,
    "maildir-migrate-noop": run_mm_noop,
}

# --- main --------------------------------------------------------------------


def fmt(v, spec):
    return format("-", ">" + spec.split(".")[0]) if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description="maildir-migrate benchmark")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--messages-per-user", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None,
                    help="maildir-migrate's [migration] threads (default: its own default)")
    ap.add_argument("--data", default="/work/bench-data")
    ap.add_argument("--only", action="append", default=[],
                    help="contender(s) to run, comma-separated or repeated: " + ", ".join(CONTENDERS))
    ap.add_argument("--regen", action="store_true", help="regenerate the corpus even if it matches")
    ap.add_argument("--big-share", type=float, default=gen.BIG_SHARE,
                    help="share of 1-5 MB messages in the corpus (default 0.001; 0: small only)")
    ap.add_argument("--limit-mb", type=float, default=None,
                    help="add the row maildir-migrate-limited: the same run with "
                         "[migration] max_bytes_per_sec = this many MB/s")
    a = ap.parse_args()
    global LIMIT_MB
    LIMIT_MB = a.limit_mb
    if LIMIT_MB is not None:
        if LIMIT_MB <= 0:
            sys.exit("--limit-mb must be more than 0")
        LABELS["maildir-migrate-limited"] += f" = {LIMIT_MB:g} MB/s"

    only = [x for o in a.only for x in o.split(",") if x]
    for x in only:
        if x not in RUNNERS:
            sys.exit(f"unknown contender {x!r}; choose from {', '.join(CONTENDERS)}")
    if "maildir-migrate-limited" in only and LIMIT_MB is None:
        sys.exit("maildir-migrate-limited needs --limit-mb")
    selected = [x for x in CONTENDERS if (not only or x in only)
                and (x != "maildir-migrate-limited" or LIMIT_MB is not None)]

    ensure_time()
    log("building the release binary")
    sh(["cargo", "build", "--release", "-q"], cwd=REPO)

    c = os.path.abspath(a.data)
    mpath = os.path.join(c, "manifest.json")
    manifest = None
    if not a.regen and os.path.exists(mpath) and os.path.exists(os.path.join(c, "users.old.pristine")):
        m = json.load(open(mpath))
        if (m.get("seed") == gen.SEED and len(m["users"]) == a.users
                and m["messages_per_user"] == a.messages_per_user
                and m.get("big_share", gen.BIG_SHARE) == a.big_share):
            manifest = m
            log(f"reusing the corpus in {c}")
    if manifest is None:
        log(f"generating {a.users} x {a.messages_per_user} messages in {c}")
        t0 = time.monotonic()
        manifest = gen.generate(c, a.users, a.messages_per_user, a.threads, quiet=True,
                                big_share=a.big_share)
        shutil.copy2(os.path.join(c, "users.old"), os.path.join(c, "users.old.pristine"))
        log(f"  generated in {time.monotonic() - t0:.1f} s")
    gen.write_config(c, a.threads)
    manifest["threads"] = a.threads
    msgs, nbytes = manifest["messages"], manifest["bytes"]
    log(f"corpus: {msgs} messages, {nbytes / 1e6:.1f} MB, threads = {a.threads or 'default'}")

    notes = set()
    results = {}
    # Targets of an interrupted run; the first timed run waits for this.
    rmtree(os.path.join(c, "targets"))
    for name in selected:
        log(f"running {name}: {LABELS[name]}")
        try:
            r = RUNNERS[name](c, notes)
        except NotRun as e:
            results[name] = {"status": "not run", "reason": str(e)}
            log(f"  not run: {e}")
            continue
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            results[name] = {"status": "failed", "reason": str(e)}
            log(f"  FAILED: {e}")
            continue
        # The read floor writes nothing: its row has no target to count.
        found = msgs if r["target"] is None else count_messages(r["target"])
        r["messages_in_target"] = found
        r["status"] = "ok" if found == msgs else "ok (message count differs)"
        r["messages_per_s"] = msgs / r["wall_s"]
        r["mb_per_s"] = nbytes / 1e6 / r["wall_s"]
        if "limit_mb_per_s" in r:
            r["vs_limit_pct"] = (r["mb_per_s"] / r["limit_mb_per_s"] - 1) * 100
        results[name] = r
        log(f"  {r['wall_s']:.2f} s wall, {found}/{msgs} messages in the target")
    restore_userdb(c)
    link = os.path.join(c, "newmail")
    if os.path.islink(link):
        os.unlink(link)
    rmtree(os.path.join(c, "targets"))

    def ratio(name, base):
        r, b = results.get(name, {}), results.get(base, {})
        if "wall_s" in r and "wall_s" in b and b["wall_s"] > 0:
            return r["wall_s"] / b["wall_s"]
        return None

    for name, r in results.items():
        if "wall_s" in r:
            r["ratio_vs_rsync"] = ratio(name, "rsync-noop" if name.endswith("-noop") else "rsync")
            r["ratio_vs_floor"] = ratio(name, "read-floor")

    hdr = (f"{'contender':40} {'wall s':>8} {'msg/s':>9} {'MB/s':>8} {'RSS MiB':>8} {'CPU s':>7} "
           f"{'x rsync':>8} {'x floor':>8}")
    lines = [
        f"corpus: {len(manifest['users'])} users x {manifest['messages_per_user']} messages = "
        f"{msgs} messages, {nbytes / 1e6:.1f} MB; threads = {a.threads or 'default'}; nproc = {os.cpu_count()}",
        hdr,
        "-" * len(hdr),
    ]
    for name in selected:
        r = results[name]
        if "wall_s" not in r:
            lines.append(f"{LABELS[name]:40} {r['status']}: {r['reason']}")
            continue
        lines.append(
            f"{LABELS[name]:40} {r['wall_s']:8.2f} {r['messages_per_s']:9.0f} {r['mb_per_s']:8.1f} "
            f"{fmt(r['max_rss_mib'], '8.1f')} {r['cpu_s']:7.2f} {fmt(r.get('ratio_vs_rsync'), '8.2f')} "
            f"{fmt(r.get('ratio_vs_floor'), '8.2f')}"
            + ("" if r["status"] == "ok" else f"  [{r['messages_in_target']} messages in target]")
            + (f"  [{r['vs_limit_pct']:+.1f} % vs the limit]" if "vs_limit_pct" in r else "")
        )
    lines.append("x rsync: wall time / wall time of rsync -a (no-op rows: / rsync -a no-op re-run)")
    lines.append("x floor: wall time / wall time of the read floor (every row)")
    for n in sorted(notes):
        lines.append("note: " + n)
    print("\n".join(lines))

    out = {
        "corpus": {k: manifest[k] for k in ("seed", "domain", "messages_per_user", "messages", "bytes")}
        | {"users": len(manifest["users"]), "dir": c},
        "threads": a.threads,
        "nproc": os.cpu_count(),
        "notes": sorted(notes),
        "results": results,
        "table": lines,
    }
    with open(os.path.join(c, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    log(f"results written to {c}/results.json")


if __name__ == "__main__":
    main()
