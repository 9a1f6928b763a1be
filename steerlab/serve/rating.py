"""Blinded human rating in the browser: the rating sheet of `steerlab blind export` served one
pair at a time to each rater through a link of their own.

The key stays on the server: a page sees a pair's question and its two answers as the sheet
shows them, never the arms. Each verdict is kept as it is given: the rater's sheet rows so far
(``ratings-<rater>.jsonl``) and their unblinded head-to-head records (``verdicts-<rater>.jsonl``,
the records `steerlab blind import` writes from a filled sheet) are rewritten, whole and
atomically, after every verdict and every undo, so a closed tab, a stopped server or an undo
never leaves a record that is not the rater's current verdict. A rater's links survive a restart
(``raters.json``).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from steerlab.data.files import read_rows
from steerlab.evaluation.judges.blind import rated_records, read_key, shown_digest
from steerlab.serve.app import WEB, answer_errors_as_openai
from steerlab.serve.guards import allowed_hosts, guard
from steerlab.serve.launch import DEFAULT_HOST
from steerlab.serve.schema import RequestError
from steerlab.steering.terms import JsonBody, Text

SHOWN = ("pair_id", "question", "answer_1", "answer_2")
"""What a page sees of a pair."""


MAX_COMMENT = 4000
"""Characters a verdict's comment may hold."""


class VerdictBody(JsonBody):
    """One verdict: the pair, ``1``, ``2`` or ``tie``, and an optional comment."""

    pair_id: Annotated[Text, Field(max_length=200)]
    preferred: Literal["1", "2", "tie"]
    comment: Annotated[Text, Field(max_length=MAX_COMMENT)] = ""


def _write_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace ``path`` with these JSON lines at once (written beside it, flushed to the disk,
    then renamed); a failed write (a full disk) leaves the old file and no temporary one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class RatingSession:
    """The sheet, its key, and every rater's verdicts so far (read back from ``out``)."""

    def __init__(self, sheet: Path, key_path: Path, out: Path, raters: Sequence[str]) -> None:
        self.sheet, self.key_path, self.out = Path(sheet), Path(key_path), Path(out)
        self.key = read_key(key_path)
        self.pairs = [{k: str(row.get(k) or "") for k in SHOWN}
                      for _, row in read_rows(self.sheet)]
        self.by_id = {p["pair_id"]: p for p in self.pairs}
        unknown = sorted(self.by_id.keys() - self.key["pairs"].keys())
        if unknown:
            raise ValueError(f"{self.sheet}: pairs {unknown[:3]} are not in the key {key_path}")
        other = [p for p, row in self.by_id.items() if "shown" in self.key["pairs"][p]
                 and shown_digest(row) != self.key["pairs"][p]["shown"]]
        if other:
            raise ValueError(f"{self.sheet}: pairs {other[:3]} do not show what the key "
                             f"{key_path} recorded (another export's sheet or key)")
        self.out.mkdir(parents=True, exist_ok=True)
        links = self.out / "raters.json"
        self.tokens: dict[str, str] = (json.loads(links.read_text(encoding="utf-8"))
                                       if links.exists() else {})
        for rater in raters:
            if not rater or not all(c.isalnum() or c in "-_." for c in rater):
                raise ValueError(f"rater {rater!r}: use letters, digits, '-', '_' or '.'")
            self.tokens.setdefault(rater, secrets.token_urlsafe(12))
        links.write_text(json.dumps(self.tokens, indent=1), encoding="utf-8")
        self.rater_of = {token: rater for rater, token in self.tokens.items()}
        self.given: dict[str, list[dict[str, str]]] = {
            rater: [row for _, row in read_rows(self._ratings(rater))]
            if self._ratings(rater).exists() else [] for rater in self.tokens}

    def _ratings(self, rater: str) -> Path:
        return self.out / f"ratings-{rater}.jsonl"

    def verdicts_path(self, rater: str) -> Path:
        """The rater's head-to-head records, as `steerlab blind import` writes them."""
        return self.out / f"verdicts-{rater}.jsonl"

    def rater(self, token: str) -> str:
        if token not in self.rater_of:
            raise RequestError("no rater has this link", "token", status=404)
        return self.rater_of[token]

    def state(self, rater: str) -> dict[str, Any]:
        """Progress, the next pair to rate (None when all are) and the last verdict's pair."""
        rated = {row["pair_id"] for row in self.given[rater]}
        following = next((p for p in self.pairs if p["pair_id"] not in rated), None)
        last = self.given[rater][-1] if self.given[rater] else None
        return {"rater": rater, "total": len(self.pairs), "done": len(rated), "next": following,
                "last": last}

    def _save(self, rater: str, rows: list[dict[str, str]]) -> None:
        """Write the rater's verdicts ``rows``, and only then count them as given: a verdict
        that did not reach the disk is an error (507), not a verdict."""
        records = rated_records(((f"web:{rater}:{i}", row) for i, row in enumerate(rows, 1)),
                                self.key, self.key_path, rater, complete=False, shown=False)
        try:
            _write_lines(self._ratings(rater), rows)
            _write_lines(self.verdicts_path(rater), records)
        except OSError as err:
            raise RequestError(f"the verdicts could not be saved ({err.strerror or err}); "
                               "nothing was counted: try again once the disk has room",
                               status=507, kind="server_error") from None
        self.given[rater] = rows

    def give(self, rater: str, verdict: VerdictBody) -> dict[str, Any]:
        if verdict.pair_id not in self.by_id:
            raise RequestError(f"pair_id: {verdict.pair_id!r} is not a pair of this sheet",
                               "pair_id")
        if any(row["pair_id"] == verdict.pair_id for row in self.given[rater]):
            raise RequestError(f"pair_id: {verdict.pair_id} is rated already (undo it first)",
                               "pair_id", status=409)
        self._save(rater, [*self.given[rater], {"pair_id": verdict.pair_id,
                                                "preferred": verdict.preferred,
                                                "comment": verdict.comment.strip()}])
        return self.state(rater)

    def undo(self, rater: str) -> dict[str, Any]:
        if not self.given[rater]:
            raise RequestError("nothing to undo: no verdict given yet", status=409)
        self._save(rater, self.given[rater][:-1])
        return self.state(rater)


MAX_BODY_BYTES = 64 << 10
"""A verdict is a pair id, a choice and a comment: far below this."""


def create_rating_app(session: RatingSession, api_key: str | None = None,
                      host: str = DEFAULT_HOST, names: Sequence[str] = ()) -> FastAPI:
    """The rating pages (``/web/rate.html?token=…``) and their API (``/rating/<token>/…``),
    behind the same guards as the server (Host check for ``host`` and ``names``, key, body
    limit, security headers)."""
    app = FastAPI(title="steerlab blind rating")
    hosts, any_ip = allowed_hosts(host, names)
    guard(app, key=api_key, hosts=hosts, any_ip=any_ip, max_body_bytes=MAX_BODY_BYTES,
          body_timeout_s=30.0)

    answer_errors_as_openai(app)

    @app.get("/rating/{token}/state")
    async def state(token: str) -> dict[str, Any]:
        return session.state(session.rater(token))

    @app.post("/rating/{token}/verdict")
    async def verdict(token: str, body: VerdictBody) -> dict[str, Any]:
        return session.give(session.rater(token), body)

    @app.post("/rating/{token}/undo")
    async def undo(token: str) -> dict[str, Any]:
        return session.undo(session.rater(token))

    app.mount("/web", StaticFiles(directory=WEB, html=True), name="web")
    return app
