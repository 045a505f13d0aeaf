"""MariaDB: what a round's slice of holds costs per commit, by key (session 19)."""
import asyncio, random, secrets, statistics, time, sys
import asyncmy
from balance.storage import schema
NOW = 1_800_000_000_000
cols = schema.HOLD_COLUMNS
def row(acct, hid, exp):
    return (acct, hid, 100, 0, "EUR", "pending", None, exp, NOW, NOW, "", b"{}", None)
async def run(old: bool, deletes: bool):
    conn = await asyncmy.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    cur = conn.cursor()
    await cur.execute("CREATE DATABASE IF NOT EXISTS rr19"); await cur.execute("USE rr19")
    await cur.execute("DROP TABLE IF EXISTS holds")
    ddl = schema.TABLES["holds"]
    if old: ddl = ddl.replace("PRIMARY KEY (expires_at, account_id, id)", "PRIMARY KEY (account_id, id)")
    await cur.execute(f"CREATE TABLE holds ({ddl}) ENGINE=InnoDB")
    if old: await cur.execute("CREATE INDEX holds_by_expiry ON holds (status, expires_at, account_id, id)")
    random.seed(1)
    accounts = [f"US-0-{secrets.token_hex(8)}" for _ in range(10000)]
    ph = "(" + ",".join(["%s"] * len(cols)) + ")"
    pre = [row(random.choice(accounts), f"pre-{n:09d}", NOW + 900_000 + n) for n in range(200_000)]
    for s in range(0, len(pre), 2000):
        await cur.execute("BEGIN")
        await cur.executemany(f"INSERT INTO holds VALUES {ph}", pre[s:s+2000])
        await cur.execute("COMMIT")
    keys = (lambda r: (r[0], r[1])) if old else (lambda r: (r[7], r[0], r[1]))
    live = []
    times = []
    upd = ",".join(f"`{c}`=VALUES(`{c}`)" for c in cols if c not in (("account_id","id") if old else schema.HOLD_KEY_COLUMNS))
    for n in range(1500):
        exp = NOW + 1_000_000 + n * 2000
        rows = sorted((row(random.choice(accounts), secrets.token_hex(8), exp + random.randrange(2000)) for _ in range(16)), key=keys)
        t = time.perf_counter()
        await cur.execute("BEGIN")
        await cur.execute(f"INSERT INTO holds VALUES " + ",".join([ph]*16) + f" ON DUPLICATE KEY UPDATE {upd}", [v for r in rows for v in r])
        if deletes and len(live) > 64:
            gone = sorted(live[:16], key=keys); del live[:16]
            if old:
                await cur.execute("DELETE FROM holds WHERE (account_id, id) IN (" + ",".join(["(%s,%s)"]*16) + ")", [v for r in gone for v in (r[0], r[1])])
            else:
                await cur.execute("DELETE FROM holds WHERE (expires_at, account_id, id) IN (" + ",".join(["(%s,%s,%s)"]*16) + ")", [v for r in gone for v in (r[7], r[0], r[1])])
        await cur.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1000)
        live += rows
    await cur.execute("DROP DATABASE rr19")
    conn.close()
    return f"mean {statistics.mean(times):.3f} median {statistics.median(times):.3f} p99 {sorted(times)[int(len(times)*.99)]:.3f} ms"
async def main():
    for i in range(2):
        for old in (True, False):
            for deletes in (False, True):
                print(f"{'(account,id)+expiry idx' if old else '(expires_at,account,id)'} {'upsert+delete' if deletes else 'upsert     '}", await run(old, deletes), flush=True)
asyncio.run(main())
