"""The proof of issue 14 (item 9): an adversary holding partner keys cannot move money it does
not own, nor make an honest operation fail, whatever it sends, next to honest partners.

The real service over HTTP (``BalanceApp`` through ``httpx.ASGITransport``), two SQLite shards
in a temporary directory, a manual clock (holds expire when the machine says). The tree: three
honest partners with children and a grandchild, a gateway account whose key has the
``platform`` scope (granted by the admin), and an adversary: a top-level partner sharing a
shard with honest ones, with a child, a credit line from the admin and its own money.

Honest steps (credits through the admin or a ``funds`` key, debits, transfers on one shard or
across, holds with or without a destination, captures, releases, expiries, freezes, closes)
are generated from the honest model and must succeed (503 is the only refusal allowed, and is
retried with the same id). The legs of cross-shard movements are separate steps: the source
leg alone, then other steps, then the target leg (by recovery's ``finish_pending_transfers``,
by the client sending the same request again, or by a restart). Restarts are clean or
crash-like (the tables left as a crash leaves them).

The adversary sends whatever it likes: money to, from and between honest accounts, amounts
past every bound, holds on honest accounts or naming them, captures and releases of honest
holds, freezes, closes and credit limits of any account, keys with any scopes, draws on its
credit line into the settlement account, honest requests replayed with its keys, honest
operation ids reused on its own accounts and on honest ones.

After every step: each honest account's balance, reserved, status and holds equal the fold
of the log of honest operations (the model below; never the service's answers); each shard's
invariants hold; each currency sums to zero over the shards; the funding and settlement
accounts equal minus the acknowledged flows across the platform's boundary, and the transit
accounts the money in flight; no answer was ever a 500.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from balance import bootstrap
from balance.api.app import BalanceApp
from balance.config import Settings
from balance.domain import commands as c
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS
from balance.domain.ids import system_account_id
from balance.engine.clock import ManualClock
from balance.engine.expiry_sweep import sweep
from balance.metrics import Metrics
from balance.service import BalanceService

ADMIN_KEY = "adversary-test-admin"
CURRENCY = "USD"
ACTIVE, FROZEN, CLOSED = "active", "frozen", "closed"
PENDING, CAPTURED, RELEASED, EXPIRED = "pending", "captured", "released", "expired"
PLATFORM = "platform"  # the placer of a hold placed with the gateway's key
ADMIN = "admin"
FUNDS = "funds"  # the first top partner's key with the funds scope
HONEST_AMOUNTS = st.integers(1, 500)
WILD_AMOUNTS = st.sampled_from([2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64, 0, -1, -(2**63)]) | st.integers(
    1, 2_000
)
ALL_SCOPES = ("read", "move", "funds", "limits", "platform")
ADVERSARY_CREDIT_LINE = 2**62
PROBLEMS_OF_A_REFUSED_ADVERSARY = {401, 403, 404, 409, 422}


class Fatal:
    """on_fatal: a broken invariant fails the example instead of ending the process."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, exc: BaseException) -> None:
        self.errors.append(exc)


# ---- the honest model: a fold of the log of honest operations ------------------------------


@dataclass
class MAccount:
    id: str
    shard: int
    top: str  # the top-level partner of its tree (whose key manages it)
    balance: int = 0
    reserved: int = 0
    status: str = ACTIVE
    frozen_by: str | None = None
    outsider: bool = False  # the adversary's account: holds the gateway placed on it are modelled, not its balance

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass
class MHold:
    account: str
    id: str
    amount: int
    destination: str | None
    expires_at: int
    placed_by: str  # PLATFORM, ADMIN or a top partner's id
    status: str = PENDING
    captured: int = 0


@dataclass
class MLeg:
    """Money of a cross-shard movement between its legs: off the source, not yet on the target."""

    kind: str  # "transfer" or "capture"
    source: str
    target: str
    amount: int
    op_id: str  # the transfer's id, or the hold's
    request: tuple[str, str, dict[str, Any], str]  # what a client sends again to finish it


@dataclass
class Sent:
    """An honest request and its first answer (``body`` None: finished by recovery, unseen)."""

    method: str
    url: str
    body: dict[str, Any] | None
    key: str
    status: int
    answer: bytes | None


@dataclass
class Model:
    accounts: dict[str, MAccount] = field(default_factory=dict)
    holds: dict[tuple[str, str], MHold] = field(default_factory=dict)
    legs: list[MLeg] = field(default_factory=list)
    funding: dict[int, int] = field(default_factory=dict)  # shard -> money in from outside (credits)
    settlement: dict[int, int] = field(default_factory=dict)  # shard -> money out (debits, captures)

    def live(self) -> list[MAccount]:
        return [a for a in self.accounts.values() if a.status == ACTIVE and not a.outsider]

    def honest(self) -> list[MAccount]:
        return [a for a in self.accounts.values() if not a.outsider]

    def pending(self) -> list[MHold]:
        return [h for h in self.holds.values() if h.status == PENDING]

    def closable(self, account: MAccount) -> bool:
        """The contract: no balance, no pending hold on or to it, no money in flight to or from it."""
        return (
            account.balance == 0
            and account.reserved == 0
            and not any(h.destination == account.id for h in self.pending())
            and not any(account.id in (leg.source, leg.target) for leg in self.legs)
        )

    def land(self, leg: MLeg) -> int:
        """The target leg: lands (the final status), or is refused and the money goes back."""
        target, source = self.accounts[leg.target], self.accounts[leg.source]
        self.legs.remove(leg)
        if leg.kind == "transfer":
            if target.status == ACTIVE:
                target.balance += leg.amount
                return 201
            source.balance += leg.amount
            return 409
        hold = self.holds[(leg.source, leg.op_id)]
        if target.status != CLOSED:  # a hold naming a frozen account settles normally
            target.balance += leg.amount
            return 200
        source.balance += leg.amount
        hold.status, hold.captured = RELEASED, 0
        return 409


# ---- the machine -------------------------------------------------------------------------


class AdversaryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="adversary-", dir=root))
        self.clock = ManualClock()
        self.settings = Settings.from_env(
            {"BALANCE_DATA_DIR": str(self.dir), "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_SHARDS": "2"}
        )
        self.fatal = Fatal()
        self.service: BalanceService | None = None
        self.client: httpx.AsyncClient | None = None
        self.model = Model()
        self.sent: list[Sent] = []
        self.ids = itertools.count(1)
        self.keys: dict[str, str] = {}  # honest principal -> key (top partners, "funds", PLATFORM)
        self.adversary_keys: list[str] = []
        self.adversary: list[str] = []  # the adversary's accounts (its top first)
        self.funds_top = ""
        self.run(self._open())

    # ---- plumbing ------------------------------------------------------------------------

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _open(self) -> None:
        self.service = bootstrap.build_service(self.settings, clock=self.clock, on_fatal=self.fatal, metrics=Metrics())
        for engine in self.service.engines:
            engine.sweep_interval_s = 3600.0  # expiries happen when the machine says (``advance_clock``)
        await self.service.start()
        app = BalanceApp(self.service, Metrics(), start_service=False)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adversary.test")

    async def _close(self, crash: bool = False) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.service is not None:
            if crash:  # no drain of memory into the tables, no last checkpoint: as a crash leaves them
                for engine in self.service.engines:
                    await engine.stop(checkpoint=False)
            else:
                await self.service.stop()
            self.service = None

    async def _send(self, method: str, url: str, body: dict[str, Any] | None, key: str) -> httpx.Response:
        assert self.client is not None
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}}
        if body is not None:
            kwargs["content"] = json.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        response = await self.client.request(method, url, **kwargs)
        assert response.status_code != 500, f"{method} {url} {body}: 500 {response.text}"
        return response

    def honest(self, method: str, url: str, body: dict[str, Any] | None, key: str, expected: int) -> httpx.Response:
        """An honest request: it gets the status the model predicts (503 only: sent again)."""
        for _ in range(50):
            response = self.run(self._send(method, url, body, key))
            if response.status_code != 503:
                break
            self.run(asyncio.sleep(0.01))
        assert response.status_code == expected, f"honest {method} {url} {body}: {response.text}"
        if (body is not None and "id" in body) or url.endswith(("/capture", "/release")):  # money operations
            self.sent.append(Sent(method, url, body, key, response.status_code, response.content))
        return response

    def attack(self, method: str, url: str, body: dict[str, Any] | None, key: str) -> httpx.Response:
        return self.run(self._send(method, url, body, key))

    def refused(self, response: httpx.Response, what: str) -> None:
        assert response.status_code in PROBLEMS_OF_A_REFUSED_ADVERSARY, f"adversary {what}: {response.text}"

    def op_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}"

    def shard_of(self, account_id: str) -> int:
        return int(account_id.split("-")[1])

    def key_over(self, account: MAccount) -> str:
        return self.keys[account.top]

    # ---- the tree ------------------------------------------------------------------------

    @initialize()
    def build_tree(self) -> None:
        def create(parent: str | None, top: str | None, honest: bool = True) -> str:
            body: dict[str, Any] = {"kind": "partner" if parent is None else "user"}
            if parent is None:
                body |= {"region": "US", "currency": CURRENCY}
            else:
                body["parent_id"] = parent
            response = self.run(self._send("POST", "/v1/accounts", body, ADMIN_KEY))
            assert response.status_code == 201, response.text
            account_id = str(response.json()["id"])
            if honest:
                self.model.accounts[account_id] = MAccount(account_id, self.shard_of(account_id), top or account_id)
            return account_id

        def key(account_id: str, scopes: list[str] | None = None) -> str:
            body = None if scopes is None else {"scopes": scopes}
            response = self.run(self._send("POST", f"/v1/accounts/{account_id}/keys", body, ADMIN_KEY))
            assert response.status_code == 201, response.text
            return str(response.json()["key"])

        tops = [create(None, None) for _ in range(3)]
        gateway = create(None, None)
        for top in tops:
            self.keys[top] = key(top)
        self.keys[PLATFORM] = self.keys[gateway] = key(gateway, ["read", "move", "platform"])
        self.keys[FUNDS] = key(tops[0], ["read", "move", "funds"])
        self.funds_top = tops[0]
        child = create(tops[0], tops[0])
        create(tops[0], tops[0])
        create(child, tops[0])  # a grandchild
        create(tops[1], tops[1])
        create(tops[2], tops[2])
        adversary = create(None, None, honest=False)
        self.adversary = [adversary, create(adversary, adversary, honest=False)]
        honest_shards = {self.shard_of(top) for top in tops}
        assert self.shard_of(adversary) in honest_shards, "the adversary shares a shard with honest partners"
        assert honest_shards == {0, 1}, "honest partners on both shards"
        self.adversary_keys = [key(adversary)]
        patch = {"credit_limit": ADVERSARY_CREDIT_LINE}
        assert self.run(self._send("PATCH", f"/v1/accounts/{adversary}", patch, ADMIN_KEY)).status_code == 200
        self._credit(adversary, 10_000, ADMIN_KEY, honest_model=False)
        for account in list(self.model.accounts.values()):
            self._credit(account.id, 1_000, ADMIN_KEY)
        self.model.accounts[adversary] = MAccount(adversary, self.shard_of(adversary), adversary, outsider=True)

    def _credit(self, account_id: str, amount: int, key: str, honest_model: bool = True) -> None:
        body = {"id": self.op_id("credit"), "amount": amount}
        self.honest("POST", f"/v1/accounts/{account_id}/credits", body, key, 201)
        shard = self.shard_of(account_id)
        self.model.funding[shard] = self.model.funding.get(shard, 0) + amount
        if honest_model:
            self.model.accounts[account_id].balance += amount

    # ---- honest steps --------------------------------------------------------------------

    @rule(data=st.data(), amount=HONEST_AMOUNTS)
    def honest_credit(self, data: st.DataObject, amount: int) -> None:
        account = data.draw(st.sampled_from(self.model.live()))
        funds_key = account.top == self.funds_top  # that tree's credits come through its funds key
        self._credit(account.id, amount, self.keys[FUNDS] if funds_key else ADMIN_KEY)

    @rule(data=st.data())
    def honest_debit(self, data: st.DataObject) -> None:
        candidates = [a for a in self.model.live() if a.available > 0]
        if not candidates:
            return
        account = data.draw(st.sampled_from(candidates))
        amount = data.draw(st.integers(1, account.available))
        body = {"id": self.op_id("debit"), "amount": amount}
        self.honest("POST", f"/v1/accounts/{account.id}/debits", body, ADMIN_KEY, 201)
        account.balance -= amount
        self.model.settlement[account.shard] = self.model.settlement.get(account.shard, 0) + amount

    def _transfer_pair(self, data: st.DataObject, across: bool | None) -> tuple[MAccount, MAccount, int] | None:
        sources = [a for a in self.model.live() if a.available > 0]
        if not sources:
            return None
        source = data.draw(st.sampled_from(sources))
        targets = [
            a
            for a in self.model.live()
            if a.id != source.id and (across is None or (a.shard != source.shard) == across)
        ]
        if not targets:
            return None
        target = data.draw(st.sampled_from(targets))
        return source, target, data.draw(st.integers(1, source.available))

    def _transfer_body(self, source: MAccount, target: MAccount, amount: int) -> tuple[dict[str, Any], str]:
        body = {
            "id": self.op_id("transfer"), "from_account_id": source.id, "to_account_id": target.id,
            "amount": amount, "currency": CURRENCY,
        }  # fmt: skip
        key = self.key_over(source) if source.top == target.top else self.keys[PLATFORM]
        return body, key

    @rule(data=st.data())
    def honest_transfer(self, data: st.DataObject) -> None:
        pair = self._transfer_pair(data, None)
        if pair is None:
            return
        source, target, amount = pair
        body, key = self._transfer_body(source, target, amount)
        self.honest("POST", "/v1/transfers", body, key, 201)
        source.balance -= amount
        target.balance += amount

    @rule(data=st.data())
    def honest_transfer_source_leg_only(self, data: st.DataObject) -> None:
        """The source leg of a cross-shard transfer alone (what a crash between the legs leaves)."""
        pair = self._transfer_pair(data, True)
        if pair is None:
            return
        source, target, amount = pair
        body, key = self._transfer_body(source, target, amount)
        transfer = c.Transfer(body["id"], source.id, target.id, amount, CURRENCY)
        reply = self._engine_leg(c.TransferOut(transfer))
        assert reply.status == TRANSFER_IN_PROGRESS, reply.body
        source.balance -= amount
        self.model.legs.append(
            MLeg("transfer", source.id, target.id, amount, body["id"], ("POST", "/v1/transfers", body, key))
        )

    def _engine_leg(self, command: c.Command) -> Any:
        assert self.service is not None
        port = self.service.port_for(command.account_id)
        assert port is not None
        for _ in range(50):
            reply = self.run(port.execute(command))
            if reply.status != 503:
                return reply
            self.run(asyncio.sleep(0.01))
        raise AssertionError(f"{command}: unavailable")

    @rule(
        data=st.data(),
        expires_in_s=st.integers(1, 600) | st.just(604_800),
        by_platform=st.booleans(),
        named=st.integers(0, 3),
    )
    def honest_hold(self, data: st.DataObject, expires_in_s: int, by_platform: bool, named: int) -> None:
        candidates = [a for a in self.model.live() if a.available > 0]
        if not candidates:
            return
        account = data.draw(st.sampled_from(candidates))
        amount = data.draw(st.integers(1, account.available))
        body: dict[str, Any] = {"id": self.op_id("hold"), "amount": amount, "expires_in_s": expires_in_s}
        destination = None
        if named:  # 1: any live account, 2: one on the other shard, 3: a child there
            options = [
                a
                for a in self.model.live()
                if a.id != account.id and (named == 1 or a.shard != account.shard) and (named < 3 or a.id != a.top)
            ]
            if options:
                destination = data.draw(st.sampled_from(options))
                body["destination_account_id"] = destination.id
        if destination is not None and destination.top != account.top:
            by_platform = True  # only the gateway moves money between trees
        key = self.keys[PLATFORM] if by_platform else self.key_over(account)
        self.honest("POST", f"/v1/accounts/{account.id}/holds", body, key, 201)
        account.reserved += amount
        expires_at = self.clock() + expires_in_s * 1_000_000
        placer = PLATFORM if by_platform else account.top
        destination_id = None if destination is None else destination.id
        self.model.holds[(account.id, body["id"])] = MHold(
            account.id, body["id"], amount, destination_id, expires_at, placer
        )

    @rule(data=st.data(), named=st.booleans(), expires_in_s=st.sampled_from([1, 600, 86_400, 604_800]))
    def gateway_holds_the_adversarys_money(self, data: st.DataObject, named: bool, expires_in_s: int) -> None:
        """The adversary pays: the gateway holds money on its account (an honest hold, which
        only the gateway or the admin may finish), for an honest merchant or the settlement."""
        assert self.service is not None
        payer = self.adversary[0]
        engine = self.service.engine_for(payer)
        assert engine is not None
        available = engine.ledger.accounts[payer].available  # the payer's own state (not modelled)
        if available <= 0:
            return
        amount = data.draw(st.integers(1, min(available, 500)))
        body: dict[str, Any] = {"id": self.op_id("charge"), "amount": amount, "expires_in_s": expires_in_s}
        destination = data.draw(st.sampled_from(self.model.live())).id if named else None
        if destination is not None:
            body["destination_account_id"] = destination
        self.honest("POST", f"/v1/accounts/{payer}/holds", body, self.keys[PLATFORM], 201)
        expires_at = self.clock() + expires_in_s * 1_000_000
        self.model.holds[(payer, body["id"])] = MHold(payer, body["id"], amount, destination, expires_at, PLATFORM)

    def _finisher(self, hold: MHold, data: st.DataObject) -> str:
        """A key that may finish the hold: its placer's, the gateway's, or the admin's."""
        choices = [self.keys[PLATFORM], ADMIN_KEY]
        if hold.placed_by not in (PLATFORM, ADMIN):
            choices.append(self.keys[hold.placed_by])
        return data.draw(st.sampled_from(choices))

    @rule(data=st.data(), whole=st.booleans())
    def honest_capture(self, data: st.DataObject, whole: bool) -> None:
        holds = self.model.pending()
        if not holds:
            return
        hold = data.draw(st.sampled_from(holds))
        amount = hold.amount if whole else data.draw(st.integers(1, hold.amount))
        body = {} if whole else {"amount": amount}
        self.honest(
            "POST", f"/v1/accounts/{hold.account}/holds/{hold.id}/capture", body, self._finisher(hold, data), 200
        )
        self._captured(hold, amount)
        if hold.destination is None:
            shard = self.shard_of(hold.account)
            self.model.settlement[shard] = self.model.settlement.get(shard, 0) + amount
        else:
            self.model.accounts[hold.destination].balance += amount

    def _captured(self, hold: MHold, amount: int) -> None:
        payer = self.model.accounts[hold.account]
        payer.reserved -= hold.amount
        payer.balance -= amount
        hold.status, hold.captured = CAPTURED, amount

    @rule(data=st.data())
    def honest_capture_source_leg_only(self, data: st.DataObject) -> None:
        """A capture whose destination is on the other shard, its source leg alone."""
        holds = [
            h
            for h in self.model.pending()
            if h.destination and self.shard_of(h.destination) != self.shard_of(h.account)
        ]
        if not holds:
            return
        hold = data.draw(st.sampled_from(holds))
        reply = self._engine_leg(c.CaptureHold(hold.account, hold.id, hold.amount))
        assert reply.status == TRANSFER_IN_PROGRESS, reply.body
        self._captured(hold, hold.amount)
        assert hold.destination is not None
        url = f"/v1/accounts/{hold.account}/holds/{hold.id}/capture"
        request = ("POST", url, {"amount": hold.amount}, self._finisher(hold, data))
        self.model.legs.append(MLeg("capture", hold.account, hold.destination, hold.amount, hold.id, request))

    @rule(data=st.data())
    def honest_release(self, data: st.DataObject) -> None:
        holds = self.model.pending()
        if not holds:
            return
        hold = data.draw(st.sampled_from(holds))
        self.honest(
            "POST", f"/v1/accounts/{hold.account}/holds/{hold.id}/release", None, self._finisher(hold, data), 200
        )
        self.model.accounts[hold.account].reserved -= hold.amount
        hold.status = RELEASED

    @rule(seconds=st.integers(1, 700))
    def advance_clock(self, seconds: int) -> None:
        """Time passes; every hold past its expiry is expired by its shard's sweep."""
        assert self.service is not None
        self.clock.advance(seconds)
        for engine in self.service.engines:
            self.run(sweep(engine))
        for hold in self.model.pending():
            if hold.expires_at <= self.clock():
                self.model.accounts[hold.account].reserved -= hold.amount
                hold.status = EXPIRED

    @precondition(lambda self: bool(self.model.legs))
    @rule()
    def finish_legs_by_recovery(self) -> None:
        assert self.service is not None
        self.run(self.service.finish_pending_transfers())
        for leg in list(self.model.legs):
            self._landed(leg, None)

    def _landed(self, leg: MLeg, answer: httpx.Response | None) -> None:
        status = self.model.land(leg)
        method, url, body, key = leg.request
        if answer is not None:
            assert answer.status_code == status, answer.text
        self.sent.append(Sent(method, url, body, key, status, None if answer is None else answer.content))

    @precondition(lambda self: bool(self.model.legs))
    @rule(data=st.data())
    def finish_a_leg_by_sending_again(self, data: st.DataObject) -> None:
        leg = data.draw(st.sampled_from(self.model.legs))
        method, url, body, key = leg.request
        answer = self.run(self._send(method, url, body, key))
        self._landed(leg, answer)

    @rule(data=st.data())
    def honest_freeze_or_unfreeze(self, data: st.DataObject) -> None:
        """A top partner freezes a child of its tree, or lifts its own freeze; the admin may too."""
        children = [a for a in self.model.honest() if a.id != a.top and a.status != CLOSED]
        if not children:
            return
        account = data.draw(st.sampled_from(children))
        by_admin = data.draw(st.booleans())
        if account.status == FROZEN and account.frozen_by == ADMIN:
            by_admin = True
        key = ADMIN_KEY if by_admin else self.key_over(account)
        status = ACTIVE if account.status == FROZEN else FROZEN
        self.honest("PATCH", f"/v1/accounts/{account.id}", {"status": status}, key, 200)
        account.status = status
        account.frozen_by = (ADMIN if by_admin else account.top) if status == FROZEN else None

    @rule(data=st.data())
    def honest_close(self, data: st.DataObject) -> None:
        """Closing a child: done if the model says it is empty (no balance, no pending hold on or
        to it on either shard, no money in flight), else 409 ``account_not_empty``."""
        children = [a for a in self.model.honest() if a.id != a.top and a.status != CLOSED]
        if not children:
            return
        named = [a for a in children if any(h.destination == a.id for h in self.model.pending())]
        account = data.draw(st.sampled_from(named if named and data.draw(st.booleans()) else children))
        key = ADMIN_KEY if account.frozen_by == ADMIN else self.key_over(account)
        if account.status == ACTIVE and account.balance > 0 and account.reserved == 0:  # empty it first
            parent = self.model.accounts[account.top]  # active always (a parent may be closed)
            body = {
                "id": self.op_id("empty"), "from_account_id": account.id, "to_account_id": parent.id,
                "amount": account.balance, "currency": CURRENCY,
            }  # fmt: skip
            self.honest("POST", "/v1/transfers", body, self.key_over(account), 201)
            parent.balance += account.balance
            account.balance = 0
        if not self.model.closable(account):
            answer = self.run(self._send("PATCH", f"/v1/accounts/{account.id}", {"status": CLOSED}, key))
            assert (answer.status_code, answer.json().get("code")) == (409, "account_not_empty"), answer.text
            return
        self.honest("PATCH", f"/v1/accounts/{account.id}", {"status": CLOSED}, key, 200)
        account.status, account.frozen_by = CLOSED, None

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def honest_replay(self, data: st.DataObject) -> None:
        """An honest request sent again answers its first answer, whatever happened since."""
        sent = data.draw(st.sampled_from(self.sent))
        answer = self.run(self._send(sent.method, sent.url, sent.body, sent.key))
        assert answer.status_code == sent.status, f"{sent.url} {sent.body}: {answer.text}"
        if sent.answer is not None:
            assert answer.content == sent.answer, f"{sent.url} {sent.body}: {answer.text}"

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        """Stop (cleanly, or leaving the tables as a crash does) and start again on the same
        files: recovery finishes every movement between its legs."""
        self.run(self._close(crash))
        self.run(self._open())
        for leg in list(self.model.legs):
            self._landed(leg, None)

    # ---- the adversary -------------------------------------------------------------------

    def _honest_account(self, data: st.DataObject) -> MAccount:
        return data.draw(st.sampled_from(self.model.honest()))

    @rule(
        data=st.data(),
        amount=WILD_AMOUNTS,
        kind=st.sampled_from(["credit", "debit", "from", "to", "between", "hold", "named"]),
    )
    def adversary_moves_honest_money(self, data: st.DataObject, amount: int, kind: str) -> None:
        key = data.draw(st.sampled_from(self.adversary_keys))
        victim, other = self._honest_account(data), self._honest_account(data)
        mine = data.draw(st.sampled_from(self.adversary))
        op = self.op_id("evil")
        if kind in ("credit", "debit"):
            response = self.attack("POST", f"/v1/accounts/{victim.id}/{kind}s", {"id": op, "amount": amount}, key)
        elif kind in ("from", "to", "between"):
            source, target = {"from": (victim.id, mine), "to": (mine, victim.id), "between": (victim.id, other.id)}[
                kind
            ]
            body = {
                "id": op,
                "from_account_id": source,
                "to_account_id": target,
                "amount": amount,
                "currency": CURRENCY,
            }
            response = self.attack("POST", "/v1/transfers", body, key)
        elif kind == "hold":
            response = self.attack("POST", f"/v1/accounts/{victim.id}/holds", {"id": op, "amount": amount}, key)
        else:
            body = {"id": op, "amount": amount, "destination_account_id": victim.id}
            response = self.attack("POST", f"/v1/accounts/{mine}/holds", body, key)
        self.refused(response, f"{kind} {amount} on {victim.id}")

    @rule(data=st.data(), amount=WILD_AMOUNTS, kind=st.sampled_from(["credit", "debit", "hold", "capture-big"]))
    def adversary_on_its_own_accounts(self, data: st.DataObject, amount: int, kind: str) -> None:
        """Money across the boundary needs ``funds``; amounts past 2^62 are refused; its credit
        line lets it hold and capture what the admin allowed, no more."""
        key = data.draw(st.sampled_from(self.adversary_keys))
        mine = data.draw(st.sampled_from(self.adversary))
        op = self.op_id("own")
        if kind in ("credit", "debit"):
            response = self.attack("POST", f"/v1/accounts/{mine}/{kind}s", {"id": op, "amount": amount}, key)
            self.refused(response, f"{kind} on its own account")
            return
        response = self.attack("POST", f"/v1/accounts/{mine}/holds", {"id": op, "amount": amount}, key)
        if response.status_code != 201:
            self.refused(response, "hold")
            return
        assert 1 <= amount <= 2**62, response.text
        captured = self.attack("POST", f"/v1/accounts/{mine}/holds/{op}/capture", {}, key)
        if captured.status_code == 200:
            shard = self.shard_of(mine)
            self.model.settlement[shard] = self.model.settlement.get(shard, 0) + amount
        else:
            self.refused(captured, "capture of its own hold")

    @rule(data=st.data())
    def adversary_draws_its_credit_line(self, data: st.DataObject) -> None:
        """Everything it may spend, into the settlement account (the shared one of its shard)."""
        key = data.draw(st.sampled_from(self.adversary_keys))
        mine = self.adversary[0]
        account = self.attack("GET", f"/v1/accounts/{mine}", None, key)
        if account.status_code != 200:
            return  # a key of a child it froze or closed
        available = min(account.json()["available"], 2**62)
        if available <= 0:
            return
        op = self.op_id("draw")
        placed = self.attack("POST", f"/v1/accounts/{mine}/holds", {"id": op, "amount": available}, key)
        if placed.status_code != 201:
            self.refused(placed, "hold on its credit line")
            return
        captured = self.attack("POST", f"/v1/accounts/{mine}/holds/{op}/capture", {}, key)
        assert captured.status_code == 200, captured.text
        shard = self.shard_of(mine)
        self.model.settlement[shard] = self.model.settlement.get(shard, 0) + available

    @rule(data=st.data(), release=st.booleans(), partial=st.booleans())
    def adversary_finishes_honest_holds(self, data: st.DataObject, release: bool, partial: bool) -> None:
        pending = self.model.pending()
        charges = [h for h in pending if h.account in self.adversary]  # where only the placer rule stands
        holds = (charges if charges and data.draw(st.booleans()) else pending) or list(self.model.holds.values())
        if not holds:
            return
        hold = data.draw(st.sampled_from(holds))
        key = data.draw(st.sampled_from(self.adversary_keys))
        action = "release" if release else "capture"
        body = {"amount": 1} if partial and not release else {}
        for account in (hold.account, self.adversary[0]):  # on the honest account, or its id on its own
            response = self.attack("POST", f"/v1/accounts/{account}/holds/{hold.id}/{action}", body, key)
            self.refused(response, f"{action} of honest hold {hold.id}")

    @rule(data=st.data(), change=st.sampled_from(["frozen", "closed", "active", "limit", "limit-own"]))
    def adversary_changes_accounts(self, data: st.DataObject, change: str) -> None:
        key = data.draw(st.sampled_from(self.adversary_keys))
        if change == "limit-own":  # a credit limit for its child: needs ``limits``
            response = self.attack("PATCH", f"/v1/accounts/{self.adversary[1]}", {"credit_limit": 2**62}, key)
            self.refused(response, "credit limit of its child")
            return
        victim = self._honest_account(data)
        body = {"credit_limit": 2**62} if change == "limit" else {"status": change}
        self.refused(self.attack("PATCH", f"/v1/accounts/{victim.id}", body, key), f"{change} of {victim.id}")

    @rule(data=st.data(), scopes=st.lists(st.sampled_from(ALL_SCOPES), min_size=1, unique=True), honest=st.booleans())
    def adversary_makes_keys(self, data: st.DataObject, scopes: list[str], honest: bool) -> None:
        key = data.draw(st.sampled_from(self.adversary_keys))
        target = self._honest_account(data).id if honest else data.draw(st.sampled_from(self.adversary))
        response = self.attack("POST", f"/v1/accounts/{target}/keys", {"scopes": scopes}, key)
        may = not honest and target != self.adversary[0] and set(scopes) <= {"read", "move"}
        if response.status_code == 201:
            assert may, f"adversary got a key with {scopes} on {target}"
            self.adversary_keys.append(response.json()["key"])
        else:
            self.refused(response, f"key with {scopes} on {target}")

    @rule(data=st.data(), status=st.sampled_from([FROZEN, CLOSED, ACTIVE]))
    def adversary_changes_its_child(self, data: st.DataObject, status: str) -> None:
        """Allowed: its keys for the child then lose their power (and must not regain any)."""
        key = data.draw(st.sampled_from(self.adversary_keys))
        response = self.attack("PATCH", f"/v1/accounts/{self.adversary[1]}", {"status": status}, key)
        assert response.status_code != 500

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def adversary_replays_honest_requests(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        key = data.draw(st.sampled_from(self.adversary_keys))
        response = self.attack(sent.method, sent.url, sent.body, key)
        on_its_own = any(f"/v1/accounts/{mine}/" in sent.url for mine in self.adversary)
        if on_its_own and response.status_code < 400:
            # The gateway's request on the adversary's own account (its money held): a key with
            # authority there gets the id's first answer (idempotency is per account, after
            # the key's authority: docs/API.md), and nothing more: no new effect, not a new hold.
            assert response.headers.get("idempotent-replayed") == "true", f"adversary re-applied {sent.url}"
            if sent.answer is not None:
                assert (response.status_code, response.content) == (sent.status, sent.answer)
            return
        self.refused(response, f"replay of {sent.url} {sent.body}")
        assert response.content != sent.answer

    @precondition(lambda self: any(s.body and "id" in s.body for s in self.sent))
    @rule(data=st.data(), amount=st.integers(1, 50), on_honest=st.booleans())
    def adversary_reuses_honest_ids(self, data: st.DataObject, amount: int, on_honest: bool) -> None:
        """Its own operations with honest ids: its own business, and nothing of the honest ones."""
        sent = data.draw(st.sampled_from([s for s in self.sent if s.body and "id" in s.body]))
        assert sent.body is not None
        op = sent.body["id"]
        key = data.draw(st.sampled_from(self.adversary_keys))
        if on_honest:
            victim = self._honest_account(data)
            response = self.attack("POST", f"/v1/accounts/{victim.id}/holds", {"id": op, "amount": amount}, key)
            self.refused(response, f"hold {op} on {victim.id}")
            return
        source, target = self.adversary
        body = {"id": op, "from_account_id": source, "to_account_id": target, "amount": amount, "currency": CURRENCY}
        self.attack("POST", "/v1/transfers", body, key)
        self.attack("POST", f"/v1/accounts/{source}/holds", {"id": op, "amount": amount}, key)

    @rule(data=st.data(), amount=WILD_AMOUNTS, kind=st.sampled_from(["funding", "settlement", "transit"]))
    def adversary_pumps_system_accounts(self, data: st.DataObject, amount: int, kind: str) -> None:
        key = data.draw(st.sampled_from(self.adversary_keys))
        system = system_account_id(data.draw(st.integers(0, 1)), CURRENCY, kind)
        mine = self.adversary[0]
        for source, target in ((mine, system), (system, mine)):
            body = {"id": self.op_id("pump"), "from_account_id": source, "to_account_id": target,
                    "amount": amount, "currency": CURRENCY}  # fmt: skip
            self.refused(self.attack("POST", "/v1/transfers", body, key), f"transfer with {system}")
        body = {"id": self.op_id("pump"), "amount": amount, "destination_account_id": system}
        self.refused(self.attack("POST", f"/v1/accounts/{mine}/holds", body, key), f"hold naming {system}")
        self.refused(
            self.attack("POST", f"/v1/accounts/{system}/credits", {"id": "x", "amount": amount}, key), "credit"
        )

    # ---- after every step ----------------------------------------------------------------

    @invariant()
    def books_match_the_honest_log(self) -> None:
        assert self.service is not None
        assert not self.fatal.errors, self.fatal.errors
        for _ in range(200):  # nothing left in flight (an expiry sweep, say)
            if not any(e.ledger.batches_in_flight or e._queue for e in self.service.engines):
                break
            self.run(asyncio.sleep(0.005))
        totals: dict[str, int] = {}
        transit = 0
        for engine in self.service.engines:
            ledger = engine.ledger
            ledger.check_invariants()  # per shard: sums to zero, reserved == pending holds, bounds
            for account in ledger.accounts.values():
                totals[account.currency] = totals.get(account.currency, 0) + account.balance
            shard = engine.shard
            funding = ledger.accounts.get(system_account_id(shard, CURRENCY, "funding"))
            settlement = ledger.accounts.get(system_account_id(shard, CURRENCY, "settlement"))
            assert (0 if funding is None else funding.balance) == -self.model.funding.get(shard, 0), "funding"
            assert (0 if settlement is None else settlement.balance) == self.model.settlement.get(shard, 0), (
                "settlement"
            )
            found = ledger.accounts.get(system_account_id(shard, CURRENCY, "transit"))
            transit += 0 if found is None else found.balance
        assert all(total == 0 for total in totals.values()), totals
        assert transit == sum(leg.amount for leg in self.model.legs), "transit holds the money in flight"
        for expected in self.model.honest():
            engine = self.service.engine_for(expected.id)
            assert engine is not None
            account = engine.ledger.accounts[expected.id]
            seen = (account.balance, account.reserved, account.status)
            assert seen == (expected.balance, expected.reserved, expected.status), (expected.id, seen, expected)
        for hold in self.model.holds.values():
            engine = self.service.engine_for(hold.account)
            assert engine is not None
            found = engine.ledger.holds.find(hold.account, hold.id)
            if found is None:
                assert hold.status != PENDING, f"pending hold {hold.id} is missing"
                continue
            assert (found.status, found.captured_amount) == (hold.status, hold.captured), (hold, found.state())
        honest = {(h.account, h.id) for h in self.model.pending()}

        def outsider(account_id: str) -> bool:
            return self.model.accounts[account_id].outsider

        for engine in self.service.engines:
            for found in engine.ledger.holds.values():
                if (
                    found.account_id in self.model.accounts
                    and found.status == PENDING
                    and not outsider(found.account_id)
                ):
                    assert (found.account_id, found.id) in honest, f"a hold nobody honest placed: {found.id}"


def _settings() -> settings:
    """The same in CI and on a laptop; BALANCE_ADVERSARY_EXAMPLES runs longer."""
    return settings(
        max_examples=int(os.environ.get("BALANCE_ADVERSARY_EXAMPLES", "50")),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


AdversaryMachine.TestCase.settings = _settings()
test_no_key_moves_money_it_does_not_own = AdversaryMachine.TestCase
