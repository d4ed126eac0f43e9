"""The annotation page: ``rlthf annotate serve --run DIR`` (or ``rlthf run --serve``) lets people answer the open
batch in a browser.

One pair at a time: the dialogue so far, then two responses side by side in a random order that each answer
records (``"shown": "ba"`` means response_b was on the left, as "Response A"). Buttons and keys: A or 1 (left),
B or 2 (right), S (skip), U (undo the last answer). Every answer is appended durably to the iteration's answer
log before the next pair shows, so a closed tab or a killed server loses nothing; an undo is a record of its own.

Several people can work at once: a pair shown to one person is leased to them for ``lease_minutes`` and shown to
nobody else meanwhile (an overlap pair to two people at most; :mod:`rlthf.annotation.leases`). Leases live in
memory: after a restart a pair may be shown again, but an answer is taken only while the pair still needs one
from that person. The AI label is never on the page (the request file does not have it), and Jinja's autoescape
renders dataset text as text. :class:`Desk` does the work; the Flask views only read the request and render.
The page is served by waitress (:class:`PageServer`), in the foreground or in a thread of a waiting run.
"""
from __future__ import annotations

import hmac
import ipaddress
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, abort, jsonify, make_response, redirect, render_template_string, request, url_for

from rlthf.annotation.leases import Leases
from rlthf.annotation.store import (AUDIT_ITERATION, SHOWN_ORDERS, answers_needed, answers_path, fold_answers,
                                    iteration_agreement, locked, now, read_answer_records, request_path,
                                    requested_iterations)
from rlthf.core.dialogue import dialogue_turns
from rlthf.rundir import RunDir, append_jsonl_durable, read_jsonl

NAME_COOKIE, TOKEN_COOKIE = "rlthf_annotator", "rlthf_token"
MAX_COMMENT_CHARS = 2000
CHOICES = ("left", "right", "skip")
# How often a page that waits for the run (no batch yet, or nothing left) reloads itself in a served run
WAITING_RELOAD_SECONDS = 5


class MalformedAnswer(ValueError):
    """An answer the page never sends: an unknown shown order or choice."""


class NoRequestYet(LookupError):
    """The run directory has no annotation request yet: the run is still preparing its first batch."""


@dataclass
class Batch:
    """The batch served, as read under the desk's lock: the latest request (a run only ever waits on that one)."""

    iteration: int
    pairs: dict[str, dict]  # pair id -> the request's record
    needed: dict[str, int]  # pair id -> how many answers it takes, in the request's order
    standing: dict[str, list[dict]]  # pair id -> the answers standing in the log

    @property
    def done(self) -> int:
        return sum(len(self.standing.get(pid, [])) >= n for pid, n in self.needed.items())

    @property
    def total(self) -> int:
        return len(self.needed)

    def answered_by(self, who: str) -> int:
        return sum(any(a["annotator"] == who for a in answers) for answers in self.standing.values())


class Desk:
    """What the page does, without a web framework: reads the open batch, hands its pairs out through
    :class:`~rlthf.annotation.leases.Leases`, and appends answers and undos to the log.

    Each public method holds one lock from reading the log to writing it, so requests served at once (waitress
    runs several threads) never lease a pair to more people than it needs, nor accept it twice; the log's file
    lock keeps out an import running in another process.
    """

    def __init__(self, run_dir: str | Path, *, lease_minutes: float = 15.0, seed: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.leases = Leases(lease_seconds=60 * lease_minutes, seed=seed)
        self._mutex = threading.Lock()

    def batch(self) -> Batch:
        with self._mutex:
            return self._read_batch()

    def offer(self, who: str) -> tuple[Batch, tuple[str, str] | None]:
        """The batch and the pair ``who`` answers next with its shown order (leased to them), or None."""
        with self._mutex:
            batch = self._read_batch()
            return batch, self.leases.next_pair(who, batch.needed, batch.standing)

    def answer(self, who: str, iteration: str, pid: str, shown: str, choice: str, comment: str = "") -> str:
        """Take ``who``'s ``choice`` (left, right or skip) on pair ``pid`` shown in ``shown``; returns what to tell
        them, '' when it went in as given."""
        if shown not in SHOWN_ORDERS or choice not in CHOICES:
            raise MalformedAnswer(f"a malformed answer: shown {shown!r}, choice {choice!r}")
        with self._mutex:
            batch = self._read_batch()
            if iteration != str(batch.iteration) or pid not in batch.pairs:
                return "That pair belongs to another batch; here is the current one."
            if choice == "skip":
                self.leases.skip(pid, who)
                return ""
            label = shown[0] if choice == "left" else shown[1]
            try:
                return self._append_answer(batch, who, pid, label, shown, comment)
            finally:
                self.leases.release(pid, who)

    def undo(self, who: str) -> str:
        """Take back ``who``'s last answer standing in the batch and lease that pair back to them."""
        with self._mutex:
            k = self._read_batch().iteration
            if _consumed(self.run_dir, k):
                return "The run has already taken this batch's answers."
            with locked(self.run_dir, k):
                last = _last_answer(self.run_dir, k, who)
                if last is None:
                    return "Nothing of yours to undo in this batch."
                append_jsonl_durable(answers_path(self.run_dir, k), {"id": last["id"], "undo": True,
                                                                     "annotator": who, "time": now()})
            self.leases.lease(last["id"], who, last.get("shown"))
        return "Your last answer is undone; answer that pair again."

    def can_undo(self, who: str, iteration: int) -> bool:
        return _last_answer(self.run_dir, iteration, who) is not None

    def _read_batch(self) -> Batch:
        iterations = requested_iterations(self.run_dir)
        if not iterations:
            raise NoRequestYet(f"no annotation request in {self.run_dir / 'annotations'} yet")
        k = iterations[-1]
        self.leases.start_batch(k)
        pairs = {r["id"]: r for r in read_jsonl(request_path(self.run_dir, k))}
        return Batch(k, pairs, answers_needed(self.run_dir, k), read_answer_records(self.run_dir, k))

    def _append_answer(self, batch: Batch, who: str, pid: str, label: str, shown: str, comment: str) -> str:
        with locked(self.run_dir, batch.iteration):  # an import from another process may be rewriting the log
            answers = read_answer_records(self.run_dir, batch.iteration).get(pid, [])
            if any(a["annotator"] == who for a in answers):
                return "You had answered that pair already (a second click?); your first answer stands."
            if len(answers) >= batch.needed[pid]:
                return "Someone else answered that pair meanwhile; here is another."
            record = {"id": pid, "label": label, "annotator": who, "time": now(), "shown": shown, "source": "page"}
            if comment:
                record["comment"] = comment
            append_jsonl_durable(answers_path(self.run_dir, batch.iteration), record)
        return ""


def create_app(run_dir: str | Path, *, token: str | None = None, lease_minutes: float = 15.0,
               seed: int | None = None, run_waits: bool = False) -> Flask:
    """The page as a Flask app serving the latest annotation request of ``run_dir``.

    ``token``: when set, every request must carry it once (``?token=...``, then a cookie). ``seed`` fixes the
    shown orders (tests); by default they are random. ``run_waits``: the run itself serves the page and goes on
    as soon as a batch is complete (``rlthf run --serve``), so pages with nothing to answer reload themselves
    until the next batch is there.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    desk = Desk(run_dir, lease_minutes=lease_minutes, seed=seed)
    _require_token(app, token)
    _add_views(app, desk, run_waits)
    return app


def _annotator() -> str | None:
    name = (request.args.get("annotator") or request.cookies.get(NAME_COOKIE) or "").strip()
    return name[:80] or None


def _require_token(app: Flask, token: str | None) -> None:
    """Refuse requests without the token (when there is one), and set the cookies and security headers."""
    @app.before_request
    def check_token():
        if token is None:
            return None
        given = request.args.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            abort(403, "this page needs its token: open the address that rlthf printed (`rlthf annotate serve` "
                       "or `rlthf run --serve`)")
        return None

    @app.after_request
    def remember(response):
        # SameSite=Strict: another site cannot post answers in someone's name
        if token is not None and request.args.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        if request.args.get("annotator"):
            response.set_cookie(NAME_COOKIE, _annotator(), samesite="Strict")
        response.headers["Content-Security-Policy"] = "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _add_views(app: Flask, desk: Desk, run_waits: bool) -> None:
    @app.get("/")
    def page():
        who = _annotator()
        if who is None:
            return render_template_string(PAGE, view="name")
        return _render_offer(desk, who, run_waits)

    @app.post("/answer")
    def answer():
        who, form = _annotator(), request.form
        if who is None:
            abort(400, "say who you are first")
        try:
            message = desk.answer(who, form.get("iteration", ""), form.get("id", ""), form.get("shown", ""),
                                  form.get("choice", ""), form.get("comment", "").strip()[:MAX_COMMENT_CHARS])
        except MalformedAnswer:
            abort(400, "a malformed answer")
        return redirect(url_for("page", message=message) if message else url_for("page"))

    @app.post("/undo")
    def undo():
        who = _annotator()
        if who is None:
            abort(400, "say who you are first")
        return redirect(url_for("page", message=desk.undo(who)))

    @app.get("/status")
    def status():
        batch = desk.batch()
        return jsonify(iteration=batch.iteration, done=batch.done, total=batch.total,
                       complete=batch.done == batch.total, agreement=iteration_agreement(desk.run_dir,
                                                                                          batch.iteration))

    @app.get("/page.js")
    def script():
        response = make_response(SCRIPT)
        response.headers["Content-Type"] = "text/javascript; charset=utf-8"
        return response

    @app.errorhandler(NoRequestYet)
    def no_request_yet(_):
        message = ("The run is preparing its first batch; this page reloads by itself." if run_waits else
                   f"No annotation request in {desk.run_dir / 'annotations'} yet: start the run "
                   "(annotation.annotator: file_queue) and reload.")
        return render_template_string(PAGE, view="waiting", message=message, reload=WAITING_RELOAD_SECONDS), 404


def _render_offer(desk: Desk, who: str, run_waits: bool) -> str:
    """The page for ``who``: their next pair, or word that there is none."""
    batch, picked = desk.offer(who)
    common = dict(who=who, iteration=batch.iteration, done=batch.done, total=batch.total,
                  mine=batch.answered_by(who), message=request.args.get("message", ""),
                  can_undo=desk.can_undo(who, batch.iteration), run_waits=run_waits)
    if picked is None:
        return render_template_string(PAGE, view="finished", complete=batch.done == batch.total,
                                      run_dir=str(desk.run_dir), reload=WAITING_RELOAD_SECONDS if run_waits else 0,
                                      **common)
    pid, shown = picked
    pair = batch.pairs[pid]
    left, right = (pair["response_a"], pair["response_b"])[::1 if shown == "ab" else -1]
    return render_template_string(PAGE, view="pair", pid=pid, shown=shown, turns=dialogue_turns(pair["prompt"]),
                                  left=left, right=right, **common)


def _last_answer(run_dir: Path, iteration: int, who: str) -> dict | None:
    """``who``'s latest answer still standing in ``iteration``, by its place in the log (times tie)."""
    log = read_jsonl(answers_path(run_dir, iteration))
    standing = {id(a) for answers in fold_answers(log).values() for a in answers if a["annotator"] == who}
    return next((a for a in reversed(log) if id(a) in standing), None)


def _consumed(run_dir: Path, iteration: int) -> bool:
    """Whether the run already read this iteration's answers (then an undo would change nothing): the step that
    reads them is recorded as done."""

    if not (run_dir / "steps.json").exists():  # no run has recorded a step yet (RunDir would make the folder)
        return False
    step = {0: "iter_0/validate", AUDIT_ITERATION: "final/audit"}.get(iteration, f"iter_{iteration}/annotate")
    return RunDir(run_dir).done(step)


class PageServer:
    """The page on waitress, a pure-Python production WSGI server: bound when made (a taken port fails here,
    before anything else happens), then served in the foreground (:meth:`run`) or a background thread
    (:meth:`start`) until :meth:`close`."""

    def __init__(self, app: Flask, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 threads: int = 8) -> None:
        import waitress

        self._map: dict = {}  # the server's sockets: closing them all ends its loop
        self._server = waitress.create_server(app, map=self._map, host=host, port=port, threads=threads,
                                              ident="rlthf")
        # "localhost" may bind two sockets (IPv4 and IPv6), and then waitress returns a server of both
        listening = getattr(self._server, "effective_listen", None) or [(self._server.effective_host,
                                                                          self._server.effective_port)]
        self.port = int(listening[0][1])
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown_host}:{self.port}/" + (f"?token={token}" if token else "")
        self._thread: threading.Thread | None = None
        self._closing = False

    def run(self) -> None:
        """Serve until :meth:`close` or Ctrl-C."""
        try:
            self._server.run()
        except (OSError, ValueError):
            if not self._closing:  # a socket closed under the loop's select by close() is how it ends
                raise

    def start(self) -> PageServer:
        self._thread = threading.Thread(target=self.run, name="rlthf-annotation-page", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        from waitress import wasyncore

        self._closing = True
        self._server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self._map, ignore_all=True)
        if self._thread is not None:
            self._thread.join(timeout=10)


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve the page beyond this machine without a token."""
    if not _is_loopback(host) and not token:
        raise ValueError(f"--host {host} exposes the page beyond this machine: give a --token that people must "
                         "present (or keep the default 127.0.0.1)")


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          lease_minutes: float = 15.0) -> None:
    """Serve the page until interrupted. Anywhere but loopback it needs a ``token``."""
    if not (Path(run_dir) / "annotations").is_dir():
        raise FileNotFoundError(f"{run_dir} has no annotations folder: is it a run directory whose run waits for "
                                "answers (annotation.annotator: file_queue)?")
    check_exposure(host, token)
    server = PageServer(create_app(run_dir, token=token, lease_minutes=lease_minutes), host=host, port=port,
                        token=token)
    print(f"rlthf: annotation page for {run_dir} at {server.url}  (each person enters a name there)",
          flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SCRIPT = """\
// Keys: A or 1 chooses the left response, B or 2 the right one, S skips, U undoes the last answer.
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey
      || event.altKey) return;
  const button = {a: "choose-left", 1: "choose-left", b: "choose-right", 2: "choose-right", s: "skip",
                  u: "undo"}[event.key.toLowerCase()];
  const element = button && document.getElementById(button);
  if (element && !element.disabled) { event.preventDefault(); element.click(); }
});
"""

PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if reload %}<meta http-equiv="refresh" content="{{ reload }}">{% endif %}
<title>rlthf annotation{% if view not in ("name", "waiting") %}: batch {{ iteration }}{% endif %}</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 1.5em; color: #1d1d1f; }
  header { display: flex; justify-content: space-between; align-items: baseline; border-bottom: 1px solid #ddd; }
  progress { width: 12em; }
  .message { background: #fff7d6; padding: .5em .8em; border-radius: 4px; }
  .turn { padding: .4em .7em; margin: .3em 0; border-radius: 6px; white-space: pre-wrap; }
  .Human { background: #eef3ff; } .Assistant { background: #f3f3f3; }
  .speaker { font-weight: 600; font-size: .85em; color: #555; display: block; }
  .responses { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin-top: 1em; }
  .response { border: 1px solid #ccc; border-radius: 6px; padding: .7em; }
  .response pre { white-space: pre-wrap; font: inherit; margin: .4em 0 .8em; }
  button { font: inherit; padding: .45em 1em; cursor: pointer; }
  .choose { width: 100%; font-weight: 600; }
  .actions { display: flex; gap: .6em; align-items: flex-start; margin-top: .8em; }
  textarea { flex: 1; min-height: 2.4em; font: inherit; }
  kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 .3em; font-size: .85em; }
</style>
<script src="/page.js" defer></script>
</head>
<body>
{% if view == "name" %}
  <h1>rlthf annotation</h1>
  <form method="get" action="/">
    <label>Your name (recorded with each answer): <input name="annotator" id="annotator" required autofocus></label>
    <button type="submit">Start</button>
  </form>
{% elif view == "waiting" %}
  <h1>rlthf annotation</h1>
  <p id="waiting">{{ message }}</p>
{% else %}
  <header>
    <h1>Which response is better?</h1>
    <div>batch {{ iteration }} &middot; <span id="progress">{{ done }} / {{ total }}</span> done
      <progress value="{{ done }}" max="{{ total }}"></progress> &middot; {{ who }}: {{ mine }} answered</div>
  </header>
  {% if message %}<p class="message" id="message">{{ message }}</p>{% endif %}
  {% if view == "pair" %}
    <section id="prompt">
      {% for speaker, text in turns %}
        <div class="turn {{ speaker }}"><span class="speaker">{{ speaker or "Prompt" }}</span>{{ text }}</div>
      {% endfor %}
    </section>
    <form method="post" action="/answer" id="answer-form">
      <input type="hidden" name="iteration" value="{{ iteration }}">
      <input type="hidden" name="id" value="{{ pid }}">
      <input type="hidden" name="shown" value="{{ shown }}">
      <div class="responses">
        <div class="response"><strong>Response A</strong><pre id="response-left">{{ left }}</pre>
          <button class="choose" id="choose-left" name="choice" value="left">A is better <kbd>A</kbd></button></div>
        <div class="response"><strong>Response B</strong><pre id="response-right">{{ right }}</pre>
          <button class="choose" id="choose-right" name="choice" value="right">B is better <kbd>B</kbd></button></div>
      </div>
      <div class="actions">
        <textarea name="comment" id="comment" placeholder="Comment (optional)" maxlength="2000"></textarea>
        <button id="skip" name="choice" value="skip">Skip <kbd>S</kbd></button>
      </div>
    </form>
  {% elif complete %}
    <h2 id="finished">This batch is complete: thank you.</h2>
    {% if run_waits %}
    <p>The run goes on with these answers; its next batch shows here when it is ready (this page reloads by
      itself).</p>
    {% else %}
    <p>The run picks the answers up when it resumes: <code>rlthf run --config CONFIG</code> (output_dir
      <code>{{ run_dir }}</code>).</p>
    {% endif %}
  {% else %}
    <h2 id="finished">Nothing left for you right now.</h2>
    <p>The other pairs are with other people or already answered by you; reload later to see skipped or released
      pairs.</p>
  {% endif %}
  <form method="post" action="/undo" class="actions">
    <button id="undo" {% if not can_undo %}disabled{% endif %}>Undo my last answer <kbd>U</kbd></button>
  </form>
{% endif %}
</body>
</html>
"""
