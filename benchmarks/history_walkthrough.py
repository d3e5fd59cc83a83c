"""docs/history.md's walkthrough, runnable: churn labels, features from two mirrored tables, a
model trained point in time vs one trained on today's tables, scored honestly.

    .venv/bin/python -m benchmarks.history_walkthrough [--customers N] [--epochs E] [--seed S]

A source with ``customers(id, plan, monthly_spend, support_tickets, last_login_days)`` and
``plans(plan, price)``; the sidecar mirrors both with ``--history``. A simulated business runs
for E epochs, one source transaction each: tickets pile up and logins lapse with a customer's
hidden risk, the basic plan's price goes up half way, and a customer who churns is closed -
``monthly_spend = 0, last_login_days = 99``: the future, written into the row. After each
epoch some active customers get a label row on the replica (``observed_at`` = then, ``churned``
= whether they churn in the next 3 epochs).

Both models are xgboost classifiers trained with ``pgml.train`` on the labels of the earlier
epochs and scored on the later epochs' labels with the features as they were at each label's
``observed_at`` (``pgml.point_in_time``) - what a model sees when it is used:

- *naive*: labels joined to today's ``customers`` and ``plans`` (leaks: churned customers show
  spend 0 and 99 days since login);
- *point in time*: ``pgml.point_in_time(labels, 'observed_at', ARRAY['public.customers',
  'public.plans'])``.

Prints pgml.train's own test F1 (weighted over the classes, on a random split of each model's
training set) and the honest F1 (the same weighting), the churn class's F1 and accuracy, and checks leakage: the point-in-time rows equal the simulation's state at
their event time, row for row; the naive rows differ for some. ``run()`` returns these numbers
for tests/sql/test_history_walkthrough.py.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.replication import wait
from devtools.localcluster import REPLICA_SETTINGS, SOURCE_SETTINGS, running_cluster

ROOT = Path(__file__).resolve().parents[1]
PRICES = {"basic": 10.0, "pro": 30.0, "team": 60.0}
FEATURES = ("monthly_spend", "support_tickets", "last_login_days", "price")
HORIZON = 3


def _sidecar(src, tgt) -> subprocess.Popen:
    args = [sys.executable, "-m", "replica", "run", "--source", src.dsn("shop"), "--target",
            tgt.dsn("ml"), "--http-port", "0", "--log-level", "WARNING", "--slot", "walk",
            "--tables", "public.customers,public.plans,public.marker", "--no-pgml-install",
            "--history", "public.customers,public.plans"]
    log = open(tempfile.mkstemp(prefix="walkthrough-", suffix=".log")[1], "ab")  # noqa: SIM115
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _caught_up(tgt, n: int) -> bool:
    try:
        with psycopg.connect(tgt.dsn("ml"), autocommit=True) as c:
            return c.execute("SELECT count(*) FROM marker WHERE id = %s", (n,)).fetchone()[0] > 0
    except psycopg.Error:
        return False


def _simulate(s, customers: int, epochs: int, rng: random.Random):
    """Run the business on the source; return the label rows and the truth: each customer's
    features after each epoch."""
    risk = {i: rng.random() for i in range(1, customers + 1)}
    plan = {i: rng.choice(list(PRICES)) for i in risk}
    state = {i: [round(PRICES[plan[i]] * rng.uniform(1, 3), 2), 0, 1] for i in risk}
    with s.transaction():
        s.cursor().executemany("INSERT INTO plans VALUES (%s, %s)", list(PRICES.items()))
        s.cursor().executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s)",
                      [(i, plan[i], *state[i]) for i in risk])
    yield "copied"
    price = dict(PRICES)
    churn_at: dict[int, int] = {}
    truth: dict[tuple[int, int], tuple] = {}
    observed = {}
    for e in range(1, epochs + 1):
        if e == epochs // 2:
            price["basic"] = 18.0
        for i in risk:
            if i in churn_at:
                continue
            pressure = risk[i] + (0.25 if plan[i] == "basic" and price["basic"] > 10 else 0)
            state[i][1] += sum(rng.random() < 0.1 + 0.4 * pressure for _ in range(3))
            state[i][2] = max(1, round(1 + 20 * pressure * rng.uniform(0.5, 1.5)))
            if rng.random() < 0.01 + 0.2 * pressure ** 2:
                churn_at[i] = e
                state[i] = [0.0, state[i][1], 99]
        with s.transaction():
            s.execute("UPDATE plans SET price = %s WHERE plan = 'basic'", (price["basic"],))
            s.cursor().executemany("UPDATE customers SET monthly_spend = %s, support_tickets = %s,"
                          " last_login_days = %s WHERE id = %s",
                          [(*state[i], i) for i in risk if churn_at.get(i, e) >= e])
        time.sleep(0.02)  # the label's instant is after this commit, before the next
        (observed[e],) = s.execute("SELECT clock_timestamp()").fetchone()
        time.sleep(0.02)
        for i in risk:
            truth[(i, e)] = (*state[i], price[plan[i]])
    labels = []
    for e in range(1, epochs - HORIZON + 1):
        for i in risk:
            if churn_at.get(i, epochs + 1) > e and rng.random() < 0.3:
                churned = int(churn_at.get(i, epochs + 1) <= e + HORIZON)
                labels.append((i, plan[i], observed[e], churned, e))
    yield labels, truth


def _scores(r, project: str, relation: str) -> dict:
    cols = ", ".join(f"{c}::float8" for c in FEATURES)
    rows = r.execute(f"SELECT churned, pgml.predict(%s, ARRAY[{cols}]) FROM {relation}",  # noqa: S608
                     (project,)).fetchall()
    f1 = {}
    for c in (0, 1):  # per class; weighted by support like pgml's metric
        tp = sum(1 for y, p in rows if y == c and p == c)
        wrong = sum(1 for y, p in rows if (y == c) != (p == c))
        f1[c] = 2 * tp / (2 * tp + wrong) if tp else 0.0
    n1 = sum(1 for y, _ in rows if y == 1)
    weighted = (f1[0] * (len(rows) - n1) + f1[1] * n1) / len(rows)
    (own,) = r.execute("SELECT (m.metrics->>'f1')::float8 FROM pgml.models m JOIN pgml.projects p"
                       " ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
                       (project,)).fetchone()
    return {"own_f1": own, "honest_f1": weighted, "honest_f1_churn": f1[1],
            "honest_accuracy": sum(1 for y, p in rows if y == p) / len(rows)}


def run(customers: int = 2000, epochs: int = 12, seed: int = 7, verbose: bool = True) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    rng = random.Random(seed)
    with running_cluster("walksrc", SOURCE_SETTINGS) as src, \
            running_cluster("walkml", REPLICA_SETTINGS) as tgt:
        src.create_database("shop")
        tgt.create_database("ml")
        from replica.target.pgml_install import install

        install(tgt.dsn("ml"))
        with psycopg.connect(src.dsn("shop"), autocommit=True) as s:
            s.execute("CREATE TABLE plans (plan text PRIMARY KEY, price float8)")
            s.execute("CREATE TABLE customers (id int PRIMARY KEY, plan text, monthly_spend"
                      " float8, support_tickets int, last_login_days int)")
            s.execute("CREATE TABLE marker (id int PRIMARY KEY)")
            s.execute("CREATE PUBLICATION pgml_replica FOR TABLE customers, plans, marker")
            sim = _simulate(s, customers, epochs, rng)
            next(sim)
            side = _sidecar(src, tgt)
            try:
                s.execute("INSERT INTO marker VALUES (0)")
                wait(lambda: _caught_up(tgt, 0), 300, "the initial copy", every=0.2)
                labels, truth = next(sim)
                s.execute("INSERT INTO marker VALUES (1)")
                wait(lambda: _caught_up(tgt, 1), 300, "the workload", every=0.2)
            finally:
                side.terminate()
                side.wait(60)
        split = (epochs - HORIZON) * 2 // 3  # train on epochs <= split, test on the later ones
        with psycopg.connect(tgt.dsn("ml"), autocommit=True) as r:
            r.execute("CREATE TABLE churn_labels (id int, plan text, observed_at timestamptz,"
                      " churned int, epoch int)")
            with r.cursor().copy("COPY churn_labels FROM STDIN") as cp:
                for row in labels:
                    cp.write_row(row)
            r.execute("CREATE TABLE labels_train AS SELECT * FROM churn_labels WHERE epoch <= %s",
                      (split,))
            r.execute("CREATE TABLE labels_test AS SELECT * FROM churn_labels WHERE epoch > %s",
                      (split,))
            for part in ("train", "test"):
                r.execute(f"SELECT pgml.point_in_time('labels_{part}', 'observed_at',"  # noqa: S608
                          f" ARRAY['public.customers', 'public.plans'], 'pit_{part}')")
                r.execute(f"CREATE VIEW honest_{part} AS SELECT churned, customers__monthly_spend"  # noqa: S608
                          " AS monthly_spend, customers__support_tickets AS support_tickets,"
                          " customers__last_login_days AS last_login_days, plans__price AS price,"
                          f" id, epoch FROM pit_{part}")
            r.execute("CREATE VIEW naive_train AS SELECT l.churned, c.monthly_spend,"
                      " c.support_tickets, c.last_login_days, p.price, l.id, l.epoch"
                      " FROM labels_train l JOIN customers c USING (id) JOIN plans p"
                      " ON p.plan = l.plan")
            # leakage: point-in-time rows equal the simulation's state at the label's epoch
            leaks = {}
            for name in ("honest_train", "honest_test", "naive_train"):
                got = r.execute(f"SELECT id, epoch, {', '.join(FEATURES)} FROM {name}").fetchall()  # noqa: S608
                leaks[name] = sum(1 for i, e, *f in got if tuple(f) != truth[(i, e)])
            for name in ("honest_train", "naive_train"):
                r.execute(f"CREATE VIEW {name}_x AS SELECT churned, {', '.join(FEATURES)}"  # noqa: S608
                          f" FROM {name}")
            r.execute("CREATE VIEW honest_test_x AS SELECT churned, "  # noqa: S608
                      f"{', '.join(FEATURES)} FROM honest_test")
            r.execute("SELECT * FROM pgml.train('churn_naive', 'classification', 'naive_train_x',"
                      " 'churned', 'xgboost')")
            r.execute("SELECT * FROM pgml.train('churn_pit', 'classification', 'honest_train_x',"
                      " 'churned', 'xgboost')")
            out = {"labels": len(labels), "train": sum(1 for x in labels if x[4] <= split),
                   "positives": sum(x[3] for x in labels), "leaks": leaks,
                   "naive": _scores(r, "churn_naive", "honest_test_x"),
                   "pit": _scores(r, "churn_pit", "honest_test_x")}
    say(f"{customers:,} customers, {epochs} epochs; {out['labels']:,} labels"
        f" ({out['positives']:,} churned), {out['train']:,} for training (epochs 1-{split}),"
        f" the rest for the honest test")
    say(f"leakage (rows whose features differ from the state at observed_at): {leaks}")
    for name, label in (("naive", "naive (today's tables)"), ("pit", "point in time")):
        m = out[name]
        say(f"  {label:24s} pgml.train's own test F1 {m['own_f1']:.3f}   honest: F1"
            f" {m['honest_f1']:.3f}, F1 of the churn class {m['honest_f1_churn']:.3f},"
            f" accuracy {m['honest_accuracy']:.3f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    run(a.customers, a.epochs, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
