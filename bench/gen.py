#!/usr/bin/env python3
"""Deterministic benchmark corpus for maildir-migrate (standard library only).

Writes into DIR:
  users.old            Dovecot passwd-file for bench.example
  oldmail/bench.example/<user>/Maildir   Maildir++ stores with folders,
                       dovecot-uidlist (v3) per folder, subscriptions
  config.toml          maildir-migrate configuration (target: users.new, newmail)
  job.json             {"domain": "bench.example", "mode": "move"}
  presync.json         the same with "cutover": false
  manifest.json        what was generated (users, messages, bytes)

Usage: python3 bench/gen.py DIR [--users N] [--messages-per-user N] [--threads N]
"""

import argparse
import json
import math
import os
import random
import shutil
import sys

DOMAIN = "bench.example"
SEED = 20240611
UID = GID = 5000
BASE_TIME = 1_600_000_000  # 2020-09-13

# (directory name under Maildir, share of the messages); "" is INBOX.
FOLDERS = [
    ("", 0.50),
    (".Sent", 0.18),
    (".Archive.2023", 0.20),
    (".Drafts", 0.02),
    (".Odeslan&AOk-", 0.10),  # "Odeslané" in modified UTF-7
]
SUBSCRIBED = ["Sent", "Archive.2023", "Drafts", "Odeslan&AOk-"]
FLAG_CHOICES = ["S", "S", "S", "S", "RS", "FS", "", "S", "DS", "FRS"]
NEW_SHARE = 0.02  # share of INBOX messages left in new/
BIG_SHARE = 0.001  # default share of 1-5 MB messages (--big-share)


def message_size(rng, big_share):
    if rng.random() < big_share:
        return rng.randint(1 << 20, 5 << 20)
    # log-normal with median ~5 KB (mean ~6 KB), clamped
    return max(600, min(200_000, int(rng.lognormvariate(math.log(5000), 0.6))))


def _filler(rng, n=1 << 16):
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789    "
    lines = []
    total = 0
    while total < n:
        line = bytes(rng.choice(alphabet) for _ in range(76)) + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def message_bytes(rng, filler, size, user, n, when):
    hdr = (
        f"Return-Path: <sender{n % 97}@example.org>\n"
        f"Delivered-To: {user}@{DOMAIN}\n"
        f"From: Sender {n % 97} <sender{n % 97}@example.org>\n"
        f"To: {user}@{DOMAIN}\n"
        f"Subject: Benchmark message {n}\n"
        f"Message-ID: <{when}.{n}.{user}@bench.example>\n"
        f"Date: {when}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
    ).encode()
    body_len = max(0, size - len(hdr))
    off = rng.randrange(len(filler))
    reps = (body_len + off) // len(filler) + 1
    body = (filler * (reps + 1))[off : off + body_len]
    return hdr + body


def write_config(out, threads):
    """(Re)write config.toml, job.json and presync.json in OUT."""
    with open(os.path.join(out, "config.toml"), "w") as f:
        f.write(
            "# maildir-migrate benchmark configuration (paths relative to this file)\n"
            "[source]\n"
            'userdb = "users.old"\nuserdb_format = "passwd-file"\nmail_root = "oldmail"\n\n'
            "[target]\n"
            'userdb = "users.new"\nuserdb_format = "passwd-file"\nmail_root = "newmail"\n'
            'home = "%d/%n"\n\n'
            "[migration]\n"
            + ("" if threads is None else f"threads = {threads}\n")
            + "fsync = true\n"
        )
    with open(os.path.join(out, "job.json"), "w") as f:
        json.dump({"domain": DOMAIN, "mode": "move"}, f)
    with open(os.path.join(out, "presync.json"), "w") as f:
        json.dump({"domain": DOMAIN, "mode": "move", "cutover": False}, f)


def generate(out, users=20, messages_per_user=5000, threads=None, quiet=False,
             big_share=BIG_SHARE):
    out = os.path.abspath(out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    rng = random.Random(SEED)
    filler = _filler(rng)
    is_root = os.geteuid() == 0
    mail_root = os.path.join(out, "oldmail")
    passwd = []
    total_msgs = 0
    total_bytes = 0
    usernames = [f"user{i:03d}" for i in range(1, users + 1)]
    for ui, user in enumerate(usernames):
        home = os.path.join(mail_root, DOMAIN, user)
        md = os.path.join(home, "Maildir")
        passwd.append(
            f"{user}@{DOMAIN}:{{PLAIN}}pw{ui}:{UID}:{GID}::{home}::userdb_mail=maildir:~/Maildir\n"
        )
        # split messages over folders
        counts = [int(messages_per_user * share) for _, share in FOLDERS]
        counts[0] += messages_per_user - sum(counts)
        seq = 0
        for (fname, _), count in zip(FOLDERS, counts):
            fdir = os.path.join(md, fname) if fname else md
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(fdir, sub), exist_ok=True)
            if fname:
                open(os.path.join(fdir, "maildirfolder"), "wb").close()
            uidv = BASE_TIME + ui * 100 + len(fname)
            n_new = int(count * NEW_SHARE) if not fname else 0
            uid_lines = []
            uid = 0
            t = BASE_TIME + ui * 7 * 86400 + rng.randrange(86400)
            for k in range(count):
                seq += 1
                t += rng.randint(60, 3 * 3600)
                size = message_size(rng, big_share)
                data = message_bytes(rng, filler, size, user, seq, t)
                size = len(data)
                pid = 1000 + rng.randrange(30000)
                base = f"{t}.M{seq}P{pid}.bench,S={size}"
                if k >= count - n_new:
                    path = os.path.join(fdir, "new", base)
                else:
                    flags = rng.choice(FLAG_CHOICES) if fname != ".Drafts" else "DS"
                    path = os.path.join(fdir, "cur", f"{base}:2,{flags}")
                    uid += 1 + (1 if rng.random() < 0.03 else 0)  # a few expunge gaps
                    uid_lines.append(f"{uid} :{base}\n")
                with open(path, "wb") as f:
                    f.write(data)
                os.utime(path, (t, t))
                total_msgs += 1
                total_bytes += size
            with open(os.path.join(fdir, "dovecot-uidlist"), "w") as f:
                f.write(f"3 V{uidv} N{uid + 1}\n")
                f.writelines(uid_lines)
        with open(os.path.join(md, "subscriptions"), "w") as f:
            f.write("".join(s + "\n" for s in SUBSCRIBED))
        if is_root:
            for dirpath, dirnames, filenames in os.walk(home):
                os.chown(dirpath, UID, GID)
                for fn in filenames:
                    os.chown(os.path.join(dirpath, fn), UID, GID)
        if not quiet:
            print(f"  generated {user} ({ui + 1}/{users})", file=sys.stderr)
    for d in (mail_root, os.path.join(mail_root, DOMAIN)):
        if is_root:
            os.chown(d, UID, GID)
    with open(os.path.join(out, "users.old"), "w") as f:
        f.write("# benchmark passwd-file: user:password:uid:gid:gecos:home:shell:extra\n")
        f.writelines(passwd)
    write_config(out, threads)
    manifest = {
        "seed": SEED,
        "domain": DOMAIN,
        "users": usernames,
        "messages_per_user": messages_per_user,
        "big_share": big_share,
        "messages": total_msgs,
        "bytes": total_bytes,
        "threads": threads,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--messages-per-user", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--big-share", type=float, default=BIG_SHARE,
                    help="share of 1-5 MB messages (default 0.001; 0: small messages only)")
    a = ap.parse_args()
    m = generate(a.dir, a.users, a.messages_per_user, a.threads, big_share=a.big_share)
    print(f"{m['messages']} messages, {m['bytes'] / 1e6:.1f} MB in {a.dir}")


if __name__ == "__main__":
    main()
