"""Runtime fronts: ``generate`` and ``embed`` straight on the engine (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from appliance.cli._common import console, err_console, read_limited, services
from appliance.errors import EngineRequestError

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add ``generate`` and ``embed`` to ``group``."""
    group.add_command(generate)
    group.add_command(embed)


@click.command()
@click.argument("prompt")
@click.option("--json-schema", "schema_file", type=click.Path(path_type=Path),
              help="Constrain output to this JSON schema.")
@click.option("--grammar", "grammar_file", type=click.Path(path_type=Path),
              help="Constrain output to this GBNF grammar.")
@click.option("--adapter", help="LoRA adapter to apply for this request.")
@click.option("--system", help="System message.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result with timings as JSON.")
@click.pass_context
def generate(ctx: click.Context, prompt: str, schema_file: Path | None, grammar_file: Path | None, adapter: str | None,
             system: str | None, max_tokens: int | None, temperature: float | None, stop: tuple[str, ...],
             as_json: bool) -> None:
    """Generate text with the base model (streams tokens as they come)."""
    from appliance.runtime.protocol import GenerateRequest

    svc = services(ctx)
    lim, rt = svc.settings.limits, svc.settings.runtime
    schema = None
    if schema_file is not None:
        raw = read_limited(schema_file, lim.max_schema_bytes, "schema")
        try:
            schema = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EngineRequestError(f"schema {schema_file}: not valid JSON: {exc}") from exc
    grammar = read_limited(grammar_file, lim.max_grammar_bytes, "grammar") if grammar_file else None
    req = GenerateRequest(prompt=prompt, system=system, max_tokens=max_tokens or rt.max_tokens,
                          temperature=rt.temperature if temperature is None else temperature, stop=stop,
                          json_schema=schema, grammar=grammar, adapter=adapter, seed=rt.seed)
    engine = svc.engine()  # it checks the request's limits before anything is generated
    if as_json:
        result = engine.generate(req)
        click.echo(json.dumps(result.__dict__, indent=2))
        return

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = engine.generate(req, on_token=show)
    sys.stdout.write("\n")
    err_console.print(f"[dim]{result.completion_tokens} tokens, {result.tokens_per_s:.1f} tokens/s, "
                      f"{result.finish_reason}{', adapter ' + adapter if adapter else ''}[/]")


@click.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full vectors as JSON.")
@click.pass_context
def embed(ctx: click.Context, texts: tuple[str, ...], as_json: bool) -> None:
    """Embed TEXTS with the embedding model (normalised vectors)."""
    vectors = services(ctx).engine(generator=False).embed(list(texts))
    if as_json:
        click.echo(json.dumps({"dim": len(vectors[0]), "vectors": vectors}))
        return
    for text, vec in zip(texts, vectors, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vec[:6])
        console.print(f"{len(vec)}-d [{head}, …]  {text[:60]!r}", highlight=False)
