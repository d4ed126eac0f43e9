"""The annotation page: ``rlthf annotate serve --run DIR`` lets people answer the open batch in a browser.

One pair at a time: the dialogue so far, then two responses side by side in a random order that each answer
records (``"shown": "ba"`` means response_b was on the left, as "Response A"). Buttons and keys: A or 1 (left),
B or 2 (right), S (skip), U (undo the last answer). Every answer is appended durably to the iteration's answer
log before the next pair shows, so a closed tab or a killed server loses nothing; an undo is a record of its own.

Several people can work at once: a pair shown to one person is leased to them for ``lease_minutes`` and shown to
nobody else meanwhile (an overlap pair to two people at most). Leases live in memory: after a restart a pair may
be shown again, but an answer is taken only while the pair still needs one from that person. The AI label is
never on the page (the request file does not have it), and Jinja's autoescape renders dataset text as text.
"""
from __future__ import annotations

import hmac
import ipaddress
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, abort, jsonify, make_response, redirect, render_template_string, request, url_for

from rlthf.annotators import (answers_needed, answers_path, fold_answers, iteration_agreement, locked, now,
                              read_answer_records, request_path, requested_iterations)
from rlthf.rundir import append_jsonl_durable, read_jsonl

NAME_COOKIE, TOKEN_COOKIE = "rlthf_annotator", "rlthf_token"
SHOWN_ORDERS = ("ab", "ba")
MAX_COMMENT_CHARS = 2000
TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def dialogue_turns(prompt: str) -> list[tuple[str, str]]:
    """An HH-RLHF prompt as ``[(speaker, text), ...]`` without empty turns (the trailing ``Assistant:`` that the
    responses continue); text before the first marker, or a prompt without markers, is a turn of speaker ``""``.

    >>> dialogue_turns("\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: bye\\n\\nAssistant:")
    [('Human', 'hi'), ('Assistant', 'hello'), ('Human', 'bye')]
    """
    parts = TURN.split("\n\n" + prompt.lstrip("\n"))
    turns = [("", parts[0].strip())] + [(speaker, text.strip()) for speaker, text in zip(parts[1::2], parts[2::2])]
    return [(speaker, text) for speaker, text in turns if text]


@dataclass
class Lease:
    annotator: str
    shown: str
    expires: float


@dataclass
class BatchState:
    """What the server remembers between requests, for the iteration it serves (reset when that changes)."""

    iteration: int = -1
    leases: dict[str, list[Lease]] = field(default_factory=dict)  # pair id -> who holds it now
    skipped: dict[str, list[str]] = field(default_factory=dict)  # annotator -> pair ids, oldest skip first


def create_app(run_dir: str | Path, *, token: str | None = None, lease_minutes: float = 15.0,
               seed: int | None = None) -> Flask:
    """The page as a Flask app serving the latest annotation request of ``run_dir``.

    ``token``: when set, every request must carry it once (``?token=...``, then a cookie). ``seed`` fixes the
    shown orders (tests); by default they are random.
    """
    run_dir = Path(run_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    state, mutex, rng = BatchState(), threading.Lock(), random.Random(seed)

    def batch() -> tuple[int, dict[str, dict], dict[str, int], dict[str, list[dict]]]:
        """The iteration served (the latest request; the run only ever waits on that one), its pairs, how many
        answers each takes, and the answers standing."""
        iterations = requested_iterations(run_dir)
        if not iterations:
            abort(404, f"no annotation request in {run_dir / 'annotations'} yet: start the run "
                       "(annotation.annotator: file_queue) and reload")
        k = iterations[-1]
        if k != state.iteration:
            state.iteration, state.leases, state.skipped = k, {}, {}
        pairs = {r["id"]: r for r in read_jsonl(request_path(run_dir, k))}
        return k, pairs, answers_needed(run_dir, k), read_answer_records(run_dir, k)

    def live_leases(pid: str) -> list[Lease]:
        state.leases[pid] = [lease for lease in state.leases.get(pid, []) if lease.expires > time.time()]
        return state.leases[pid]

    def next_pair(who: str, needed: dict[str, int], standing: dict[str, list[dict]]) -> tuple[str, str] | None:
        """The pair ``who`` answers next and its shown order: the one they hold, else the first that still
        needs an answer from them and is not held by as many others as it needs; skipped pairs come last."""
        def open_to(pid: str) -> bool:
            answers = standing.get(pid, [])
            return (all(a["annotator"] != who for a in answers)
                    and len(answers) + len([x for x in live_leases(pid) if x.annotator != who]) < needed[pid])

        for pid in needed:
            mine = [x for x in live_leases(pid) if x.annotator == who]
            if mine and open_to(pid):
                return pid, mine[0].shown
        skipped = state.skipped.get(who, [])
        candidates = [pid for pid in needed if pid not in skipped] + [pid for pid in skipped if pid in needed]
        for pid in candidates:
            if open_to(pid):
                return pid, lease(pid, who)
        return None

    def lease(pid: str, who: str, shown: str | None = None) -> str:
        """Lease ``pid`` to ``who``, who holds one pair at a time (a pair left for another comes back free)."""
        shown = shown or rng.choice(SHOWN_ORDERS)
        for held in state.leases:
            release(held, who)
        state.leases[pid].append(Lease(who, shown, time.time() + 60 * lease_minutes))
        return shown

    def release(pid: str, who: str) -> None:
        state.leases[pid] = [x for x in state.leases.get(pid, []) if x.annotator != who]

    def annotator() -> str | None:
        name = (request.args.get("annotator") or request.cookies.get(NAME_COOKIE) or "").strip()
        return name[:80] or None

    @app.before_request
    def check_token():
        if token is None:
            return None
        given = request.args.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            abort(403, "this page needs its token: open the address that `rlthf annotate serve` printed")
        return None

    @app.after_request
    def remember(response):
        # SameSite=Strict: another site cannot post answers in someone's name
        if token is not None and request.args.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        if request.args.get("annotator"):
            response.set_cookie(NAME_COOKIE, annotator(), samesite="Strict")
        response.headers["Content-Security-Policy"] = "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def page():
        who = annotator()
        if who is None:
            return render_template_string(PAGE, view="name")
        with mutex:
            k, pairs, needed, standing = batch()
            picked = next_pair(who, needed, standing)
        done = sum(len(standing.get(pid, [])) >= n for pid, n in needed.items())
        mine = sum(any(a["annotator"] == who for a in answers) for answers in standing.values())
        common = dict(who=who, iteration=k, done=done, total=len(needed), mine=mine,
                      message=request.args.get("message", ""), can_undo=_last_answer(run_dir, k, who) is not None)
        if picked is None:
            complete = done == len(needed)
            return render_template_string(PAGE, view="finished", complete=complete, run_dir=str(run_dir), **common)
        pid, shown = picked
        pair = pairs[pid]
        left, right = (pair["response_a"], pair["response_b"]) if shown == "ab" else (pair["response_b"],
                                                                                      pair["response_a"])
        return render_template_string(PAGE, view="pair", pid=pid, shown=shown, turns=dialogue_turns(pair["prompt"]),
                                      left=left, right=right, **common)

    @app.post("/answer")
    def answer():
        who = annotator()
        if who is None:
            abort(400, "say who you are first")
        form = request.form
        pid, shown, choice = form.get("id", ""), form.get("shown", ""), form.get("choice", "")
        comment = form.get("comment", "").strip()[:MAX_COMMENT_CHARS]
        if shown not in SHOWN_ORDERS or choice not in ("left", "right", "skip"):
            abort(400, "a malformed answer")
        message = ""
        with mutex:
            k, pairs, needed, _ = batch()
            if form.get("iteration") != str(k) or pid not in pairs:
                return redirect(url_for("page", message="That pair belongs to another batch; here is the current one."))
            if choice == "skip":
                release(pid, who)
                skipped = state.skipped.setdefault(who, [])
                if pid in skipped:
                    skipped.remove(pid)
                skipped.append(pid)
                return redirect(url_for("page"))
            label = shown[0] if choice == "left" else shown[1]
            with locked(run_dir, k):  # an import from another process may be rewriting the log
                answers = read_answer_records(run_dir, k).get(pid, [])
                if any(a["annotator"] == who for a in answers):
                    message = "You had answered that pair already (a second click?); your first answer stands."
                elif len(answers) >= needed[pid]:
                    message = "Someone else answered that pair meanwhile; here is another."
                else:
                    record = {"id": pid, "label": label, "annotator": who, "time": now(), "shown": shown,
                              "source": "page"}
                    if comment:
                        record["comment"] = comment
                    append_jsonl_durable(answers_path(run_dir, k), record)
            release(pid, who)
        return redirect(url_for("page", message=message) if message else url_for("page"))

    @app.post("/undo")
    def undo():
        who = annotator()
        if who is None:
            abort(400, "say who you are first")
        with mutex:
            k, _, _, _ = batch()
            if _consumed(run_dir, k):
                return redirect(url_for("page", message="The run has already taken this batch's answers."))
            with locked(run_dir, k):
                last = _last_answer(run_dir, k, who)
                if last is None:
                    return redirect(url_for("page", message="Nothing of yours to undo in this batch."))
                append_jsonl_durable(answers_path(run_dir, k), {"id": last["id"], "undo": True, "annotator": who,
                                                                "time": now()})
            lease(last["id"], who, last.get("shown") if last.get("shown") in SHOWN_ORDERS else None)
        return redirect(url_for("page", message="Your last answer is undone; answer that pair again."))

    @app.get("/status")
    def status():
        with mutex:
            k, _, needed, standing = batch()
        done = sum(len(standing.get(pid, [])) >= n for pid, n in needed.items())
        return jsonify(iteration=k, done=done, total=len(needed), complete=done == len(needed),
                       agreement=iteration_agreement(run_dir, k))

    @app.get("/page.js")
    def script():
        response = make_response(SCRIPT)
        response.headers["Content-Type"] = "text/javascript; charset=utf-8"
        return response

    return app


def _last_answer(run_dir: Path, iteration: int, who: str) -> dict | None:
    """``who``'s latest answer still standing in ``iteration``, by its place in the log (times tie)."""
    log = read_jsonl(answers_path(run_dir, iteration))
    standing = {id(a) for answers in fold_answers(log).values() for a in answers if a["annotator"] == who}
    return next((a for a in reversed(log) if id(a) in standing), None)


def _consumed(run_dir: Path, iteration: int) -> bool:
    """Whether the run already read this iteration's answers (then an undo would change nothing)."""
    steps = run_dir / "steps.json"
    step = "iter_0/validate" if iteration == 0 else f"iter_{iteration}/annotate"
    return steps.exists() and f'"{step}"' in steps.read_text()


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          lease_minutes: float = 15.0) -> None:
    """Serve the page until interrupted. Anywhere but loopback it needs a ``token``."""
    if not (Path(run_dir) / "annotations").is_dir():
        raise FileNotFoundError(f"{run_dir} has no annotations folder: is it a run directory whose run waits for "
                                "answers (annotation.annotator: file_queue)?")
    if not _is_loopback(host) and not token:
        raise ValueError(f"--host {host} exposes the page beyond this machine: give a --token that people must "
                         "present (or keep the default 127.0.0.1)")
    address = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    print(f"rlthf: annotation page for {run_dir} at {address}  (add &annotator=NAME or enter a name there)",
          flush=True)
    create_app(run_dir, token=token, lease_minutes=lease_minutes).run(host=host, port=port, threaded=True)


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
<title>rlthf annotation{% if view != "name" %}: batch {{ iteration }}{% endif %}</title>
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
    <p>The run picks the answers up when it resumes: <code>rlthf run --config CONFIG</code> (output_dir
      <code>{{ run_dir }}</code>).</p>
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
