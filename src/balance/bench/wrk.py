"""Single-operation HTTP load with wrk (C, LuaJIT): the load generator must not be the bottleneck.

The Lua script keeps, per wrk thread, a queue of holds the server has acknowledged; a capture
or release is only sent for an acknowledged hold, as a payment gateway would. Results (counts,
latency percentiles) come back as one JSON line printed by ``done``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LUA = r"""
-- tid is a global: thread:set() writes globals, and a local would shadow it.
tid = 0
local counter, threads = 0, {}
local accounts, pending = {}, {}
local mix = {hold = 1.0, capture = 0.0, release = 0.0, credit = 0.0, transfer = 0.0}
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
  table.insert(threads, thread)
end
function init(args)
  local path, key = args[1], args[2]
  auth = "Bearer " .. key
  for line in io.lines(path) do table.insert(accounts, line) end
  mix.capture = tonumber(args[3]); mix.release = tonumber(args[4]); mix.credit = tonumber(args[5])
  mix.transfer = tonumber(args[6]); prefix = args[7] .. "-" .. tid .. "-"
  math.randomseed(tid * 7919 + os.time())
  headers = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
end
local function post(path, body)
  return wrk.format("POST", path, headers, body)
end
function request()
  counter = counter + 1
  local id = prefix .. counter
  local r = math.random()
  if #pending > 0 and r < mix.capture + mix.release then
    local item = table.remove(pending, 1)
    local verb = (r < mix.capture) and "capture" or "release"
    return post("/v1/accounts/" .. item[1] .. "/holds/" .. item[2] .. "/" .. verb, "{}")
  end
  local account = accounts[math.random(#accounts)]
  r = math.random()
  if r < mix.credit then
    return post("/v1/accounts/" .. account .. "/credits", '{"id":"' .. id .. '","amount":100}')
  elseif r < mix.credit + mix.transfer then
    local other = accounts[math.random(#accounts)]
    if other == account then other = accounts[1 + (math.random(#accounts) % #accounts)] end
    if other == account then
      return post("/v1/accounts/" .. account .. "/credits", '{"id":"' .. id .. '","amount":100}')
    end
    return post("/v1/transfers", '{"id":"' .. id .. '","from_account_id":"' .. account ..
      '","to_account_id":"' .. other .. '","amount":1,"currency":"USD"}')
  end
  return post("/v1/accounts/" .. account .. "/holds", '{"id":"' .. id .. '","amount":1}')
end
function response(status, headers, body)
  if status == 201 and (mix.capture + mix.release) > 0 then
    local account, hold = string.match(body, '"hold":{"id":"([^"]+)","account_id":"([^"]+)"')
    if account then table.insert(pending, {hold, account}) end
  end
  if status >= 300 then errors_seen = (errors_seen or 0) + 1 end
end
function done(summary, latency, requests)
  local errs = 0
  for _, t in ipairs(threads) do errs = errs + (t:get("errors_seen") or 0) end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"socket_errors":%d,"non_2xx":%d,"app_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status, errs))
end
"""


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of the single-operation workload (the rest are holds)."""

    capture: float = 0.0
    release: float = 0.0
    credit: float = 0.0
    transfer: float = 0.0


HOLDS_ONLY = Mix()
HOLD_THEN_SETTLE = Mix(capture=0.4, release=0.1)  # half the requests settle an acknowledged hold
REALISTIC = Mix(capture=0.4, release=0.075, credit=0.0125, transfer=0.0125)


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    cpu_s: float  # CPU the load generator itself used


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str, key: str, accounts: list[str], *, mix: Mix, clients: int, duration_s: float, threads: int = 2,
    tag: str = "w",
) -> WrkResult:  # fmt: skip
    """Run wrk against ``url``; ids are prefixed with ``tag`` so runs never collide."""
    with tempfile.TemporaryDirectory() as tmp:
        script, ids = Path(tmp) / "load.lua", Path(tmp) / "accounts.txt"
        script.write_text(LUA)
        ids.write_text("\n".join(accounts) + "\n")
        command = [
            "wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
            "-s", str(script), url, "--", str(ids), key, str(mix.capture), str(mix.release),
            str(mix.credit), str(mix.transfer), tag,
        ]  # fmt: skip
        started = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
            out = process.stdout.read() if process.stdout else ""  # small: wrk prints a few lines
            err = process.stderr.read() if process.stderr else ""
            _, status, usage = os.wait4(process.pid, 0)  # its CPU use: is the load generator the limit?
            process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.strip() or out.strip()}")
    data = json.loads(line)
    seconds = data["duration_us"] / 1e6 or elapsed
    return WrkResult(
        requests=data["requests"],
        seconds=seconds,
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
