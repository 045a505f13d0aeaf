"""Build: the domain's hot modules are compiled to C with mypyc (the same Python source).

The per-operation loop (apply a command, build its journal rows) is pure Python with
type annotations; mypyc turns it into a C extension that runs it about 1.4x faster and
keeps integer fields unboxed (less memory per account and per hold). The SQL literals of
MariaDB's small batches (``storage/sqltext.py``) are compiled too (2.4x faster per row), and
so is the built-in HTTP/1.1 server's protocol (``api/http1.py``: 1.03-1.05x single operations).
BENCHMARKS.md has the measurements. ``BALANCE_PURE_PYTHON=1`` at install time skips the compilation: the same
modules then run interpreted (slower, same behaviour; the tests pass either way).

``balance._untrack`` is a few lines of C (``src/balance/_untrack.c``) built with them: it takes
the long-lived per-hold, per-operation and per-account objects out of the cyclic GC's lists
(``balance.untrack`` says why; the pure-Python build reaches the same C API through ctypes).
"""

import os

from setuptools import Extension, setup

COMPILED = [
    "src/balance/domain/limits.py",
    "src/balance/domain/authority.py",
    "src/balance/domain/model.py",
    "src/balance/domain/holds.py",
    "src/balance/domain/commands.py",
    "src/balance/domain/ids.py",
    "src/balance/domain/outcomes.py",
    "src/balance/domain/expiry.py",
    "src/balance/domain/round_order.py",
    "src/balance/domain/account_rules.py",
    "src/balance/domain/movements.py",
    "src/balance/domain/hold_rules.py",
    "src/balance/domain/cross_shard.py",
    "src/balance/domain/ledger.py",
    "src/balance/views.py",
    "src/balance/engine/replies.py",
    "src/balance/engine/recovery.py",
    "src/balance/engine/lookups.py",
    "src/balance/engine/expiry_sweep.py",
    "src/balance/engine/shard.py",
    "src/balance/service.py",
    "src/balance/api/answers.py",
    "src/balance/api/parsing.py",
    "src/balance/api/strict_json.py",
    "src/balance/api/commands.py",
    "src/balance/api/access.py",
    "src/balance/api/routes_accounts.py",
    "src/balance/api/routes_money.py",
    "src/balance/api/routes_holds.py",
    "src/balance/api/routes_history.py",
    "src/balance/api/routes_batch.py",
    "src/balance/api/app.py",
    "src/balance/storage/sqltext.py",
    "src/balance/api/admission.py",
    "src/balance/api/http1.py",
    "src/balance/events/catalogue.py",
    "src/balance/events/states.py",
    "src/balance/events/stream.py",
]

ext_modules = []
if os.environ.get("BALANCE_PURE_PYTHON", "") != "1":
    from mypyc.build import mypycify

    # Third-party modules (msgspec, prometheus_client) are not in the build environment: typed as Any.
    ext_modules = mypycify(["--ignore-missing-imports", *COMPILED], opt_level="3", group_name="balance_native")
    ext_modules.append(Extension("balance._untrack", ["src/balance/_untrack.c"]))

setup(ext_modules=ext_modules)
