"""Command line: parses arguments and prints; the work happens in the library."""

from __future__ import annotations

import json
import sys

import click

from .errors import SirenError
from .serve.settings import API_KEY_ENV, ServeSettings

EXIT_HARMFUL = 1
EXIT_ERROR = 2


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SirenError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group)
@click.version_option(package_name="siren-ensemble")
def cli():
    """Score text for harm with an ensemble of SIREN guards on frozen LLMs."""


config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Ensemble YAML config."
)


@cli.command()
@config_option
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", help="File of inputs: .txt (one per line), .jsonl (`text` or `prompt`/`response`, optional `id`), or - for stdin.")
@click.option("--prompt", help="Prompt of a prompt/response pair.")
@click.option("--response", help="Response of a prompt/response pair.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the ensemble's decision threshold.")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "table"]), default="jsonl", show_default=True)
@click.option("--fail-on-harmful", is_flag=True, help="Exit with status 1 when any input is harmful.")
def score(config_path, texts, input_path, prompt, response, threshold, output_format, fail_on_harmful):
    """Score TEXTS, an --input file, or one --prompt/--response pair."""
    from .ensemble import Ensemble
    from .inputs import InputRecord, read_inputs
    from .text import join_prompt_response

    sources = sum([bool(texts), input_path is not None, prompt is not None or response is not None])
    if sources != 1:
        raise SirenError("give exactly one input: TEXT arguments, --input FILE, or --prompt/--response")
    if input_path is not None:
        records = read_inputs(input_path)
    elif texts:
        records = [InputRecord(text=text) for text in texts]
    else:
        records = [InputRecord(text=join_prompt_response(prompt, response))]

    ensemble = Ensemble.from_config(config_path)
    results = ensemble.score_batch([record.text for record in records], threshold=threshold, progress=sys.stderr.isatty())
    rows = [_output_row(record, result) for record, result in zip(records, results)]
    if output_format == "table":
        _print_table(rows, records, ensemble.member_names)
    else:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    if fail_on_harmful and any(result.is_harmful for result in results):
        sys.exit(EXIT_HARMFUL)


def _output_row(record, result) -> dict:
    row = {}
    if record.id is not None:
        row["id"] = record.id
    if record.line is not None:
        row["line"] = record.line
    row.update(result.to_dict())
    return row


def _print_table(rows, records, member_names) -> None:
    header = ["#", "score", "harmful", *member_names, "text"]
    lines = []
    for index, (row, record) in enumerate(zip(rows, records)):
        label = row.get("id", row.get("line", index + 1))
        member_cells = ["failed" if row["members"][name] is None else f"{row['members'][name]:.4f}" for name in member_names]
        preview = " ".join(record.text.split())
        preview = preview if len(preview) <= 48 else preview[:45] + "..."
        lines.append([str(label), f"{row['score']:.4f}", "yes" if row["is_harmful"] else "no", *member_cells, preview])
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    for cells in [header, *lines]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_plugins(as_json):
    """List the backbones and combiners available, with the plugin that provided each."""
    from . import plugins

    listing = {
        kind: [
            {"name": entry.name, "aliases": list(entry.aliases), "plugin": entry.plugin, "description": entry.cls.description}
            for entry in registry
        ]
        for kind, registry in (("backbones", plugins.backbones()), ("combiners", plugins.combiners()))
    }
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for kind, entries in listing.items():
        click.echo(f"{kind}:")
        for entry in entries:
            aliases = f" (aliases: {', '.join(entry['aliases'])})" if entry["aliases"] else ""
            click.echo(f"  {entry['name']}{aliases}  [{entry['plugin']}]  {entry['description']}")


@cli.command()
@config_option
def validate(config_path):
    """Check a config, its heads and its backbones' configs without loading weights or scoring."""
    from .config import load_config
    from .members import describe_plan, validate_plan

    config = load_config(config_path)
    plans, _combiner = validate_plan(config)
    click.echo(f"{config_path}: OK")
    click.echo(describe_plan(config, plans))


@cli.command(name="fit-stacker")
@config_option
@click.option("--data", "data_path", required=True, help="Labelled JSONL: `text` or `prompt`/`response`, and `label` (0/1).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write the parameters (.json or .safetensors).")
def fit_stacker_command(config_path, data_path, out_path):
    """Fit the stacking combiner's logistic regression on labelled validation data (never test data)."""
    import numpy as np

    from .ensemble import Ensemble
    from .inputs import read_inputs
    from .stacking import fit_stacker

    records = read_inputs(data_path, require_label=True)
    ensemble = Ensemble.from_config(config_path)
    results = ensemble.score_batch([record.text for record in records], progress=sys.stderr.isatty())
    failed = [record.line for record, result in zip(records, results) if result.errors]
    if failed:
        raise SirenError(f"{data_path}: members failed on lines {failed[:5]}; cannot fit on incomplete scores")
    scores = np.array([[result.members[name] for name in ensemble.member_names] for result in results])
    params = fit_stacker(scores, [record.label for record in records], ensemble.member_names)
    params.save(out_path)
    click.echo(json.dumps({"out": out_path, "members": list(params.members), "coefficients": list(params.coefficients),
                           "intercept": params.intercept, **params.fitted_on}))



@cli.command()
@config_option
@click.option("--host", default=ServeSettings.host, show_default=True, help="Address to bind; a non-loopback address needs an API key.")
@click.option("--port", default=ServeSettings.port, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar=API_KEY_ENV, show_envvar=True,
              help="Require `Authorization: Bearer KEY` on /v1/* and /metrics.")
@click.option("--max-body-bytes", default=ServeSettings.max_body_bytes, show_default=True, type=click.IntRange(1), help="Largest request body (and WebSocket message).")
@click.option("--max-inputs", default=ServeSettings.max_inputs, show_default=True, type=click.IntRange(1), help="Most texts in one moderation request.")
@click.option("--max-chars", default=ServeSettings.max_chars, show_default=True, type=click.IntRange(1), help="Longest text (or streamed response) in characters.")
@click.option("--max-streams", default=ServeSettings.max_streams, show_default=True, type=click.IntRange(1), help="Concurrent WebSocket streams.")
@click.option("--stream-idle-timeout", default=ServeSettings.stream_idle_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a stream may wait for its next message before it is closed.")
@click.option("--request-timeout", default=ServeSettings.request_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a request may wait for its score; then the failure policy answers.")
@click.option("--batch-wait-ms", default=ServeSettings.batch_wait_ms, show_default=True, type=click.FloatRange(0),
              help="How long the micro-batcher waits for more requests to join a batch.")
@click.option("--batch-max-texts", default=ServeSettings.batch_max_texts, show_default=True, type=click.IntRange(1),
              help="Texts per micro-batch; 1 turns micro-batching off.")
@click.option("--torch-threads", type=click.IntRange(1), help="torch threads for the model (default: torch's choice, one per core).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(config_path, host, port, api_key, max_body_bytes, max_inputs, max_chars, max_streams, stream_idle_timeout,
          request_timeout, batch_wait_ms, batch_max_texts, torch_threads, log_level):
    """Run the HTTP service: OpenAI-compatible /v1/moderations, /v1/score, /v1/stream (WebSocket), /metrics."""
    try:
        from .serve.app import create_app
        from .serve.server import build_server
    except ImportError as error:
        raise SirenError(f"the service needs the `serve` extra: pip install 'siren-ensemble[serve]' ({error})") from None
    from .config import load_config
    from .ensemble import Ensemble
    from .members import validate_plan

    settings = ServeSettings(
        host=host, port=port, api_key=api_key, max_body_bytes=max_body_bytes, max_inputs=max_inputs, max_chars=max_chars,
        max_streams=max_streams, stream_idle_timeout_s=stream_idle_timeout, request_timeout_s=request_timeout,
        batch_wait_ms=batch_wait_ms, batch_max_texts=batch_max_texts, torch_threads=torch_threads,
    )
    config = load_config(config_path)
    validate_plan(config)  # a bad config stops here, before the port opens; weights load in the background
    build_server(create_app(lambda: Ensemble.from_config(config), settings), settings, log_level=log_level).run()


def main() -> None:
    cli(prog_name="siren-ensemble")
