"""Agent commands: ask, feedback, sessions, trace show (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys

import click

from appliance.access.labels import Principal, parse_labels
from appliance.agent.loop import Answer
from appliance.cli._common import console, current_account, err_console, services, trace_group
from appliance.errors import ApplianceError

__all__ = ["draft_rows", "draft_verdict", "principal_for", "register"]


def register(group: click.Group) -> None:
    """Add ``ask``, ``feedback``, ``sessions`` and ``trace show`` to ``group``."""
    for command in (ask, feedback, sessions):
        group.add_command(command)
    trace_group(group).add_command(trace_show)


def principal_for(ctx: click.Context, label_text: str | None = None) -> Principal:
    """The logged-in account's principal; ``--labels`` narrows it (officers and admins only).

    A narrowed clearance must be one the account itself holds: it previews what a lower
    clearance sees, never more than the account may read.
    """
    from appliance.app import documents

    svc = services(ctx)
    narrowed = parse_labels(label_text, svc.scale) if label_text else None
    return documents.principal_of(svc, current_account(ctx), narrowed)


@click.command()
@click.argument("question")
@click.option("--session", "session", help="Continue a session by id, or 'new' to start one.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer, checks and citations as JSON.")
@click.pass_context
def ask(ctx: click.Context, question: str, session: str | None, as_json: bool) -> None:
    """Answer a question from the documents you may read, with citations, or abstain."""
    principal = principal_for(ctx)
    agent = services(ctx).agent()
    session_id = agent.store.new_session(principal.name) if session == "new" else session

    drafted: list[str] = []

    def draft(piece: str) -> None:
        if not as_json:
            drafted.append(piece)
            err_console.print(piece, end="", style="dim", highlight=False, markup=False)

    try:
        answer = agent.ask(question, principal, session_id=session_id, on_token=draft)
    except ApplianceError:
        if drafted:  # the error line starts on a line of its own, under the draft cut short
            err_console.print()
        raise
    if as_json:
        click.echo(json.dumps(answer.as_dict(), indent=2))
        return
    if drafted:
        _settle_draft("".join(drafted), answer)
    if answer.marking:
        console.print(f"[reverse] {answer.marking} [/]")
    style = {"answered": "bold", "quoted": "bold", "specialist": "bold"}.get(answer.outcome, "yellow")
    console.print(answer.text, style=style, highlight=False)
    for c in answer.citations:
        where = ", ".join(x for x in (f"p. {c.page}" if c.page else "", " > ".join(c.heading)) if x)
        console.print(f"[{c.n}] [bold]{c.title}[/] ({c.doc_id}{'; ' + where if where else ''}; {c.labels}; "
                      f"chars {c.start}-{c.end})", highlight=False)
        console.print(f"    \u201c{c.text[:300]}\u201d", style="dim", highlight=False)
    console.print(f"[dim]{answer.outcome}; trace {answer.trace_id}"
                  f"{'; session ' + session_id if session_id else ''}; {answer.seconds:.1f} s[/]")
    if answer.outcome == "abstained":
        sys.exit(0)


def draft_rows(text: str, width: int) -> int:
    """Terminal rows the streamed draft takes at ``width`` columns (lines wrap)."""
    width = max(width, 1)
    return sum(max(1, -(-len(line) // width)) for line in text.split("\n"))


def draft_verdict(answer: Answer) -> str:
    """What became of the draft, said under it where it cannot be erased (output not a terminal)."""
    checked = answer.sentences
    kept = sum(c.supported for c in checked)
    if answer.outcome == "answered" and checked and kept == len(checked):
        return "[draft above: every sentence verified; the answer follows]"
    if answer.outcome == "answered":
        return (f"[draft above NOT the answer: {len(checked) - kept} of {len(checked)} sentences failed "
                "verification and were dropped; the checked answer follows]")
    return f"[draft above NOT the answer: it failed verification; {answer.outcome} instead, below]"


def _settle_draft(text: str, answer: Answer) -> None:
    """The draft was a preview. On a terminal it is erased before the checked answer is printed,
    so an unverified draft never stays on screen as if it were the answer; elsewhere (a pipe, a
    log) it cannot be erased, so a line under it says what became of it."""
    if err_console.is_terminal:
        rows = draft_rows(text, err_console.width)
        err_console.file.write("\r" + (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\x1b[J")
        err_console.file.flush()
    else:
        err_console.print()
        err_console.print(draft_verdict(answer), highlight=False, markup=False)


@click.command()
@click.argument("trace_id")
@click.argument("verdict", type=click.Choice(["right", "wrong"]))
@click.option("--answer", "correct_answer", help="The correct answer (for an answer marked wrong).")
@click.option("--source", "correct_source", help="The document that holds the correct answer (its id).")
@click.pass_context
def feedback(ctx: click.Context, trace_id: str, verdict: str, correct_answer: str | None,
             correct_source: str | None) -> None:
    """Mark one of your answers right or wrong (as ctrl+f in Ask); kept for evaluation sets, audited."""
    from appliance.app import answers

    answers.record_feedback(services(ctx), current_account(ctx), trace_id, verdict, correct_answer,
                               correct_source)
    console.print(f"the answer of trace {trace_id} is marked {verdict}", highlight=False)


@click.command()
@click.pass_context
def sessions(ctx: click.Context) -> None:
    """List your conversation sessions."""
    principal = principal_for(ctx)
    for s in services(ctx).agent_store().sessions(principal.name):
        console.print(f"{s['id']}  {s['created_at']}  {s['turns']} turn(s)  {s['first_question'] or ''}",
                      highlight=False)


@click.command("show")
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trace_show(ctx: click.Context, trace_id: str, as_json: bool) -> None:
    """Print each step of one of your requests: input, decision, chunks, scores, tokens, time."""
    t = services(ctx).agent_store().trace(trace_id, user=principal_for(ctx).name)
    if as_json:
        click.echo(json.dumps(t, indent=2))
        return
    console.print(f"[bold]{t['question']}[/] -> {t['outcome']} in {t['seconds']:.2f} s (user {t['user']})",
                  highlight=False)
    for s in t["steps"]:
        split = ", ".join(f"{s[key]:.0f} ms {word}" for key, word in (("model_ms", "model"),
                                                                   ("retrieval_ms", "retrieval")) if s[key])
        console.print(f"{s['n']:>2} [bold]{s['name']}[/] {s['ms'] or 0:.0f} ms"
                      f"{' (' + split + ')' if split else ''}"
                      f"{' ' + str(s['tokens']) + ' tok' if s['tokens'] else ''}", highlight=False)
        if s["input"] is not None:
            console.print(f"     in: {json.dumps(s['input'])[:200]}", style="dim", highlight=False)
        if s["decision"] is not None:
            console.print(f"     -> {json.dumps(s['decision'])[:300]}", highlight=False)
        if s["chunk_ids"]:
            console.print(f"     chunks: {', '.join(s['chunk_ids'][:8])}", style="dim", highlight=False)
    ts = t["time_split"]
    console.print(f"total {ts['total_ms']:.0f} ms: model {ts['model_ms']:.0f} ms, "
                  f"retrieval {ts['retrieval_ms']:.0f} ms, orchestration {ts['orchestration_ms']:.0f} ms "
                  f"({ts['orchestration_share']:.1%})", highlight=False)
